"""Strategies: exactly the intended parameters train, the adapted model starts as SAM, options are
validated before anything changes (issue 2, points 3 and 5). Parametrised from the registries."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import pytest
import torch

import samadapt
from samadapt.errors import ConfigError, UnknownNameError
from samadapt.strategies.base import STRATEGIES, Strategy, StrategyConfig, register_strategy

DECODER = re.compile(r"mask_decoder\.")


def _intended(strategy: str, options: dict, name: str) -> bool:
    """Whether parameter ``name`` (relative to the Sam) should train: written from the published
    methods (REFERENCE section 3), independently of the strategies' code."""
    train_decoder = options.get("train_decoder", True) and bool(DECODER.match(name))
    if strategy == "decoder":
        return bool(DECODER.match(name))
    if strategy == "full":
        return True
    if strategy == "lora":
        return ".lora_" in name or train_decoder
    if strategy == "adapter":
        return ".adapter_" in name or name.startswith("image_encoder.prompt_generator.") or train_decoder
    if strategy == "bitfit":  # BitFit (Ben Zaken et al. 2022): the encoder's biases, and the decoder
        return (name.startswith("image_encoder.") and name.endswith(".bias")) or train_decoder
    raise AssertionError(
        f"strategy {strategy!r} was registered without a test of what it trains: add it to _intended "
        "in tests/strategies/test_strategies.py"
    )


# Parameters a box-prompted forward never uses: the mask-prompt branch (AdaptedSam passes no mask
# prompts) and the point-label embeddings. Only ``full`` makes them trainable.
BOX_PROMPT_UNUSED = re.compile(r"prompt_encoder\.(mask_downscaling\.|point_embeddings\.[01]\.|not_a_point_embed\.)")

# Non-default options that change what trains or where modules go.
VARIANTS = [(s, {}) for s in sorted(STRATEGIES)] + [
    ("lora", {"train_decoder": False}),
    ("lora", {"targets": ("qkv", "proj", "mlp"), "rank": 2}),
    ("lora", {"targets": ("mask_decoder.transformer.*_proj",), "train_decoder": False}),
    ("lora", {"use_dora": True}),  # DoRA: a magnitude per output row trains beside A and B
    ("adapter", {"prompt_generator": True}),
    ("adapter", {"placement": ("mlp",), "train_decoder": False}),
    ("adapter", {"placement": (), "prompt_generator": True}),
    ("bitfit", {"train_decoder": False}),
]
VARIANT_IDS = [f"{s}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'default'}" for s, o in VARIANTS]


def _trainable(model) -> set[str]:
    return {n for n, p in model.sam.named_parameters() if p.requires_grad}


def _with_grad(model) -> set[str]:
    return {n for n, p in model.sam.named_parameters() if p.grad is not None}


def _loss(model, images, boxes) -> torch.Tensor:
    out = model(images, boxes=boxes)
    return out.low_res_logits.square().mean() + out.iou_predictions.sum()


def _loss_all_heads(model, images, boxes) -> torch.Tensor:
    """Every output takes part (single- and multi-mask heads, IoU head), so that every trainable
    weight gets a non-zero gradient; the encoder runs once (``model(...)`` is ``decode(encode(...))``)."""
    embeddings = model.encode(images)
    outs = (model.decode(embeddings, boxes), model.decode(embeddings, boxes, multimask=True))
    return sum(o.low_res_logits.square().mean() + o.iou_predictions.sum() for o in outs)


def _check_intended(model, strategy, options):
    names = [n for n, _ in model.sam.named_parameters()]
    intended = {n for n in names if _intended(strategy, options, n)}
    assert _trainable(model) == intended
    assert {n for n, _ in model.trainable_named_parameters()} == intended
    assert set(model.trainable_state_dict()) == intended
    return intended


