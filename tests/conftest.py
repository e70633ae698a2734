"""Shared pytest fixtures. Each block below belongs to one area of the library; add yours in its
own block and leave the others as they are."""

from __future__ import annotations

# ============================================================================================
# Core fixtures: models, strategies, adapter files, the adapter store, CLI
# (test_models, test_parity, test_strategies, test_adapter_io, test_hub, test_sizes, test_cli)
# ============================================================================================
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from training_helpers import TINY_DEMO, TINY_RUN, tiny_config, train_here


@pytest.fixture(scope="session", autouse=True)
def _core_session_samadapt_home(tmp_path_factory):
    """SAMADAPT_HOME for the whole session (session- and module-scoped fixtures hash checkpoints,
    and the sha256 cache lives there): nothing is ever written to ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SAMADAPT_HOME", str(tmp_path_factory.mktemp("samadapt_home_session")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def samadapt_home_dir(tmp_path, monkeypatch) -> Path:
    """A fresh, empty SAMADAPT_HOME for every test."""
    home = tmp_path / "samadapt_home"
    monkeypatch.setenv("SAMADAPT_HOME", str(home))
    return home


def _random_checkpoint(path: Path, model_type: str, seed: int) -> Path:
    from samadapt.models.registry import build_sam_architecture, get_model_card

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        sam = build_sam_architecture(get_model_card(model_type))
    torch.save(sam.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def mini_checkpoint(tmp_path_factory) -> Path:
    """A ``mini`` checkpoint in SAM's format with seeded random weights (the built-in mini weights
    are produced by a recipe and may not be installed)."""
    return _random_checkpoint(tmp_path_factory.mktemp("mini_ckpt") / "mini_seed0.pth", "mini", 0)


@pytest.fixture(scope="session")
def other_mini_checkpoint(tmp_path_factory) -> Path:
    """A second, differently initialised ``mini`` checkpoint (another base id)."""
    return _random_checkpoint(tmp_path_factory.mktemp("mini_ckpt_other") / "mini_seed1.pth", "mini", 1)


@pytest.fixture
def make_mini(mini_checkpoint) -> Callable:
    """``make_mini(checkpoint=None)``: a fresh ``mini`` base (same weights and base id every call)."""
    import samadapt

    def make(checkpoint: Path | None = None):
        return samadapt.build_sam("mini", checkpoint or mini_checkpoint)

    return make


@pytest.fixture
def rgb_image() -> np.ndarray:
    """A small RGB uint8 image (90, 120, 3), not square: a bright and a dark object on textured ground."""
    rng = np.random.default_rng(0)
    img = rng.integers(60, 120, size=(90, 120, 3), dtype=np.uint8)
    img[20:60, 15:55] = (230, 200, 40)
    img[50:85, 70:110] = (20, 30, 160)
    return img


@pytest.fixture
def mini_batch() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Two preprocessed mini-size images (2, 3, 256, 256) and their boxes (in the input frame)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 256, 256, generator=g)
    boxes = [
        torch.tensor([[10.0, 20.0, 120.0, 140.0]]),
        torch.tensor([[30.0, 30.0, 200.0, 150.0], [0.0, 0.0, 60.0, 90.0]]),
    ]
    return images, boxes


@pytest.fixture(scope="session")
def vit_b_checkpoint(tmp_path_factory) -> Path:
    """A ``vit_b`` checkpoint in the official format: upstream ``sam_model_registry["vit_b"]()``
    with random weights, ``torch.save`` of its state dict, under a non-official file name (an
    official name would trigger the sha256 check). Built once per session (some seconds)."""
    from segment_anything import sam_model_registry

    with torch.random.fork_rng():
        torch.manual_seed(0)
        sam = sam_model_registry["vit_b"]()
    path = tmp_path_factory.mktemp("vit_b_ckpt") / "vit_b_random.pth"
    torch.save(sam.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def vit_b_upstream(vit_b_checkpoint):
    """Upstream's own ``Sam`` loaded from :func:`vit_b_checkpoint` (read-only: copy before changing)."""
    from segment_anything import sam_model_registry

    return sam_model_registry["vit_b"](checkpoint=str(vit_b_checkpoint)).eval()


@pytest.fixture(scope="session")
def vit_b_base(vit_b_checkpoint):
    """``samadapt.build_sam("vit_b", checkpoint)`` (read-only: ``copy.deepcopy`` before adapting)."""
    import samadapt

    return samadapt.build_sam("vit_b", vit_b_checkpoint)


# ============================================================================================
# (other areas: add your fixtures below, in your own block)
# ============================================================================================


# ============================================================================================
# Training fixtures: demo data, tiny runs, Accelerate state (test_training, test_recipes)
# ============================================================================================
#: a run that takes seconds on a 2-core CPU (the demo data is generated with the same counts once)


