"""What an adapter file records for prompt-free use: the class head's categories and the automatic-mask
calibration, in one metadata entry (``"segment"``, JSON) beside the strategy's.

The class head's weights are trainable tensors of the adapted ``Sam`` (``class_head.*``) and are
saved with the others; this entry says how to rebuild the head they belong to, so strict loading
(:func:`samadapt.load_adapter`) knows the names and shapes to expect before it changes the model.
An adapter without the entry is a plain adapter, byte for byte as before.

This module is imported by ``samadapt.adapter_io`` (which also writes a calibration into an existing
adapter file, ``store_calibration``, with :func:`with_calibration`): it imports nothing of samadapt
but the errors and this package's class head and calibration, never the adapter files' reader.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import torch

from ..errors import AdapterFileError
from .class_head import CLASS_HEAD, ClassHead, attach_class_head, class_head_of

__all__ = [
    "SEGMENT_KEY",
    "parse_segment_metadata",
    "restore_segment_state",
    "segment_metadata",
    "segment_tensor_shapes",
    "with_calibration",
]

SEGMENT_KEY = "segment"


def segment_metadata(model) -> dict[str, str]:
    """``{"segment": JSON}`` for a model with a class head or a calibration (``model.auto_calibration``);
    ``{}`` for any other model."""
    head = class_head_of(model)
    cal = getattr(model, "auto_calibration", None)
    data: dict[str, Any] = {}
    if head is not None:
        data["class_head"] = {
            "categories": [{"id": i, "name": n} for i, n in head.categories.items()],
            "hidden_dim": head.hidden_dim,
            "num_layers": head.num_layers,
            "token": 0,
            "pool_dim": head.pool_dim,
        }
        if head.validation is not None:
            data["class_head"]["validation"] = head.validation
    if cal is not None:
        data["auto_calibration"] = cal.to_dict()
    return {SEGMENT_KEY: json.dumps(data, sort_keys=True)} if data else {}


def parse_segment_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The ``segment`` entry of an adapter's metadata (from ``read_adapter_metadata``), parsed; {} if absent."""
    raw = meta.get(SEGMENT_KEY)
    if raw is None:
        return {}
    try:
        data = json.loads(raw) if isinstance(raw, str) else dict(raw)
        head = data.get("class_head")
        if head is not None:
            cats = {int(c["id"]): str(c["name"]) for c in head["categories"]}
            if not cats:
                raise ValueError("no categories")
            data["class_head"] = {**head, "categories": cats}
    except (TypeError, ValueError, KeyError) as e:
        raise AdapterFileError(
            f"the adapter's {SEGMENT_KEY!r} metadata is corrupt ({e}); save or download it again"
        ) from None
    return data


def _build_head(sam, spec: Mapping[str, Any]) -> ClassHead:
    # files written before the mask-pooled features hold a token-only head (pool_dim 0)
    return ClassHead(
        sam.mask_decoder.transformer_dim,
        spec["categories"],
        hidden_dim=spec.get("hidden_dim"),
        num_layers=int(spec.get("num_layers", 2)),
        pool_dim=int(spec.get("pool_dim", 0)),
    )


def segment_tensor_shapes(meta: Mapping[str, Any], sam) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the class head's tensors an adapter with this metadata holds (none
    without a head), from a head built on the meta device for ``sam``'s decoder."""
    spec = parse_segment_metadata(meta).get("class_head")
    if spec is None:
        return {}
    with torch.device("meta"):
        ghost = _build_head(sam, spec)
    return {f"{CLASS_HEAD}.{n}": tuple(p.shape) for n, p in ghost.named_parameters()}


def restore_segment_state(model, meta: Mapping[str, Any]) -> None:
    """Give a freshly adapted ``model`` the class head (untrained: the caller loads its tensors next)
    and the calibration an adapter's metadata describes."""
    from .calibration import Calibration

    data = parse_segment_metadata(meta)
    spec = data.get("class_head")
    if spec is not None:
        head = attach_class_head(
            model,
            spec["categories"],
            hidden_dim=spec.get("hidden_dim"),
            num_layers=int(spec.get("num_layers", 2)),
            pool_dim=int(spec.get("pool_dim", 0)),
        )
        head.validation = spec.get("validation")  # the held-out check against the majority class
    if data.get("auto_calibration") is not None:
        model.auto_calibration = Calibration.from_dict(data["auto_calibration"])


def with_calibration(meta: Mapping[str, str], calibration) -> dict[str, str]:
    """An adapter file's raw metadata (``safe_open(...).metadata()``) with its ``segment`` entry
    recording ``calibration``; the class head's entry and every other key are kept as they are."""
    data = parse_segment_metadata(meta)
    if "class_head" in data:
        data["class_head"] = {
            **data["class_head"],
            "categories": [{"id": i, "name": n} for i, n in data["class_head"]["categories"].items()],
        }
    data["auto_calibration"] = calibration.to_dict()
    return {**meta, SEGMENT_KEY: json.dumps(data, sort_keys=True)}
