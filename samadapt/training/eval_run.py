"""Evaluate zero-shot SAM and fine-tuned adapters on one dataset, with the same prompts.

What ``recipes/evaluate.py`` and ``samadapt eval`` run::

    parser = argparse.ArgumentParser()
    add_eval_arguments(parser)
    run_eval(parser.parse_args([...]))        # prints the table, writes metrics.json/.md, examples.png

or, from Python, :func:`load_eval_dataset` + :func:`zero_shot_model` / :func:`samadapt.load` +
:func:`compare_models` + :func:`~samadapt.training.evaluate.write_report`.

Every model sees exactly the same prompts: they are drawn from a generator seeded by (seed, image id)
(:mod:`samadapt.training.evaluate`), so the numbers of a model are the ones the trainer reports for
it when the seed, prompt kind and images are the same.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ..adapted import AdaptedSam, adapt
from ..errors import CheckpointError, CheckpointNotFoundError, ConfigError, DataError
from .evaluate import EVAL_PROMPTS, EvalResult, evaluate, write_report

__all__ = ["ZERO_SHOT_LABEL", "add_eval_arguments", "compare_models", "format_table", "load_eval_dataset", "run_eval",
           "zero_shot_model"]

ZERO_SHOT_LABEL = "zero-shot"


# ---------------------------------------------------------------------------- pieces
def load_eval_dataset(
    dataset: str,
    *,
    data_root: str | os.PathLike | None = None,
    split: str = "test",
    images_root: str | os.PathLike | None = None,
    annotation_file: str | os.PathLike | None = None,
    dataset_options: Mapping[str, Any] | None = None,
    demo_train_images: int | None = None,
    demo_val_images: int | None = None,
    progress: bool = True,
):
    """The images to evaluate on, as a :class:`~samadapt.data.coco.CocoInstances`.

    Args:
        dataset: ``taco``, ``zerowaste``, ``trashcan``, ``demo`` (presets, read from ``data_root``)
            or ``coco`` (any COCO file: ``images_root`` + ``annotation_file``).
        split: of a preset; ``"test"`` is the held-out split of each (TACO's seeded 80/20 test,
            ZeroWaste-f's test, TrashCan's and demo's val).
        dataset_options: passed to the preset (e.g. ``{"version": "material"}`` for trashcan).
        demo_train_images, demo_val_images: ``demo`` only. When both are None and ``data_root``
            (default ``SAMADAPT_HOME/data/demo-waste``, where training writes it) already holds a
            demo dataset, it is used as it is; otherwise it is generated with these counts
            (defaults: the training defaults), exactly as training generates it.
    """
    from ..config import TrainConfig
    from ..data import presets

    options = dict(dataset_options or {})
    card = presets.get_dataset_card(dataset)
    if dataset == "coco":
        return card.open("val", options=options, images_root=images_root, annotation_file=annotation_file)
    if dataset == "demo":
        from ..data import make_demo_dataset
        from ..hub import samadapt_home

        root = Path(data_root) if data_root else samadapt_home() / "data" / "demo-waste"
        if demo_train_images is not None or demo_val_images is not None or not (root / "dataset.json").is_file():
            make_demo_dataset(root, domain="waste",
                              n_train=TrainConfig.demo_train_images if demo_train_images is None else demo_train_images,
                              n_val=TrainConfig.demo_val_images if demo_val_images is None else demo_val_images,
                              seed=0, progress=progress)
        return card.open(split, options=options, data_root=root)
    return card.open(split, options=options, data_root=data_root)


def zero_shot_model(model_type: str, checkpoint: str | os.PathLike | None = None, *, base_id: str | None = None,
                    device: str | torch.device = "cpu") -> AdaptedSam:
    """The un-tuned SAM, wrapped as an :class:`AdaptedSam` (the ``decoder`` strategy only marks the
    decoder trainable, so the weights are exactly the base's).

    The base: ``checkpoint`` if given; else the base an adapter was trained on (``base_id`` from its
    metadata); else samadapt's built-in weights (``mini``) or the official checkpoint in
    ``SAMADAPT_HOME/checkpoints``. Never random weights.
    """
    from ..hub import checkpoints_dir, find_base_checkpoint
    from ..models.checkpoints import official_checkpoint
    from ..models.registry import build_sam, get_model_card

    card = get_model_card(model_type)
    if checkpoint is not None:
        sam = build_sam(model_type, checkpoint)
    elif base_id is not None and base_id.startswith("random:"):
        raise CheckpointError(f"the adapters were trained on randomly initialised {model_type} weights, which cannot "
                              "be rebuilt; pass --checkpoint with the file they were trained from")
    elif base_id is not None and not base_id.startswith("builtin:"):
        sam = build_sam(model_type, find_base_checkpoint(model_type, base_id))
    elif card.builtin_weights is not None:
        sam = build_sam(model_type)  # raises when the built-in weights are not installed
    else:
        official = official_checkpoint(model_type)
        path = checkpoints_dir() / official.filename if official is not None else None
        if path is None or not path.is_file():
            where = f"{path}" if path is not None else "SAMADAPT_HOME/checkpoints"
            raise CheckpointNotFoundError(
                f"zero-shot {model_type} needs its weights: pass --checkpoint, or run `samadapt download-checkpoint "
                f"{model_type}` (expected at {where})")
        sam = build_sam(model_type, path)
    return adapt(sam, "decoder").to(device).eval()


def compare_models(
    models: Mapping[str, AdaptedSam],
    dataset,
    *,
    prompt: str = "box",
    loose_margin: float = 0.1,
    num_points: int = 1,
    num_negative_points: int = 0,
    seed: int = 0,
    max_images: int | None = None,
    batch_size: int = 4,
    num_examples: int = 6,
    progress: bool = True,
) -> dict[str, EvalResult]:
    """Evaluate each model on the same images with the same prompts.

    Args:
        models: label -> model (e.g. ``{"zero-shot": ..., "taco-vith": ...}``).
        dataset: a :class:`~samadapt.data.coco.CocoInstances` (or anything
            :func:`~samadapt.training.evaluate.evaluate` takes).
        Other arguments: as in :func:`~samadapt.training.evaluate.evaluate`; ``num_examples`` images
        are kept per model for the examples figure.

    Returns:
        label -> :class:`~samadapt.training.evaluate.EvalResult`, in the order of ``models``.
    """
    if not models:
        raise ConfigError("compare_models needs at least one model")
    return {
        label: evaluate(model, dataset, prompt=prompt, loose_margin=loose_margin, num_points=num_points,
                        num_negative_points=num_negative_points, seed=seed, max_images=max_images,
                        batch_size=batch_size, progress=progress, return_examples=num_examples,
                        desc=f"evaluating {label}")
        for label, model in models.items()
    }


def format_table(results: Mapping[str, EvalResult | Mapping[str, Any]]) -> str:
    """A plain-text table: one row per model, metrics in %."""
    rows = [("model", "mean IoU", "precision", "mean F1", "mask AP", "instances")]
    for label, r in results.items():
        m = r.metrics if isinstance(r, EvalResult) else r
        ap = (m.get("coco") or {}).get("AP", float("nan"))
        rows.append((label, f"{100 * m['mean_iou']:.2f}", f"{100 * m['mean_precision']:.2f}",
                     f"{100 * m['mean_f1']:.2f}", f"{100 * ap:.2f}", str(m["num_instances"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------------------- command line
def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``recipes/evaluate.py`` and ``samadapt eval``."""
    data = parser.add_argument_group("data")
    from ..data.presets import DATASET_CARDS

    data.add_argument("--dataset", default="demo", choices=sorted(DATASET_CARDS),
                      help="dataset preset, or coco for any COCO file (default: demo)")
    data.add_argument("--data-root", help="folder holding the dataset (demo: default SAMADAPT_HOME/data/demo-waste)")
    data.add_argument("--split", default="test",
                      help="split of the preset (default test: TACO's seeded test, ZeroWaste-f's test, "
                           "TrashCan's and demo's val)")
    data.add_argument("--images-root", help="dataset coco: the images folder")
    data.add_argument("--annotation-file", help="dataset coco: the COCO annotation file")
    data.add_argument("--dataset-options", type=json.loads, default=None, metavar="JSON",
                      help='options of the preset, e.g. \'{"version": "material"}\' for trashcan')
    data.add_argument("--demo-train-images", type=int, default=None,
                      help="demo: regenerate the demo data with this many training images (as training did)")
    data.add_argument("--demo-val-images", type=int, default=None,
                      help="demo: regenerate the demo data with this many validation images (as training did)")
    data.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")

    models = parser.add_argument_group("models")
    models.add_argument("--adapter", action="append", default=[], metavar="NAME_OR_PATH",
                        help="a named adapter (demo-mini, taco-vith-lora) or an adapter file; repeat for several")
    models.add_argument("--model", default=None,
                        help="model type of the zero-shot baseline (default: the first adapter's, else mini)")
    models.add_argument("--checkpoint", default=None,
                        help="base SAM checkpoint, for the zero-shot baseline and the adapters (default: the "
                             "adapters' recorded base, the built-in mini weights, or the official file in "
                             "SAMADAPT_HOME/checkpoints)")
    models.add_argument("--zero-shot", action=argparse.BooleanOptionalAction, default=True,
                        help="also evaluate the un-tuned base (default: yes)")
    models.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")

    prompts = parser.add_argument_group("prompts")
    prompts.add_argument("--prompt", default="box", choices=EVAL_PROMPTS + ("clicks",),
                         help="box: exact ground-truth boxes (the paper's protocol); jitter: SAM's box noise; "
                              "loose: boxes grown by --loose-margin; points: clicks inside the object; extreme: the "
                              "four extreme clicks and the box they span; clicks: the interactive protocol, "
                              "--max-clicks corrective clicks per instance (mIoU per click, NoC@85/90)")
    prompts.add_argument("--loose-margin", type=float, default=0.1,
                         help="prompt loose: margin, fraction of the box side")
    prompts.add_argument("--num-points", type=int, default=1, help="prompt points: positive clicks per instance")
    prompts.add_argument("--num-negative-points", type=int, default=0,
                         help="prompt points: negative clicks per instance")
    prompts.add_argument("--seed", type=int, default=0,
                         help="seed of the prompts (the trainer evaluates with its --seed)")
    prompts.add_argument("--max-clicks", type=int, default=20,
                         help="prompt clicks: clicks per instance, the cap of NoC (RITM and SAM: 20)")
    prompts.add_argument("--mask-prompt", action=argparse.BooleanOptionalAction, default=True,
                         help="prompt clicks: give the previous low-res logits as the mask prompt (default: yes)")

    out = parser.add_argument_group("output")
    out.add_argument("--out", default=None, help="folder for metrics.json, metrics.md, examples.png "
                                                  "(default: outputs/eval-<dataset>)")
    out.add_argument("--num-examples", type=int, default=6, help="images in examples.png")
    out.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    out.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")


def _label(name_or_path: str, taken: set[str]) -> str:
    """A short, unique label: the adapter's name, or its file (folder) name."""
    p = Path(name_or_path)
    if p.is_dir() or (p.is_file() and p.name == "adapter.safetensors"):
        label = (p if p.is_dir() else p.parent).name
    elif p.is_file():
        label = p.stem
    else:
        label = str(name_or_path)
    base, k = label, 2
    while label in taken:
        label, k = f"{base} ({k})", k + 1
    taken.add(label)
    return label


def run_eval(args: argparse.Namespace) -> int:
    """Build the dataset and the models, evaluate, write the report and print the table.

    Raises :class:`samadapt.SamAdaptError` on bad input (the caller prints it).
    """
    from ..adapter_io import read_adapter_metadata
    from ..hub import load, resolve_adapter

    if not args.adapter and not args.zero_shot:
        raise ConfigError("nothing to evaluate: give --adapter NAME (one or more) or drop --no-zero-shot")
    for name, low in (("max_images", 0), ("num_examples", 0), ("batch_size", 1), ("max_clicks", 1)):
        v = getattr(args, name)
        if v is not None and v < low:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= {low}, got {v}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    # check every adapter name before the (slow) dataset and models
    paths = [resolve_adapter(a) for a in args.adapter]
    metas = [read_adapter_metadata(p) for p in paths]
    dataset = load_eval_dataset(args.dataset, data_root=args.data_root, split=args.split, images_root=args.images_root,
                                annotation_file=args.annotation_file, dataset_options=args.dataset_options,
                                demo_train_images=args.demo_train_images, demo_val_images=args.demo_val_images,
                                progress=args.progress)
    dataset.verify_images()  # seconds, before the models: names the missing files
    if dataset.num_instances == 0:
        raise DataError(f"{dataset.name}: {len(dataset)} images but no instance to evaluate (skips: "
                        f"{dataset.skips or 'none'}); check --split and the annotation file")

    models: dict[str, AdaptedSam] = {}
    taken: set[str] = {ZERO_SHOT_LABEL}
    if args.zero_shot:
        model_type = args.model or (metas[0]["model_type"] if metas else "mini")
        same_base = bool(metas) and metas[0]["model_type"] == model_type
        models[ZERO_SHOT_LABEL] = zero_shot_model(model_type, args.checkpoint,
                                                  base_id=metas[0]["base_id"] if same_base else None, device=device)
    for name, path in zip(args.adapter, paths):
        models[_label(name, taken)] = load(path, checkpoint=args.checkpoint, device=device)

    if args.prompt == "clicks":  # samadapt.training.clicks: deterministic, no seed
        from .clicks import evaluate_clicks, format_click_table

        indices = None if args.max_images is None else range(min(len(dataset), args.max_images))
        results = {label: evaluate_clicks(model, dataset, indices, max_clicks=args.max_clicks,
                                          mask_prompt=args.mask_prompt, progress=args.progress,
                                          desc=f"clicks: {label}").metrics()
                   for label, model in models.items()}
        table = format_click_table(results)
    else:
        results = compare_models(models, dataset, prompt=args.prompt, loose_margin=args.loose_margin,
                                 num_points=args.num_points, num_negative_points=args.num_negative_points,
                                 seed=args.seed, max_images=args.max_images, batch_size=args.batch_size,
                                 num_examples=args.num_examples, progress=args.progress)
        table = format_table(results)
    out = Path(args.out) if args.out else Path("outputs") / f"eval-{args.dataset}"
    dataset_name = getattr(dataset, "name", args.dataset)
    paths_written = write_report(results, out, dataset_name=dataset_name, max_examples=max(1, args.num_examples))
    first = next(iter(results.values()))
    n_images = (first.metrics if isinstance(first, EvalResult) else first)["num_images"]
    print(f"{dataset_name}: {n_images} images, prompts: {args.prompt} (seed {args.seed})")
    print(table)
    print(f"wrote {', '.join(str(p) for p in paths_written.values())}")
    return 0
