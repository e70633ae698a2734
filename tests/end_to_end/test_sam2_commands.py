"""SAM 2.1 through the commands SAM 1 uses (issue 20; docs/sam2.md's plan, steps 4, 5 and 7):
``recipes/finetune.py --model sam2.1_hiera_test`` with the embedding cache (``decoder``) and through
the encoder (``lora``), ``samadapt eval`` whose zero-shot numbers are those of Meta's predictor's
masks, and ``samadapt segment`` from detections with Meta's predictor's masks. On the small random
``sam2.1_hiera_test`` in an official-format file (no SAM 2.1 weights can be downloaded here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from safetensors.torch import load_file
from sam2_helpers import iou, random_sam2_checkpoint, require_sam2_or_skip, upstream_predictor
from script_helpers import run_script
from training_helpers import TINY_DEMO, TINY_RUN

from samadapt import cli
from samadapt.errors import ConfigError
from samadapt.models.sam2_family import get_sam2_card

TEST = "sam2.1_hiera_test"


@pytest.fixture(scope="module")
def base_file(tmp_path_factory) -> Path:
    require_sam2_or_skip()
    return random_sam2_checkpoint(tmp_path_factory.mktemp("sam2_base") / "s21test_base.pt", TEST)


@pytest.fixture(scope="module")
def decoder_run(tmp_path_factory, base_file, demo_data_root) -> tuple[Path, Path, str]:
    """``recipes/finetune.py --strategy decoder`` on SAM 2.1 as a user runs it: (run folder, cache
    folder, its output)."""
    folder = tmp_path_factory.mktemp("sam2_decoder_run")
    run = [a for k, v in TINY_RUN.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    proc = run_script(
        "recipes/finetune.py",
        *("--strategy", "decoder", "--model", TEST, "--checkpoint", str(base_file)),
        *("--dataset", "demo", "--data-root", str(demo_data_root)),
        *("--demo-train-images", str(TINY_DEMO["train"]), "--demo-val-images", str(TINY_DEMO["val"])),
        *run,
        *("--output-dir", str(folder / "run"), "--cache-dir", str(folder / "cache"), "--no-progress"),
    )
    return folder / "run", folder / "cache", proc.stdout


def _eval(argv: list[str], out: Path, demo_data_root: Path) -> dict:
    data = ["--dataset", "demo", "--data-root", str(demo_data_root)]
    data += ["--demo-train-images", str(TINY_DEMO["train"]), "--demo-val-images", str(TINY_DEMO["val"])]
    assert cli.main(["eval", *data, *argv, "--out", str(out), "--num-examples", "0", "--no-progress"]) == 0
    return json.loads((out / "metrics.json").read_text())["models"]


def test_decoder_training_on_sam2_reads_the_cached_features(decoder_run, base_file):
    run, cache, output = decoder_run
    assert "image-encoder forwards in training 0" in output
    train_cache = [
        d for d in cache.iterdir() if d.is_dir() and json.loads((d / "namespace.json").read_text())["dtype"] == "bf16"
    ]
    (folder,) = train_cache
    entries = sorted(folder.glob("*.safetensors"))
    assert len(entries) == TINY_DEMO["train"]
    shapes = {n: tuple(t.shape) for n, t in load_file(str(entries[0])).items()}  # the 256 px variant's features
    assert shapes == {"image_embed": (256, 16, 16), "high_res_feats_0": (32, 64, 64), "high_res_feats_1": (64, 32, 32)}
    # the adapter holds the mask decoder without the projections the cache was computed with
    tensors = load_file(str(run / "adapter.safetensors"))
    assert tensors and all(n.startswith("sam_mask_decoder.") and ".conv_s" not in n for n in tensors)
    assert sum(t.numel() for t in tensors.values()) == 4_190_437


def test_the_adapter_scores_in_samadapt_eval_what_training_reported(decoder_run, base_file, demo_data_root, tmp_path):
    run, _, _ = decoder_run
    trained = json.loads((run / "metrics.json").read_text())["models"]
    models = _eval(
        ["--adapter", str(run / "adapter.safetensors"), "--checkpoint", str(base_file)], tmp_path / "e", demo_data_root
    )
    evaluated = models[next(k for k in models if k != "zero-shot")]
    assert evaluated["num_instances"] == trained["fine-tuned"]["num_instances"] > 0
    assert evaluated["mean_iou"] == pytest.approx(trained["fine-tuned"]["mean_iou"], abs=1e-6)
    assert models["zero-shot"]["mean_iou"] == pytest.approx(trained["zero-shot"]["mean_iou"], abs=1e-6)
    assert evaluated["mean_iou"] != pytest.approx(models["zero-shot"]["mean_iou"], abs=1e-6)  # it trained


def _gt(demo_data_root: Path) -> tuple[dict, list]:
    coco = json.loads((demo_data_root / "val" / "annotations.json").read_text())
    return {im["id"]: im for im in coco["images"]}, coco["annotations"]


def _image(demo_data_root: Path, info: dict) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(demo_data_root / "val" / "images" / info["file_name"]).convert("RGB"))


def test_zero_shot_eval_on_sam2_scores_the_masks_of_metas_predictor(base_file, demo_data_root, tmp_path):
    models = _eval(["--model", TEST, "--checkpoint", str(base_file), "--prompt", "box"], tmp_path / "e", demo_data_root)
    predictor = upstream_predictor(TEST, base_file)
    images, anns = _gt(demo_data_root)
    ious = []
    for image_id, info in images.items():
        mine = [a for a in anns if a["image_id"] == image_id]
        predictor.set_image(_image(demo_data_root, info))
        for a in mine:
            seg = a["segmentation"]  # a compressed RLE, or polygons
            rle = seg if isinstance(seg, dict) and isinstance(seg["counts"], str) else None
            gt = mask_utils.decode(rle or mask_utils.frPyObjects(seg, info["height"], info["width"]))
            gt = (gt.max(axis=2) if gt.ndim == 3 else gt).astype(bool)
            ys, xs = np.nonzero(gt)
            box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)  # tight, inclusive
            masks, _, _ = predictor.predict(box=box, multimask_output=False)
            ious.append(iou(masks[0].astype(bool), gt))
    assert models["zero-shot"]["num_instances"] == len(ious) > 0
    assert models["zero-shot"]["mean_iou"] == pytest.approx(float(np.mean(ious)), abs=1e-6)


def test_segment_from_detections_on_sam2_gives_metas_predictor_masks(base_file, demo_data_root, tmp_path):
    images, anns = _gt(demo_data_root)
    dets = [{"image_id": a["image_id"], "bbox": a["bbox"], "score": 0.9, "category_id": a["category_id"]} for a in anns]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    out = tmp_path / "res.json"
    argv = [
        "segment",
        "--model",
        TEST,
        "--checkpoint",
        str(base_file),
        "--images",
        str(demo_data_root / "val" / "images"),
    ]
    argv += [
        "--detections",
        str(tmp_path / "dets.json"),
        "--annotation-file",
        str(demo_data_root / "val" / "annotations.json"),
    ]
    assert cli.main([*argv, "--out", str(out), "--no-progress"]) == 0
    results = json.loads(out.read_text())
    assert len(results) == len(dets)
    predictor = upstream_predictor(TEST, base_file)
    for image_id, info in images.items():
        predictor.set_image(_image(demo_data_root, info))
        mine = [d for d in dets if d["image_id"] == image_id]
        got = [r for r in results if r["image_id"] == image_id]
        assert len(got) == len(mine)
        for d, r in zip(mine, got):
            x, y, w, h = d["bbox"]
            masks, _, _ = predictor.predict(box=np.array([x, y, x + w, y + h], np.float32), multimask_output=False)
            assert iou(mask_utils.decode(r["segmentation"]).astype(bool), masks[0].astype(bool)) >= 0.999


def test_click_evaluation_runs_on_sam2_with_mask_prompts(decoder_run, base_file, demo_data_root, tmp_path):
    run, _, _ = decoder_run
    argv = ["--adapter", str(run / "adapter.safetensors"), "--checkpoint", str(base_file), "--prompt", "clicks"]
    models = _eval([*argv, "--max-clicks", "3", "--mask-prompt"], tmp_path / "e", demo_data_root)
    assert len(models) == 2  # zero-shot and the adapter
    for row in models.values():
        curve = row["clicks"]["miou_at"]
        assert row["num_instances"] > 0 and len(curve) == 3 and all(0.0 <= v <= 1.0 for v in curve)


def test_lora_on_sam2_trains_through_the_encoder(base_file, demo_data_root, tmp_path, reset_accelerate):
    from training_helpers import tiny_config

    from samadapt.training.trainer import train

    cfg = tiny_config(demo_data_root, tmp_path, base_file, model=TEST, strategy="lora", epochs=1)
    result = train(cfg)
    assert not (tmp_path / "cache").exists()  # the encoder trains: nothing to cache
    tensors = load_file(str(result.adapter_path))
    lora_b = [t for n, t in tensors.items() if ".lora_B." in n]
    assert lora_b and all(n.startswith(("image_encoder.trunk.blocks.", "sam_mask_decoder.")) for n in tensors)
    assert any(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: it moved


def test_the_class_head_is_refused_on_sam2(base_file):
    import samadapt
    from samadapt.models.family import build_model
    from samadapt.models.parts.class_head import attach_class_head

    model = samadapt.adapt(build_model(TEST, base_file), "decoder")
    with pytest.raises(ConfigError, match="--classify"):
        attach_class_head(model, {1: "bottle"})


def test_metas_automatic_mask_generator_takes_an_adapted_model(decoder_run, base_file, demo_data_root):
    import samadapt

    generator_cls = pytest.importorskip("sam2.automatic_mask_generator").SAM2AutomaticMaskGenerator
    run, _, _ = decoder_run
    model = samadapt.load(run / "adapter.safetensors", checkpoint=base_file)
    generator = generator_cls(model.sam, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    generator.predictor._bb_feat_sizes = list(get_sam2_card(TEST).feature_sizes)  # 256 px: as sam2_helpers does
    images, _ = _gt(demo_data_root)
    image = _image(demo_data_root, next(iter(images.values())))
    masks = generator.generate(image)
    assert masks and all(m["segmentation"].shape == image.shape[:2] for m in masks)
