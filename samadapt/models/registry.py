"""Registry of SAM model types, each described by a card, and ``build_sam``.

The official architectures (``vit_b``, ``vit_l``, ``vit_h``) and the small ``mini`` model are all
built from upstream ``segment_anything.modeling`` modules; they differ only in the numbers on their
card (as upstream's ``build_sam_vit_*`` differ only in four sizes). Weights are loaded strictly
(:func:`load_state_strict`), with an error that names the model type a mismatched file looks like;
reading and hashing the files is :mod:`samadapt.models.checkpoints`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Mapping

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from ..errors import CheckpointError, ConfigError, UnknownNameError
from .checkpoints import OFFICIAL_CHECKPOINTS, file_sha256, read_checkpoint


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to build a SAM model type, plus where its weights come from."""

    name: str
    tag: str  # short form used in adapter names: "vitb", "mini", ...
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16
    description: str = ""
    checkpoint: str | None = None  # official file name, if any
    builtin_weights: str | None = None  # file inside samadapt/weights, if any
    license: str = "Apache-2.0 (SAM weights by Meta AI)"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ConfigError(f"model type name {self.name!r} must be lower-case letters, digits and '_'")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        if bad:
            raise ConfigError(f"global attention indexes {bad} outside 0..{self.encoder_depth - 1}")

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 for the official models)."""
        return self.image_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution mask logits (256 for the official models)."""
        return 4 * self.embedding_size

    def to_dict(self) -> dict:
        return asdict(self)


MODEL_TYPES: dict[str, ModelCard] = {}


def register_model_type(card: ModelCard) -> ModelCard:
    if card.name in MODEL_TYPES:
        raise ConfigError(f"model type {card.name!r} is registered already")
    if any(c.tag == card.tag for c in MODEL_TYPES.values()):
        raise ConfigError(f"model tag {card.tag!r} is used by another model type")
    MODEL_TYPES[card.name] = card
    return card


def get_model_card(model_type: str) -> ModelCard:
    try:
        return MODEL_TYPES[model_type]
    except KeyError:
        raise UnknownNameError(f"unknown model type {model_type!r}; choose one of {sorted(MODEL_TYPES)}") from None


def model_type_for_tag(tag: str) -> str:
    for card in MODEL_TYPES.values():
        if card.tag == tag:
            return card.name
    raise UnknownNameError(f"unknown model tag {tag!r}; choose one of {sorted(c.tag for c in MODEL_TYPES.values())}")


register_model_type(
    ModelCard(
        name="vit_b",
        tag="vitb",
        encoder_embed_dim=768,
        encoder_depth=12,
        encoder_num_heads=12,
        encoder_global_attn_indexes=(2, 5, 8, 11),
        checkpoint="sam_vit_b_01ec64.pth",
        description="SAM ViT-B (93.7M parameters), official architecture",
    )
)
register_model_type(
    ModelCard(
        name="vit_l",
        tag="vitl",
        encoder_embed_dim=1024,
        encoder_depth=24,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(5, 11, 17, 23),
        checkpoint="sam_vit_l_0b3195.pth",
        description="SAM ViT-L (312.3M parameters), official architecture",
    )
)
register_model_type(
    ModelCard(
        name="vit_h",
        tag="vith",
        encoder_embed_dim=1280,
        encoder_depth=32,
        encoder_num_heads=16,
        encoder_global_attn_indexes=(7, 15, 23, 31),
        checkpoint="sam_vit_h_4b8939.pth",
        description="SAM ViT-H (641.1M parameters), official architecture",
    )
)
register_model_type(
    ModelCard(
        name="mini",
        tag="mini",
        encoder_embed_dim=128,
        encoder_depth=4,
        encoder_num_heads=4,
        encoder_global_attn_indexes=(1, 3),
        image_size=256,
        patch_size=16,
        window_size=8,
        prompt_embed_dim=128,
        decoder_mlp_dim=512,
        decoder_num_heads=4,
        iou_head_hidden_dim=128,
        builtin_weights="mini.safetensors",
        description="Small SAM-architecture model for 2-core CPUs (256 px input), pretrained by "
        "recipes/pretrain_mini.py on generated generic scenes",
        license="Apache-2.0 (samadapt)",
    )
)


@dataclass(frozen=True)
class BaseInfo:
    """What a built SAM is: its model type and an id of its weights.

    ``base_id`` is ``"sha256:<hex>"`` for a checkpoint file, ``"builtin:<name>@<sha256>"`` for
    weights shipped inside samadapt, or ``"random:<model_type>"`` for an untrained model.
    """

    model_type: str
    base_id: str
    checkpoint: str | None = None


def base_info(sam: Sam) -> BaseInfo:
    """The :class:`BaseInfo` that ``build_sam`` attached, or one inferred from the architecture."""
    info = getattr(sam, "samadapt_base", None)
    if isinstance(info, BaseInfo):
        return info
    return BaseInfo(model_type=infer_model_type(sam), base_id="unknown")


def infer_model_type(sam: Sam) -> str:
    enc = sam.image_encoder
    for card in MODEL_TYPES.values():
        if (
            enc.img_size == card.image_size
            and len(enc.blocks) == card.encoder_depth
            and enc.patch_embed.proj.out_channels == card.encoder_embed_dim
            and sam.prompt_encoder.embed_dim == card.prompt_embed_dim
        ):
            return card.name
    raise UnknownNameError(
        f"this Sam does not match any registered model type; register a ModelCard for it (known: {sorted(MODEL_TYPES)})"
    )


