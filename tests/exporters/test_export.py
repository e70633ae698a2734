"""Exports, each checked by the runtime that reads it (issue 12).

- ``sam``: upstream ``SamPredictor`` on the exported file, in a Python where samadapt cannot be
  imported, gives ``AdaptedSam.predict``'s masks and scores (``sam_model_registry["vit_b"]`` for ViT-B;
  upstream modules at the card's sizes for ``mini``, which has no registry entry).
- ``onnx``: onnxruntime's CPU provider: encoder embeddings within 1e-4 (relative), decoder masks equal
  to ``predict`` for the decoder, lora and adapter strategies.
- ``hf``: ``transformers.SamModel`` with ``SamProcessor``: masks with IoU >= 0.99 to ours.
- every format: atomic, ``force``, metadata, a missing base named with its sha256, refusals.

Models are perturbed (``perturb``) so the adaptation changes the numbers. ``mini`` runs in seconds;
the ViT-B tests (random-weight official architecture, ``slow``) run a few encoder passes each.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from script_helpers import run_script

import samadapt
from samadapt import cli
from samadapt.errors import CheckpointNotFoundError, ConfigError, ExportError, UnknownNameError
from samadapt.exporters import FORMATS, METADATA_FILE
from samadapt.models.checkpoints import OFFICIAL_CHECKPOINTS, file_sha256

BOXES = np.array([[15, 20, 55, 60], [70, 50, 110, 85]], dtype=np.float32)
CLICKS = np.array([[35, 40], [90, 70]], dtype=np.float32)  # one prompt of two clicks
CLICK_LABELS = np.array([1, 0])
QKV = "image_encoder.blocks.0.attn.qkv.weight"
ONNX_STRATEGIES = [("decoder", {}), ("lora", {}), ("lora", {"use_dora": True}), ("adapter", {"prompt_generator": True})]
ONNX_IDS = ["decoder", "lora", "dora", "adapter"]


def _image(seed: int = 0) -> np.ndarray:
    """(90, 120, 3) uint8, not square: a bright and a dark object on textured ground."""
    rng = np.random.default_rng(seed)
    img = rng.integers(60, 120, size=(90, 120, 3), dtype=np.uint8)
    img[20:60, 15:55] = (230, 200, 40)
    img[50:85, 70:110] = (20, 30, 160)
    return img


def _high_res_logits(model, low: np.ndarray, size) -> np.ndarray:
    return model.transform.postprocess_logits(torch.from_numpy(low), size).numpy()


def _assert_masks_equal(ours: np.ndarray, theirs: np.ndarray, our_logits: np.ndarray, tol: float = 1e-3) -> None:
    """Equal masks; a pixel may differ only where our logit is within float noise of the threshold."""
    assert ours.shape == theirs.shape
    differ = ours != theirs
    assert not (differ & (np.abs(our_logits) > tol)).any(), np.abs(our_logits[differ]).max()
    assert differ.mean() < 1e-3


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


# ---------------------------------------------------------------------------- the runtimes, as a user runs them
def _upstream_predictions(
    checkpoints: list[Path], image: np.ndarray, boxes: np.ndarray, tmp: Path, *, registry=None, card=None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per checkpoint: masks (N, H, W), scores (N,) from upstream SamPredictor, in one fresh Python
    where samadapt cannot be imported."""
    np.save(tmp / "image.npy", image)
    outs = [tmp / f"upstream{i}.npz" for i in range(len(checkpoints))]
    spec = {
        "registry": registry,
        "card": card,
        "checkpoints": [str(c) for c in checkpoints],
        "image": str(tmp / "image.npy"),
        "boxes": boxes.tolist(),
        "outs": [str(o) for o in outs],
    }
    script = Path(__file__).resolve().parents[1] / "upstream_sam_predict.py"
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(spec)], capture_output=True, text=True, cwd=tmp, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [(np.load(o)["masks"], np.load(o)["scores"]) for o in outs]


