"""SAM 2.1 model types: one card each, and the official checkpoint files.

A card names an upstream Hydra config of Meta's ``sam2`` package and the overrides applied to it:
the four official architectures are the configs as published; the small test variant is the
``tiny`` config with a smaller Hiera trunk, a 256 px input and one memory-attention layer, built by
the same upstream code path (``sam2.build_sam.build_sam2`` with ``hydra_overrides_extra``). Nothing
of upstream is copied: the numbers of each architecture live in upstream's YAML files.

sha256 of the official files: as verified by independent public projects that download them
(micro-sam's ``micro_sam/v2/util.py`` ``HASHES`` through pooch, and several others that pin the
same digests and byte sizes); Meta's ``checkpoints/download_ckpts.sh`` lists no checksums. See
docs/checkpoints.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ...errors import ConfigError, UnknownNameError

#: Meta's download folder for the SAM 2.1 files (release of 2024-09-28)
OFFICIAL_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"


@dataclass(frozen=True)
class Sam2Card:
    """A SAM 2.1 model type.

    name: ``sam2.1_hiera_tiny`` ...; tag: short form for adapter names; config: the upstream Hydra
    config (``configs/sam2.1/...yaml``, inside the ``sam2`` package); overrides: Hydra overrides on
    it (empty for official architectures); image_size: the model's square input side S;
    checkpoint / sha256 / size_bytes: the official file, where there is one.
    """

    name: str
    tag: str
    config: str
    image_size: int = 1024
    overrides: tuple[str, ...] = ()
    checkpoint: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    description: str = ""
    license: str = "Apache-2.0 (SAM 2.1 weights by Meta AI)"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_.]*", self.name):
            raise ConfigError(f"model type name {self.name!r} must be lower-case letters, digits, '_' and '.'")
        if self.image_size % 16:
            raise ConfigError(f"image_size {self.image_size} of {self.name!r} is not a multiple of 16")

    @property
    def builtin_weights(self) -> None:
        """SAM 2.1 types have no weights inside samadapt (as ``ModelCard.builtin_weights``)."""
        return None

    @property
    def family(self) -> str:
        return "sam2"

    @property
    def url(self) -> str | None:
        return OFFICIAL_BASE_URL + self.checkpoint if self.checkpoint else None

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding (S / 16: 64 for the official models)."""
        return self.image_size // 16

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution mask logits and mask prompts (S / 4: 256)."""
        return self.image_size // 4

    @property
    def feature_sizes(self) -> tuple[tuple[int, int], ...]:
        """(h, w) of the decoder's inputs: the two high-resolution maps (S/4, S/8), then the
        image embedding (S/16). ``SAM2ImagePredictor`` hard-codes these for S = 1024."""
        s = self.image_size
        return ((s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16))


SAM2_MODEL_TYPES: dict[str, Sam2Card] = {}


def register_sam2_model_type(card: Sam2Card) -> Sam2Card:
    if card.name in SAM2_MODEL_TYPES:
        raise ConfigError(f"SAM 2.1 model type {card.name!r} is registered already")
    if any(c.tag == card.tag for c in SAM2_MODEL_TYPES.values()):
        raise ConfigError(f"model tag {card.tag!r} is used by another SAM 2.1 model type")
    SAM2_MODEL_TYPES[card.name] = card
    return card


def get_sam2_card(model_type: str) -> Sam2Card:
    try:
        return SAM2_MODEL_TYPES[model_type]
    except KeyError:
        raise UnknownNameError(
            f"unknown SAM 2.1 model type {model_type!r}; choose one of {sorted(SAM2_MODEL_TYPES)}"
        ) from None


def sam2_card_for_file(filename: str) -> Sam2Card | None:
    """The card whose official file is called ``filename``, if any."""
    for card in SAM2_MODEL_TYPES.values():
        if card.checkpoint == filename:
            return card
    return None


for _size, _cfg, _tag, _sha, _bytes, _params in (
    ("tiny", "t", "s21t", "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69", 156_008_466, "38.9M"),
    ("small", "s", "s21s", "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38", 184_416_285, "46.0M"),
    (
        "base_plus",
        "b+",
        "s21b",
        "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
        323_606_802,
        "80.8M",
    ),
    ("large", "l", "s21l", "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318", 898_083_611, "224.4M"),
):
    register_sam2_model_type(
        Sam2Card(
            name=f"sam2.1_hiera_{_size}",
            tag=_tag,
            config=f"configs/sam2.1/sam2.1_hiera_{_cfg}.yaml",
            checkpoint=f"sam2.1_hiera_{_size}.pt",
            sha256=_sha,
            size_bytes=_bytes,
            description=f"SAM 2.1 Hiera-{_size.replace('_', '-')} ({_params} parameters), official architecture",
        )
    )

#: The test variant: upstream's tiny config with a 5-block Hiera of width 16 (stages 1, 1, 2, 1;
#: global attention in block 3, since a stage's first block pools, as in every config), a 256 px
#: input and one memory-attention layer (unused on images). The prompt encoder and mask decoder
#: keep their official sizes (256 channels).
TEST_OVERRIDES = (
    "++model.image_size=256",
    "++model.image_encoder.trunk.embed_dim=16",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]",
    "++model.memory_attention.num_layers=1",
    "++model.memory_attention.layer.self_attention.feat_sizes=[16,16]",
    "++model.memory_attention.layer.cross_attention.feat_sizes=[16,16]",
)

register_sam2_model_type(
    Sam2Card(
        name="sam2.1_hiera_test",
        tag="s21test",
        config="configs/sam2.1/sam2.1_hiera_t.yaml",
        image_size=256,
        overrides=TEST_OVERRIDES,
        description="small random SAM 2.1 variant for CPU tests (tiny config, 5-block width-16 Hiera, 256 px)",
        license="Apache-2.0 (samadapt)",
    )
)
