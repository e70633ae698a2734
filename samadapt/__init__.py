"""samadapt: adapt Segment Anything (SAM) to waste segmentation.

Public API::

    sam = samadapt.build_sam("vit_h", "sam_vit_h_4b8939.pth")  # SAM 2.1: samadapt.build_model("sam2.1_hiera_tiny", ...)
    model = samadapt.adapt(sam, "lora", rank=4)
    samadapt.save_adapter(model, "taco-lora.safetensors", dataset="taco")
    model = samadapt.load("taco-vith")
    masks, scores = model.predict(image, boxes=boxes)
"""

from ._version import __version__ as __version__  # the package version (pyproject reads it)
from .adapted import AdaptedSam, SamOutput, adapt
from .adapter_io import import_peft, load_adapter, read_adapter_metadata, save_adapter
from .adapter_store import adapter_name, list_adapters, load, publish_adapter
from .errors import (
    AdapterFileError,
    AdapterMismatchError,
    CheckpointError,
    CheckpointNotFoundError,
    ConfigError,
    DataError,
    ExportError,
    SamAdaptError,
    TrainingError,
    UnknownNameError,
)
from .exporters import export
from .exporters.peft import export_peft
from .models import MODEL_TYPES, ModelCard, build_sam, get_model_card, register_model_type
from .models.checkpoints import download_checkpoint
from .models.family import build_model, model_types
from .paths import samadapt_home
from .strategies import STRATEGIES, Strategy, StrategyConfig, get_strategy, register_strategy
from .transforms import SamTransform

__all__ = [
    "AdaptedSam",
    "AdapterFileError",
    "AdapterMismatchError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ConfigError",
    "DataError",
    "ExportError",
    "MODEL_TYPES",
    "ModelCard",
    "STRATEGIES",
    "SamAdaptError",
    "SamOutput",
    "SamTransform",
    "Strategy",
    "StrategyConfig",
    "TrainingError",
    "UnknownNameError",
    "adapt",
    "adapter_name",
    "build_model",
    "build_sam",
    "download_checkpoint",
    "export",
    "export_peft",
    "get_model_card",
    "get_strategy",
    "import_peft",
    "list_adapters",
    "load",
    "load_adapter",
    "model_types",
    "publish_adapter",
    "read_adapter_metadata",
    "register_model_type",
    "register_strategy",
    "samadapt_home",
    "save_adapter",
]