class OnnxPair:
    """encoder.onnx + decoder.onnx of an export folder, on onnxruntime's CPU provider."""

    def __init__(self, folder: Path, encoder: str = "encoder.onnx", decoder: str = "decoder.onnx") -> None:
        import onnxruntime as ort

        self.encoder = ort.InferenceSession(str(folder / encoder), providers=["CPUExecutionProvider"])
        self.decoder = ort.InferenceSession(str(folder / decoder), providers=["CPUExecutionProvider"])

    def embed(self, image: np.ndarray) -> np.ndarray:
        return self.encoder.run(None, {"image": image})[0]

    def decode(self, embeddings: np.ndarray, coords: np.ndarray, labels: np.ndarray, size) -> tuple:
        """coords (N, 2) in the model's input frame, labels (N,); returns masks (H, W) bool, the
        IoU prediction, and the low-res logits (S/4, S/4), as a labelling tool reads them."""
        low = self.decoder.get_inputs()[3].shape[-1]
        masks, iou, low_res = self.decoder.run(
            None,
            {
                "image_embeddings": embeddings,
                "point_coords": coords[None].astype(np.float32),
                "point_labels": labels[None].astype(np.float32),
                "mask_input": np.zeros((1, 1, low, low), np.float32),
                "has_mask_input": np.zeros(1, np.float32),
                "orig_im_size": np.array(size, np.float32),
            },
        )
        return masks[0, 0] > 0, float(iou[0, 0]), low_res[0, 0]


def _check_onnx_against_predict(model, folder: Path, image: np.ndarray, embeddings: torch.Tensor | None = None):
    """Encoder embeddings within 1e-4 relative; decoder masks equal to predict for boxes (2 points:
    the best multimask output) and for two clicks plus the padding point (the single-mask output)."""
    pair = OnnxPair(folder)
    size = image.shape[:2]
    x = model.transform.preprocess_image(image)[None]
    if embeddings is None:
        with torch.no_grad():
            embeddings = model.encode(x)
    theirs = pair.embed(x.numpy())
    ours = embeddings.numpy()
    assert np.abs(theirs - ours).max() <= 1e-4 * np.abs(ours).max()
    ((masks, scores, low),) = model.predict_batch(
        [image], [BOXES], multimask=True, return_logits=True, image_embeddings=[embeddings[0]]
    )
    for i, box in enumerate(BOXES):
        best = int(np.argmax(scores[i]))
        coords = model.transform.apply_boxes(box, size).numpy().reshape(2, 2)
        mask, iou, low_res = pair.decode(theirs, coords, np.array([2, 3]), size)
        assert abs(iou - scores[i, best]) <= 1e-4
        np.testing.assert_allclose(low_res, low[i, best], rtol=0, atol=1e-3)
        _assert_masks_equal(masks[i, best], mask, _high_res_logits(model, low[i, best], size))
    ((masks, scores, low),) = model.predict_batch(
        [image], [None], [CLICKS[None]], [CLICK_LABELS[None]], return_logits=True, image_embeddings=[embeddings[0]]
    )
    coords = np.concatenate([model.transform.apply_points(CLICKS, size).numpy(), [[0.0, 0.0]]])
    mask, iou, _ = pair.decode(theirs, coords, np.array([*CLICK_LABELS, -1]), size)
    assert abs(iou - scores[0]) <= 1e-4
    _assert_masks_equal(masks[0], mask, _high_res_logits(model, low[0, 0], size))
    return theirs


def _hf_masks(folder: Path, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, H, W) bool from transformers' SamModel + SamProcessor loaded from the folder."""
    from transformers import SamModel, SamProcessor

    hf_model = SamModel.from_pretrained(str(folder)).eval()
    processor = SamProcessor.from_pretrained(str(folder))
    inputs = processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
    with torch.no_grad():
        out = hf_model(**inputs, multimask_output=False)
    masks = processor.post_process_masks(out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])
    return masks[0][:, 0].numpy()


# ---------------------------------------------------------------------------- sam (mini)
def test_mini_sam_export_runs_in_upstream_without_samadapt(make_mini, perturb, tmp_path):
    """decoder, lora (DoRA too) and full fold into plain SAM weights: upstream SamPredictor on each
    file gives our masks and scores."""
    image = _image()
    base = make_mini().state_dict()
    with torch.device("meta"):
        upstream_keys = set(samadapt.build_sam("mini", pretrained=False).state_dict())
    paths, ours = [], []
    for strategy, options in (("decoder", {}), ("lora", {}), ("lora", {"use_dora": True}), ("full", {})):
        model = perturb(samadapt.adapt(make_mini(), strategy, **options)).eval()
        paths.append(samadapt.export(model, to="sam", out=tmp_path / f"{strategy}-{len(paths)}.pth"))
        state = torch.load(paths[-1], weights_only=True)
        assert set(state) == upstream_keys
        changed = "mask_decoder.mask_tokens.weight" if strategy == "decoder" else QKV
        assert not torch.equal(state[changed], base[changed])  # the adaptation is in the file
        ours.append(model.predict(image, boxes=BOXES, return_logits=True))
    upstream = _upstream_predictions(paths, image, BOXES, tmp_path, card=dataclasses.asdict(model.card))
    for (masks, scores, low), (up_masks, up_scores) in zip(ours, upstream):
        np.testing.assert_allclose(up_scores, scores, rtol=0, atol=1e-4)
        _assert_masks_equal(masks, up_masks, _high_res_logits(model, low[:, 0], image.shape[:2]))


