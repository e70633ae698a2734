"""SAM 2.1, the second model family, on Meta's ``sam2`` package (docs/sam2.md).

Cards of the model types (:mod:`.cards`), building and checkpoint loading (:mod:`.build`), the
predictor's pre- and postprocessing (:mod:`.transforms`), a differentiable batched forward
(:mod:`.forward`) and inference (:mod:`.predict`). Importing this package does not import ``sam2``:
the functions that need it call :func:`require_sam2`, whose error names the install command.
"""

from .build import INSTALL_HINT, build_sam2_model, guess_sam2_model_type, require_sam2
from .cards import SAM2_MODEL_TYPES, Sam2Card, get_sam2_card, sam2_card_for_file
from .forward import Sam2Features, decode_prompts, encode_images
from .predict import predict, predict_batch
from .transforms import Sam2Transform

__all__ = [
    "INSTALL_HINT",
    "SAM2_MODEL_TYPES",
    "Sam2Card",
    "Sam2Features",
    "Sam2Transform",
    "build_sam2_model",
    "decode_prompts",
    "encode_images",
    "get_sam2_card",
    "guess_sam2_model_type",
    "predict",
    "predict_batch",
    "require_sam2",
    "sam2_card_for_file",
]
