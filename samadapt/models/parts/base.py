"""What a model part is: something an adapted ``Sam`` carries beside its strategy's tensors (a head,
a calibration) that an adapter file must record to rebuild it. The registry :data:`PARTS` is filled
by the modules of this package; :mod:`samadapt.models.parts` reads and writes their metadata."""

from __future__ import annotations

from typing import Any

__all__ = ["PARTS", "ModelPart", "register_part"]


class ModelPart:
    """One kind of part. ``key`` names it in the adapter's metadata entry; a part with tensors keeps
    them in the adapter file as ``<key>.*`` (a submodule of ``Sam`` of that name).

    describe: the JSON spec of ``model``'s part, or None when the model has none.
    parse / unparse: spec as stored (JSON) <-> spec as used (raise ValueError, KeyError or TypeError
    on a corrupt one).
    tensor_shapes: names and shapes of the tensors the part adds to ``sam`` ({} for none).
    restore: give a freshly adapted ``model`` the part (a module untrained: its tensors load next).
    """

    key: str = ""

    def describe(self, model) -> Any | None:
        raise NotImplementedError

    def parse(self, spec: Any) -> Any:
        return spec

    def unparse(self, spec: Any) -> Any:
        return spec

    def tensor_shapes(self, sam, spec: Any) -> dict[str, tuple[int, ...]]:
        return {}

    def restore(self, model, spec: Any) -> None:
        raise NotImplementedError


#: key -> part, in registration order
PARTS: dict[str, ModelPart] = {}


def register_part(cls: type[ModelPart]) -> type[ModelPart]:
    """Class decorator: register one instance of ``cls`` under ``cls.key``."""
    if not cls.key or cls.key in PARTS:
        raise ValueError(f"model part key {cls.key!r} is empty or registered already")
    PARTS[cls.key] = cls()
    return cls
