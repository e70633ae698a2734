"""An automatic-mask calibration as a model part: the thresholds and score map measured for one
model (:func:`samadapt.segment.calibrate` measures them), kept in its adapter file's metadata
(``auto_calibration``) or shipped beside built-in weights (``samadapt/weights/<stem>.calibration.json``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ...errors import ConfigError
from .base import ModelPart, register_part

__all__ = ["BUILTIN_SUFFIX", "Calibration", "CalibrationPart", "builtin_calibration"]


@dataclass(frozen=True)
class Calibration:
    """Thresholds and score map of one model, measured on ``images`` labelled images of ``data``.

    pred_iou_thresh, stability_score_thresh: the chosen filters.
    iou_knots, real_iou_knots: the isotonic map predicted IoU -> mean real IoU (linear between knots).
    f1, precision, recall: of the final masks at the chosen thresholds, on the calibration images;
    sam_defaults_f1, sam_defaults_masks: F1 and masks per image at SAM's (0.88, 0.95).
    candidates: masks scored (3 per grid point and image); objects: ground-truth instances.
    """

    pred_iou_thresh: float
    stability_score_thresh: float
    points_per_side: int
    match_iou: float
    iou_knots: tuple[float, ...]
    real_iou_knots: tuple[float, ...]
    images: int
    candidates: int
    objects: int
    f1: float
    precision: float
    recall: float
    masks_per_image: float
    sam_defaults_f1: float
    sam_defaults_masks: float
    data: str = ""

    def quality(self, predicted_iou: np.ndarray | Sequence[float]) -> np.ndarray:
        """Predicted IoU -> the mean real IoU of masks with that prediction (float32, same shape)."""
        x = np.asarray(predicted_iou, dtype=np.float64)
        return np.interp(x, self.iou_knots, self.real_iou_knots).astype(np.float32)

    def auto_config(self, base):
        """``base`` (a :class:`samadapt.segment.AutoConfig`, e.g. ``SAM_DEFAULTS``) with the calibrated
        thresholds (and the grid density the calibration used)."""
        return dataclasses.replace(
            base,
            pred_iou_thresh=self.pred_iou_thresh,
            stability_score_thresh=self.stability_score_thresh,
            points_per_side=self.points_per_side,
            source=f"calibrated on {self.images} images of {self.data or 'labelled data'}",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Calibration":
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) - names or not {"pred_iou_thresh", "iou_knots"} <= set(data):
            raise ConfigError(
                f"not a samadapt automatic-mask calibration: {str(data)[:120]!r}; calibrate again "
                "(samadapt segment --auto --calibrate-annotation-file ...)"
            )
        values = dict(data)
        for k in ("iou_knots", "real_iou_knots"):
            values[k] = tuple(float(v) for v in values[k])
        return cls(**values)


#: the calibration shipped beside a model type's built-in weights (``samadapt/weights/``)
BUILTIN_SUFFIX = ".calibration.json"


def builtin_calibration(base) -> Calibration | None:
    """The calibration shipped with samadapt's built-in weights of ``base`` (a
    :class:`~samadapt.models.registry.BaseInfo`), or None: ``samadapt/weights/<file stem>.calibration.json``,
    written by ``recipes/calibrate_builtin.py``. It describes those weights as they are: an adapter
    of them carries its own calibration."""
    import json

    from ..registry import builtin_weights_path, get_model_card

    if not str(getattr(base, "base_id", "")).startswith("builtin:"):
        return None
    weights = builtin_weights_path(get_model_card(base.model_type))
    path = None if weights is None else weights.with_name(weights.stem + BUILTIN_SUFFIX)
    if path is None or not path.is_file():
        return None
    return Calibration.from_dict(json.loads(path.read_text())["calibration"])


@register_part
class CalibrationPart(ModelPart):
    """The model's automatic-mask calibration (``model.auto_calibration``): a record, no tensors."""

    key = "auto_calibration"

    def describe(self, model) -> dict[str, Any] | None:
        cal = getattr(model, "auto_calibration", None)
        return None if cal is None else cal.to_dict()

    def restore(self, model, spec: Any) -> None:
        model.auto_calibration = Calibration.from_dict(spec)
