"""Prompt-free segmentation of images: from a detector's boxes, from points, or automatically.

:func:`segment` takes one image; :func:`segment_images` takes many (what ``samadapt segment`` runs):
images are encoded ``batch_size`` at a time, then each is decoded from its boxes or its point grid.
Every mask comes back as a record::

    {"segmentation": RLE, "bbox": [x, y, w, h], "area", "score", "category_id", "category_name",
     "predicted_iou", "class_probability", ...}

Scores. From boxes, ``score`` is the detector's score (the SAM paper's Table 5 protocol keeps it);
from points it is the mask's predicted IoU; from the automatic grid, the predicted IoU times the
stability score (:attr:`~samadapt.segment.automatic.Proposals.score`). A mask the class head labels
gets ``score`` x the probability of its class, so a confident mask of an unsure class ranks below a
confident mask of a sure one. A box that comes with a ``category_id`` keeps it; a mask without a
class has ``category_id`` None (written to COCO results as ``AGNOSTIC_CATEGORY``, -1).

Automatic thresholds come from :func:`resolve_auto_config`: the model's calibration, the one shipped
with the built-in weights, SAM's own for official checkpoints, or an error that says what to pass.
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..models.parts.class_head import MaskTokenCapture, classify_boxes, require_class_head
from ..transforms import check_boxes, check_points
from .automatic import SAM_DEFAULTS, AutoConfig, content_region, encode_images, propose_masks

__all__ = [
    "model_calibration",
    "no_thresholds_message",
    "proposal_records",
    "resolve_auto_config",
    "segment",
    "segment_embedded",
    "segment_images",
]


def model_calibration(model, calibration=None):
    """The :class:`~samadapt.segment.calibration.Calibration` automatic masks of ``model`` use:
    ``calibration`` if given; else the model's own (``model.auto_calibration``: an adapter's, stored
    at the end of training or by ``--save-calibration``); else, for a base model run as it is (not
    an adapter), the one shipped with its built-in weights (``mini``); else None. A model adapted and
    trained in a loop of your own is not told apart from its base: calibrate it and set
    ``model.auto_calibration``."""
    from ..models.parts.calibration import builtin_calibration

    if calibration is not None:
        return calibration
    if getattr(model, "auto_calibration", None) is not None:
        return model.auto_calibration
    return builtin_calibration(model.base) if getattr(model, "adapter_info", None) is None else None


def _official_weights(model) -> bool:
    from ..models.checkpoints import official_checkpoint

    official = official_checkpoint(model.model_type)
    return official is not None and model.base.base_id == f"sha256:{official.sha256}"


def no_thresholds_message(model) -> str:
    """Why ``model`` has no automatic-mask thresholds, and what to pass."""
    if getattr(model, "adapter_info", None) is not None:
        why = (
            "this adapter carries no calibration (it was trained before samadapt calibrated at the end of "
            "training, or with --auto-calibration-images 0)"
        )
        save = " --save-calibration"
    else:
        why = (
            f"the {model.model_type} weights ({model.base.checkpoint or model.base.base_id}) are neither "
            "samadapt's built-in weights, which ship a calibration, nor an official SAM checkpoint, for which "
            "SAM's own thresholds (0.88 / 0.95) were chosen"
        )
        save = ""
    return (
        f"automatic masks need thresholds for this model: {why}. Calibrate them on a few labelled images of "
        f"your domain (samadapt segment --auto --calibrate-annotation-file ANN.json --calibrate-images DIR{save}; "
        "in Python samadapt.segment.calibrate), or give both thresholds (--pred-iou-thresh and "
        "--stability-thresh; an AutoConfig in Python)"
    )


def resolve_auto_config(model, auto: AutoConfig | None = None, calibration=None) -> AutoConfig:
    """The automatic-mask settings to use: ``auto`` if given; else those of the model's calibration
    (:func:`model_calibration`); else, for an official SAM checkpoint run as it is, SAM's own
    thresholds, which were chosen for those weights; else a :class:`ConfigError` that says what to
    pass (:func:`no_thresholds_message`): a small or fine-tuned model predicts IoU on its own scale,
    and SAM's thresholds keep no mask of it (docs/segment.md)."""
    if auto is not None:
        return auto
    cal = model_calibration(model, calibration)
    if cal is not None:
        return cal.auto_config(SAM_DEFAULTS)
    if getattr(model, "adapter_info", None) is None and _official_weights(model):
        return SAM_DEFAULTS.replace(source="SAM's own thresholds (official weights)")
    raise ConfigError(no_thresholds_message(model))


