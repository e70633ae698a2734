"""Prompt-free, class-aware segmentation: masks from a detector's boxes or from SAM's automatic point
grid, labelled by a class head, written as COCO results (docs/segment.md).

- :func:`segment` (also ``AdaptedSam.segment``): one image, from boxes, points or automatically;
- :func:`segment_images`: many images from a detections file or automatically (``samadapt segment``);
- :mod:`.detections`: COCO detection results in (checked, boxes clipped, missing images counted);
- :mod:`.results`: COCO results out (compressed RLE), and COCOeval mask AP / AR@100;
- :mod:`.automatic`: automatic mask generation from upstream's ``segment_anything.utils.amg`` pieces;
- :mod:`.calibration`: per-model thresholds from predicted vs real IoU (and the one shipped with the
  built-in weights);
- :mod:`.finish`: what the end of training adds to an adapter (its calibration, the class head's check);
- :mod:`.class_head`: the head on the decoder's mask token, its loss and capture.

The names are imported on first use (``samadapt.adapter_io`` imports :mod:`.state`, and this package's
API imports the rest of samadapt); ``store_calibration`` is ``samadapt.adapter_io.store_calibration``.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "AutoConfig": "automatic",
    "SAM_DEFAULTS": "automatic",
    "Proposals": "automatic",
    "Calibration": "calibration",
    "calibrate": "calibration",
    "ClassHead": "class_head",
    "attach_class_head": "class_head",
    "class_head_of": "class_head",
    "loss_with_class_head": "class_head",
    "DetectionSet": "detections",
    "read_detections": "detections",
    "coco_results": "results",
    "evaluate_results": "results",
    "write_results": "results",
    "segment": "api",
    "segment_images": "api",
    "store_calibration": "..adapter_io",
}

__all__ = [
    "AutoConfig",
    "Calibration",
    "ClassHead",
    "DetectionSet",
    "Proposals",
    "SAM_DEFAULTS",
    "attach_class_head",
    "calibrate",
    "class_head_of",
    "coco_results",
    "evaluate_results",
    "loss_with_class_head",
    "read_detections",
    "segment",
    "segment_images",
    "store_calibration",
    "write_results",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _EXPORTS[name]
    return getattr(importlib.import_module(module if module.startswith(".") else f".{module}", __name__), name)
