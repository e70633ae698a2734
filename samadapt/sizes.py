"""Parameter counts and adapter file sizes of every model type x strategy, without weights.

Models are built on the meta device (shapes only, no memory), so the numbers for ViT-H cost a
fraction of a second. ``samadapt info`` and ``benchmarks/adapter_sizes.py`` read them from here.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapted import AdaptedSam, adapt
from .adapter_io import adapter_metadata, save_adapter
from .models.checkpoints import official_checkpoint
from .models.family import family_for_type, get_card
from .models.registry import BaseInfo


@dataclass(frozen=True)
class StrategySize:
    """Sizes of one model type adapted with one strategy.

    base: parameters of the unadapted SAM; total: after adapting (base + inserted modules);
    trainable: what the strategy trains (and what its adapter file holds); adapter_bytes: exact
    size of the file :func:`samadapt.save_adapter` writes (no ``info``).
    """

    model_type: str
    strategy: str
    base: int
    total: int
    trainable: int
    adapter_bytes: int

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.total


def _weightless_base(model_type: str) -> nn.Module:
    """The base model of ``model_type`` (either family) without weights, as an untrained base."""
    family = family_for_type(model_type)
    model = family.architecture(model_type)
    model.samadapt_base = BaseInfo(model_type, f"random:{model_type}", None)
    return model.eval()


def meta_adapted(model_type: str, strategy: str, **options: Any) -> AdaptedSam:
    """An :class:`AdaptedSam` without weights (the meta device): every shape and name."""
    with family_for_type(model_type).weightless():  # the strategy's own modules weightless too
        return adapt(_weightless_base(model_type), strategy, **options)


@functools.lru_cache(maxsize=None)
def base_parameter_count(model_type: str) -> int:
    """Parameters of the unadapted base of ``model_type``."""
    return sum(p.numel() for p in _weightless_base(model_type).parameters())


def strategy_size(
    model_type: str, strategy: str, *, info: dict[str, Any] | None = None, **options: Any
) -> StrategySize:
    """:class:`StrategySize` of ``model_type`` adapted with ``strategy`` (options as for
    :func:`samadapt.adapt`); ``info`` as the keyword arguments of ``save_adapter``."""
    model = meta_adapted(model_type, strategy, **options)
    return StrategySize(
        model_type,
        strategy,
        base_parameter_count(model_type),
        model.num_parameters(),
        model.num_parameters(trainable_only=True),
        _adapter_file_size(model, info),
    )


def _typical_base(model_type: str) -> BaseInfo:
    """The base id a real adapter of this model type records (same length, so same header size)."""
    official = official_checkpoint(model_type)
    if official is not None:
        return BaseInfo(model_type, f"sha256:{official.sha256}", None)
    card = get_card(model_type)
    if card.builtin_weights is not None:
        return BaseInfo(model_type, f"builtin:{card.name}@{'0' * 64}", None)
    return BaseInfo(model_type, f"sha256:{'0' * 64}", None)


_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}


def safetensors_size(tensors: dict[str, tuple[tuple[int, ...], torch.dtype]], metadata: dict[str, str]) -> int:
    """Exact size in bytes of the file ``safetensors.torch.save_file`` writes for tensors of these
    names, shapes and (one) dtype with this metadata, computed without any tensor data.

    The format: an 8-byte header length, a JSON header (``__metadata__`` first, then the tensors in
    the order of their data: by name within a dtype) padded with spaces to a multiple of 8, then the
    raw data. ``tests/adapters/test_sizes.py`` checks it against real files.
    """
    dtypes = {dtype for _, dtype in tensors.values()}
    if len(dtypes) > 1:
        raise NotImplementedError(f"mixed dtypes {sorted(map(str, dtypes))}: the tensor order would depend on them")
    entries, offset = [], 0
    for name in sorted(tensors):
        shape, dtype = tensors[name]
        nbytes = math.prod(shape) * dtype.itemsize
        entries.append(
            json.dumps(name, ensure_ascii=False)
            + f':{{"dtype":"{_SAFETENSORS_DTYPES[dtype]}","shape":[{",".join(map(str, shape))}],'
            f'"data_offsets":[{offset},{offset + nbytes}]}}'
        )
        offset += nbytes
    if metadata:
        entries.insert(0, '"__metadata__":' + json.dumps(metadata, ensure_ascii=False, separators=(",", ":")))
    header = len(("{" + ",".join(entries) + "}").encode())
    return 8 + -(-header // 8) * 8 + offset


def _adapter_file_size(model: AdaptedSam, info: dict[str, Any] | None) -> int:
    """For a throwaway meta model: sets its base id to a typical one."""
    model.base = _typical_base(model.model_type)
    tensors = {n: (tuple(p.shape), p.dtype) for n, p in model.trainable_named_parameters()}
    return safetensors_size(tensors, adapter_metadata(model, info))


def adapter_file_size(model_type: str, strategy: str, *, info: dict[str, Any] | None = None, **options: Any) -> int:
    """Exact size in bytes of the file :func:`samadapt.save_adapter` writes for this model type and
    strategy (trained on the official checkpoint, or the built-in weights for ``mini``), with
    ``info`` as its keyword arguments. Computed from shapes on the meta device: no weights."""
    return _adapter_file_size(meta_adapted(model_type, strategy, **options), info)


def materialise_trainable(model: AdaptedSam) -> None:
    """Replace every trainable meta parameter with a zero tensor of its dtype on the CPU (frozen
    ones stay on meta), so :func:`samadapt.save_adapter` can write the model: what the tests and
    ``benchmarks/adapter_sizes.py`` use to check :func:`adapter_file_size` against a real file."""
    for module in model.sam.modules():
        for name, p in list(module._parameters.items()):
            if p is not None and p.requires_grad and p.is_meta:
                module._parameters[name] = nn.Parameter(torch.zeros(p.shape, dtype=p.dtype, device="cpu"))


def written_adapter_size(model_type: str, strategy: str, *, info: dict[str, Any] | None = None, **options: Any) -> int:
    """Size of the file :func:`samadapt.save_adapter` really writes (zeros as weights) for the same
    model as :func:`adapter_file_size`; allocates and writes the trainable tensors."""
    model = meta_adapted(model_type, strategy, **options)
    model.base = _typical_base(model_type)
    materialise_trainable(model)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "adapter.safetensors"
        save_adapter(model, path, **(info or {}))
        return os.path.getsize(path)
