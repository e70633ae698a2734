"""The trainer (samadapt.training.trainer) and the embedding cache (samadapt.training.cache).

Tiny in-process runs (``train(cfg)``) for the embedding cache and the non-finite-loss stop; one run
on two CPU processes under ``accelerate launch --multi_gpu``. The recipe itself (accelerate launch, outputs, resume) is
tested end to end in test_recipes.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from training_helpers import tiny_config, train_here

import samadapt
from samadapt.adapted import AdaptedSam
from samadapt.config import TrainConfig
from samadapt.errors import ConfigError, TrainingError
from samadapt.evaluation.evaluate import evaluate
from samadapt.training.cache import EmbeddingCache
from samadapt.training.preflight import run_folder

REPO = Path(__file__).resolve().parents[2]


def _subprocess_env(home: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "SAMADAPT_HOME": str(home),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env.update(extra)
    return env


# ============================================================================ EmbeddingCache
def _cache(tmp_path: Path, **kw) -> EmbeddingCache:
    args = dict(directory=tmp_path / "cache", model_type="mini", base_id="sha256:" + "a" * 64, image_size=256)
    args.update(kw)
    return EmbeddingCache(**args)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cache_round_trip(tmp_path, dtype):
    cache = _cache(tmp_path, dtype=dtype)
    emb = torch.randn(16, 4, 4, generator=torch.Generator().manual_seed(0)).requires_grad_()
    assert "img" not in cache and cache.get("img") is None
    cache.put("img", emb)
    assert "img" in cache
    got = cache.get("img")
    assert got.dtype == dtype and got.shape == (16, 4, 4)
    assert torch.equal(got, emb.detach().to(dtype))  # exactly the stored (rounded) values
    # persisted: another cache object on the same folder reads the same tensor
    again = _cache(tmp_path, dtype=dtype).get("img")
    assert torch.equal(again, got)
    # stored at the dtype's width: 16 * 4 * 4 values (+ the .npy header)
    width = torch.finfo(dtype).bits // 8
    assert 16 * 4 * 4 * width <= cache.size_bytes() < 16 * 4 * 4 * width + 256 and len(cache) == 1


def test_cache_rejects_other_dtypes(tmp_path):
    with pytest.raises(ValueError, match=r"torch.bfloat16, torch.float16 or torch.float32, got torch.float64"):
        _cache(tmp_path, dtype=torch.float64)


@pytest.mark.parametrize(
    "change",
    [
        {"base_id": "sha256:" + "b" * 64},
        {"image_size": 1024},
        {"model_type": "vit_b"},
        {"dtype": torch.float16},
    ],
    ids=["base_id", "image_size", "model_type", "dtype"],
)
def test_cache_namespace_changes_with_the_base(tmp_path, change):
    base = _cache(tmp_path)
    base.put("img", torch.ones(2, 2, 2))
    other = _cache(tmp_path, **change)
    assert other.namespace != base.namespace and other.path != base.path
    assert "img" not in other and other.get("img") is None  # never confused with the old entries
    assert len(other) == 0
    same = _cache(tmp_path)
    assert same.namespace == base.namespace and "img" in same
    assert json.loads((base.path / "namespace.json").read_text()) == base.namespace_fields
    assert base.namespace.startswith("mini-")


def test_cache_writes_are_atomic(tmp_path, monkeypatch):
    import samadapt.training.cache as cache_module

    cache = _cache(tmp_path)
    cache.put("kept", torch.full((2, 2, 2), 3.0))
    cache.put("kept", torch.full((2, 2, 2), 5.0))  # overwriting works
    assert torch.equal(cache.get("kept"), torch.full((2, 2, 2), 5.0, dtype=torch.bfloat16))
    assert [f.name for f in cache.path.iterdir() if ".tmp" in f.name] == []

    real_save = np.save

    def crash(path, arr):  # a kill in the middle of writing: half a file, then the process dies
        real_save(path, arr)
        with open(path, "r+b") as f:
            f.truncate(20)
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module.np, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        cache.put("new", torch.ones(2, 2, 2))
    with pytest.raises(KeyboardInterrupt):
        cache.put("kept", torch.zeros(2, 2, 2))
    monkeypatch.setattr(cache_module.np, "save", real_save)
    assert "new" not in cache  # no partial entry
    assert torch.equal(cache.get("kept"), torch.full((2, 2, 2), 5.0, dtype=torch.bfloat16))  # old entry intact
    assert [f.name for f in cache.path.iterdir() if ".tmp" in f.name] == []
    assert len(cache) == 1 and cache.stats.writes == 2


def test_cache_counts_other_processes_temp_files_as_nothing(tmp_path):
    cache = _cache(tmp_path)
    cache.put("a", torch.ones(2, 2, 2))
    np.save(cache.path / "b.tmp12345.npy", np.zeros((2, 2, 2), np.uint16))  # another process mid-write
    assert len(cache) == 1 and "b" not in cache


def test_cache_damaged_entry_is_a_miss(tmp_path):
    cache = _cache(tmp_path)
    cache.put("img", torch.ones(8, 8, 8))
    path = cache.path / "img.npy"
    path.write_bytes(path.read_bytes()[:100])  # truncated by something outside samadapt
    assert cache.get("img") is None and cache.stats.misses == 1


def _features(seed: int = 0):
    from samadapt.models.sam2_family import Sam2Features

    g = torch.Generator().manual_seed(seed)
    return Sam2Features(
        torch.randn(256, 4, 4, generator=g), (torch.randn(32, 16, 16, generator=g), torch.randn(64, 8, 8, generator=g))
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cache_holds_sam2_features_by_name(tmp_path, dtype):
    cache = _cache(tmp_path, model_type="sam2.1_hiera_test", family="sam2", dtype=dtype)
    features = _features()
    cache.put("img", features)
    got = _cache(tmp_path, model_type="sam2.1_hiera_test", family="sam2", dtype=dtype).get("img")
    for name, tensor in features.named_tensors().items():
        assert torch.equal(got.named_tensors()[name], tensor.to(dtype)), name
    values = sum(t.numel() for t in features.tensors)
    width = torch.finfo(dtype).bits // 8
    assert values * width <= cache.size_bytes() < values * width + 512 and len(cache) == 1
    (cache.path / "img.safetensors").write_bytes(b"not a safetensors file")
    assert cache.get("img") is None and cache.stats.misses == 1  # damaged: a miss, encoded again


def test_sam2_features_index_and_stack_like_an_embedding_tensor():
    from samadapt.models.sam2_family import Sam2Features

    batch = Sam2Features.stack([_features(0), _features(1)])
    assert len(batch) == 2 and batch.shape == (2, 256, 4, 4) and batch[None].shape == (1, 2, 256, 4, 4)
    for i, one in enumerate(batch):
        assert all(torch.equal(a, b) for a, b in zip(one.tensors, _features(i).tensors))


def test_sam2_cache_has_its_own_namespace_and_sam1s_is_unchanged(tmp_path):
    sam1 = _cache(tmp_path)
    assert set(sam1.namespace_fields) == {"model_type", "base_id", "image_size", "preprocessing", "dtype"}
    sam2 = _cache(tmp_path, family="sam2")
    assert (
        sam2.namespace != sam1.namespace
        and sam2.namespace_fields["preprocessing"] != sam1.namespace_fields["preprocessing"]
    )


def test_cache_stats(tmp_path):
    cache = _cache(tmp_path)
    assert cache.stats.hit_rate == 0.0
    cache.put("a", torch.ones(2, 2, 2))
    cache.get("a"), cache.get("a"), cache.get("a"), cache.get("missing")
    assert (cache.stats.hits, cache.stats.misses, cache.stats.writes) == (3, 1, 1)
    assert cache.stats.hit_rate == pytest.approx(0.75)
    text = cache.summary()
    assert "1 embeddings" in text and "3 hits / 1 misses" in text and "hit rate 75%" in text and str(cache.path) in text


def test_cache_fill_writes_what_the_torch_preprocessing_path_gave(tmp_path, demo_data_root):
    """The fill (numpy preprocessing) stores, bit for bit, the embeddings of the path it replaced:
    preprocessing with torch ops, then the encoder on the same batches; only missing images, once."""
    import torch.nn.functional as F
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from samadapt.data import presets
    from samadapt.data.prompts import PromptConfig
    from samadapt.data.sam_dataset import SamPromptDataset
    from samadapt.training.cache import fill_embedding_cache
    from samadapt.transforms import PIXEL_MEAN, PIXEL_STD

    model = samadapt.adapt(samadapt.build_sam("mini", pretrained=False), "decoder").eval()
    tf = model.transform
    ds = SamPromptDataset(presets.demo(demo_data_root, "train"), tf, PromptConfig(), load_image=True)

    def torch_preprocess(image):  # SamTransform.preprocess_image before the fill went numpy
        x = torch.as_tensor(tf._resizer.apply_image(image)).permute(2, 0, 1).contiguous().float()
        x = (x - torch.tensor(PIXEL_MEAN).view(-1, 1, 1)) / torch.tensor(PIXEL_STD).view(-1, 1, 1)
        h, w = x.shape[-2:]
        return F.pad(x, (0, tf.image_size - w, 0, tf.image_size - h))

    cache = _cache(tmp_path, dtype=torch.float32)
    cache.put(ds.image_key(0), torch.zeros(1))  # already there: not encoded again
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared
    try:
        n = fill_embedding_cache(Accelerator(cpu=True), model, ds, cache, batch_size=2, progress=False)
        images = [ds.instances.load_image(i) for i in range(1, len(ds))]
        with torch.no_grad():
            x = torch.stack([torch_preprocess(im) for im in images])
            expected = torch.cat([model.encode(x[s : s + 2]) for s in range(0, len(x), 2)])
    finally:
        torch.set_num_threads(threads)
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    assert n == len(ds) - 1 and cache.get(ds.image_key(0)).shape == (1,)
    assert torch.equal(x, torch.stack([tf.preprocess_image(im) for im in images]))
    for i, e in zip(range(1, len(ds)), expected):
        assert torch.equal(cache.get(ds.image_key(i)), e)


# ============================================================================ the cache in training
def test_decoder_training_encodes_each_image_once(
    tmp_path, demo_data_root, mini_checkpoint, other_mini_checkpoint, monkeypatch, capsys
):
    from samadapt.data import presets
    from samadapt.data.sam_dataset import file_sha1

    writes: dict[torch.dtype, list[str]] = {torch.bfloat16: [], torch.float32: []}
    real_put = EmbeddingCache.put

    def put(self, key, emb):
        writes[self.dtype].append(key)
        real_put(self, key, emb)

    encoded: list[int] = []
    real_encode = AdaptedSam.encode

    def encode(self, images):
        encoded.append(images.shape[0])
        return real_encode(self, images)

    monkeypatch.setattr(EmbeddingCache, "put", put)
    monkeypatch.setattr(AdaptedSam, "encode", encode)
    train_set, val_set = presets.demo(demo_data_root, "train"), presets.demo(demo_data_root, "val")
    image_keys = sorted(file_sha1(train_set.image_path(i)) for i in range(len(train_set)))
    val_keys = sorted(file_sha1(val_set.image_path(i)) for i in range(len(val_set)))
    assert len(set(image_keys)) == 6 and len(set(val_keys)) == 3

    # 1. fresh cache: the fills encode every training image (bf16) and validation image (fp32)
    # exactly once; training, the zero-shot, epoch and final evaluations encode none
    first = train_here(
        tiny_config(demo_data_root, tmp_path, mini_checkpoint, output_dir=str(tmp_path / "a"), zero_shot=True)
    )
    out = capsys.readouterr().out
    assert sorted(writes[torch.bfloat16]) == image_keys and sorted(writes[torch.float32]) == val_keys
    assert "encoded 6 new image(s)" in out and "encoded 3 new image(s)" in out
    assert sum(encoded) == 6 + 3
    assert [row["encoder_images"] for row in first.history] == [0, 0]
    assert json.loads((tmp_path / "a" / "history.json").read_text())[1]["encoder_images"] == 0
    assert "hit rate 100%" in out  # both epochs read every image from the cache

    # 2. same base: all hits, nothing encoded
    for w in writes.values():
        w.clear()
    encoded.clear()
    second = train_here(
        tiny_config(demo_data_root, tmp_path, mini_checkpoint, output_dir=str(tmp_path / "b"), epochs=1)
    )
    out = capsys.readouterr().out
    assert writes == {torch.bfloat16: [], torch.float32: []} and encoded == []
    assert "encoded 0 new image(s)" in out
    assert "6 hits / 0 misses (hit rate 100%)" in out
    assert [row["encoder_images"] for row in second.history] == [0]
    # the cached validation scores what the model predicts from the images (up to float rounding)
    fresh = evaluate(
        samadapt.load(tmp_path / "b" / "adapter.safetensors", checkpoint=mini_checkpoint), val_set, progress=False
    )
    for k in ("mean_iou", "mean_precision", "mean_f1"):
        assert second.fine_tuned[k] == pytest.approx(fresh.metrics[k], abs=1e-4), k

    # 3. another base checkpoint: another namespace, every image encoded again
    for w in writes.values():
        w.clear()
    train_here(tiny_config(demo_data_root, tmp_path, other_mini_checkpoint, output_dir=str(tmp_path / "c"), epochs=1))
    out = capsys.readouterr().out
    assert sorted(writes[torch.bfloat16]) == image_keys and "encoded 6 new image(s)" in out
    namespaces = sorted(p for p in (tmp_path / "cache").iterdir() if p.is_dir())
    assert len(namespaces) == 4  # (2 bases) x (bf16 training, fp32 validation)
    assert {json.loads((p / "namespace.json").read_text())["base_id"] for p in namespaces} == {
        f"sha256:{d}" for d in (_sha256(mini_checkpoint), _sha256(other_mini_checkpoint))
    }
    assert sorted(len(list(p.glob("*.npy"))) for p in namespaces) == [3, 3, 6, 6]


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_no_cache_for_strategies_that_train_the_encoder(tmp_path, demo_data_root, mini_checkpoint):
    result = train_here(tiny_config(demo_data_root, tmp_path, mini_checkpoint, strategy="lora", epochs=1))
    assert [row["encoder_images"] for row in result.history] == [6]  # every training image, every epoch
    assert not (tmp_path / "cache").exists()


def test_mixed_precision_defaults_to_the_launchers_choice(
    tmp_path, demo_data_root, mini_checkpoint, monkeypatch, capsys
):
    """`accelerate launch --mixed_precision bf16 recipes/finetune.py` (no --mixed-precision) trains in
    bf16; the resolved value is printed and saved in config.yaml."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what the launcher sets
    cfg = tiny_config(demo_data_root, tmp_path, mini_checkpoint, epochs=1)
    assert cfg.mixed_precision is None
    train_here(cfg)
    assert "mixed precision bf16" in capsys.readouterr().out
    assert TrainConfig.from_yaml(run_folder(cfg) / "config.yaml").mixed_precision == "bf16"