@pytest.fixture(scope="session")
def demo_data_root(tmp_path_factory) -> Path:
    """The generated demo dataset (6 training / 3 validation images), written once per session and
    shared by every tiny training run (pass it as ``--data-root``)."""
    from samadapt.data import make_demo_dataset

    root = tmp_path_factory.mktemp("demo_data") / "demo-waste"
    make_demo_dataset(root, domain="waste", n_train=TINY_DEMO["train"], n_val=TINY_DEMO["val"], seed=0, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_run_args(demo_data_root) -> list[str]:
    """``recipes/finetune.py`` options of a tiny run: 2 epochs of 3 steps on the session demo data, no
    automatic-mask calibration at its end."""
    run = [(f"--{k.replace('_', '-')}", str(v)) for k, v in TINY_RUN.items()]
    demo = [("--demo-train-images", str(TINY_DEMO["train"])), ("--demo-val-images", str(TINY_DEMO["val"]))]
    return ["--data-root", str(demo_data_root), *(a for pair in demo + run for a in pair), "--no-progress"]


@pytest.fixture
def reset_accelerate():
    """Forget Accelerate's process-wide state after a test that built an ``Accelerator`` in-process
    (the next one may want other settings)."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


# ============================================================================================
# Export fixtures (test_export)
# ============================================================================================
@pytest.fixture(scope="session")
def perturb() -> Callable:
    """``perturb(model, scale=0.05, seed=0)``: move every trainable weight of an ``AdaptedSam`` as
    training would (zero-initialised LoRA B, adapter up-projections and prompts included), so an
    export that dropped the adaptation gives different numbers. Returns the model."""

    def move(model, scale: float = 0.05, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _, p in model.trainable_named_parameters():
                p.add_(scale * torch.randn(p.shape, generator=g).to(p.device, p.dtype))
        return model

    return move


@pytest.fixture(scope="session")
def assert_adapter_blocks_refused() -> Callable:
    """``check(adapter_model, decoder_model, block, out)``: the formats that cannot carry added
    modules (sam, hf, peft) refuse the ``adapter`` strategy's blocks (``block``: the regex of the
    first block's module path), peft refuses a non-LoRA model, and nothing is written under ``out``."""
    from samadapt.errors import ExportError
    from samadapt.exporters import FORMATS, export

    def check(adapter_model, decoder_model, block: str, out: Path) -> None:
        carriers = [f.name for f in FORMATS.values() if f.carries_added_modules]
        assert carriers == ["onnx"]
        for fmt in ("sam", "hf", "peft"):
            with pytest.raises(
                ExportError,
                match=rf"this 'adapter' model has modules .*{block}\.adapter_attn.* "
                rf"the '{fmt}' format cannot carry it; export it with to='onnx'",
            ):
                export(adapter_model, to=fmt, out=out / fmt)
        with pytest.raises(ExportError, match="only 'lora' adapters have a peft format; this one is 'decoder'"):
            export(decoder_model, to="peft", out=out / "peft")
        assert not out.exists() or list(out.iterdir()) == []  # nothing written, no temporary left behind

    return check


# ============================================================================================
# Prompt-free segmentation fixtures (test_segment_*)
# ============================================================================================
@pytest.fixture
def pretrained_mini():
    """The built-in pretrained ``mini``, zero-shot (decoder strategy: weights exactly the base's), eval mode."""
    import samadapt

    return samadapt.adapt(samadapt.build_sam("mini"), "decoder").eval()


@pytest.fixture(scope="session")
def classify_adapter(tmp_path_factory, demo_data_root) -> Path:
    """A tiny ``decoder`` adapter of the pretrained ``mini`` trained with ``--classify`` on the session
    demo data (trained once per session, about 10 s): its file."""
    from samadapt.config import TrainConfig

    cfg = tiny_config(
        demo_data_root,
        tmp_path_factory.mktemp("classify_run"),
        prompts_per_image=8,
        lr=1e-3,
        classify=True,
        # the automatic-mask calibration at the end of training, as by default (tests/segment/test_segment_auto.py)
        auto_calibration_images=TrainConfig.__dataclass_fields__["auto_calibration_images"].default,
    )
    return train_here(cfg).adapter_path


# ============================================================================================
# Real data fixtures (../shared/realdata beside the repository; tests skip where it is absent)
# ============================================================================================
REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def trashcan_coco(tmp_path_factory) -> Path:
    """The 3,247 real TrashCan frames of ``../shared/realdata/trashcan``, imported once per session
    (instance version, about 10 s): the root of the ``trashcan`` layout."""
    source = REALDATA / "trashcan"
    if not (source / "original_data").is_dir():
        pytest.skip(f"TrashCan frames not found at {source}")
    from samadapt.data.importers import import_trashcan

    return import_trashcan(source, tmp_path_factory.mktemp("tc") / "coco", versions=["instance"], progress=False).out


# ============================================================================================
# The browser of the annotation page's tests (tests/test_annotate_*browser.py)
# ============================================================================================
@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium driven by Playwright (skips where either is missing)."""
    from annotate_helpers import CHROMIUM, CHROMIUM_ARGS, chromium_or_skip

    sync_api = chromium_or_skip()
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
