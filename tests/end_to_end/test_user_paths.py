"""Each path run the way a user runs it (issue "Real datasets end to end"): the command line, the
official file layout of every preset, and the silent mistakes that are refused.

Every preset (taco, zerowaste, trashcan, coco, demo) trains for one epoch under ``accelerate launch``
on a tiny dataset written in that preset's official layout, then ``samadapt eval`` reads the
published adapter. The other tests check one refused mistake each: the exact message, the exit
code, the untouched output folder and no traceback on stderr.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samadapt.models.family import model_types

REPO = Path(__file__).resolve().parents[2]
FINETUNE = REPO / "recipes" / "finetune.py"
TINY = [
    "--epochs",
    "1",
    "--batch-size",
    "2",
    "--prompts-per-image",
    "2",
    "--no-progress",
    "--log-with",
    "none",
    "--num-examples",
    "1",
    "--warmup-steps",
    "0",
]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, SAMADAPT_HOME=str(home), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", **extra)
    env.pop("ACCELERATE_USE_CPU", None)
    return env


def _run(cmd: list[str], cwd: Path, home: Path, timeout: int = 600, **extra) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_env(home, **extra), capture_output=True, text=True, timeout=timeout)


def _accelerate(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        *args,
    ]


def _samadapt(*args: str) -> list[str]:
    return [sys.executable, "-m", "samadapt.cli", *args]


# ---------------------------------------------------------------------------- tiny official layouts
def _scene(rng: np.random.Generator, h: int, w: int, n: int) -> tuple[np.ndarray, list[list[float]]]:
    """A noisy image with ``n`` bright rectangles and their polygons (XY, COCO order)."""
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    polys = []
    for k in range(n):
        x0, y0 = int(rng.integers(2, w // 2)), int(rng.integers(2, h // 2))
        x1, y1 = x0 + int(rng.integers(12, w // 2 - 2)), y0 + int(rng.integers(12, h // 2 - 2))
        img[y0:y1, x0:x1] = (200 - 40 * k, 180, 60 + 50 * k)
        polys.append([x0, y0, x1, y0, x1, y1, x0, y1])
    return img, polys


def _write_split(
    images_dir: Path,
    ann_file: Path,
    names: list[str],
    categories: list[dict],
    seed: int,
    ext_format: str = "JPEG",
    size: tuple[int, int] = (72, 96),
) -> dict:
    rng = np.random.default_rng(seed)
    coco = {"images": [], "annotations": [], "categories": categories}
    for i, name in enumerate(names):
        img, polys = _scene(rng, *size, n=2)
        path = images_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, format=ext_format)
        coco["images"].append({"id": i + 1, "file_name": name, "height": size[0], "width": size[1]})
        for k, poly in enumerate(polys):
            xs, ys = poly[0::2], poly[1::2]
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": i + 1,
                    "category_id": categories[k % len(categories)]["id"],
                    "segmentation": [poly],
                    "area": float((max(xs) - min(xs)) * (max(ys) - min(ys))),
                    "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                    "iscrowd": 0,
                }
            )
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps(coco))
    return coco


def write_layout(preset: str, root: Path) -> list[str]:
    """Write a tiny dataset in ``preset``'s official layout; returns the data options of the command."""
    if preset == "taco":  # data/annotations.json, batch folders, no split (seeded 80/20), ids from 0
        cats = [
            {"id": 0, "name": "Aluminium foil", "supercategory": "Aluminium foil"},
            {"id": 1, "name": "Bottle cap", "supercategory": "Bottle cap"},
        ]
        _write_split(root, root / "annotations.json", [f"batch_{1 + i // 3}/{i:06d}.jpg" for i in range(6)], cats, 0)
        return ["--dataset", "taco", "--data-root", str(root)]
    if preset == "zerowaste":  # splits_final_deblurred/{train,val,test}/{data/*.PNG, labels.json}
        cats = [
            {"id": i, "name": n, "supercategory": n}
            for i, n in enumerate(["rigid_plastic", "cardboard", "metal", "soft_plastic"], start=1)
        ]
        base = root / "splits_final_deblurred"
        for seed, split in enumerate(("train", "val", "test")):
            _write_split(
                base / split / "data",
                base / split / "labels.json",
                [f"{split}_frame_{i:04d}.PNG" for i in range(3)],
                cats,
                seed,
                ext_format="PNG",
            )
        return ["--dataset", "zerowaste", "--data-root", str(root)]
    if preset == "trashcan":  # {instance,material}_version/instances_{train,val}_trashcan.json + images
        cats = [
            {"id": 1, "name": "rov", "supercategory": "rov"},
            {"id": 2, "name": "trash_bottle", "supercategory": "trash"},
        ]
        for seed, split in enumerate(("train", "val")):
            _write_split(
                root / "instance_version" / split,
                root / "instance_version" / f"instances_{split}_trashcan.json",
                [f"vid_{seed:06d}_frame{i:07d}.jpg" for i in range(3)],
                cats,
                seed,
            )
        return ["--dataset", "trashcan", "--data-root", str(root)]
    if preset == "coco":
        cats = [
            {"id": 1, "name": "bottle", "supercategory": "waste"},
            {"id": 2, "name": "can", "supercategory": "waste"},
        ]
        _write_split(root / "images", root / "train.json", [f"t{i}.jpg" for i in range(3)], cats, 0)
        _write_split(root / "images", root / "val.json", [f"v{i}.jpg" for i in range(2)], cats, 1)
        return [
            "--dataset",
            "coco",
            "--images-root",
            str(root / "images"),
            "--annotation-file",
            str(root / "train.json"),
            "--val-annotation-file",
            str(root / "val.json"),
        ]
    assert preset == "demo"
    return ["--dataset", "demo", "--data-root", str(root), "--demo-train-images", "3", "--demo-val-images", "2"]