# ---------------------------------------------------------------------------- what trains
@pytest.mark.parametrize("model_type", sorted(samadapt.MODEL_TYPES))
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_backward_reaches_exactly_the_intended_parameters(strategy, model_type, make_mini):
    """A backward pass from ``model(images, boxes=...)``: official sizes on the meta device."""
    if model_type == "mini":
        model = samadapt.adapt(make_mini(), strategy)
        device = "cpu"
    else:
        with torch.device("meta"):
            model = samadapt.adapt(samadapt.build_sam(model_type, pretrained=False), strategy)
        device = "meta"
    intended = _check_intended(model, strategy, {})
    size = model.card.image_size
    images = torch.randn(2, 3, size, size, device=device)
    boxes = [torch.tensor([[10.0, 20.0, 120.0, 140.0]]), torch.tensor([[30.0, 30.0, 200.0, 150.0], [0, 0, 60, 90]])]
    model.train()
    _loss(model, images, boxes).backward()
    assert _with_grad(model) == {n for n in intended if not BOX_PROMPT_UNUSED.match(n)}


@pytest.mark.parametrize("strategy, options", VARIANTS[len(STRATEGIES) :], ids=VARIANT_IDS[len(STRATEGIES) :])
def test_options_change_the_trainable_set_as_intended(strategy, options, make_mini, mini_batch):
    model = samadapt.adapt(make_mini(), strategy, **options)
    intended = _check_intended(model, strategy, options)
    images, boxes = mini_batch
    _loss(model, images, boxes).backward()
    assert _with_grad(model) == intended


def test_where_the_inserted_modules_go(make_mini):
    depth = samadapt.get_model_card("mini").encoder_depth
    lora = samadapt.adapt(make_mini(), "lora", targets=("qkv", "mlp"))
    expected = {
        f"image_encoder.blocks.{i}.{layer}.lora_{ab}.default.weight"
        for i in range(depth)
        for layer in ("attn.qkv", "mlp.lin1", "mlp.lin2")
        for ab in "AB"
    }
    assert {n for n in _trainable(lora) if "lora_" in n} == expected
    adapter = samadapt.adapt(make_mini(), "adapter", prompt_generator=True)
    names = _trainable(adapter)
    for i in range(depth):
        for place in ("attn", "mlp"):
            prefix = f"image_encoder.blocks.{i}.adapter_{place}"
            assert {f"{prefix}.{layer}.{w}" for layer in ("down", "up") for w in ("weight", "bias")} <= names
        assert f"image_encoder.prompt_generator.lightweight_mlps.{i}.0.weight" in names
    assert "image_encoder.prompt_generator.hfc_embed.weight" in names


@pytest.mark.parametrize("strategy, options", VARIANTS, ids=VARIANT_IDS)
def test_optimizer_step_changes_exactly_the_trainable_weights(strategy, options, make_mini, mini_batch):
    """Two Adam steps (zero-initialised up-projections make the first step move only half of each
    LoRA / adapter pair): every trainable weight moves, every other tensor of the state dict,
    buffers included, stays bit-identical."""
    model = samadapt.adapt(make_mini(), strategy, **options)
    trainable = _trainable(model)
    before = {k: v.clone() for k, v in model.sam.state_dict().items()}
    opt = torch.optim.Adam([p for p in model.sam.parameters() if p.requires_grad], lr=1e-3)
    images, boxes = mini_batch
    model.train()
    for _ in range(2):
        opt.zero_grad()
        _loss_all_heads(model, images, boxes).backward()
        opt.step()
    after = model.sam.state_dict()
    assert after.keys() == before.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {n for n in trainable if not BOX_PROMPT_UNUSED.match(n)}


@pytest.mark.parametrize("strategy, options", VARIANTS, ids=VARIANT_IDS)
def test_adapted_model_starts_identical_to_the_base(strategy, options, make_mini, mini_batch):
    images, boxes = mini_batch
    base = make_mini()
    with torch.no_grad():
        reference = samadapt.adapt(copy.deepcopy(base), "decoder")(images, boxes=boxes, multimask=True)
        out = samadapt.adapt(base, strategy, **options)(images, boxes=boxes, multimask=True)
    assert torch.equal(out.low_res_logits, reference.low_res_logits)
    assert torch.equal(out.iou_predictions, reference.iou_predictions)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_encoder_is_frozen_only_where_no_gradient_reaches_it(strategy, make_mini):
    model = samadapt.adapt(make_mini(), strategy)
    assert model.encoder_is_frozen == (not any(n.startswith("image_encoder.") for n in _trainable(model)))


