"""The ``peft`` format: a ``lora`` adapter (DoRA included) in peft's own folder layout (read back by
:func:`samadapt.import_peft`, and by ``peft.PeftModel.from_pretrained`` on an upstream ``Sam``, or
on an upstream ``SAM2Base`` for a SAM 2.1 adapter: the same layout, with target modules and tensor
names under ``image_encoder.trunk.blocks.N`` and the trained decoder under ``sam_mask_decoder.``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from ..adapted import AdaptedSam
from ..adapter_io import DECODER_WEIGHTS, PEFT_CONFIG, PEFT_WEIGHTS
from ..files import atomic_write
from ..strategies.base import get_strategy


def export_peft(model: AdaptedSam, directory: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> Path:
    """Write an adapter in peft's own format (``adapter_config.json`` + ``adapter_model.safetensors``),
    through its strategy (:meth:`samadapt.strategies.Strategy.to_peft`: ``lora``, DoRA included).
    peft's format has no place for the trained mask decoder, which goes beside them as
    ``mask_decoder.safetensors``. ``metadata`` (JSON-able) is stored in the safetensors header under
    ``"samadapt"``."""
    strategy = get_strategy(model.strategy)
    cfg, tensors = strategy.to_peft(model.sam, model.config)  # refuses a strategy peft has no format for
    cfg["base_model_name_or_path"] = f"samadapt:{model.model_type}:{model.base.base_id}"
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    header = {"format": "pt"}
    if metadata is not None:
        header["samadapt"] = json.dumps(metadata, sort_keys=True, default=str)
    atomic_write(directory / PEFT_WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata=header))
    atomic_write(directory / PEFT_CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(cfg, indent=2, default=str)))
    # the trained mask decoder: every trainable tensor that is not the strategy's own (those are in
    # PEFT_WEIGHTS); SAM 1's mask_decoder.*, SAM 2.1's sam_mask_decoder.* (conv_s0 / conv_s1 never train)
    decoder = {n: t.cpu().contiguous() for n, t in model.trainable_state_dict().items() if not strategy.owns(n)}
    if decoder:
        atomic_write(directory / DECODER_WEIGHTS, lambda tmp: save_file(decoder, tmp, metadata=header))
    return directory


def write_peft(model: AdaptedSam, tmp: Path, metadata: dict[str, Any]) -> None:
    export_peft(model, tmp, metadata=metadata)