def _records(
    rles: Sequence[dict],
    scores: np.ndarray,
    predicted_iou: np.ndarray,
    categories: Sequence[int | None],
    probs: np.ndarray | None,
    head,
    extra: dict[str, np.ndarray] | None = None,
) -> list[dict]:
    """Records of K masks; ``probs`` (K, K_classes) labels those whose category is None."""
    from pycocotools import mask as mask_utils

    boxes = mask_utils.toBbox(list(rles)) if len(rles) else np.zeros((0, 4))
    areas = mask_utils.area(list(rles)) if len(rles) else np.zeros(0)
    out = []
    for k, rle in enumerate(rles):
        cat, p, score = categories[k], None, float(scores[k])
        if cat is None and probs is not None:
            j = int(probs[k].argmax())
            cat, p = head.category_ids[j], float(probs[k, j])
            score *= p
        rec = {
            "segmentation": rle,
            "bbox": [float(v) for v in boxes[k]],
            "area": int(areas[k]),
            "score": score,
            "category_id": None if cat is None else int(cat),
            "category_name": head.categories.get(cat) if head is not None and cat is not None else None,
            "predicted_iou": float(predicted_iou[k]),
            "class_probability": p,
        }
        for key, values in (extra or {}).items():
            rec[key] = values[k].tolist()
        out.append(rec)
    return out


def _from_prompts(
    model, embedding: torch.Tensor, image_size: tuple[int, int], *, boxes, points, point_labels, want_tokens: bool
):
    """Masks (K, H, W) bool, predicted IoU (K,), mask tokens (K, C) or None, from box or point prompts."""
    tf = model.transform
    dev = model.device
    b = tf.apply_boxes(check_boxes(boxes, image_size), image_size).to(dev) if boxes is not None else None
    p = lab = None
    multimask = False
    if points is not None:
        p = torch.as_tensor(np.asarray(points), dtype=torch.float32)
        lab = torch.as_tensor(np.asarray(point_labels), dtype=torch.int64)
        if p.ndim == 2:
            p, lab = p[None], lab.reshape(1, -1)
        if p.ndim != 3 or p.shape[-1] != 2 or lab.shape != p.shape[:2]:
            raise ConfigError(
                f"points must be (N, P, 2) with point_labels (N, P); got {tuple(p.shape)} and {tuple(lab.shape)}"
            )
        check_points(p.numpy(), lab.numpy(), image_size)
        p, lab = tf.apply_points(p, image_size).to(dev), lab.to(dev)
        multimask = boxes is None and p.shape[1] == 1  # one click is ambiguous: SAM's best of three
    capture = MaskTokenCapture(model.sam) if want_tokens else contextlib.nullcontext()
    with capture as cap:
        out = model.decode(
            embedding[None],
            boxes=None if b is None else [b],
            points=None if p is None else [p],
            point_labels=None if lab is None else [lab],
            multimask=multimask,
        )
    rows = torch.arange(out.iou_predictions.shape[0], device=out.iou_predictions.device)
    best = out.iou_predictions.argmax(1)
    low, iou = out.low_res_logits[rows, best].float(), out.iou_predictions[rows, best].float()
    masks = tf.postprocess_masks(low, image_size, model.mask_threshold)
    return masks, iou.cpu().numpy(), (cap.features(require_class_head(model)) if want_tokens else None)