def test_resume_accepts_only_settings_that_change_nothing_computed(tmp_path):
    saved = TrainConfig(strategy="lora", strategy_options={"rank": 4}, epochs=2, output_dir=str(tmp_path))
    path = tmp_path / "config.yaml"
    path.write_text(saved.to_yaml())
    on_disk = TrainConfig.from_yaml(path)
    for resumed in (
        dataclasses.replace(
            saved,
            resume=True,
            progress=False,
            num_workers=2,
            log_with=None,
            publish=False,
            cache_dir=str(tmp_path / "elsewhere"),
        ),
        dataclasses.replace(on_disk, resume=True),
    ):
        resumed.check_resumable(on_disk, path)
    changed = dataclasses.replace(saved, resume=True, epochs=3, strategy_options={"rank": 2})
    with pytest.raises(ConfigError, match=r"strategy_options \{'rank': 4\} -> \{'rank': 2\}, epochs 2 -> 3") as e:
        changed.check_resumable(on_disk, path)
    assert f"--config {path} --resume" in str(e.value)


# ============================================================================ parts of a dataset
def _subset_run(demo_data_root, tmp_path, checkpoint, name: str, **overrides):
    """A 1-epoch run on 4 of the 6 demo training images (seeded), validated each epoch on 2 of the 3
    validation images; returns (result, its printed log, the curves' data, the cached training keys)."""
    from samadapt.evaluation import plots

    seen = {}
    real = plots.plot_training_curves

    def spy(history, path, zero_shot=None, step_losses=None):
        seen["data"] = plots.training_curves_data(history, zero_shot, step_losses)
        return real(history, path, zero_shot=zero_shot, step_losses=step_losses)

    # box prompts alone: which images a run uses does not depend on the prompts, and these steps are 4x cheaper
    kw = dict(epochs=1, max_train_images=4, epoch_val_images=2, zero_shot=True, num_examples=2)
    kw.update(train_prompts=["box"], click_rounds=0)
    kw.update(overrides)
    cfg = tiny_config(
        demo_data_root,
        tmp_path,
        checkpoint,
        output_dir=str(tmp_path / name),
        cache_dir=str(tmp_path / name / "c"),
        **kw,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "plot_training_curves", spy)
        result = train_here(cfg)
    (bf16,) = [
        p
        for p in (tmp_path / name / "c").iterdir()
        if json.loads((p / "namespace.json").read_text())["dtype"] == "bf16"
    ]
    return result, seen["data"], sorted(f.stem for f in bf16.glob("*.npy"))


