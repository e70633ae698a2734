"""Importers: annotations in other tools' formats to the COCO layouts samadapt reads.

- :mod:`.supervisely`: Supervise.ly annotation files (bitmaps, polygons, multi-part objects) and the
  report of what an import left out;
- :mod:`.trashcan`: TrashCan 1.0's raw frames to its official COCO layout, with the official classes;
- :mod:`.project`: any Supervise.ly project export with a user-given class mapping;
- :mod:`.output`: writing an import atomically (COCO files, linked or copied images, manifest);
- the ``samadapt data import-trashcan`` / ``import-supervisely`` options and runs: :mod:`samadapt.cli.data`.
"""

from .project import import_supervisely, read_mapping
from .supervisely import ImportReport, decode_bitmap, frame_instances, object_mask, read_annotation
from .trashcan import import_trashcan, trashcan_category

__all__ = [
    "ImportReport",
    "decode_bitmap",
    "frame_instances",
    "import_supervisely",
    "import_trashcan",
    "object_mask",
    "read_annotation",
    "read_mapping",
    "trashcan_category",
]
