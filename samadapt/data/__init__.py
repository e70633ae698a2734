"""Datasets: COCO instance files (TACO, ZeroWaste-f, TrashCan, generated demo data) to SAM inputs.

- :class:`CocoInstances`: images with instance masks from any COCO file, robust to the waste
  datasets' quirks (problems counted in ``dataset.skips``);
- presets (:func:`taco`, :func:`zerowaste`, :func:`trashcan`, :func:`coco`, :func:`demo`,
  :func:`get_dataset`) that know each dataset's layout and split;
- :class:`SamPromptDataset` + :func:`collate_sam`: model-ready samples with box / point prompts;
- :func:`summarize` / :func:`format_summary`: what a dataset holds, without reading images;
- :func:`make_demo_dataset`: generated demo data;
- :func:`import_trashcan`, :func:`import_supervisely` (:mod:`samadapt.data.importers`): Supervise.ly
  annotations (TrashCan's raw frames, any project export) to COCO.

See docs/data.md.
"""

from .coco import CocoInstances
from .coco_file import annotation_area, load_coco_json
from .images import read_image, resolve_image_path
from .importers import decode_bitmap, import_supervisely, import_trashcan
from .masks import InstanceMasks, segmentation_to_rle
from .presets import DATASETS, coco, demo, get_dataset, read_split_file, seeded_split, taco, trashcan, zerowaste
from .prompts import PromptConfig, boxes_from_masks, jitter_boxes, loosen_boxes, sample_points
from .sam_dataset import SamPromptDataset, check_dataset, collate_sam, file_sha1
from .skips import REASONS, Issue, IssueLog
from .summary import format_summary, summarize, summarize_preset
from .synthetic import make_demo_dataset

__all__ = [
    "CocoInstances",
    "DATASETS",
    "InstanceMasks",
    "Issue",
    "IssueLog",
    "PromptConfig",
    "REASONS",
    "SamPromptDataset",
    "annotation_area",
    "boxes_from_masks",
    "check_dataset",
    "coco",
    "collate_sam",
    "decode_bitmap",
    "demo",
    "file_sha1",
    "format_summary",
    "get_dataset",
    "import_supervisely",
    "import_trashcan",
    "jitter_boxes",
    "load_coco_json",
    "loosen_boxes",
    "make_demo_dataset",
    "read_image",
    "read_split_file",
    "resolve_image_path",
    "sample_points",
    "seeded_split",
    "segmentation_to_rle",
    "summarize",
    "summarize_preset",
    "taco",
    "trashcan",
    "zerowaste",
]
