"""Evaluation: the paper's metrics, the box / point / click protocols, reports and figures.

- :mod:`.config`: :class:`EvalConfig`, the one set of evaluation options, and :data:`EVAL_PROMPTS`;
- :mod:`.evaluate`: one prompt per instance, per-instance records (:class:`EvalRecords`, the one
  per-instance store, mergeable across processes) and their summary;
- :mod:`.metrics`: IoU / precision / recall / F1 per instance, their summaries, COCO mask AP;
- :mod:`.clicks`: the click-by-click protocol (mIoU per click, NoC@85 / NoC@90);
- :mod:`.report`: ``metrics.json`` / ``metrics.md`` and the plain-text tables; :mod:`.plots`: figures;
- :mod:`.run`: zero-shot and adapters on one dataset (``samadapt eval``; its options: :mod:`samadapt.cli.evaluate`);
- :mod:`.uncertainty` and :mod:`.comparison`: intervals and the statistics of strategy comparisons
  (imported from their modules).
"""

from .clicks import ClickRecords, evaluate_clicks
from .config import EVAL_PROMPTS, EvalConfig
from .evaluate import (
    EvalRecords,
    EvalResult,
    evaluate,
    evaluate_records,
    summarize_records,
)
from .metrics import (
    METRIC_NAMES,
    SIZE_RANGES,
    build_coco_gt,
    coco_mask_ap,
    encode_mask,
    instance_metrics,
    size_bucket,
    summarize,
)
from .plots import (
    plot_bars,
    plot_click_curves,
    plot_curves,
    plot_examples,
    plot_training_curves,
)
from .report import format_table, text_table, write_report
from .run import compare_models, evaluate_models, load_eval_dataset, zero_shot_model

__all__ = [
    "ClickRecords",
    "EVAL_PROMPTS",
    "EvalConfig",
    "EvalRecords",
    "EvalResult",
    "METRIC_NAMES",
    "SIZE_RANGES",
    "build_coco_gt",
    "coco_mask_ap",
    "compare_models",
    "encode_mask",
    "evaluate",
    "evaluate_clicks",
    "evaluate_models",
    "evaluate_records",
    "format_table",
    "instance_metrics",
    "load_eval_dataset",
    "plot_bars",
    "plot_click_curves",
    "plot_curves",
    "plot_examples",
    "plot_training_curves",
    "size_bucket",
    "summarize",
    "summarize_records",
    "text_table",
    "write_report",
    "zero_shot_model",
]
