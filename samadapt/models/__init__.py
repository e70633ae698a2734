"""SAM model types: registry with cards, builder, checkpoints."""

from .checkpoints import OFFICIAL_CHECKPOINTS, OfficialCheckpoint, file_sha256, official_checkpoint, remap_state_dict
from .registry import (
    MODEL_TYPES,
    BaseInfo,
    ModelCard,
    base_info,
    build_sam,
    get_model_card,
    infer_model_type,
    model_type_for_tag,
    register_model_type,
)

__all__ = [
    "MODEL_TYPES",
    "BaseInfo",
    "ModelCard",
    "OFFICIAL_CHECKPOINTS",
    "OfficialCheckpoint",
    "base_info",
    "build_sam",
    "file_sha256",
    "get_model_card",
    "infer_model_type",
    "model_type_for_tag",
    "official_checkpoint",
    "register_model_type",
    "remap_state_dict",
]
