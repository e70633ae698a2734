"""The ``peft`` format: a ``lora`` adapter in peft's own folder layout (read back by
:func:`samadapt.import_peft`, and by ``peft.PeftModel.from_pretrained`` on an upstream ``Sam``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from ..adapted import AdaptedSam
from ..adapter_io import DECODER_WEIGHTS, PEFT_CONFIG, PEFT_WEIGHTS
from ..errors import ExportError
from ..files import atomic_write


def export_peft(model: AdaptedSam, directory: str | os.PathLike, *, metadata: dict[str, Any] | None = None) -> Path:
    """Write a ``lora`` adapter in peft's own format (``adapter_config.json`` +
    ``adapter_model.safetensors``). peft's format has no place for the trained mask decoder, which
    goes beside them as ``mask_decoder.safetensors``. ``metadata`` (JSON-able) is stored in the
    safetensors header under ``"samadapt"``."""
    from peft import get_peft_model_state_dict

    from ..strategies.lora import ADAPTER_NAME, LoraStrategy

    if model.strategy != "lora":
        raise ExportError(f"only 'lora' adapters have a peft format; this one is {model.strategy!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    header = {"format": "pt"}
    if metadata is not None:
        header["samadapt"] = json.dumps(metadata, sort_keys=True, default=str)
    peft_cfg = model.config.to_peft(model.sam)  # module-path pattern targets resolve on the model
    lora_sd = get_peft_model_state_dict(model.sam, adapter_name=ADAPTER_NAME)
    lora_sd = {f"base_model.model.{k}": v.detach().cpu().contiguous() for k, v in lora_sd.items()}
    atomic_write(directory / PEFT_WEIGHTS, lambda tmp: save_file(lora_sd, tmp, metadata=header))
    cfg = peft_cfg.to_dict()
    cfg["peft_type"] = "LORA"
    cfg["base_model_name_or_path"] = f"samadapt:{model.model_type}:{model.base.base_id}"
    cfg = {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}
    atomic_write(directory / PEFT_CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(cfg, indent=2, default=str)))
    decoder = {
        n: t.cpu().contiguous()
        for n, t in model.trainable_state_dict().items()
        if n.startswith("mask_decoder.") and not LoraStrategy.owns(n)
    }  # LoRA's own are in PEFT_WEIGHTS
    if decoder:
        atomic_write(directory / DECODER_WEIGHTS, lambda tmp: save_file(decoder, tmp, metadata=header))
    return directory


def write_peft(model: AdaptedSam, tmp: Path, metadata: dict[str, Any]) -> None:
    export_peft(model, tmp, metadata=metadata)