def test_sam_export_refuses_adapter_blocks_naming_the_formats_that_carry_them(
    make_mini, tmp_path, assert_adapter_blocks_refused
):
    adapter, decoder = samadapt.adapt(make_mini(), "adapter"), samadapt.adapt(make_mini(), "decoder")
    assert_adapter_blocks_refused(adapter, decoder, r"blocks\.0", tmp_path / "exports")


# ---------------------------------------------------------------------------- onnx (mini)
@pytest.mark.parametrize("strategy, options", ONNX_STRATEGIES, ids=ONNX_IDS)
def test_mini_onnx_pair_matches_predict_in_onnxruntime(strategy, options, make_mini, perturb, tmp_path):
    model = perturb(samadapt.adapt(make_mini(), strategy, **options)).eval()
    sdpa_before = model.sdpa_attention
    folder = samadapt.export(model, to="onnx", out=tmp_path / "onnx")
    assert sorted(p.name for p in folder.iterdir()) == ["decoder.onnx", "encoder.onnx", METADATA_FILE]
    assert model.sdpa_attention == sdpa_before  # the tracing switches were undone
    image = _image()
    theirs = _check_onnx_against_predict(model, folder, image)
    # a portrait image: the decoder's crop of the padding follows orig_im_size (upstream's traced
    # graph keeps the export's dummy size there, see samadapt.exporters.onnx.dynamic_crop_decoder)
    _check_onnx_against_predict(model, folder, np.ascontiguousarray(image.transpose(1, 0, 2)))
    if strategy != "decoder":  # the encoder's adaptation is in the graph
        with torch.no_grad():
            base = make_mini().image_encoder(model.transform.preprocess_image(image)[None]).numpy()
        assert np.abs(theirs - base).max() > 1e-2 * np.abs(base).max()


def test_onnx_decoder_has_upstream_interface(make_mini, tmp_path):
    import onnx
    from segment_anything.utils.onnx import SamOnnxModel  # noqa: F401  (the interface we promise)

    folder = samadapt.export(samadapt.adapt(make_mini(), "decoder"), to="onnx", out=tmp_path / "onnx")
    decoder = onnx.load(str(folder / "decoder.onnx"))
    assert [i.name for i in decoder.graph.input] == [
        "image_embeddings",
        "point_coords",
        "point_labels",
        "mask_input",
        "has_mask_input",
        "orig_im_size",
    ]
    assert [o.name for o in decoder.graph.output] == ["masks", "iou_predictions", "low_res_masks"]
    encoder = onnx.load(str(folder / "encoder.onnx"))
    assert [i.name for i in encoder.graph.input] == ["image"]
    dims = [d.dim_value for d in encoder.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 256, 256]
    assert [o.name for o in encoder.graph.output] == ["image_embeddings"]