#: preset -> (adapter name published, dataset on the card, validation split named on the card)
EXPECTED = {
    "taco": ("taco-mini", "taco", "taco/test"),
    "zerowaste": ("zerowaste-mini", "zerowaste", "zerowaste/val"),
    "trashcan": ("trashcan_instance-mini", "trashcan_instance", "trashcan-instance/val"),
    "coco": ("coco-mini", "coco", "val.json"),
    "demo": ("demo-mini", "demo", "demo/val"),
}


def _eval_data_args(preset: str, data: list[str]) -> list[str]:
    if preset != "coco":
        return data[:4]  # --dataset X --data-root R
    images, val = data[data.index("--images-root") + 1], data[data.index("--val-annotation-file") + 1]
    return ["--dataset", "coco", "--images-root", images, "--annotation-file", val]


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_every_preset_trains_under_accelerate_launch_and_evaluates(preset, tmp_path):
    data = write_layout(preset, tmp_path / "data")
    home = tmp_path / "home"
    proc = _run(_accelerate(str(FINETUNE), *data, *TINY, "--output-dir", str(tmp_path / "run")), tmp_path, home)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    name, dataset, val_split = EXPECTED[preset]
    card = json.loads((home / "adapters" / name / "card.json").read_text())
    assert card["dataset"] == dataset and card["data"]["dataset"] == dataset
    assert card["data"]["val_split"] == val_split and card["data"]["val_images"] >= 1
    assert "note" not in card["data"]  # validated on held-out images

    out = tmp_path / "eval"
    ev = _run(
        _samadapt(
            "eval",
            "--adapter",
            name,
            *_eval_data_args(preset, data),
            "--out",
            str(out),
            "--no-progress",
            "--num-examples",
            "1",
        ),
        tmp_path,
        home,
    )
    assert ev.returncode == 0, ev.stdout[-3000:] + ev.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"zero-shot", name}
    assert metrics["models"][name]["num_images"] == card["data"]["val_images"]