@torch.no_grad()
def segment_embedded(
    model,
    embedding: torch.Tensor,
    image_size: tuple[int, int],
    *,
    boxes=None,
    scores=None,
    category_ids: Sequence[int | None] | None = None,
    points=None,
    point_labels=None,
    auto: AutoConfig | None = None,
    calibration=None,
    classify: bool = False,
    region: tuple[int, int, int, int] | None = None,
) -> list[dict]:
    """:func:`segment` for an image whose embedding (C, h, w) is computed already; ``region``: the
    image inside its letterbox bars (:func:`~samadapt.segment.automatic.content_region`), where
    automatic masks are made."""
    from ..evaluation.metrics import encode_mask

    head = require_class_head(model) if classify else None
    image_size = (int(image_size[0]), int(image_size[1]))
    if boxes is not None or points is not None:
        n = _num_prompts(boxes, points)
        if n == 0:
            return []
        cats = list(category_ids) if category_ids is not None else [None] * n
        if len(cats) != n:
            raise ConfigError(f"got {len(cats)} category_ids for {n} prompts")
        want = head is not None and any(c is None for c in cats)
        masks, iou, tokens = _from_prompts(
            model,
            embedding,
            image_size,
            boxes=boxes,
            points=points,
            point_labels=point_labels,
            want_tokens=want and boxes is not None,
        )
        rles = [encode_mask(m) for m in masks]
        if boxes is not None:
            prompt_scores = np.ones(n, np.float32) if scores is None else np.asarray(scores, np.float32).reshape(-1)
        else:
            prompt_scores = np.asarray(iou, np.float32)
        probs = None
        if want and tokens is not None:
            probs = head(tokens).float().softmax(-1).cpu().numpy()
        elif want:  # masks from points: the head reads the box prompt of each mask
            probs = _classify_masks(model, embedding, image_size, masks)
        extra = {"box": np.asarray(boxes, np.float32)} if boxes is not None else None
        return _records(rles, prompt_scores, iou, cats, probs, head, extra)
    cfg = resolve_auto_config(model, auto, calibration)
    return proposal_records(
        model,
        embedding,
        image_size,
        propose_masks(model, embedding, image_size, cfg, region=region),
        classify=classify,
    )


def proposal_records(
    model, embedding: torch.Tensor, image_size: tuple[int, int], props, *, classify: bool = False
) -> list[dict]:
    """Records of automatic proposals (:class:`~samadapt.segment.automatic.Proposals`), best first:
    scored by predicted IoU x stability, labelled through their boxes with ``classify``."""
    head = require_class_head(model) if classify else None
    quality = props.score
    probs = None
    if head is not None and len(props):
        box_in = model.transform.apply_boxes(props.boxes, image_size).to(model.device)
        probs = classify_boxes(model, embedding[None], [box_in])[0].numpy()
    recs = _records(
        props.rles,
        quality,
        props.predicted_iou,
        [None] * len(props),
        probs,
        head,
        {"stability_score": props.stability_score, "point_coords": props.points},
    )
    recs.sort(key=lambda r: -r["score"])
    return recs


def _num_prompts(boxes, points) -> int:
    if boxes is not None:
        return int(np.asarray(boxes).reshape(-1, 4).shape[0])
    pts = np.asarray(points)
    return 1 if pts.ndim == 2 else int(pts.shape[0])


def _classify_masks(model, embedding: torch.Tensor, image_size: tuple[int, int], masks: torch.Tensor) -> np.ndarray:
    from ..data.prompts import boxes_from_masks

    boxes = boxes_from_masks(masks.cpu().numpy())
    box_in = model.transform.apply_boxes(boxes, image_size).to(model.device)
    return classify_boxes(model, embedding[None], [box_in])[0].numpy()