def test_max_train_images_trains_on_the_seeded_subset_and_records_it(tmp_path, demo_data_root, mini_checkpoint, capsys):
    from samadapt.data import presets
    from samadapt.data.sam_dataset import file_sha1
    from samadapt.data.subsets import seeded_indices

    train_set = presets.demo(demo_data_root, "train")

    def expected_keys(seed):
        return sorted(
            file_sha1(train_set.image_path(i)) for i in seeded_indices(train_set, 4, seed=seed, purpose="train")
        )

    first, _, keys0 = _subset_run(demo_data_root, tmp_path, mini_checkpoint, "s0", seed=0)
    out = capsys.readouterr().out
    # exactly the 4 seeded images were encoded and trained on: 2 steps of batch 2, not 3
    assert keys0 == expected_keys(0) and first.history[0]["step"] == 2
    assert "training: a seeded subset of 4 of the 6 images (--max-train-images, seed 0)" in out
    recorded = {"images": 4, "of": 6, "seed": 0, "option": "--max-train-images"}
    summary = json.loads((tmp_path / "s0" / "run_summary.json").read_text())
    metrics = json.loads((tmp_path / "s0" / "metrics.json").read_text())
    meta = samadapt.read_adapter_metadata(tmp_path / "s0" / "adapter.safetensors")
    for card in (summary["data"], metrics["data"], meta["info"]["training"]["data"]):
        assert card["train_subset"] == recorded and card["train_images"] == 4 and "val_subset" not in card
    assert "a seeded subset of 4 of the 6 images" in (tmp_path / "s0" / "metrics.md").read_text()
    # the same seed picks the same images, another seed others
    again, _, keys_again = _subset_run(demo_data_root, tmp_path, mini_checkpoint, "s0b", seed=0)
    other, _, keys1 = _subset_run(demo_data_root, tmp_path, mini_checkpoint, "s1", seed=1)
    assert keys_again == keys0 and keys1 == expected_keys(1) and keys1 != keys0