def test_onnx_rgb_encoder_and_int8_pair(make_mini, perturb, tmp_path):
    """encoder_rgb.onnx on the resized RGB image equals encoder.onnx on the preprocessed one; the
    int8 pair has the same interface, is smaller, and its masks stay close to fp32's."""
    from segment_anything.utils.transforms import ResizeLongestSide

    model = perturb(samadapt.adapt(make_mini(), "adapter", prompt_generator=True)).eval()
    folder = samadapt.export(model, to="onnx", out=tmp_path / "onnx", quantize=True, rgb_encoder=True)
    image = _image()
    fp32 = OnnxPair(folder)
    x = model.transform.preprocess_image(image)[None].numpy()
    rgb = ResizeLongestSide(model.card.image_size).apply_image(image).astype(np.float32)
    import onnxruntime as ort

    from_rgb = ort.InferenceSession(str(folder / "encoder_rgb.onnx"), providers=["CPUExecutionProvider"])
    emb = fp32.embed(x)
    np.testing.assert_allclose(from_rgb.run(None, {"image": rgb})[0], emb, rtol=0, atol=1e-4 * np.abs(emb).max())
    assert sorted(p.name for p in folder.glob("*.onnx")) == [
        "decoder.onnx",
        "decoder_int8.onnx",
        "encoder.onnx",
        "encoder_int8.onnx",
        "encoder_rgb.onnx",
        "encoder_rgb_int8.onnx",
    ]
    int8 = OnnxPair(folder, "encoder_int8.onnx", "decoder_int8.onnx")
    for name in ("encoder", "decoder", "encoder_rgb"):
        assert (folder / f"{name}_int8.onnx").stat().st_size < 0.5 * (folder / f"{name}.onnx").stat().st_size
    coords = model.transform.apply_boxes(BOXES[0], image.shape[:2]).numpy().reshape(2, 2)
    m32, _, _ = fp32.decode(emb, coords, np.array([2, 3]), image.shape[:2])
    m8, _, _ = int8.decode(int8.embed(x), coords, np.array([2, 3]), image.shape[:2])
    assert m32.any() and _iou(m32, m8) > 0.5  # the accuracy cost itself is measured in benchmarks/


def test_onnx_weights_move_to_a_data_file_above_the_size_limit(make_mini, tmp_path):
    """The path ViT-H takes (its encoder is over protobuf's 2 GiB): forced here with a tiny limit."""
    from samadapt.exporters.onnx import write_onnx

    model = samadapt.adapt(make_mini(), "decoder").eval()
    (tmp_path / "big").mkdir()
    write_onnx(model, tmp_path / "big", {"strategy": "decoder"}, external_data_bytes=1)
    assert (tmp_path / "big" / "encoder.onnx.data").is_file()
    assert (tmp_path / "big" / "encoder.onnx").stat().st_size < 200_000
    image = _image()
    x = model.transform.preprocess_image(image)[None]
    with torch.no_grad():
        ours = model.encode(x).numpy()
    theirs = OnnxPair(tmp_path / "big").embed(x.numpy())
    assert np.abs(theirs - ours).max() <= 1e-4 * np.abs(ours).max()


# ---------------------------------------------------------------------------- hf (mini)
@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_mini_hf_export_loads_in_transformers_and_gives_our_masks(use_dora, make_mini, perturb, tmp_path):
    """transformers' SamConfig expresses mini (256 px, 128-dim prompts, window 8)."""
    model = perturb(samadapt.adapt(make_mini(), "lora", use_dora=use_dora)).eval()
    folder = samadapt.export(model, to="hf", out=tmp_path / "hf")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "sam" and config["vision_config"]["image_size"] == 256
    image = _image()
    masks, _ = model.predict(image, boxes=BOXES)
    theirs = _hf_masks(folder, image, BOXES)
    assert theirs.shape == masks.shape
    for ours, hf in zip(masks, theirs):
        assert ours.sum() > 50 and _iou(ours, hf) >= 0.99


def test_transformers_key_mapping_fills_sammodel_exactly(make_mini):
    """Every SamModel tensor gets exactly one upstream tensor, shapes equal (all registered types)."""
    from transformers import SamModel

    from samadapt.exporters.hf import to_transformers_keys, transformers_config

    for model_type in samadapt.MODEL_TYPES:
        with torch.device("meta"):
            upstream = samadapt.build_sam(model_type, pretrained=False).state_dict()
            theirs = SamModel(transformers_config(samadapt.get_model_card(model_type))).state_dict()
        mapped = to_transformers_keys(upstream)
        assert set(mapped) == set(theirs), model_type
        assert all(mapped[k].shape == theirs[k].shape for k in theirs), model_type


# ---------------------------------------------------------------------------- peft through the command
def test_peft_export_under_the_export_command(make_mini, perturb, tmp_path):
    import peft

    model = perturb(samadapt.adapt(make_mini(), "lora"))
    folder = samadapt.export(model, to="peft", out=tmp_path / "peft")
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "mask_decoder.safetensors",
        METADATA_FILE,
    ]
    assert isinstance(peft.PeftConfig.from_pretrained(str(folder)), peft.LoraConfig)
    back = samadapt.import_peft(folder, make_mini())
    ours, theirs = model.trainable_state_dict(), back.trainable_state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


