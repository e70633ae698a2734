"""Automatic mask generation on an adapted SAM: every object of an image, with no prompt given.

The procedure is upstream ``SamAutomaticMaskGenerator``'s (one crop, the whole image), built from
its own pieces in ``segment_anything.utils.amg`` (point grid, stability score, mask boxes,
``MaskData``) and torchvision's ``batched_nms``: a grid of single-point prompts, three masks per
point, a filter on the predicted IoU, a filter on the stability score (how little the mask changes
when the logit cutoff moves by ``stability_score_offset``), non-maximum suppression of the boxes
ranked by predicted IoU. What differs is how it runs and what it keeps:

- batched: the images' embeddings are computed in batches (:meth:`AdaptedSam.encode`), each image's
  points are decoded ``points_per_batch`` at a time by samadapt's batched decoder, and the
  predicted-IoU filter runs on the low-resolution output, so only the masks that pass it are
  upsampled to the image (upstream upsamples all three masks of every point first; the filter does
  not depend on the mask, so the result is the same);
- the thresholds come from :class:`AutoConfig`, which a calibration on labelled images of the
  model's own domain fills in (:mod:`samadapt.segment.calibration`): SAM's 0.88 / 0.95 are set for
  ViT-H on SA-1B, and a small or fine-tuned model's predicted IoU lives on another scale;
- every mask is scored by its predicted IoU times its stability score (:attr:`Proposals.score`):
  both say how good the mask is, and their product ranks masks where either alone ties;
- the black letterbox bars of a frame (video frames padded to 4:3, :func:`content_region`) are
  not image: no grid point is placed in them and no mask pixel is kept there;
- after the box NMS, masks that are near-duplicates of a better-scored one (mask IoU at least
  ``mask_nms_thresh``: the same object again, or nested in it with most of its area) are dropped;
- at most ``max_masks`` masks per image are kept (COCO scores 100), best first.

With the same thresholds, ``mask_nms_thresh=None`` and ``max_masks=None``, on an image without
letterbox bars, the masks are upstream's ``SamAutomaticMaskGenerator(model.sam,
points_per_side=...).generate(image)`` (tests/segment/test_segment_auto.py), ranked by score.
Crops (``crop_n_layers``) and small-region removal (which needs OpenCV) are not supported.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from segment_anything.utils.amg import (
    MaskData,
    batch_iterator,
    batched_mask_to_box,
    build_point_grid,
    calculate_stability_score,
)

from ..errors import ConfigError

__all__ = [
    "SAM_DEFAULTS",
    "AutoConfig",
    "Proposals",
    "content_region",
    "encode_images",
    "filter_candidates",
    "propose_masks",
    "select_masks",
]


@dataclass(frozen=True)
class AutoConfig:
    """Settings of automatic mask generation (upstream's names and meaning).

    points_per_side: the grid has points_per_side**2 single-point prompts, three masks each.
    points_per_batch: points decoded at once (bounds memory: 3 full-size float masks per point).
    pred_iou_thresh: keep masks whose predicted IoU is above this (0 keeps all).
    stability_score_thresh: keep masks whose stability score is at least this (0 keeps all).
    stability_score_offset: the logit shift of the stability score.
    box_nms_thresh: box IoU above which the lower-ranked of two masks is dropped.
    mask_nms_thresh: mask IoU at or above which the lower-scored of two masks is dropped (None: off).
    max_masks: keep at most this many masks per image, best score first (None: all).
    skip_padding: keep grid points and mask pixels out of the image's letterbox bars (:func:`content_region`).
    source: where the thresholds come from (printed and recorded with the results).
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    mask_nms_thresh: float | None = 0.7
    max_masks: int | None = 100
    skip_padding: bool = True
    source: str = "SAM's fixed defaults"

    def __post_init__(self) -> None:
        for name in ("points_per_side", "points_per_batch"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"`{name}` should be a positive integer, got {v!r}")
        if self.max_masks is not None and (
            isinstance(self.max_masks, bool) or not isinstance(self.max_masks, int) or self.max_masks < 1
        ):
            raise ConfigError(f"`max_masks` should be a positive integer or None, got {self.max_masks!r}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "mask_nms_thresh"):
            v = getattr(self, name)
            if v is None and name == "mask_nms_thresh":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ConfigError(f"`{name}` should be a number in [0, 1], got {v!r}")
        if (
            isinstance(self.stability_score_offset, bool)
            or not isinstance(self.stability_score_offset, (int, float))
            or self.stability_score_offset <= 0
        ):
            raise ConfigError(
                f"`stability_score_offset` should be a positive number, got {self.stability_score_offset!r}"
            )

    def replace(self, **changes) -> "AutoConfig":
        """A copy with ``changes``; fields given as None keep their value, except ``max_masks`` and
        ``mask_nms_thresh`` (None turns them off)."""
        keep = {k: v for k, v in changes.items() if v is not None or k in ("max_masks", "mask_nms_thresh")}
        return dataclasses.replace(self, **keep)


#: upstream SamAutomaticMaskGenerator's defaults (chosen for ViT-H)
SAM_DEFAULTS = AutoConfig()


@dataclass
class Proposals:
    """The masks automatic generation keeps for one image, best first (K masks).

    rles: K COCO compressed RLEs (``counts`` a str) of (H, W) masks.
    boxes: (K, 4) float32 XYXY around each mask (inclusive pixel indices, as upstream).
    predicted_iou, stability_score: (K,) float32.
    points: (K, 2) float32 XY pixel of the point prompt that made each mask.
    """

    rles: list[dict]
    boxes: np.ndarray
    predicted_iou: np.ndarray
    stability_score: np.ndarray
    points: np.ndarray

    @property
    def score(self) -> np.ndarray:
        """(K,) float32: how good each mask is, predicted IoU x stability score (what ranks them)."""
        return mask_score(self.predicted_iou, self.stability_score)

    def __len__(self) -> int:
        return len(self.rles)


def mask_score(predicted_iou, stability_score) -> np.ndarray:
    """The score of automatic masks: predicted IoU x stability score, float32 (an empty mask, whose
    stability is undefined, scores 0)."""
    p = np.asarray(predicted_iou, np.float32)
    s = np.nan_to_num(np.asarray(stability_score, np.float32), nan=0.0)
    return (p * s).astype(np.float32)


#: a letterbox bar: pixels at most this bright (of 255, every channel) ...
PADDING_LEVEL = 8
#: ... fill this share of each of its rows (or columns): overlaid text or a logo may sit in a bar ...
PADDING_SHARE = 0.7
#: ... and it is at least this many pixels thick (a dark first row of a frame is image, not a bar)
PADDING_MIN_PX = 4


def content_region(image: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), end-exclusive: the part of an RGB (H, W, 3) image inside its letterbox bars.

    A bar is a band of rows at the top or bottom (or of columns at the left or right) in which at
    least :data:`PADDING_SHARE` of the pixels are black (every channel <= :data:`PADDING_LEVEL`), at
    least :data:`PADDING_MIN_PX` thick: what a 16:9 video padded to 4:3 shows (TrashCan's 480x360
    frames: 62 rows above, 42 below). Dark scenery is brighter than that (a dark seabed is 10-20).
    An image without bars, or one that is black all over, gives the whole image."""
    img = np.asarray(image)
    h, w = img.shape[:2]
    dark = (img.max(axis=2) if img.ndim == 3 else img) <= PADDING_LEVEL

    def bar(share: np.ndarray) -> int:
        n = int(np.argmin(share >= PADDING_SHARE)) if not np.all(share >= PADDING_SHARE) else share.size
        return n if n >= PADDING_MIN_PX else 0

    rows = dark.mean(axis=1)
    top, bottom = bar(rows), bar(rows[::-1])
    if top + bottom >= h:
        return 0, 0, w, h
    cols = dark[top : h - bottom].mean(axis=0)
    left, right = bar(cols), bar(cols[::-1])
    if left + right >= w:
        return 0, 0, w, h
    return left, top, w - right, h - bottom


def _encode_rles(masks: torch.Tensor) -> list[dict]:
    """(K, H, W) bool -> K compressed RLEs (pycocotools' C encoder, JSON-ready counts)."""
    from pycocotools import mask as mask_utils

    if masks.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.permute(1, 2, 0).cpu().numpy().astype(np.uint8)))
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return rles


@torch.no_grad()
def encode_images(model, images: Sequence[np.ndarray], batch_size: int = 4) -> list[torch.Tensor]:
    """Image embeddings, (C, h, w) each, for RGB uint8 (H, W, 3) images, ``batch_size`` per encoder pass."""
    tf, dtype, out = model.transform, model.dtype, []
    for start in range(0, len(images), batch_size):
        chunk = [model._check_image(im) for im in images[start : start + batch_size]]
        x = torch.stack([tf.preprocess_image(im) for im in chunk]).to(model.device, dtype)
        out.extend(model.encode(x))
    return out


def _candidates(
    model, embedding: torch.Tensor, image_size: tuple[int, int], config: AutoConfig, region: tuple[int, int, int, int]
) -> MaskData:
    """Every non-empty mask of the point grid (laid over ``region``, the image inside its letterbox
    bars, pixels outside it cut away) that passes the predicted-IoU and stability filters (before NMS)."""
    h, w = image_size
    x0, y0, x1, y1 = region
    tf = model.transform
    grid = build_point_grid(config.points_per_side) * np.array([[x1 - x0, y1 - y0]], dtype=np.float64) + [[x0, y0]]
    outside = None
    if region != (0, 0, w, h):
        outside = torch.ones(h, w, dtype=torch.bool, device=model.device)
        outside[y0:y1, x0:x1] = False
    data = MaskData()
    for (points,) in batch_iterator(config.points_per_batch, grid):
        coords = tf.apply_points(torch.as_tensor(points, dtype=torch.float32), (h, w))[:, None, :].to(model.device)
        labels = torch.ones(coords.shape[0], 1, dtype=torch.int64, device=model.device)
        out = model.decode(embedding[None], points=[coords], point_labels=[labels], multimask=True)
        low = out.low_res_logits.flatten(0, 1).float()  # (3n, h4, w4): the masks of a point are consecutive
        ious = out.iou_predictions.flatten(0, 1).float()
        pts = torch.as_tensor(np.repeat(points, 3, axis=0), dtype=torch.float32)
        keep = (
            ious > config.pred_iou_thresh if config.pred_iou_thresh > 0.0 else torch.ones_like(ious, dtype=torch.bool)
        )
        low, ious, pts = low[keep], ious[keep], pts[keep.cpu()]
        if low.shape[0] == 0:
            continue
        logits = tf.postprocess_logits(low, (h, w))
        if outside is not None:  # the bars are no part of any mask
            logits.masked_fill_(outside, torch.finfo(logits.dtype).min)
        stability = calculate_stability_score(logits, model.mask_threshold, config.stability_score_offset)
        keep = (
            stability >= config.stability_score_thresh
            if config.stability_score_thresh > 0.0
            else torch.ones_like(stability, dtype=torch.bool)
        )
        masks = logits[keep] > model.mask_threshold
        del logits
        nonempty = masks.flatten(1).any(1)
        masks = masks[nonempty]
        keep = keep.nonzero().squeeze(1)[nonempty]
        batch = MaskData(
            rles=_encode_rles(masks),
            boxes=batched_mask_to_box(masks).float().cpu(),
            iou_preds=ious[keep].cpu(),
            stability_score=stability[keep].cpu(),
            points=pts[keep.cpu()],
        )
        data.cat(batch)
    return data


def _count(data: MaskData) -> int:
    try:
        return len(data["rles"])
    except KeyError:  # no batch of points had a mask passing the filters
        return 0


def select_masks(
    boxes: torch.Tensor,
    predicted_iou: torch.Tensor,
    stability_score: torch.Tensor,
    rles: Sequence[dict],
    config: AutoConfig,
    mask_ious: np.ndarray | None = None,
) -> np.ndarray:
    """Which of N filtered candidates an image keeps, best first (indices into them): the box NMS
    ranked by predicted IoU (upstream's), then, ranked by :func:`mask_score`, the mask NMS (a mask
    whose mask IoU with a better one kept is at least ``config.mask_nms_thresh`` is dropped), then the
    ``max_masks`` best. ``mask_ious`` (N, N), if given, saves computing the masks' IoUs."""
    from pycocotools import mask as mask_utils
    from torchvision.ops.boxes import batched_nms

    if len(rles) == 0:
        return np.zeros(0, dtype=np.int64)
    keep = batched_nms(
        boxes.float(), predicted_iou.float(), torch.zeros(len(rles)), iou_threshold=config.box_nms_thresh
    ).numpy()
    score = mask_score(predicted_iou.numpy(), stability_score.numpy())
    keep = keep[np.argsort(-score[keep], kind="stable")]
    if config.mask_nms_thresh is not None and keep.size > 1:
        if mask_ious is None:
            kept_rles = [rles[i] for i in keep]
            ious = np.asarray(mask_utils.iou(kept_rles, kept_rles, [0] * len(keep)), np.float64)
        else:
            ious = mask_ious[np.ix_(keep, keep)]
        chosen: list[int] = []
        for a in range(keep.size):
            if not chosen or ious[a, chosen].max() < config.mask_nms_thresh:
                chosen.append(a)
        keep = keep[chosen]
    return keep[: config.max_masks] if config.max_masks is not None else keep


def _empty() -> Proposals:
    z = np.zeros
    return Proposals([], z((0, 4), np.float32), z(0, np.float32), z(0, np.float32), z((0, 2), np.float32))


def _select(data: MaskData, config: AutoConfig) -> Proposals:
    """:func:`select_masks` on an image's candidates, as :class:`Proposals`."""
    if _count(data) == 0:
        return _empty()
    keep = select_masks(data["boxes"], data["iou_preds"], data["stability_score"], data["rles"], config)
    data.filter(torch.as_tensor(keep, dtype=torch.long))
    return Proposals(
        list(data["rles"]),
        data["boxes"].numpy().astype(np.float32),
        data["iou_preds"].numpy().astype(np.float32),
        data["stability_score"].numpy().astype(np.float32),
        data["points"].numpy().astype(np.float32),
    )


def filter_candidates(data: MaskData, config: AutoConfig) -> Proposals:
    """The proposals ``config`` keeps from candidates made with no filter (``propose_masks(...,
    keep_all=True)`` with thresholds 0): its predicted-IoU and stability filters, then NMS. Equal to
    ``propose_masks`` with ``config`` when the grids agree; lets one decoding pass serve several
    thresholds (calibration, comparisons). ``data`` is not changed."""
    if _count(data) == 0:
        return _empty()
    keep = torch.ones(len(data["rles"]), dtype=torch.bool)
    if config.pred_iou_thresh > 0.0:
        keep &= data["iou_preds"] > config.pred_iou_thresh
    if config.stability_score_thresh > 0.0:
        keep &= data["stability_score"] >= config.stability_score_thresh
    copy = MaskData(**{k: v for k, v in data.items()})
    copy.filter(keep)
    return _select(copy, config)


@torch.no_grad()
def propose_masks(
    model,
    embedding: torch.Tensor,
    image_size: tuple[int, int],
    config: AutoConfig = SAM_DEFAULTS,
    *,
    region: tuple[int, int, int, int] | None = None,
    keep_all: bool = False,
) -> Proposals | MaskData:
    """Automatic masks of one image.

    Args:
        model: an :class:`~samadapt.adapted.AdaptedSam` (eval mode).
        embedding: (C, h, w), the image's embedding (:func:`encode_images`).
        image_size: (H, W) of the image.
        config: thresholds and grid.
        region: (x0, y0, x1, y1) the image inside its letterbox bars (:func:`content_region` of the
            image); None, or ``config.skip_padding`` False: the whole image.
        keep_all: return the candidates before NMS as ``MaskData`` (``rles``, ``boxes``,
            ``iou_preds``, ``stability_score``, ``points``): what the calibration measures.

    Returns:
        :class:`Proposals`, best first.
    """
    h, w = (int(s) for s in image_size)
    if region is None or not config.skip_padding:
        region = (0, 0, w, h)
    data = _candidates(model, embedding, (h, w), config, tuple(int(v) for v in region))
    return data if keep_all else _select(data, config)