def _guess_model_type(state: Mapping[str, torch.Tensor]) -> str | None:
    pe = state.get("image_encoder.pos_embed")
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    if pe is None:
        return None
    for name, card in MODEL_TYPES.items():
        if pe.shape[-1] == card.encoder_embed_dim and depth == card.encoder_depth:
            return name
    return None


def load_state_strict(
    module: torch.nn.Module, state: Mapping[str, torch.Tensor], *, model_type: str, source: str
) -> None:
    """``load_state_dict(strict=True)`` with an error that lists what differs and what the file is."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        guess = _guess_model_type(state)
        hint = (
            f" The file looks like a {guess!r} checkpoint: build with model_type={guess!r}."
            if guess and guess != model_type
            else " Check that the file is a SAM checkpoint of this model type."
        )

        def few(xs: list[str]) -> str:
            return ", ".join(xs[:5]) + (f" (+{len(xs) - 5} more)" if len(xs) > 5 else "")

        raise CheckpointError(
            f"checkpoint {source!r} does not fit model type {model_type!r}: "
            f"{len(missing)} missing keys [{few(missing)}], {len(unexpected)} unexpected keys "
            f"[{few(unexpected)}], {len(shapes)} shape mismatches [{few(shapes)}].{hint}"
        )
    module.load_state_dict(state, strict=True)


def build_sam_architecture(card: ModelCard) -> Sam:
    """Upstream modules at the card's sizes, randomly initialised (what upstream ``_build_sam`` does)."""
    emb = card.embedding_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=card.encoder_depth,
            embed_dim=card.encoder_embed_dim,
            img_size=card.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=card.encoder_num_heads,
            patch_size=card.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=card.encoder_global_attn_indexes,
            window_size=card.window_size,
            out_chans=card.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=card.prompt_embed_dim,
            image_embedding_size=(emb, emb),
            input_image_size=(card.image_size, card.image_size),
            mask_in_chans=card.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=card.prompt_embed_dim,
                mlp_dim=card.decoder_mlp_dim,
                num_heads=card.decoder_num_heads,
            ),
            transformer_dim=card.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=card.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam


def builtin_weights_path(card: ModelCard) -> Path | None:
    if card.builtin_weights is None:
        return None
    path = Path(str(resources.files("samadapt") / "weights" / card.builtin_weights))
    return path if path.is_file() else None


def build_sam(
    model_type: str,
    checkpoint: str | Path | None = None,
    *,
    pretrained: bool = True,
) -> Sam:
    """Build a SAM of a registered model type, in eval mode, on the current default device.

    Args:
        model_type: a registered name (``vit_b``, ``vit_l``, ``vit_h``, ``mini``).
        checkpoint: a SAM-format state dict file (official ``sam_vit_*.pth`` or a fine-tuned one in
            that format). Loaded strictly; an official file name has its sha256 checked.
        pretrained: with no checkpoint, load the weights built into samadapt where the model type
            has them (``mini``). ``False`` gives random weights.

    Build on the meta device (``with torch.device("meta"): build_sam("vit_h")``) to count
    parameters without allocating them.
    """
    card = get_model_card(model_type)
    sam = build_sam_architecture(card)
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        official = OFFICIAL_CHECKPOINTS.get(checkpoint.name)
        if official is not None and official.model_type != model_type:
            raise CheckpointError(
                f"{checkpoint.name!r} is the official {official.model_type!r} checkpoint, but model type "
                f"{model_type!r} was asked for: use model_type={official.model_type!r}"
            )
        # hash before unpickling: a truncated official download then fails with the sha256 message
        # and the download command rather than an unpickling error
        digest = file_sha256(checkpoint) if checkpoint.is_file() else None
        if official is not None and digest is not None and digest != official.sha256:
            raise CheckpointError(
                f"{str(checkpoint)!r} has sha256 {digest}, but the official {official.filename} has "
                f"{official.sha256}: the download is corrupt or incomplete. Delete it and run "
                f"`samadapt download-checkpoint {official.model_type}` (or download {official.url})."
            )
        state = read_checkpoint(checkpoint)
        load_state_strict(sam, state, model_type=model_type, source=str(checkpoint))
        info = BaseInfo(model_type, f"sha256:{digest}", str(checkpoint))
    elif pretrained and card.builtin_weights is not None:
        path = builtin_weights_path(card)
        if path is None:
            raise CheckpointError(
                f"the built-in weights {card.builtin_weights!r} of {model_type!r} are not installed; "
                "run `python recipes/pretrain_mini.py`, or pass pretrained=False for random weights"
            )
        from safetensors.torch import load_file

        digest = file_sha256(path, use_cache=False)
        card_file = path.with_suffix(".json")
        if card_file.is_file():
            expected = json.loads(card_file.read_text()).get("sha256")
            if expected and expected != digest:
                raise CheckpointError(
                    f"the built-in weights {str(path)!r} have sha256 {digest} but their card says {expected}: "
                    "the installation is corrupt; reinstall samadapt"
                )
        load_state_strict(sam, load_file(str(path)), model_type=model_type, source=str(path))
        info = BaseInfo(model_type, f"builtin:{card.name}@{digest}", None)
    else:
        info = BaseInfo(model_type, f"random:{model_type}", None)
    sam.eval()
    sam.samadapt_base = info
    return sam
