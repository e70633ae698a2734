"""Training and evaluation: SAM's loss, the paper's metrics, evaluation and report figures.

The trainer (:mod:`samadapt.training.trainer`) and the embedding cache
(:mod:`samadapt.training.cache`) are imported from their modules; this package re-exports the
pieces a user calls directly.
"""

from .clicks import ClickRecords, evaluate_clicks
from .evaluate import EVAL_PROMPTS, EvalRecords, EvalResult, evaluate, evaluate_records, summarize_records, write_report
from .losses import LossOutput, SamLoss, dice_loss, focal_loss, iou_of_logits
from .metrics import (
    METRIC_NAMES,
    SIZE_RANGES,
    MetricAccumulator,
    build_coco_gt,
    coco_mask_ap,
    encode_mask,
    instance_metrics,
    size_bucket,
    summarize,
)
from .plots import plot_bars, plot_examples, plot_training_curves

__all__ = [
    "ClickRecords", "EVAL_PROMPTS", "EvalRecords", "EvalResult", "LossOutput", "METRIC_NAMES", "MetricAccumulator", "SIZE_RANGES",
    "SamLoss", "build_coco_gt", "coco_mask_ap", "dice_loss", "encode_mask", "evaluate", "evaluate_clicks", "evaluate_records",
    "focal_loss", "instance_metrics", "iou_of_logits", "plot_bars", "plot_examples", "plot_training_curves",
    "size_bucket", "summarize", "summarize_records", "write_report",
]