def segment(
    model,
    image: np.ndarray,
    *,
    boxes=None,
    scores=None,
    category_ids=None,
    points=None,
    point_labels=None,
    auto: AutoConfig | None = None,
    calibration=None,
    classify: bool = False,
) -> list[dict]:
    """Segment one RGB uint8 image (H, W, 3).

    Args:
        model: an :class:`~samadapt.adapted.AdaptedSam` (eval mode).
        boxes: (N, 4) XYXY pixels: one mask per box; ``scores`` (N,) the detector's (default 1),
            ``category_ids`` N ints or None (None: unlabelled, the class head labels it with ``classify``).
        points: (N, P, 2) XY pixels with ``point_labels`` (N, P) (1 foreground, 0 background): one mask
            per prompt (one click: the best of SAM's three by predicted IoU).
        auto: neither boxes nor points: automatic masks with these settings (default:
            :func:`resolve_auto_config`); none are made in the image's letterbox bars.
        calibration: a :class:`~samadapt.segment.calibration.Calibration` to use instead of the model's.
        classify: label the masks that have no category with the class head (an error without one).

    Returns:
        one record per mask (module docstring); automatic masks best first.
    """
    if classify:
        require_class_head(model)
    embedding = encode_images(model, [image], 1)[0]
    return segment_embedded(
        model,
        embedding,
        image.shape[:2],
        region=content_region(image),
        boxes=boxes,
        scores=scores,
        category_ids=category_ids,
        points=points,
        point_labels=point_labels,
        auto=auto,
        calibration=calibration,
        classify=classify,
    )


def segment_images(
    model,
    images,
    *,
    detections=None,
    auto: AutoConfig | None = None,
    calibration=None,
    classify: bool = False,
    batch_size: int = 4,
    progress: bool = True,
) -> tuple[list[dict], dict[str, Any]]:
    """Segment every image of an :class:`~samadapt.segment.detections.ImageSet`.

    Args:
        detections: a :class:`~samadapt.segment.detections.DetectionSet` (images without detections get
            no mask and are not encoded), or None for automatic masks.

    Returns:
        (COCO result entries, report): the report counts images segmented, detections used, boxes
        clipped and boxes outside their image (dropped), masks written, automatic images that got no
        mask, and the settings used.
    """
    from tqdm.auto import tqdm

    from ..data.images import read_image
    from .detections import clip_boxes
    from .results import coco_results

    if classify:
        require_class_head(model)
    cfg = resolve_auto_config(model, auto, calibration) if detections is None else None
    todo = (
        list(images.images) if detections is None else [im for im in images.images if im.image_id in detections.boxes]
    )
    with_name = images.instances is None
    results: list[dict] = []
    clipped = outside = empty = 0
    bar = tqdm(total=len(todo), desc="segmenting", unit="img", disable=not progress)
    for start in range(0, len(todo), batch_size):
        refs = todo[start : start + batch_size]
        arrays = [read_image(r.path) for r in refs]
        for ref, array, emb in zip(refs, arrays, encode_images(model, arrays, batch_size)):
            hw = array.shape[:2]
            if detections is None:
                segs = segment_embedded(model, emb, hw, auto=cfg, classify=classify, region=content_region(array))
                empty += not segs
            else:
                boxes, keep, changed = clip_boxes(detections.boxes[ref.image_id], hw)
                clipped += changed
                outside += int((~keep).sum())
                cats = [c for c, k in zip(detections.category_ids[ref.image_id], keep) if k]
                segs = segment_embedded(
                    model,
                    emb,
                    hw,
                    boxes=boxes[keep],
                    scores=detections.scores[ref.image_id][keep],
                    category_ids=cats,
                    classify=classify,
                )
            results.extend(coco_results(ref.image_id, segs, file_name=ref.file_name if with_name else None))
        bar.update(len(refs))
    bar.close()
    report: dict[str, Any] = {
        "images": len(images),
        "images_segmented": len(todo),
        "masks": len(results),
        "missing_image_files": len(images.missing),
        "missing_image_files_listed": images.missing[:10],
    }
    if detections is not None:
        report.update(detections.report(), boxes_clipped=clipped, boxes_outside_image=outside)
    else:
        report.update(images_without_masks=empty, auto=dict(vars(cfg)))
    return results, report