# ---------------------------------------------------------------------------- declared prefixes
@pytest.mark.parametrize("model_type", sorted(samadapt.MODEL_TYPES))
@pytest.mark.parametrize("strategy, options", VARIANTS, ids=VARIANT_IDS)
def test_the_declared_prefix_names_exactly_the_inserted_parameters(strategy, options, model_type):
    """What a strategy adds to SAM is what its ``prefix`` names (no parameter of SAM itself carries
    it), so marking trainable, saving and loading can filter by it."""
    with torch.device("meta"):
        base = {n for n, _ in samadapt.build_sam(model_type, pretrained=False).named_parameters()}
        model = samadapt.adapt(samadapt.build_sam(model_type, pretrained=False), strategy, **options)
    cls = type(STRATEGIES[strategy])
    names = {n for n, _ in model.sam.named_parameters()}
    assert not any(cls.owns(n) for n in base)
    added = {n for n in names if cls.owns(n)}
    assert added <= _trainable(model)
    # peft keeps the wrapped layer's own weight as ``<layer>.base_layer.weight``: renamed, not added
    renamed = {n.replace(".base_layer.", ".") for n in names - base - added}
    assert renamed <= base
    assert bool(added) == (cls.prefix is not None)


def test_a_prefix_is_checked_when_registered():
    @dataclass
    class Cfg(StrategyConfig):
        pass

    class Prefixed(Strategy):
        name = "prefixed_test"
        config_class = Cfg

        def apply(self, sam, config):  # pragma: no cover
            pass

    for bad, words in [
        ("Lora-", "'Lora-'"),
        ((), "()"),
        (("ok_", 3), "3"),
        ("lora_x", "overlaps"),
        ("adapter", "overlaps"),
    ]:
        Prefixed.prefix = bad
        with pytest.raises(ConfigError, match=re.escape(words)):
            register_strategy(Prefixed)
    assert "prefixed_test" not in STRATEGIES


# ---------------------------------------------------------------------------- LoRA targets
DECODER_ATTENTION = "mask_decoder.transformer.*_proj"


def _decoder_attention_lora(depth: int) -> set[str]:
    """The LoRA weights of every attention projection of the decoder's two-way transformer,
    written out from upstream's module layout (segment_anything/modeling/transformer.py)."""
    attentions = [
        f"layers.{i}.{a}"
        for i in range(depth)
        for a in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token")
    ]
    return {
        f"mask_decoder.transformer.{a}.{proj}.lora_{ab}.default.weight"
        for a in attentions + ["final_attn_token_to_image"]
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj")
        for ab in "AB"
    }


def test_lora_on_the_mask_decoder_is_a_target_pattern(make_mini, mini_batch, tmp_path):
    """LoRA on the decoder's attention: a module-path pattern trains exactly those LoRA weights,
    and the adapter file loads back strictly to the same numbers."""
    from samadapt.strategies.lora import LoraConfig

    model = samadapt.adapt(make_mini(), "lora", targets=(DECODER_ATTENTION,), train_decoder=False, rank=2)
    depth = len(model.sam.mask_decoder.transformer.layers)
    assert _trainable(model) == _decoder_attention_lora(depth)
    assert model.encoder_is_frozen  # no LoRA in the encoder: its embeddings may be cached
    images, boxes = mini_batch
    _loss(model, images, boxes).backward()
    assert _with_grad(model) == _decoder_attention_lora(depth)
    with torch.no_grad():
        for _, p in model.trainable_named_parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = samadapt.save_adapter(model, tmp_path / "decoder-lora.safetensors")
    loaded = samadapt.load_adapter(path, make_mini())
    assert loaded.config == LoraConfig(targets=(DECODER_ATTENTION,), train_decoder=False, rank=2)
    with torch.no_grad():
        ours, theirs = model(images, boxes=boxes), loaded(images, boxes=boxes)
        base = samadapt.adapt(make_mini(), "decoder")(images, boxes=boxes)
    assert torch.equal(ours.low_res_logits, theirs.low_res_logits)
    assert not torch.equal(ours.low_res_logits, base.low_res_logits)