# ---------------------------------------------------------------------------- every format: files and errors
def test_every_export_records_the_adapter_metadata(make_mini, mini_checkpoint, perturb, tmp_path):
    model = perturb(samadapt.adapt(make_mini(), "lora"))
    adapter = samadapt.save_adapter(model, tmp_path / "a.safetensors", dataset="demo", metrics={"mean_iou": 0.42})
    want = {
        "strategy": "lora",
        "model_type": "mini",
        "base_sha256": file_sha256(mini_checkpoint),
        "dataset": "demo",
        "metrics": {"mean_iou": 0.42},
        "adapter_file": "a.safetensors",
        "adapter_sha256": file_sha256(adapter),
    }
    recorded = {}
    for fmt in FORMATS:
        out = samadapt.export(adapter, to=fmt, out=tmp_path / f"out-{fmt}", checkpoint=mini_checkpoint)
        side = out / METADATA_FILE if out.is_dir() else out.with_name(out.name + ".json")
        recorded[fmt] = json.loads(side.read_text())
        assert recorded[fmt]["exported_as"] == fmt
        assert {k: recorded[fmt][k] for k in want} == want
        assert recorded[fmt]["strategy_config"] == json.loads(model.config.to_json())
    import onnx

    for name in ("encoder.onnx", "decoder.onnx"):  # inside the graphs too
        props = {p.key: p.value for p in onnx.load(str(tmp_path / "out-onnx" / name)).metadata_props}
        assert json.loads(props["samadapt"]) == recorded["onnx"]
    with safe_open(str(tmp_path / "out-hf" / "model.safetensors"), framework="pt") as f:
        header = f.metadata()
    assert header["format"] == "pt" and json.loads(header["samadapt"]) == recorded["hf"]
    assert json.loads((tmp_path / "out-hf" / "config.json").read_text())["samadapt"] == recorded["hf"]
    with safe_open(str(tmp_path / "out-peft" / "adapter_model.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["samadapt"]) == recorded["peft"]


def test_export_refuses_to_overwrite_without_force(make_mini, perturb, tmp_path):
    first = samadapt.adapt(make_mini(), "decoder")
    second = perturb(samadapt.adapt(make_mini(), "decoder"))
    exports = tmp_path / "exports"
    for fmt in ("sam", "onnx"):
        out = samadapt.export(first, to=fmt, out=exports / fmt)
        before = out.read_bytes() if out.is_file() else (out / "decoder.onnx").read_bytes()
        with pytest.raises(ExportError, match=re.escape(f"'{out}' exists; pass force=True (--force) to replace it")):
            samadapt.export(second, to=fmt, out=out)
        after = out.read_bytes() if out.is_file() else (out / "decoder.onnx").read_bytes()
        assert after == before
        samadapt.export(second, to=fmt, out=out, force=True)
        replaced = out.read_bytes() if out.is_file() else (out / "decoder.onnx").read_bytes()
        assert replaced != before
    assert sorted(p.name for p in exports.iterdir()) == ["onnx", "sam", "sam.json"]


@pytest.mark.parametrize("fmt, module, writer", [("sam", "sam", "write_sam"), ("onnx", "onnx", "write_onnx")])
def test_a_failed_export_leaves_nothing_or_the_old_output(fmt, module, writer, make_mini, tmp_path, monkeypatch):
    import importlib

    model = samadapt.adapt(make_mini(), "decoder")
    exports = tmp_path / "exports"
    mod = importlib.import_module(f"samadapt.exporters.{module}")
    real = getattr(mod, writer)

    def crash(model, out, metadata, **options):
        real(model, out, metadata, **options)  # the whole output is written ...
        raise RuntimeError("disk full")  # ... and then the export dies

    monkeypatch.setattr(mod, writer, crash)
    with pytest.raises(RuntimeError, match="disk full"):
        samadapt.export(model, to=fmt, out=exports / "new")
    assert list(exports.iterdir()) == []
    monkeypatch.setattr(mod, writer, real)
    old = samadapt.export(model, to=fmt, out=exports / "old")
    snapshot = sorted((p.relative_to(exports), p.read_bytes()) for p in exports.rglob("*") if p.is_file())
    monkeypatch.setattr(mod, writer, crash)
    with pytest.raises(RuntimeError, match="disk full"):
        samadapt.export(model, to=fmt, out=old, force=True)
    assert sorted((p.relative_to(exports), p.read_bytes()) for p in exports.rglob("*") if p.is_file()) == snapshot


def test_export_option_and_format_errors(make_mini, tmp_path):
    model = samadapt.adapt(make_mini(), "decoder")
    with pytest.raises(
        UnknownNameError, match=r"unknown export format 'tflite'; choose one of \['hf', 'onnx', 'peft', 'sam'\]"
    ):
        samadapt.export(model, to="tflite", out=tmp_path / "x")
    with pytest.raises(ConfigError, match=r"the 'sam' export takes no option \['quantize'\]; its options: none"):
        samadapt.export(model, to="sam", out=tmp_path / "x.pth", quantize=True)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.pth").exists()
    (tmp_path / "folder").mkdir()
    with pytest.raises(ExportError, match="is a folder; the 'sam' format writes one file"):
        samadapt.export(model, to="sam", out=tmp_path / "folder", force=True)


def test_every_exported_file_gets_the_usual_mode(make_mini, tmp_path):
    """Files get 0666 less the umask, as any program's (safetensors writes 0600: model.safetensors of
    the hf export was the odd one out), and folders 0777 less the umask."""
    umask = os.umask(0o022)
    try:
        model = samadapt.adapt(make_mini(), "lora")
        modes = {}
        for fmt in FORMATS:
            out = samadapt.export(model, to=fmt, out=tmp_path / fmt)
            paths = [*out.rglob("*"), out] if out.is_dir() else [out, out.with_name(out.name + ".json")]
            modes.update({p.relative_to(tmp_path).as_posix(): oct(p.stat().st_mode & 0o777) for p in paths})
    finally:
        os.umask(umask)
    assert modes["hf/model.safetensors"] == "0o644"
    assert modes["peft/adapter_model.safetensors"] == "0o644"
    want = {p: ("0o755" if (tmp_path / p).is_dir() else "0o644") for p in modes}
    assert modes == want


@pytest.mark.parametrize("fmt, missing", [("onnx", "onnx"), ("onnx", "onnxruntime"), ("hf", "transformers")])
def test_export_without_the_optional_packages_says_how_to_install_them(fmt, missing, make_mini, tmp_path):
    """`samadapt export --to onnx` where onnx is not installed (simulated: its import fails): one
    line naming the package and `pip install "samadapt[export]"`, exit 2, nothing written."""
    adapter = samadapt.save_adapter(samadapt.adapt(make_mini(), "decoder"), tmp_path / "a.safetensors")
    out = tmp_path / "out"
    code = (
        f"import sys; sys.modules[{missing!r}] = None  # import {missing} fails as if it were not installed\n"
        "from samadapt.cli import main\n"
        f"sys.exit(main(['export', {str(adapter)!r}, '--to', {fmt!r}, '--out', {str(out)!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == cli.EXIT_ERROR, proc.stderr
    assert proc.stderr.strip() == (
        f'samadapt: error: the {fmt!r} export needs {missing}, which is not installed: pip install "samadapt[export]"'
    )
    assert not out.exists()


# ---------------------------------------------------------------------------- the command
def test_cli_export_from_a_file_and_missing_base_errors(make_mini, mini_checkpoint, tmp_path, capsys):
    adapter = samadapt.save_adapter(samadapt.adapt(make_mini(), "lora"), tmp_path / "a.safetensors")
    digest = file_sha256(mini_checkpoint)
    # the base is not in SAMADAPT_HOME: the sha256 it needs is named
    assert cli.main(["export", str(adapter), "--to", "sam", "--out", str(tmp_path / "m.pth")]) == cli.EXIT_ERROR
    assert f"checkpoint with sha256 {digest}" in capsys.readouterr().err
    # a --checkpoint that is not there: that file and the sha256
    missing = tmp_path / "nowhere.pth"
    assert (
        cli.main(
            ["export", str(adapter), "--to", "sam", "--out", str(tmp_path / "m.pth"), "--checkpoint", str(missing)]
        )
        == cli.EXIT_ERROR
    )
    err = capsys.readouterr().err
    assert f"base checkpoint '{missing}' does not exist" in err and digest in err
    assert not (tmp_path / "m.pth").exists()
    assert (
        cli.main(
            [
                "export",
                str(adapter),
                "--to",
                "sam",
                "--out",
                str(tmp_path / "m.pth"),
                "--checkpoint",
                str(mini_checkpoint),
            ]
        )
        == 0
    )
    assert str(tmp_path / "m.pth") in capsys.readouterr().out
    assert (
        cli.main(
            [
                "export",
                str(adapter),
                "--to",
                "sam",
                "--out",
                str(tmp_path / "m.pth"),
                "--checkpoint",
                str(mini_checkpoint),
            ]
        )
        == cli.EXIT_ERROR
    )
    assert "--force" in capsys.readouterr().err


def test_missing_official_base_names_its_file_and_sha256(vit_b_base, samadapt_home_dir, tmp_path, monkeypatch, capsys):
    """An adapter made on the official ViT-B (its sha256 patched to the test file's): the export says
    which file to put where, and its sha256."""
    name = "sam_vit_b_01ec64.pth"
    model = samadapt.adapt(copy.deepcopy(vit_b_base), "decoder")
    digest = model.base.base_id.removeprefix("sha256:")
    monkeypatch.setitem(OFFICIAL_CHECKPOINTS, name, dataclasses.replace(OFFICIAL_CHECKPOINTS[name], sha256=digest))
    adapter = samadapt.save_adapter(model, tmp_path / "vitb.safetensors")
    with pytest.raises(CheckpointNotFoundError) as e:
        samadapt.export(adapter, to="onnx", out=tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()
    assert name in str(e.value) and digest in str(e.value)
    assert cli.main(["export", str(adapter), "--to", "sam", "--out", str(tmp_path / "x.pth")]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert name in err and digest in err and "samadapt download-checkpoint vit_b" in err
    assert not (tmp_path / "x.pth").exists() and not (tmp_path / "x.pth.json").exists()


# ---------------------------------------------------------------------------- ViT-B (random weights, official)
@pytest.fixture(scope="module")
def vit_b_lora(vit_b_base, perturb):
    """A perturbed LoRA ViT-B (decoder trained too), the image, and its predictions for BOXES."""
    model = perturb(samadapt.adapt(copy.deepcopy(vit_b_base), "lora")).eval()
    image = _image(1)
    with torch.no_grad():
        embeddings = model.encode(model.transform.preprocess_image(image)[None])
    ((masks, scores, low),) = model.predict_batch(
        [image], [BOXES], return_logits=True, image_embeddings=[embeddings[0]]
    )
    return model, image, masks, scores, low


@pytest.mark.slow
def test_vit_b_sam_export_loads_with_sam_model_registry(vit_b_lora, vit_b_checkpoint, tmp_path):
    """``sam_model_registry["vit_b"](checkpoint=PATH)`` in a Python without samadapt: SamPredictor's
    masks equal ours, scores within 1e-4 (LoRA merged, trained decoder in place)."""
    model, image, masks, scores, low = vit_b_lora
    path = samadapt.export(model, to="sam", out=tmp_path / "sam_vit_b_adapted.pth")
    state = torch.load(path, weights_only=True)
    base = torch.load(vit_b_checkpoint, weights_only=True)
    assert state.keys() == base.keys()  # upstream's registry keys, exactly
    assert not torch.equal(state[QKV], base[QKV])  # LoRA merged
    ((up_masks, up_scores),) = _upstream_predictions([path], image, BOXES, tmp_path, registry="vit_b")
    np.testing.assert_allclose(up_scores, scores, rtol=0, atol=1e-4)
    _assert_masks_equal(masks, up_masks, _high_res_logits(model, low[:, 0], image.shape[:2]))


@pytest.mark.slow
def test_vit_b_hf_export_gives_our_masks_in_transformers(vit_b_lora, tmp_path):
    model, image, masks, _, _ = vit_b_lora
    folder = samadapt.export(model, to="hf", out=tmp_path / "hf")
    theirs = _hf_masks(folder, image, BOXES)
    for ours, hf in zip(masks, theirs):
        assert ours.sum() > 50 and _iou(ours, hf) >= 0.99


@pytest.mark.slow
def test_vit_b_onnx_pair_with_adapter_blocks_and_prompt_generator(vit_b_base, perturb, tmp_path):
    """The hardest graph: bottlenecks as hooks and the high-frequency prompt at 1024 px."""
    model = perturb(samadapt.adapt(copy.deepcopy(vit_b_base), "adapter", prompt_generator=True)).eval()
    folder = samadapt.export(model, to="onnx", out=tmp_path / "onnx")
    image = _image(1)
    with torch.no_grad():
        embeddings = model.encode(model.transform.preprocess_image(image)[None])
    _check_onnx_against_predict(model, folder, image, embeddings)


# ---------------------------------------------------------------------------- the benchmark
def test_export_latency_benchmark_smoke_run(tmp_path):
    """benchmarks/export_latency.py --smoke runs, its equality checks pass, and its JSON has the
    numbers docs/performance.md quotes (the full run's file is committed)."""
    run_script("benchmarks/export_latency.py", "--smoke", "--out", str(tmp_path))
    data = json.loads((tmp_path / "export_latency-cpu-smoke.json").read_text())
    assert data["checks"] and all(c["passed"] for c in data["checks"])
    latency, accuracy = data["tables"]
    assert {(r["part"], r["model"].split()[0]) for r in latency["rows"]} == {("encoder", "mini"), ("decoder", "mini")}
    assert all(r["torch/onnxruntime"] > 0 for r in latency["rows"])
    runtimes = [r["runtime"] for r in accuracy["rows"]]
    assert any("int8" in r for r in runtimes) and any("fp32" in r for r in runtimes)
    assert all(0 <= r["ci95"][0] <= r["mean_iou"] <= r["ci95"][1] <= 1 for r in accuracy["rows"])
    for key in ("date", "cpu", "torch", "onnxruntime", "loadavg_at_start"):
        assert key in data["machine"]


def test_onnx_box_prompt_benchmark_on_trashcan_frames(tmp_path):
    """benchmarks/onnx_box_prompt.py --smoke on real TrashCan frames (imported from ../shared): the ONNX
    decoder with a box's corners alone gives predict(multimask=True)'s best mask on every object, the
    documented call with the padding point does not give predict(box)'s mask, and the committed full
    run's numbers are the ones docs/export.md quotes."""
    root = Path(__file__).resolve().parents[2]
    if not (root.parent / "shared" / "realdata" / "trashcan" / "original_data").is_dir():
        pytest.skip("TrashCan frames not found in ../shared/realdata")
    run_script("benchmarks/onnx_box_prompt.py", "--smoke", "--out", str(tmp_path), timeout=900)
    data = json.loads((tmp_path / "onnx_box_prompt-cpu-smoke.json").read_text())
    assert data["checks"] and all(c["passed"] for c in data["checks"]) and data["setup"]["frames"] == 4
    agreement = {
        (r["onnx_call"].split(": ")[1], r["compared_with"].split(":")[0]): r for r in data["tables"][0]["rows"]
    }
    alone = agreement[("corners (labels 2, 3) alone", "predict(image, boxes=box, multimask=True)")]
    assert alone["mean_iou"] >= 0.999
    padded = agreement[("corners (labels 2, 3) + padding point (-1)", "AdaptedSam.predict(image, boxes=box)")]
    assert padded["mean_iou"] < 0.99  # the padding point's token changes the mask
    full = json.loads((root / "benchmarks" / "results" / "onnx_box_prompt-cpu.json").read_text())
    page = (root / "docs" / "export.md").read_text()
    for row in full["tables"][0]["rows"] + full["tables"][1]["rows"]:
        key = "mean_iou" if "mean_iou" in row else "mean_iou_vs_ground_truth"
        assert f"{100 * row[key]:.1f}" in page, (row, key)
    assert full["machine"]["date"][:10] in page and "benchmarks/onnx_box_prompt.py" in page


def test_sam_export_of_mini_says_how_to_load_it(make_mini, mini_checkpoint, tmp_path, capsys):
    """mini is not in segment_anything's sam_model_registry: the command says to load its export with
    samadapt.build_sam, and that works; the official types name sam_model_registry."""
    from samadapt.exporters.sam import how_to_load

    adapter = samadapt.save_adapter(samadapt.adapt(make_mini(), "decoder"), tmp_path / "a.safetensors")
    out = tmp_path / "m.pth"
    argv = ["export", str(adapter), "--to", "sam", "--out", str(out), "--checkpoint", str(mini_checkpoint)]
    assert cli.main(argv) == 0
    said = capsys.readouterr().out.splitlines()[-1]
    assert said == (
        f"'mini' is not in segment_anything's sam_model_registry: load it with samadapt.build_sam('mini', "
        f"'{out}'), an upstream segment_anything Sam (SamPredictor, SamAutomaticMaskGenerator take it)"
    )
    from segment_anything import sam_model_registry
    from segment_anything.modeling import Sam

    assert "mini" not in sam_model_registry
    sam = eval(said.split("load it with ")[1].split(", an upstream")[0], {"samadapt": samadapt})
    assert type(sam) is Sam
    assert (
        how_to_load("vit_b", "x.pth") == "load it with segment_anything.sam_model_registry['vit_b'](checkpoint='x.pth')"
    )