def test_epoch_validation_uses_a_logged_subset_and_the_final_numbers_all_images(
    tmp_path, demo_data_root, mini_checkpoint, capsys
):
    result, curves, _ = _subset_run(demo_data_root, tmp_path, mini_checkpoint, "v")
    out = capsys.readouterr().out
    assert (
        "per-epoch validation (best epoch, early stopping): a fixed seeded subset of 2 of the 3 validation images "
        "(--epoch-val-images); zero-shot and final numbers on all 3"
    ) in out
    assert result.history[0]["val_images"] == 2
    assert result.zero_shot["num_images"] == 3 and result.fine_tuned["num_images"] == 3
    card = json.loads((tmp_path / "v" / "run_summary.json").read_text())["data"]
    assert card["epoch_val_images"] == 2 and card["val_images"] == 3
    # the best epoch was scored on the 2 subset images: the best adapter's metrics say so
    best = samadapt.read_adapter_metadata(tmp_path / "v" / "best_adapter.safetensors")["info"]["metrics"]
    assert best["num_images"] == 2
    # 1 epoch: the curves show the loss of both steps and mark the single validation point
    assert curves["loss"]["x"] == [1.0, 2.0] and len(curves["loss_epochs"]["x"]) == 1
    (iou,) = [p for p in curves["panels"] if p["metric"] == "mean_iou"]
    assert len(iou["x"]) == 1 and iou["best"] is not None and iou["zero_shot"] is not None
    assert iou["note"] == "one epoch: one validation point; dashed: zero-shot"
    # ... scored on the same 2 images as the epoch (the reference line too), and the panel says how many
    from samadapt.data import presets
    from samadapt.training.preflight import build_run_data

    epoch_val = build_run_data(tiny_config(demo_data_root, tmp_path, mini_checkpoint, epoch_val_images=2)).epoch_val
    base = samadapt.adapt(samadapt.build_sam("mini", str(mini_checkpoint)), "decoder")
    zs_subset = evaluate(base, presets.demo(demo_data_root, "val"), subset=epoch_val, progress=False, coco=False)
    assert iou["zero_shot"] == pytest.approx(100 * zs_subset.metrics["mean_iou"], abs=1e-2)
    assert iou["zero_shot"] != pytest.approx(100 * result.zero_shot["mean_iou"], abs=1e-2)  # not all 3 images'
    assert iou["title"] == "validation mean IoU (2 images)"