def test_short_target_names_select_the_modules_they_always_did(make_mini):
    """``qkv`` / ``proj`` / ``mlp`` keep their modules and their peft regex (so earlier adapter files
    and peft exports stay as they were); the same layers written as a pattern train the same names."""
    from samadapt.strategies.lora import LoraConfig

    assert (
        LoraConfig(targets=("qkv", "mlp")).to_peft().target_modules
        == r"image_encoder\.blocks\.\d+\.(attn\.qkv|mlp\.lin[12])"
    )
    short = samadapt.adapt(make_mini(), "lora", targets=("qkv", "mlp"))
    pattern = samadapt.adapt(
        make_mini(), "lora", targets=("image_encoder.blocks.*.attn.qkv", "image_encoder.blocks.*.mlp.lin?")
    )
    assert _trainable(short) == _trainable(pattern)


@pytest.mark.parametrize(
    "targets, words",
    [
        (("mask_decoder.nothing_here*",), ["'mask_decoder.nothing_here*'", "no nn.Linear", "mask_decoder.transformer"]),
        (("prompt_encoder.*",), ["'prompt_encoder.*'", "no nn.Linear"]),
    ],
)
def test_a_pattern_that_selects_no_linear_layer_is_refused_before_anything_changes(targets, words, make_mini):
    sam = make_mini()
    snapshot = _untouched_snapshot(sam)
    with pytest.raises(ConfigError) as e:
        samadapt.adapt(sam, "lora", targets=targets)
    for word in words:
        assert word in str(e.value)
    assert_untouched(sam, snapshot)


@pytest.mark.parametrize("train_decoder", [False, True])
def test_decoder_lora_round_trips_through_a_peft_folder(train_decoder, make_mini, tmp_path):
    import peft

    model = samadapt.adapt(make_mini(), "lora", targets=(DECODER_ATTENTION,), train_decoder=train_decoder)
    with torch.no_grad():
        for _, p in model.trainable_named_parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = samadapt.export(model, to="peft", out=tmp_path / "peft")
    config = peft.PeftConfig.from_pretrained(str(folder))
    assert set(config.target_modules) == {n.rsplit(".lora_", 1)[0] for n in _decoder_attention_lora(2)}
    back = samadapt.import_peft(folder, make_mini())
    ours, theirs = model.trainable_state_dict(), back.trainable_state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


# ---------------------------------------------------------------------------- options and failures
def _untouched_snapshot(sam):
    return (
        {k: v.clone() for k, v in sam.state_dict().items()},
        [(n, type(m)) for n, m in sam.named_modules()],
        {n: p.requires_grad for n, p in sam.named_parameters()},
    )


def assert_untouched(sam, snapshot):
    """No weight, module, hook or flag of ``sam`` changed."""
    sd, modules, flags = snapshot
    now = sam.state_dict()
    assert now.keys() == sd.keys() and all(torch.equal(now[k], sd[k]) for k in sd)
    assert [(n, type(m)) for n, m in sam.named_modules()] == modules
    assert {n: p.requires_grad for n, p in sam.named_parameters()} == flags
    for m in sam.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    assert getattr(sam, "samadapt_strategy", None) is None


@pytest.mark.parametrize(
    "strategy, options, words",
    [
        ("lora", {"rank": 0}, ["`rank`", "0"]),
        ("lora", {"rank": 2.5}, ["`rank`", "2.5"]),
        ("lora", {"alpha": 0}, ["`alpha`", "0"]),
        ("lora", {"dropout": 1.0}, ["`dropout`", "1.0"]),
        ("lora", {"targets": ()}, ["`targets`", "[]", "mlp", "proj", "qkv"]),
        ("lora", {"targets": ("q",)}, ["`targets`", "'q'", "qkv"]),
        ("lora", {"rnak": 4}, ["rnak", "did you mean 'rank'", "valid options"]),
        ("lora", {"targets": ("decoder.q_proj",)}, ["`targets`", "'decoder.q_proj'", "mask_decoder"]),
        ("lora", {"targets": ("qkv", "qkv")}, ["`targets`", "['qkv', 'qkv']"]),
        ("adapter", {"placement": ("foo",)}, ["`placement`", "'foo'", "attn", "mlp"]),
        ("adapter", {"placement": ("mlp", "mlp")}, ["`placement`"]),
        ("adapter", {"placement": (), "prompt_generator": False}, ["adapts nothing"]),
        ("adapter", {"bottleneck_ratio": 0}, ["`bottleneck_ratio`", "0"]),
        ("adapter", {"scale": -1}, ["`scale`", "-1"]),
        ("adapter", {"prompt_ratio": 0}, ["`prompt_ratio`", "0"]),
        ("decoder", {"train_decoder": False}, ["train_decoder=False"]),
        ("full", {"train_decoder": False}, ["train_decoder=False"]),
    ],
)
def test_invalid_options_name_the_value_and_change_nothing(strategy, options, words, make_mini):
    sam = make_mini()
    snapshot = _untouched_snapshot(sam)
    with pytest.raises(ConfigError) as e:
        samadapt.adapt(sam, strategy, **options)
    for word in words:
        assert word in str(e.value)
    assert_untouched(sam, snapshot)


