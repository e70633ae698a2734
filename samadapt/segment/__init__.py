"""Prompt-free, class-aware segmentation: masks from a detector's boxes or from SAM's automatic point
grid, labelled by a class head, written as COCO results (docs/segment.md).

- :func:`segment` (``segment(model, image, ...)``): one image, from boxes, points or automatically;
- :func:`segment_images`: many images from a detections file or automatically (``samadapt segment``);
- :mod:`.detections`: COCO detection results in (checked, boxes clipped, missing images counted);
- :mod:`.results`: COCO results out (compressed RLE), and COCOeval mask AP / AR@100;
- :mod:`.automatic`: automatic mask generation from upstream's ``segment_anything.utils.amg`` pieces;
- :mod:`.calibration`: per-model thresholds from predicted vs real IoU (the record itself, and the
  one shipped with the built-in weights, is the model part :mod:`samadapt.models.parts.calibration`);
- :mod:`.finish`: what the end of training adds to an adapter (its calibration, the class head's check);
- :mod:`.head_check`: whether a class head beats always answering the most frequent class (the head
  itself is the model part :mod:`samadapt.models.parts.class_head`).
"""

from ..models.parts.calibration import Calibration
from .api import segment, segment_images
from .automatic import SAM_DEFAULTS, AutoConfig, Proposals
from .calibration import calibrate
from .detections import DetectionSet, read_detections
from .results import coco_results, evaluate_results, write_results

__all__ = [
    "AutoConfig",
    "Calibration",
    "DetectionSet",
    "Proposals",
    "SAM_DEFAULTS",
    "calibrate",
    "coco_results",
    "evaluate_results",
    "read_detections",
    "segment",
    "segment_images",
    "write_results",
]