def test_max_val_images_is_the_subset_samadapt_eval_picks(demo_data_root):
    from samadapt.data import presets
    from samadapt.evaluation.evaluate import evaluate
    from samadapt.training.preflight import build_run_data

    cfg = TrainConfig(
        dataset="demo",
        data_root=str(demo_data_root),
        demo_train_images=6,
        demo_val_images=3,
        max_val_images=2,
        epoch_val_images=1,
        seed=3,
        progress=False,
    )
    data = build_run_data(cfg)
    assert len(data.val) == 2 and data.card["val_subset"] == {
        "images": 2,
        "of": 3,
        "seed": 3,
        "option": "--max-val-images",
    }
    assert len(data.epoch_val) == 1 and data.epoch_val[0] in range(2)
    model = samadapt.adapt(samadapt.build_sam("mini", pretrained=False), "decoder")
    full_val = presets.demo(demo_data_root, "val")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared
    try:
        picked = evaluate(model, full_val, max_images=2, seed=3, progress=False, coco=False).per_image
        inner = evaluate(model, full_val, max_images=1, seed=3, progress=False, coco=False).per_image
    finally:
        torch.set_num_threads(threads)
    assert [r["image_id"] for r in picked] == data.val.image_ids
    assert [r["image_id"] for r in inner] == [data.val.image_ids[data.epoch_val[0]]]  # nested in it