def test_unknown_strategy_lists_the_valid_ones(make_mini):
    sam = make_mini()
    snapshot = _untouched_snapshot(sam)
    with pytest.raises(UnknownNameError) as e:
        samadapt.adapt(sam, "lorra")
    assert "'lorra'" in str(e.value)
    for name in STRATEGIES:
        assert name in str(e.value)
    assert_untouched(sam, snapshot)


def test_adapting_twice_is_refused(make_mini):
    model = samadapt.adapt(make_mini(), "lora")
    snapshot = {k: v.clone() for k, v in model.sam.state_dict().items()}
    with pytest.raises(ConfigError, match="already adapted with 'lora'.*build_sam"):
        samadapt.adapt(model.sam, "adapter")
    assert model.sam.state_dict().keys() == snapshot.keys()


def test_strategy_registry_checks_names():
    class Bad(Strategy):
        name = "Bad-Name"
        config_class = StrategyConfig

        def apply(self, sam, config):  # pragma: no cover
            pass

    with pytest.raises(ConfigError, match="Bad-Name"):
        register_strategy(Bad)
    Bad.name = "decoder"
    with pytest.raises(ConfigError, match="registered already"):
        register_strategy(Bad)
    Bad.name, Bad.config_class = "bad", dict
    with pytest.raises(ConfigError, match="StrategyConfig"):
        register_strategy(Bad)
    assert "bad" not in STRATEGIES


def test_a_new_strategy_is_one_class_and_one_registry_line(make_mini, tmp_path, mini_batch):
    """The interface claim: a fourth kind of strategy (here, the encoder's LayerNorms) gets
    trainable-parameter selection, adapter files and strict loading for free."""

    @dataclass
    class NormConfig(StrategyConfig):
        pass

    class NormStrategy(Strategy):
        name = "norm_test"
        config_class = NormConfig
        description = "encoder LayerNorms trainable"

        def apply(self, sam, config):
            self.freeze_all(sam)
            for m in sam.image_encoder.modules():
                if isinstance(m, torch.nn.LayerNorm):
                    self.unfreeze(m)

    register_strategy(NormStrategy)
    try:
        model = samadapt.adapt(make_mini(), "norm_test")
        assert _trainable(model) and all(".norm" in n for n in _trainable(model))
        with torch.no_grad():
            for _, p in model.trainable_named_parameters():
                p.add_(0.1)
        path = samadapt.save_adapter(model, tmp_path / "norm.safetensors")
        loaded = samadapt.load_adapter(path, make_mini())
        images, boxes = mini_batch
        with torch.no_grad():
            assert torch.equal(model(images, boxes=boxes).low_res_logits, loaded(images, boxes=boxes).low_res_logits)
    finally:
        STRATEGIES.pop("norm_test", None)


def test_import_does_not_load_peft():
    """peft pulls in transformers (seconds): `import samadapt` leaves it until a LoRA model is built."""
    import subprocess
    import sys

    code = (
        "import sys, samadapt; assert 'peft' not in sys.modules, 'peft imported'; "
        "samadapt.strategies.get_strategy('lora').make_config(rank=2).to_peft(); assert 'peft' in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
