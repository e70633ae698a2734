"""What a dataset holds: images, instances per category, object sizes, image sizes, skips.

Everything comes from the annotation index: no image is read and no mask rasterised, so a summary
of a large dataset takes seconds. Object areas are polygon areas (shoelace) or exact RLE pixel
counts (:func:`samadapt.data.coco_file.annotation_area`), binned with COCO's thresholds: small < 32^2,
medium < 96^2, large otherwise.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any, Mapping

from ..errors import ConfigError
from .coco import CocoInstances
from .coco_file import annotation_area

__all__ = ["summarize", "summarize_preset", "format_summary", "AREA_SMALL", "AREA_MEDIUM"]

AREA_SMALL = 32**2  # pixels^2, COCO's "small" upper bound
AREA_MEDIUM = 96**2  # pixels^2, COCO's "medium" upper bound


def _instances_of(dataset: Any) -> CocoInstances:
    if isinstance(dataset, CocoInstances):
        return dataset
    inner = getattr(dataset, "instances", None)  # SamPromptDataset
    if isinstance(inner, CocoInstances):
        return inner
    raise TypeError(f"summarize expects a CocoInstances (or a dataset with .instances), got {type(dataset).__name__}")


def _summarize_one(dataset: Any) -> dict:
    ds = _instances_of(dataset)
    cat_names = ds.categories
    per_cat: Counter = Counter()
    areas = Counter(small=0, medium=0, large=0)
    per_image: list[int] = []
    sizes: Counter = Counter()
    crowd = 0
    for idx in range(len(ds)):
        anns = ds.instance_annotations(idx)
        per_image.append(len(anns))
        crowd += len(ds.crowd_annotations(idx))
        sizes[ds.original_size(idx)] += 1
        for a in anns:
            per_cat[a["category_id"]] += 1
            area = annotation_area(a)
            areas["small" if area < AREA_SMALL else "medium" if area < AREA_MEDIUM else "large"] += 1
    heights = [h for (h, _w) in sizes.elements()]
    widths = [w for (_h, w) in sizes.elements()]
    return {
        "name": ds.name,
        "annotation_file": str(ds.annotation_file),
        "images": len(ds),
        "images_without_instances": sum(1 for n in per_image if n == 0),
        "instances": sum(per_image),
        "crowd_regions": crowd,
        "instances_per_image": {
            "mean": round(statistics.fmean(per_image), 3) if per_image else 0.0,
            "median": statistics.median(per_image) if per_image else 0,
            "max": max(per_image, default=0),
        },
        "categories": {name: per_cat[cid] for cid, name in sorted(cat_names.items())},
        "areas": dict(areas),
        "image_sizes": {
            "height": [min(heights, default=0), max(heights, default=0)],
            "width": [min(widths, default=0), max(widths, default=0)],
            "most_common": [[h, w, n] for (h, w), n in sizes.most_common(5)],
        },
        "skips": ds.skips,
        **_image_files(ds),
    }


def _image_files(ds: CocoInstances) -> dict:
    missing = ds.missing_image_files()
    return {
        "image_files": {
            "found": len(ds) - len(missing),
            "missing": len(missing),
            "first_missing": missing[:5],
            "images_root": " or ".join(repr(str(r)) for r in ds.images_roots),
        }
    }


def summarize(dataset: Any | Mapping[str, Any]) -> dict:
    """Summary of a dataset, or of several splits given as ``{split: dataset}``.

    Returns (per dataset): ``name``, ``annotation_file``, ``images``, ``images_without_instances``,
    ``instances``, ``crowd_regions``, ``instances_per_image`` (mean / median / max),
    ``categories`` ({name: instances}), ``areas`` ({small, medium, large}: instances),
    ``image_sizes`` (height and width [min, max], the 5 most common [H, W, count]) and ``skips``
    ({reason: count}). For a mapping: ``{"splits": {split: summary}, "images": total,
    "instances": total}``.
    """
    if isinstance(dataset, Mapping):
        splits = {k: _summarize_one(v) for k, v in dataset.items()}
        return {
            "splits": splits,
            "images": sum(s["images"] for s in splits.values()),
            "instances": sum(s["instances"] for s in splits.values()),
        }
    return _summarize_one(dataset)


def _format_one(s: dict, indent: str = "") -> list[str]:
    ipi = s["instances_per_image"]
    sz = s["image_sizes"]
    lines = [
        f"{indent}{s['name']}  ({s['annotation_file']})",
        f"{indent}  images: {s['images']} ({s['images_without_instances']} without instances)",
        *_format_files(s["image_files"], indent),
        f"{indent}  instances: {s['instances']} (per image: mean {ipi['mean']}, median {ipi['median']}, "
        f"max {ipi['max']}); crowd regions: {s['crowd_regions']}",
        f"{indent}  object areas: "
        + ", ".join(f"{k} {v}" for k, v in s["areas"].items())
        + f"  (small < {AREA_SMALL} px^2 <= medium < {AREA_MEDIUM} px^2 <= large)",
        f"{indent}  image sizes: H {sz['height'][0]}..{sz['height'][1]}, W {sz['width'][0]}..{sz['width'][1]}; "
        "most common " + ", ".join(f"{h}x{w} ({n})" for h, w, n in sz["most_common"]),
        f"{indent}  categories:",
    ]
    width = max((len(n) for n in s["categories"]), default=0)
    lines += [f"{indent}    {name:<{width}}  {n}" for name, n in s["categories"].items()]
    if s["skips"]:
        lines.append(f"{indent}  skipped / repaired: " + ", ".join(f"{r} {n}" for r, n in s["skips"].items()))
    else:
        lines.append(f"{indent}  skipped / repaired: none")
    return lines


def _format_files(f: dict, indent: str) -> list[str]:
    if not f["missing"]:
        return [f"{indent}  image files: all {f['found']} found"]
    return [
        f"{indent}  image files: {f['missing']} of {f['found'] + f['missing']} MISSING under {f['images_root']}, "
        f"e.g. {', '.join(f['first_missing'])}"
    ]


def format_summary(summary: dict) -> str:
    """Human-readable text of :func:`summarize`'s result."""
    if "splits" in summary:
        lines = [f"{len(summary['splits'])} splits: {summary['images']} images, {summary['instances']} instances"]
        for split, s in summary["splits"].items():
            lines.append(f"[{split}]")
            lines += _format_one(s, "  ")
        return "\n".join(lines)
    return "\n".join(_format_one(summary))


def summarize_preset(name: str, *, splits: tuple[str, ...] | None = None, **kw) -> dict:
    """Summary of every split of a named preset (what ``samadapt data summary`` prints).

    ``summarize_preset("taco", data_root="TACO/data")`` summarises TACO's seeded train and test
    splits (the card's ``summary_splits``); ``kw`` are the card's sources (``data_root``, or
    ``images_root`` + ``annotation_file`` for coco) and the preset's options (``version``, ``seed``,
    ...). The ``coco`` preset is summarised as one dataset.
    """
    from .presets import get_dataset_card

    card = get_dataset_card(name)
    sources = {k: kw.pop(k, None) for k in card.sources}
    if card.held_out_file:  # its files are the split
        if splits:
            raise ConfigError(f"the {name} preset has no splits (its files are the split), got splits={splits!r}")
        return summarize(card.open("train", options=kw, **sources))
    return summarize({split: card.open(split, options=kw, **sources) for split in splits or card.summary_splits})