# ============================================================================ non-finite loss
def test_nan_loss_stops_without_writing_an_adapter(
    tmp_path, demo_data_root, mini_checkpoint, samadapt_home_dir, monkeypatch
):
    from samadapt.training import losses

    real_forward = losses.SamLoss.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2 (3 steps per epoch), step 5
            return dataclasses.replace(out, loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(losses.SamLoss, "forward", forward)
    # Box prompts only: one loss call per step, so the 5th call is the 5th step.
    cfg = tiny_config(demo_data_root, tmp_path, mini_checkpoint, publish=True, train_prompts=["box"], click_rounds=0)
    with pytest.raises(TrainingError) as err:
        train_here(cfg)
    message = str(err.value)
    assert "non-finite (NaN or inf) at epoch 2, step 4" in message  # what happened, where
    assert "mixed precision 'no'" in message and "Lower the learning rate" in message  # what to do
    assert str(run_folder(cfg) / "checkpoints") in message  # where the last good state is
    run_dir = run_folder(cfg)
    assert not (run_dir / "adapter.safetensors").exists()
    assert not (samadapt_home_dir / "adapters").exists()
    # Kept on purpose: the best adapter of epoch 1, validated before the NaN, and epoch 1's state
    # (what --resume would continue from). Both are finite; no temp files are left.
    best = load_file(str(run_dir / "best_adapter.safetensors"))
    assert best and all(torch.isfinite(t).all() for t in best.values())
    from samadapt import read_adapter_metadata

    assert read_adapter_metadata(run_dir / "best_adapter.safetensors")["info"]["epoch"] == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch_0001"]
    assert [p.name for p in run_dir.iterdir() if ".tmp" in p.name] == []


def test_non_finite_loss_is_skipped_under_fp16_then_stops(tmp_path, caplog):
    from samadapt.training.trainer import TrainProgress, _non_finite

    cfg = TrainConfig(mixed_precision="fp16")  # fp16 autocast needs a GPU: only the policy is tested here
    progress = TrainProgress(global_step=7)
    with caplog.at_level(logging.WARNING, logger="samadapt.training"):
        for _ in range(50):
            _non_finite(cfg, progress, 0, tmp_path)  # the GradScaler's overflow steps: skipped
    assert progress.skipped_steps == 50
    assert "under fp16: step skipped (50 so far)" in caplog.records[-1].getMessage()
    with pytest.raises(TrainingError, match="non-finite .* at epoch 1, step 7 .*mixed precision 'fp16'"):
        _non_finite(cfg, progress, 0, tmp_path)


def test_non_finite_loss_stops_at_once_in_fp32_and_bf16(tmp_path):
    from samadapt.training.trainer import TrainProgress, _non_finite

    for precision in ("no", "bf16"):
        with pytest.raises(TrainingError, match=f"mixed precision '{precision}'"):
            _non_finite(TrainConfig(mixed_precision=precision), TrainProgress(), 2, tmp_path)


# ============================================================================ epochs and resume
def test_loader_epoch_survives_a_fresh_loader(reset_accelerate):
    """A resumed run builds a new (Accelerate-prepared) loader and starts at epoch k: it must see
    exactly the order and samples an uninterrupted run sees in epoch k (Accelerate's loader calls
    ``dataset.set_epoch(<its own pass count>)``, which restarts at 0)."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader, Dataset

    from samadapt.training.state import EpochShuffled

    class Items(Dataset):
        epoch = 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.tensor([i, self.epoch])

    accelerator = Accelerator(cpu=True)

    def run(epochs):
        shuffled = EpochShuffled(Items(), seed=0)
        loader = accelerator.prepare(DataLoader(shuffled, batch_size=4))
        seen = []
        for epoch in epochs:  # what the trainer does at the start of each epoch
            loader.set_epoch(epoch)
            shuffled.set_epoch(epoch)
            seen.append(torch.cat(list(loader)).tolist())
        return seen

    uninterrupted = run([0, 1, 2])
    assert uninterrupted[0] != uninterrupted[1]
    assert run([1, 2]) == uninterrupted[1:]


# ============================================================================ two processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_agree(tmp_path, demo_data_root, mini_checkpoint, tiny_run_args):
    """`accelerate launch --multi_gpu --num_processes 2` on a CPU (gloo): the ranks end training with identical weights,
    and evaluation counts every validation image and instance exactly once."""
    from samadapt.data import presets
    from samadapt.evaluation.evaluate import evaluate
    from samadapt.evaluation.run import zero_shot_model

    # Each rank saves its trainable tensors as training ends (before the best epoch's adapter is
    # loaded back from disk, which would make them equal anyway).
    wrapper = tmp_path / "finetune_dump_ranks.py"
    wrapper.write_text(
        textwrap.dedent(f"""
        import os, runpy, sys
        from safetensors.torch import save_file
        import samadapt.training.trainer as trainer

        real_load = trainer._load_trainable

        def load_best(model, path):
            tensors = {{n: p.detach().cpu().contiguous() for n, p in model.trainable_named_parameters()}}
            save_file(tensors, os.path.join(os.environ["DUMP_DIR"], "rank%s.safetensors" % os.environ["RANK"]))
            return real_load(model, path)

        trainer._load_trainable = load_best
        sys.argv = [{str(REPO / "recipes" / "finetune.py")!r}] + sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
    """)
    )
    dump = tmp_path / "ranks"
    dump.mkdir()
    run_dir = tmp_path / "run"
    # the documented command (docs/training.md): Accelerate's own launcher, on a machine without GPU
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        str(wrapper),
        "--strategy",
        "decoder",
        "--checkpoint",
        str(mini_checkpoint),
        *tiny_run_args,
        "--output-dir",
        str(run_dir),
        "--no-publish",
        "--log-with",
        "none",
    ]
    env = _subprocess_env(tmp_path / "home", DUMP_DIR=str(dump))
    env.pop("ACCELERATE_USE_CPU", None)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert proc.returncode == 0, "\n".join([proc.stdout[-3000:], *errors[:20]])
    assert "2 process(es)" in proc.stdout and "1 process(es)" not in proc.stdout
    assert json.loads((run_dir / "run_summary.json").read_text())["num_processes"] == 2
    assert "find_unused_parameters" not in proc.stderr  # DDP's warning on every step of a decoder run
    # the cache fill split the 6 training images between the processes: each encoded 3, none twice
    assert "encoded 3 new image(s) on this process" in proc.stdout
    # (and the 3 validation images, in fp32, 2 + 1)
    counts = {
        json.loads((ns / "namespace.json").read_text())["dtype"]: len(list(ns.glob("*.npy")))
        for ns in (tmp_path / "home" / "cache").iterdir()
    }
    assert counts == {"bf16": 6, "fp32": 3}

    rank0, rank1 = (load_file(str(dump / f"rank{r}.safetensors")) for r in (0, 1))
    assert rank0 and rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    base = torch.load(mini_checkpoint, map_location="cpu")
    assert any(not torch.equal(rank0[k], base[k]) for k in rank0)  # and they did train

    # the same images, prompts and base as one process would evaluate
    val = presets.demo(demo_data_root, "val")
    single = evaluate(zero_shot_model("mini", mini_checkpoint), val, progress=False).metrics
    metrics = json.loads((run_dir / "metrics.json").read_text())["models"]
    for label in ("zero-shot", "fine-tuned"):
        assert metrics[label]["num_images"] == single["num_images"] == 3
        assert metrics[label]["num_instances"] == single["num_instances"]
    assert metrics["zero-shot"]["mean_iou"] == pytest.approx(single["mean_iou"], abs=1e-4)


def test_a_swallowed_ctrl_c_still_stops_training_at_the_next_check():
    """Python raises Ctrl-C's KeyboardInterrupt wherever the main thread is, also where it is
    swallowed (a __del__, a cleanup); the trainer's check after every step stops the run anyway."""
    import os
    import signal
    import time

    from samadapt.training.state import catch_sigint, check_interrupt

    before = signal.getsignal(signal.SIGINT)
    with catch_sigint():
        check_interrupt()  # nothing yet
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            pass  # swallowed
        with pytest.raises(KeyboardInterrupt):
            check_interrupt()
    check_interrupt()  # forgotten after the block
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("keep, kept", [("best", 1), ("last", 3)])
def test_keep_epoch_chooses_the_best_or_the_last_epoch(
    tmp_path, demo_data_root, mini_checkpoint, monkeypatch, keep, kept
):
    from samadapt.adapter_io import read_adapter_metadata
    from samadapt.training import trainer

    real, scores = trainer.evaluate_sharded, iter([0.9, 0.5, 0.1])  # validation falls epoch after epoch

    def falling(*args, desc="validation", **kw):
        metrics, examples, records = real(*args, desc=desc, **kw)
        return ({**metrics, "mean_iou": next(scores)} if desc.startswith("validation ") else metrics), examples, records

    monkeypatch.setattr(trainer, "evaluate_sharded", falling)
    result = train_here(tiny_config(demo_data_root, tmp_path, mini_checkpoint, epochs=3, keep_epoch=keep, patience=5))
    assert result.best_epoch == kept and len(result.history) == 3
    assert read_adapter_metadata(result.run_dir / "best_adapter.safetensors")["info"]["epoch"] == kept
    with pytest.raises(ConfigError, match="keep_epoch"):
        tiny_config(demo_data_root, tmp_path, keep_epoch="first")


@pytest.mark.parametrize("strategy", ["lora", "adapter"])
def test_the_seed_fixes_the_initial_weights_of_a_strategy(tmp_path, demo_data_root, mini_checkpoint, strategy):
    """``--seed`` alone decides a run: LoRA's and the Adapter's random initial weights are drawn after
    the seed is set, so two runs with the same seed agree whatever torch's generator held before
    (torch starts each process with a random seed)."""
    adapters = []
    for k, noise in enumerate((1, 2)):
        torch.manual_seed(noise)  # another process's start
        cfg = tiny_config(
            demo_data_root, tmp_path, mini_checkpoint, strategy=strategy, epochs=1, output_dir=str(tmp_path / f"r{k}")
        )
        adapters.append(load_file(str(train_here(cfg).adapter_path)))
    first, second = adapters
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
