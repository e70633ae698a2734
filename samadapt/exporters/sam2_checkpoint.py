"""The ``sam`` format for SAM 2.1: ``{"model": state_dict}``, the layout of Meta's official files.

``sam2.build_sam.build_sam2(config, ckpt_path=F)`` loads it strictly (its ``_load_checkpoint`` raises on
any missing or unexpected key), as ``samadapt.models.sam2_family.build_sam2_model`` does. Every
tensor of ``SAM2Base`` is kept, the video parts (memory attention, memory encoder) included, so the
file works for upstream's video predictor too.
"""

from __future__ import annotations

from pathlib import Path

import torch


def sam2_checkpoint_state(model: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """``{"model": state_dict}`` with detached, contiguous CPU tensors."""
    return {"model": {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}}


def write_sam2_checkpoint(model: torch.nn.Module, out: Path, metadata: dict | None = None) -> None:
    """``torch.save`` of :func:`sam2_checkpoint_state` to ``out`` (the format has no room for
    metadata; samadapt's export dispatcher writes it beside the file)."""
    torch.save(sam2_checkpoint_state(model), out)