# ---------------------------------------------------------------------------- refused mistakes
def _no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_coco_without_validation_file_is_refused(tmp_path):
    data = write_layout("coco", tmp_path / "data")
    data = data[: data.index("--val-annotation-file")]
    proc = _run(
        [sys.executable, str(FINETUNE), *data, *TINY, "--output-dir", str(tmp_path / "run")],
        tmp_path,
        tmp_path / "home",
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "finetune: error: dataset 'coco' without --val-annotation-file would validate on the training images and "
        "report that as the gain. Give the held-out file (--val-annotation-file FILE.json, and --val-images-root if "
        "its images are elsewhere), or pass --validate-on-train to do it anyway (the card then says so)"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_validate_on_train_is_said_on_the_card_and_in_the_list(tmp_path):
    data = write_layout("coco", tmp_path / "data")
    data = data[: data.index("--val-annotation-file")]
    home = tmp_path / "home"
    proc = _run(
        [sys.executable, str(FINETUNE), *data, *TINY, "--validate-on-train", "--output-dir", str(tmp_path / "run")],
        tmp_path,
        home,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on the TRAINING images (--validate-on-train), not held out" in proc.stdout
    card = json.loads((home / "adapters" / "coco-mini" / "card.json").read_text())
    assert card["data"]["note"].startswith("validated on the training images")
    listed = _run(_samadapt("list"), tmp_path, home)
    assert "(on its training images)" in listed.stdout
    # the skip report of a file read for both splits is printed once, and names the CLI command
    assert proc.stderr.count("skipped or repaired") <= 1


def test_bad_name_is_refused_before_any_data_is_read(tmp_path):
    ann = tmp_path / "broken.json"
    ann.write_text("{not json")  # reading it would fail with another message
    (tmp_path / "images").mkdir()
    t0 = time.monotonic()
    proc = _run(
        [
            sys.executable,
            str(FINETUNE),
            "--dataset",
            "coco",
            "--images-root",
            str(tmp_path / "images"),
            "--annotation-file",
            str(ann),
            "--val-annotation-file",
            str(ann),
            "--name",
            "labelme-lora",
            *TINY,
        ],
        tmp_path,
        tmp_path / "home",
    )
    assert proc.returncode == 2
    tags = sorted(card.tag for card in model_types().values())  # both families: vith, ..., s21t, ...
    assert {"vith", "s21t"} <= set(tags)
    assert proc.stderr.strip() == (
        "finetune: error: adapter name 'labelme-lora': 'lora' is not a model tag; names are "
        f"<dataset>-<tag>[-<strategy>] with tag in {tags} (for example 'labelme-mini-lora')"
    )
    assert time.monotonic() - t0 < 60 and not (tmp_path / "outputs").exists()
    wrong_model = _run([sys.executable, str(FINETUNE), "--name", "labelme-vith", *TINY], tmp_path, tmp_path / "home")
    assert wrong_model.returncode == 2 and "name it labelme-mini" in wrong_model.stderr
    missing_ckpt = _run(
        [sys.executable, str(FINETUNE), "--checkpoint", str(tmp_path / "nope.pth"), *TINY], tmp_path, tmp_path / "home"
    )
    assert missing_ckpt.returncode == 2 and "does not exist" in missing_ckpt.stderr
    _no_traceback(missing_ckpt)


def test_non_empty_run_folder_is_refused_then_overwritten(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "epoch_0007").mkdir(parents=True)
    (run_dir / "checkpoints" / "epoch_0007" / "trainable_0.safetensors").write_bytes(b"stale state")
    (run_dir / "config.yaml").write_text("epochs: 9\n")
    before = _tree(run_dir)
    data = write_layout("demo", tmp_path / "data")
    proc = _run(
        [sys.executable, str(FINETUNE), *data, *TINY, "--output-dir", str(run_dir)], tmp_path, tmp_path / "home"
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"finetune: error: the run folder {str(run_dir)!r} is not empty (a run was started there). Continue it with "
        f"--resume, delete it and start afresh with --overwrite, or choose another --output-dir"
    )
    assert _tree(run_dir) == before  # untouched
    _no_traceback(proc)
    both = _run(
        [sys.executable, str(FINETUNE), *data, *TINY, "--output-dir", str(run_dir), "--resume", "--overwrite"],
        tmp_path,
        tmp_path / "home",
    )
    assert both.returncode == 2 and "give one of them" in both.stderr and _tree(run_dir) == before

    over = _run(
        [sys.executable, str(FINETUNE), *data, *TINY, "--output-dir", str(run_dir), "--overwrite", "--no-publish"],
        tmp_path,
        tmp_path / "home",
    )
    assert over.returncode == 0, over.stderr[-3000:]
    states = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert states == ["epoch_0001"]  # the stale epoch 7 is gone: a later --resume continues this run
    assert "epochs: 1" in (run_dir / "config.yaml").read_text()


@pytest.mark.slow
def test_ctrl_c_saves_and_names_resume(tmp_path):
    """SIGINT (Ctrl-C) after epoch 1: one line naming --resume, exit 130, no traceback; --resume
    then finishes the run."""
    data = write_layout("demo", tmp_path / "data")
    run_dir = tmp_path / "run"
    cmd = _samadapt(
        "train", *data, *TINY, "--epochs", "40", "--patience", "0", "--output-dir", str(run_dir), "--no-publish"
    )
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=_env(tmp_path / "home"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoints" / "epoch_0001").is_dir():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("samadapt: interrupted: the state after epoch ") and lines[0].endswith(
        "; continue with the same command and --resume"
    )
    assert not (run_dir / "adapter.safetensors").exists()
    resumed = _run(
        cmd[: cmd.index("--epochs", cmd.index("--warmup-steps"))]
        + ["--epochs", "2", "--patience", "0", "--output-dir", str(run_dir), "--no-publish", "--resume"],
        tmp_path,
        tmp_path / "home",
    )
    # a shorter run is another computation: --resume refuses it and names the setting
    assert resumed.returncode == 2 and "epochs 40 -> 2" in resumed.stderr


def test_errors_under_accelerate_launch_quiet_have_no_traceback(tmp_path):
    """Accelerate's launcher adds its own CalledProcessError traceback to a failed script unless
    given -q (docs/training.md says so); the script's own error is one line."""
    proc = _run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "-q",
            "--num_processes",
            "1",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(FINETUNE),
            "--dataset",
            "taco",
        ],
        tmp_path,
        tmp_path / "home",
    )
    assert proc.returncode != 0
    assert "finetune: error: dataset 'taco' needs --data-root" in proc.stderr
    _no_traceback(proc)


