"""Model parts: what an adapted ``Sam`` carries beside its strategy's tensors (the class head, the
automatic-mask calibration), recorded in an adapter file through one metadata entry.

The entry is ``"segment"`` (JSON, the name adapter files have always used): one key per part the
model has, its spec (:meth:`ModelPart.describe`). A part with tensors keeps them in the file as
``<key>.*``, saved and strictly loaded with the strategy's; its spec says how to rebuild the module
before they load. An adapter without the entry is a plain adapter, byte for byte.

A new part (a new head) is one file in this package, its class decorated ``@register_part``, plus
its import line below; adapter files, strict loading and the tests over :data:`PARTS` pick it up.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from ...errors import AdapterFileError
from .base import PARTS, ModelPart, register_part

# the registry: one line a part
from . import calibration, class_head  # noqa: E402, F401  isort: skip

__all__ = [
    "PARTS",
    "PARTS_KEY",
    "ModelPart",
    "parse_parts_metadata",
    "parts_metadata",
    "parts_tensor_shapes",
    "register_part",
    "restore_parts",
    "with_part",
]

#: the adapter metadata entry that holds the parts' specs
PARTS_KEY = "segment"


def parts_metadata(model) -> dict[str, str]:
    """``{"segment": JSON}`` for a model with any part; ``{}`` for any other model."""
    data = {key: spec for key, part in PARTS.items() if (spec := part.describe(model)) is not None}
    return {PARTS_KEY: json.dumps(data, sort_keys=True)} if data else {}


def parse_parts_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The parts entry of an adapter's metadata (from ``read_adapter_metadata``), each known part's
    spec parsed; {} if absent."""
    raw = meta.get(PARTS_KEY)
    if raw is None:
        return {}
    try:
        data = json.loads(raw) if isinstance(raw, str) else dict(raw)
        return {k: PARTS[k].parse(v) if k in PARTS else v for k, v in data.items()}
    except (TypeError, ValueError, KeyError) as e:
        raise AdapterFileError(
            f"the adapter's {PARTS_KEY!r} metadata is corrupt ({e}); save or download it again"
        ) from None


def parts_tensor_shapes(meta: Mapping[str, Any], sam) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the parts' tensors an adapter with this metadata holds, for ``sam``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for key, spec in parse_parts_metadata(meta).items():
        if key in PARTS:
            shapes.update(PARTS[key].tensor_shapes(sam, spec))
    return shapes


def restore_parts(model, meta: Mapping[str, Any]) -> None:
    """Give a freshly adapted ``model`` the parts an adapter's metadata describes (modules untrained:
    the caller loads their tensors next)."""
    for key, spec in parse_parts_metadata(meta).items():
        if key in PARTS:
            PARTS[key].restore(model, spec)


def with_part(meta: Mapping[str, str], key: str, spec: Any) -> dict[str, str]:
    """An adapter file's raw metadata (``safe_open(...).metadata()``) with part ``key``'s spec set to
    ``spec`` (as :meth:`ModelPart.describe` gives it); the other parts and every other key are kept."""
    data = {k: PARTS[k].unparse(v) if k in PARTS else v for k, v in parse_parts_metadata(meta).items()}
    data[key] = spec
    return {**meta, PARTS_KEY: json.dumps(data, sort_keys=True)}
