"""The real-data strategy comparison: its statistics (samadapt.evaluation.uncertainty), its pieces
(samadapt.evaluation.comparison, the centre-point prompt, the page sections) and a shortened
`recipes/compare.py --dataset trashcan` on real TrashCan frames."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from samadapt.data.prompts import center_points
from samadapt.errors import ConfigError
from samadapt.evaluation.comparison import box_fill_baseline, choose_frames
from samadapt.evaluation.evaluate import EvalRecords
from samadapt.evaluation.uncertainty import bootstrap_interval, t_interval, t_quantile

REPO = Path(__file__).resolve().parents[2]
TRASHCAN = REPO.parent / "shared" / "realdata" / "trashcan"


def _recipe(name: str):
    sys.path.insert(0, str(REPO / "recipes"))
    try:
        spec = importlib.util.spec_from_file_location(f"samadapt_recipe_{name}", REPO / "recipes" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "recipes"))


def _records(iou: np.ndarray, per_image: int = 2, categories=None) -> EvalRecords:
    n = len(iou)
    rec = EvalRecords(
        iou=iou,
        precision=iou,
        recall=iou,
        f1=iou,
        category_ids=np.asarray(categories if categories is not None else np.ones(n), dtype=np.int64),
        areas=np.ones(n),
        scores=iou,
        image_ids=np.arange(n) // per_image,
    )
    rec.images = [{"id": i, "num_instances": per_image} for i in range(n // per_image)]
    return rec


# ---------------------------------------------------------------------------- statistics
def test_t_quantiles_match_the_tables():
    assert t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile(0.975, 2) == pytest.approx(4.3027, abs=1e-4)
    assert t_quantile(0.975, 10) == pytest.approx(2.2281, abs=1e-4)
    iv = t_interval([0.1, 0.2, 0.3])
    assert iv.mean == pytest.approx(0.2) and iv.half_width == pytest.approx(4.3027 * 0.1 / np.sqrt(3), abs=1e-5)
    assert np.isnan(t_interval([0.5]).low)  # one seed says nothing about the spread


def test_bootstrap_interval_of_a_mean_and_of_a_paired_gain():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, 200)
    zero = _records(base)
    # a model exactly 0.05 better on every object: the paired gain is 0.05 in every round
    better = [_records(base + 0.05), _records(base + 0.05)]
    gain = bootstrap_interval(better, reference=zero, n_boot=500)
    assert gain.mean == pytest.approx(0.05) and gain.low == pytest.approx(0.05) and gain.high == pytest.approx(0.05)
    assert gain.excludes_zero()
    same = bootstrap_interval([_records(base)], reference=zero, n_boot=500)
    assert (same.low, same.mean, same.high) == (0.0, 0.0, 0.0) and not same.excludes_zero()
    # the interval of the mean covers the mean and shrinks with more images
    iv = bootstrap_interval(zero, n_boot=2000)
    assert iv.low < iv.mean < iv.high and iv.mean == pytest.approx(base.mean())
    wide = bootstrap_interval(_records(base[:40]), n_boot=2000)
    assert wide.half_width > iv.half_width
    # seeds that disagree widen the interval: resampling seeds counts their spread
    seeds = [_records(base + d) for d in (-0.1, 0.0, 0.1)]
    assert bootstrap_interval(seeds, n_boot=2000).half_width > 2 * iv.half_width
    # one class only
    cats = np.tile([1, 2], 100)
    two = _records(np.where(cats == 1, 0.9, 0.1), categories=cats)
    assert bootstrap_interval(two, category=1, n_boot=200).mean == pytest.approx(0.9)
    assert np.isnan(bootstrap_interval(two, category=3, n_boot=200).mean)


def test_bootstrap_interval_refuses_bad_options():
    rec = _records(np.ones(4))
    with pytest.raises(ConfigError, match="level must be strictly between 0 and 1, got 95"):
        bootstrap_interval(rec, level=95)
    with pytest.raises(ConfigError, match="n_boot must be a positive integer, got 0"):
        bootstrap_interval(rec, n_boot=0)
    other = _records(np.ones(6))
    with pytest.raises(ConfigError, match="image id 2 that is not among the evaluation images"):
        bootstrap_interval(rec, reference=other)


# ---------------------------------------------------------------------------- pieces
def test_center_points_are_the_most_interior_pixels():
    masks = np.zeros((3, 20, 30), bool)
    masks[0, 2:9, 3:20] = True  # a 7 x 17 rectangle: centre row 5, column 11
    masks[1, 4:16, 2:14] = True  # a 12 x 12 square (its core: rows 9-10, columns 7-8) ...
    masks[1, 9:11, 14:30] = True  # ... with a thin bar that pulls the centroid but is not interior
    coords, labels = center_points(masks)
    assert coords[0, 0].tolist() == [11.5, 5.5] and labels[:2, 0].tolist() == [1, 1]
    assert coords[1, 0].tolist() == [7.5, 9.5]
    assert coords[2, 0].tolist() == [0.0, 0.0] and labels[2, 0] == -1  # empty mask: padding


def test_choose_frames_is_seeded_disjoint_and_nested():
    a = choose_frames(range(100), range(100, 150), n_select=10, n_train=40, n_test=20, seed=0)
    b = choose_frames(range(100), range(100, 150), n_select=10, n_train=20, n_test=20, seed=0)
    assert len(a["select"]) == 10 and len(a["train"]) == 40 and len(a["test"]) == 20
    assert not set(a["select"]) & set(a["train"]) and set(a["test"]) <= set(range(100, 150))
    assert b["train"] == a["train"][:20] and b["select"] == a["select"]  # smaller shares are subsets
    assert choose_frames(range(100), range(100, 150), n_select=10, n_train=40, n_test=20, seed=1) != a
    with pytest.raises(ConfigError, match="asked for 10 selection \\+ 95 training frames of 100"):
        choose_frames(range(100), range(10), n_select=10, n_train=95, n_test=5)


def test_box_fill_baseline():
    masks = np.zeros((2, 10, 10), bool)
    masks[0, 1:4, 1:5] = True  # a filled rectangle: IoU 1
    masks[1, 5:9, 5:9] = np.eye(4, dtype=bool)  # a diagonal: 4 of 16 box pixels
    assert box_fill_baseline([{"masks": masks}]) == pytest.approx((1 + 4 / 16) / 2)


def test_page_sections_keep_each_other(tmp_path):
    page = _recipe("compare_page")
    path = tmp_path / "strategies.md"
    path.write_text(
        "# Strategy comparison\n\nGenerated by `python recipes/compare.py --dataset demo` ...\n| decoder |\n"
    )
    page.update_page(path, "trashcan", "## Real\nREAL-1\n")
    text = path.read_text()
    assert text.index("REAL-1") < text.index("| decoder |")  # real data first, the older demo page kept
    page.update_page(path, "demo", "## Demo\nDEMO-2\n")
    page.update_page(path, "trashcan", "## Real\nREAL-3\n")
    text = path.read_text()
    assert text.startswith("# Strategy comparison\n") and "REAL-1" not in text and "| decoder |" not in text
    assert text.index("REAL-3") < text.index("DEMO-2") and text.count("<!-- compare:") == 2


def test_the_comparison_covers_every_registered_strategy():
    from samadapt.strategies import STRATEGIES

    compare = _recipe("compare_trashcan")
    assert compare.trashcan_strategies(None) == list(STRATEGIES) and len(STRATEGIES) >= 4
    with pytest.raises(SystemExit, match=r"unknown strategies \['lorra'\]"):
        compare.trashcan_strategies(["lorra"])


# ---------------------------------------------------------------------------- the recipe
@pytest.mark.slow
def test_compare_trashcan_shortened(trashcan_coco, mini_checkpoint, tmp_path):
    """A few real frames, one epoch, two seeds: the page section, figures and JSON, and the
    page's numbers are the JSON's."""
    out, runs = tmp_path / "docs", tmp_path / "runs"
    out.mkdir()
    (out / "strategies.md").write_text("# Strategy comparison\n\nDEMO SECTION OF AN EARLIER RUN\n")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "SAMADAPT_HOME": str(tmp_path / "home"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    cmd = [
        sys.executable,
        str(REPO / "recipes" / "compare.py"),
        "--dataset",
        "trashcan",
        "--data-root",
        str(trashcan_coco),
        "--checkpoint",
        str(mini_checkpoint),
        "--strategies",
        "decoder",
        "lora",
        "--train-frames",
        "6",
        "--select-frames",
        "3",
        "--test-frames",
        "4",
        "--epochs",
        "1",
        "--seeds",
        "0",
        "1",
        "--fractions",
        "0.5",
        "1.0",
        "--bootstrap",
        "100",
        "--examples",
        "1",
        "--jobs",
        "2",
        "--out",
        str(out),
        "--runs",
        str(runs),
        "--",
        "--prompts-per-image",
        "4",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    data = json.loads((out / "strategies_trashcan.json").read_text())
    assert data["frames"] == {"select": 3, "train": 6, "test": 4} and data["seeds"] == [0, 1]
    assert data["strategies"] == ["decoder", "lora"] and data["best_encoder"] == "lora"
    val = {ln.strip() for ln in (TRASHCAN / "splits" / "instance_val.txt").read_text().splitlines()}
    assert set(data["test_frames"]) <= val and len(data["test_frames"]) == 4
    for label in ("zero-shot", "decoder", "lora"):
        row = data["stats"][label]
        for key in ("mean_iou", "mean_precision", "mean_f1"):
            assert row[key]["low"] <= row[key]["mean"] <= row[key]["high"], (label, key)
        assert len(row["per_class"]) >= 1
    assert (
        "seeds" in data["stats"]["lora"]["mean_iou"]["method"] and "paired" in data["stats"]["lora"]["gain"]["method"]
    )
    assert set(data["prompts"]) == {"tight box", "jittered box", "loose box (20%)", "centre point"}
    assert set(data["efficiency"]) == {"decoder", "lora"} and set(data["efficiency"]["decoder"]) == {"0.5", "1.0"}
    assert data["efficiency"]["decoder"]["1.0"]["mean"] == data["stats"]["decoder"]["mean_iou"]["mean"]
    for s in ("decoder", "lora"):
        assert data["costs"][s]["trainable_parameters"] > 0 and data["costs"][s]["peak_memory_mb"] > 0

    page = (out / "strategies.md").read_text()
    assert page.index("<!-- compare:trashcan -->") < page.index("DEMO SECTION OF AN EARLIER RUN")
    zs = data["stats"]["zero-shot"]["mean_iou"]
    assert f"| zero-shot | {100 * zs['mean']:.2f} ± {100 * (zs['high'] - zs['low']) / 2:.2f} |" in page
    g = data["stats"]["lora"]["gain"]
    assert f"| {100 * g['mean']:+.2f} [{100 * g['low']:+.2f}, {100 * g['high']:+.2f}] |" in page
    assert re.search(r"(larger than its uncertainty|Not distinguishable from zero-shot)", page)
    assert "`mini` is samadapt's" in page and "| vit_h | 66.43 / 73.30 / 78.08 | 78.88 / 82.76 / 87.38 |" in page
    assert "### Prompt robustness" in page and "### Data efficiency" in page and "50% (3 frames)" in page
    for name in ("trashcan_prompts.png", "trashcan_efficiency.png", "trashcan_examples.png"):
        assert (out / "figures" / name).read_bytes()[:4] == b"\x89PNG"
    # the section can be rewritten from the JSON alone, to the same text
    assert _recipe("compare").main(["--dataset", "trashcan", "--render-only", "--out", str(out)]) == 0
    assert (out / "strategies.md").read_text() == page