def test_data_summary_and_eval_say_what_is_missing(tmp_path, capsys):
    from samadapt import cli

    assert cli.main(["data", "summary", "--dataset", "taco"]) == 2
    assert "dataset 'taco' needs --data-root" in capsys.readouterr().err
    root = tmp_path / "taco"
    write_layout("taco", root)
    for f in root.rglob("*.jpg"):
        f.unlink()  # the annotation file without its images, as a fresh TACO clone is
    assert cli.main(["data", "summary", "--dataset", "taco", "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "image files: 5 of 5 MISSING under" in out and "e.g. batch_1/000000.jpg" in out
    assert cli.main(["eval", "--dataset", "taco", "--data-root", str(root), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "1 of 1 image files not found under" in err


def test_forward_takes_what_predict_takes():
    import torch

    import samadapt
    from samadapt.errors import ConfigError

    model = samadapt.adapt(samadapt.build_sam("mini"), "lora").eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (120, 200, 3), dtype=np.uint8), rng.integers(0, 255, (90, 60, 3), dtype=np.uint8)]
    boxes = [np.array([[10, 10, 100, 80], [50, 20, 190, 110]], float), np.array([[5, 5, 40, 60]], float)]
    out = model(images, boxes=boxes)
    assert out.low_res_logits.requires_grad and out.image_index.tolist() == [0, 0, 1]
    for i in range(2):  # the same preprocessing as predict; autograd vs no_grad kernels round differently
        single = model([images[i]], boxes=[boxes[i]])
        _, scores, low = model.predict(images[i], boxes=boxes[i], return_logits=True)
        np.testing.assert_allclose(single.low_res_logits.detach().numpy(), low, rtol=0, atol=1e-4)
        np.testing.assert_allclose(single.iou_predictions[:, 0].detach().numpy(), scores, rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match=r"forward takes images as a float tensor \(B, 3, S, S\)"):
        model(torch.zeros(3, 64, 64), boxes=[torch.zeros(1, 4)])
    # a float image (0..255) is converted as the dataset loader converts one (issue 18): the same logits
    as_float = model([images[0].astype(np.float32)], boxes=[boxes[0]])
    torch.testing.assert_close(as_float.low_res_logits, model([images[0]], boxes=[boxes[0]]).low_res_logits)
    with pytest.raises(ConfigError, match=r"expected images\[0\] as an RGB uint8 array \(H, W, 3\)"):
        model([images[0].astype(bool), images[1]], boxes=boxes)


def test_train_help_describes_every_option(capsys):
    from samadapt import cli

    assert cli.main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "__" not in text  # no LORA__RANK metavars
    assert "--lora-rank RANK" in text and "rank r of the low-rank update" in text
    parser = cli.build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    for action in train._actions:
        if action.dest in ("help",):
            continue
        assert action.help and action.help.strip(), action.dest
        if action.dest != "config":
            assert "default" in action.help, action.dest
    summary = parser._subparsers._group_actions[0].choices["data"]._subparsers._group_actions[0].choices["summary"]
    assert any("--data-root" in a.option_strings for a in summary._actions)


def test_skip_report_once_for_splits_of_one_file(tmp_path, caplog):
    from samadapt.data.presets import get_dataset_card

    root = tmp_path / "taco"
    write_layout("taco", root)
    coco = json.loads((root / "annotations.json").read_text())
    coco["annotations"][0]["segmentation"][0][0] = -5.0  # a polygon leaving the image: clipped, reported
    (root / "annotations.json").write_text(json.dumps(coco))
    card = get_dataset_card("taco")
    with caplog.at_level("WARNING", logger="samadapt"):
        train, test = (card.open(split, data_root=root) for split in ("train", "test"))
    reports = [r.getMessage() for r in caplog.records if "skipped or repaired" in r.getMessage()]
    assert len(reports) == 1 and "`samadapt data summary`" in reports[0]
    assert train.skips == {"clipped": 1} or test.skips == {"clipped": 1}


def test_cache_summary_before_any_read_has_no_hit_rate(tmp_path):
    import torch

    from samadapt.training.cache import EmbeddingCache

    cache = EmbeddingCache(tmp_path, model_type="mini", base_id="builtin:x", image_size=256)
    cache.put("a", torch.zeros(4, 2, 2))
    assert "hit rate" not in cache.summary() and "1 embeddings" in cache.summary()
    cache.get("a")
    assert "1 hits / 0 misses (hit rate 100%)" in cache.summary()
