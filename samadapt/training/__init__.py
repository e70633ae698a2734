"""Training: SAM's loss, the trainer, the embedding cache, interactive prompts and pretraining.

The trainer (:mod:`samadapt.training.trainer`) and the embedding cache
(:mod:`samadapt.training.cache`) are imported from their modules; this package re-exports the
losses. Evaluation (metrics, the protocols, reports, figures) is :mod:`samadapt.evaluation`.
"""

from .losses import LossOutput, SamLoss, dice_loss, focal_loss, iou_of_logits

__all__ = ["LossOutput", "SamLoss", "dice_loss", "focal_loss", "iou_of_logits"]
