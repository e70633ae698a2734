"""What the end of a training run adds to an adapter for prompt-free use (docs/segment.md):

- the automatic-mask calibration (:func:`~samadapt.segment.calibration.calibrate` on the first
  ``auto_calibration_images`` validation images), so that ``samadapt segment --auto`` with the new
  adapter finds masks with no more input;
- with a class head, its held-out accuracy against always answering the most frequent validation
  category (:func:`~samadapt.segment.head_check.validate_class_head`), so that ``samadapt segment
  --classify`` can say when its labels are no better than that.

Both are stored on the model (``auto_calibration``, the head's ``validation``), which the adapter file
records in its ``segment`` metadata, and returned for the run's metrics and card.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["finish_adapter"]


def finish_adapter(
    model,
    val_instances,
    cfg,
    num_images: int,
    embeddings: Callable[[int], torch.Tensor] | None = None,
    say: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Calibrate ``model``'s automatic masks and check its class head on the held-out images.

    Args:
        model: the trained :class:`~samadapt.adapted.AdaptedSam` (its best epoch), eval mode.
        val_instances: the validation images (already cut to ``--max-val-images``); the first
            ``num_images`` are used.
        cfg: the run's :class:`~samadapt.config.TrainConfig` (``auto_calibration_images``: images to
            calibrate on, 0: none; ``seed``, ``progress``).
        embeddings: index -> cached image embedding (frozen encoders).

    Returns:
        ``{"auto_calibration": {...}}`` and / or ``{"class_head": {...}}``, for the run's metrics.
    """
    from ..models.parts.class_head import class_head_of
    from .calibration import calibrate, describe
    from .head_check import describe_validation, validate_class_head

    out: dict[str, Any] = {}
    model.eval()
    if cfg.auto_calibration_images and num_images:
        n = min(cfg.auto_calibration_images, num_images)
        cal = calibrate(model, val_instances, max_images=n, progress=cfg.progress)
        model.auto_calibration = cal
        out["auto_calibration"] = cal.to_dict()
        say(f"automatic masks: {describe(cal)}")
    head = class_head_of(model)
    if head is not None:
        head.validation = validate_class_head(
            model, val_instances, range(num_images), embeddings=embeddings, seed=cfg.seed
        )
        out["class_head"] = head.validation
        say(describe_validation(head.validation))
    return out
