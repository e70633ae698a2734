"""Helpers of the SAM 2.1 tests (tests/test_sam2_*.py): official-format files of randomly
initialised architectures, upstream's predictor on them, mask comparison."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from samadapt.models.sam2_family import INSTALL_HINT

SKIP_REASON = f"SAM 2.1 tests need Meta's sam2 package; install it with: {INSTALL_HINT}"


def require_sam2_or_skip() -> None:
    pytest.importorskip("sam2.build_sam", reason=SKIP_REASON)


def random_sam2_checkpoint(path: Path, model_type: str, seed: int = 0) -> Path:
    """An official-format file (``{"model": state_dict}``) of ``model_type`` with upstream's random
    initialisation, and every parameter upstream starts at zero (Hiera's position embeddings,
    ...) drawn at random too, so that comparisons see non-trivial numbers."""
    from samadapt.models.sam2_family.build import build_sam2_architecture
    from samadapt.models.sam2_family.cards import get_sam2_card

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_sam2_architecture(get_sam2_card(model_type))
        with torch.no_grad():
            for p in model.parameters():
                if not p.any():
                    p.normal_(0.0, 0.02)
    torch.save({"model": model.state_dict()}, path)
    return path


def upstream_predictor(model_type: str, checkpoint: Path):
    """``SAM2ImagePredictor(build_sam2(cfg, ckpt))`` with upstream's defaults. The predictor
    hard-codes the feature sizes of a 1024 px input; for the 256 px test variant they are set to
    that model's sizes (the only change to the reference)."""
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from samadapt.models.sam2_family import get_sam2_card

    card = get_sam2_card(model_type)
    model = build_sam2(card.config, str(checkpoint), device="cpu", hydra_overrides_extra=list(card.overrides))
    with warnings.catch_warnings():  # upstream's transforms call the deprecated torch.jit.script
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        predictor = SAM2ImagePredictor(model)
    if card.image_size != 1024:
        predictor._bb_feat_sizes = list(card.feature_sizes)
    return predictor


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def assert_masks_equal(ours: np.ndarray, ref: np.ndarray, min_iou: float) -> None:
    """Same shape, each mask's IoU >= ``min_iou``, and the masks are not all empty or all full (a
    comparison of trivial masks could not fail)."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    flat_o = ours.reshape(-1, *ours.shape[-2:])
    flat_r = np.asarray(ref, bool).reshape(-1, *ref.shape[-2:])
    ious = [iou(o, r) for o, r in zip(flat_o, flat_r)]
    assert min(ious) >= min_iou, ious
    cover = flat_r.mean(axis=(1, 2))
    assert ((cover > 0.001) & (cover < 0.999)).any(), f"trivial masks (coverage {cover})"


def test_image(h: int = 300, w: int = 420, seed: int = 0) -> np.ndarray:
    """A non-square RGB uint8 image of smooth blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.float32)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(20, 120)
        img += rng.uniform(0, 255, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


test_image.__test__ = False  # a helper, not a test
