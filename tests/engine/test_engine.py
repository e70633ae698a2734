"""The data engine (samadapt.engine, `samadapt engine`, recipes/data_engine.py): the effort arithmetic on
hand-made masks, the held-out split, the adapter store, and one turn on real TrashCan frames."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from samadapt.engine.effort import clicks_to_target, effort_gain, effort_summary
from samadapt.engine.labels import MIN_LABELLED, labelled_images, split_labelled, write_subset
from samadapt.errors import ConfigError
from samadapt.evaluation.clicks import ClickRecords
from samadapt.evaluation.metrics import instance_metrics

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "recipes"))


# ---------------------------------------------------------------------------- effort, by hand
def _square(top: int, left: int, side: int, size: int = 20) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[top : top + side, left : left + side] = True
    return m


def _records(iou: list[list[float]], image_ids: list[int]) -> ClickRecords:
    ids = np.asarray(image_ids, dtype=np.int64)
    images = [{"id": int(i), "num_instances": int((ids == i).sum())} for i in dict.fromkeys(image_ids)]
    return ClickRecords(np.asarray(iou, dtype=np.float64), ids, np.ones(len(ids), dtype=np.int64), images)


def test_clicks_to_target_counts_the_first_click_at_the_target_and_the_cap_where_never():
    gt = _square(0, 0, 10)
    half = np.zeros_like(gt)
    half[:10, :5] = True
    # the masks an annotator saw after clicks 1..4: IoU 0.25, 0.5, 0.81, 1.0 with the 10 x 10 object
    steps = [_square(0, 0, 5), half, _square(0, 0, 9), gt]
    iou = np.array([[instance_metrics(m[None], gt[None])["iou"][0] for m in steps]])
    np.testing.assert_allclose(iou, [[0.25, 0.5, 0.81, 1.0]])
    never = np.array([[0.1, 0.2, 0.3, 0.4]])  # a second object that never reaches 0.5
    rec = _records(np.concatenate([iou, never]).tolist(), [1, 1])
    clicks, reached = clicks_to_target(rec, 0.5)
    assert clicks.tolist() == [2, 4] and reached.tolist() == [True, False]  # the cap (4) where never reached
    assert clicks_to_target(rec, 0.8)[0].tolist() == [3, 4]
    assert clicks_to_target(rec, 1.0)[0].tolist() == [4, 4]
    summary = effort_summary([rec], [0.5, 0.8], n_boot=50)
    assert summary["clicks_per_object"]["mean"] == pytest.approx(3.0)  # (2 + 4) / 2
    assert summary["clicks_per_object"]["never_reached"] == pytest.approx(0.5)
    assert summary["clicks_per_object_at"]["0.8"]["mean"] == pytest.approx(3.5)
    assert summary["miou_after_1"]["mean"] == pytest.approx((0.25 + 0.1) / 2)
    assert summary["miou_after_3"]["mean"] == pytest.approx((0.81 + 0.3) / 2)
    assert summary["max_clicks"] == 4 and summary["objects"] == 2
    with pytest.raises(ConfigError, match="target IoU"):
        clicks_to_target(rec, 1.5)


def test_the_gain_over_the_control_is_paired_and_its_interval_excludes_zero_only_when_it_should():
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(20), 2).tolist()
    control = _records(np.tile(np.linspace(0.1, 0.4, 10), (40, 1)).tolist(), ids)  # never reaches 0.5: 10 clicks
    better = rng.uniform(0.55, 0.9, size=(40, 10))
    better[:, 0] = 0.2  # every object reaches 0.5 at the second click
    loop = _records(better.tolist(), ids)
    gain = effort_gain([loop], [control], 0.5, n_boot=200)
    assert gain["mean"] == pytest.approx(2 - 10) and gain["high"] < 0
    same = effort_gain([control], [control], 0.5, n_boot=200)
    assert same["mean"] == 0 and same["low"] == 0 == same["high"]


def test_the_simulation_summary_keeps_the_control_arm_at_round_0_and_reports_the_gain_per_round():
    import data_engine

    args = data_engine.parse_args(
        ["--data-root", "x", "--out", "y", "--rounds", "2", "--frames-per-round", "4", "--seeds", "0", "1",
         "--targets", "0.5", "--max-clicks", "3", "--bootstrap", "50"]
    )  # fmt: skip
    ids = [1, 1, 2]
    base = _records([[0.1, 0.2, 0.6], [0.1, 0.1, 0.1], [0.3, 0.4, 0.5]], ids)  # 3, 3 (never), 3 clicks
    better = _records([[0.6, 0.7, 0.8], [0.2, 0.6, 0.7], [0.5, 0.6, 0.7]], ids)  # 1, 2, 1 clicks
    labelling = _records([[0.2, 0.6, 0.7]], [9])
    per_seed = [
        {
            "loop": {"val": [(None, base), (None, base), (None, better)], "labelling": [(None, labelling)] * 2},
            "control": {"val": [(None, base)] * 3, "labelling": [(None, labelling)] * 2},
        }
        for _ in (0, 1)
    ]
    for s in per_seed:  # the box records, with the ids the bootstrap resamples by
        for arm in s.values():
            arm["val"] = [(r.after(1), r) for _, r in arm["val"]]
    out = data_engine.summarise(per_seed, args)
    loop, control = out["arms"]["loop"]["rounds"], out["arms"]["control"]["rounds"]
    assert [r["round"] for r in loop] == [0, 1, 2] and [r["labelled_frames"] for r in loop] == [0, 4, 8]
    assert [r["clicks_per_object"]["mean"] for r in control] == [3.0, 3.0, 3.0]
    assert [r["clicks_per_object"]["mean"] for r in loop] == pytest.approx([3.0, 3.0, 4 / 3])
    assert loop[0]["clicks_per_object"]["never_reached"] == pytest.approx(1 / 3)
    assert [g["clicks_per_object"][0]["mean"] for g in out["gain"]] == pytest.approx([0, 0, 4 / 3 - 3])
    assert loop[1]["labelling"]["clicks_per_object"]["mean"] == 2.0 and "labelling" not in loop[0]
    table = data_engine.markdown({**out, "settings": vars(args)}).splitlines()
    assert len([ln for ln in table if ln.startswith("| ")]) == 1 + 3  # the header and rounds 0, 1, 2


def test_the_simulation_reuses_its_own_out_folder_and_refuses_another_runs(tmp_path):
    import data_engine

    def args(*extra: str):
        return data_engine.parse_args(["--data-root", "x", "--out", str(tmp_path / "out"), *extra])

    data_engine.check_out(args("--threads", "1"))
    data_engine.check_out(args("--bootstrap", "100"))  # what does not change the numbers may change
    with pytest.raises(SystemExit, match="frames_per_round: 20 there, 8 now"):
        data_engine.check_out(args("--frames-per-round", "8"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(SystemExit, match="holds files of something else"):
        data_engine.check_out(data_engine.parse_args(["--data-root", "x", "--out", str(tmp_path / "other")]))
    with pytest.raises(SystemExit):  # argparse: too few frames for a retraining
        args("--frames-per-round", "3")


# ---------------------------------------------------------------------------- labels
def test_the_held_out_split_is_stable_as_the_file_grows_and_needs_four_images():
    names = [f"frame_{k:03d}.jpg" for k in range(200)]
    small, large = split_labelled(names[:40]), split_labelled(names)
    assert set(small.held_out) <= set(large.held_out)  # an image never changes side as images are added
    assert 0.15 < len(large.held_out) / len(names) < 0.35
    assert split_labelled(names, seed=1).held_out != large.held_out
    four = split_labelled(names[:MIN_LABELLED])
    assert len(four.held_out) >= 1 and len(four.train) >= MIN_LABELLED - 1
    assert sorted(four.train + four.held_out) == sorted(names[:MIN_LABELLED])
    with pytest.raises(ConfigError, match="at least 4 labelled images.*3 have annotations"):
        split_labelled(names[:3])


def test_labelled_images_and_the_written_subsets(tmp_path):
    data = {
        "images": [{"id": k, "file_name": f"{k}.jpg", "width": 4, "height": 4} for k in (1, 2, 3)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0},
            {"id": 2, "image_id": 3, "category_id": 1, "iscrowd": 1},  # a crowd region labels nothing
        ],
        "categories": [{"id": 1, "name": "object"}],
    }
    assert labelled_images(data) == ["1.jpg"]
    out = json.loads(write_subset(data, ["1.jpg", "3.jpg"], tmp_path / "s.json").read_text())
    assert [im["id"] for im in out["images"]] == [1, 3] and [a["id"] for a in out["annotations"]] == [1, 2]
    assert out["categories"] == data["categories"]
    with pytest.raises(ConfigError, match="not in the annotation file"):
        write_subset(data, ["9.jpg"], tmp_path / "t.json")


# ---------------------------------------------------------------------------- one turn on real frames
@pytest.fixture(scope="module")
def labelled_frames(trashcan_coco, tmp_path_factory) -> tuple[Path, Path]:
    """(annotation file, images folder): 6 real TrashCan training frames "labelled" (their masks)."""
    folder = trashcan_coco / "instance_version"
    data = json.loads((folder / "instances_train_trashcan.json").read_text())
    out = tmp_path_factory.mktemp("engine") / "My Labels.json"
    write_subset(data, labelled_images(data)[::400][:6], out)
    return out, folder / "train"


def _samadapt(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SAMADAPT_HOME": str(home), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "samadapt", *args], capture_output=True, text=True, env=env, timeout=900
    )


def _engine(*args: str, home: Path) -> subprocess.CompletedProcess:
    return _samadapt("engine", *args, home=home)


def test_samadapt_engine_installs_the_next_round_and_leaves_the_annotations_untouched(labelled_frames, tmp_path):
    annotations, images = labelled_frames
    before = hashlib.sha256(annotations.read_bytes()).hexdigest()
    home = tmp_path / "home"
    common = ["--images", str(images), "--epochs", "1", "--max-clicks", "3", "--work-dir", str(tmp_path / "work")]
    first = _engine(str(annotations), *common, "--json", home=home)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    events = [json.loads(ln) for ln in first.stdout.splitlines() if ln.startswith("{")]
    assert [e["phase"] for e in events] == ["train", "score", "done", "result"]
    turn = events[-1]["turn"]
    assert turn["name"] == "my_labels_r1-mini" and turn["previous"] == "mini"
    assert len(turn["split"]["held_out"]) >= 1 and len(turn["split"]["train"]) + len(turn["split"]["held_out"]) == 6
    for key in ("new", "previous"):
        s = turn["scores"][key]
        assert 0 <= s["box_miou"]["mean"] <= 1 and 1 <= s["clicks_per_object"]["mean"] <= 3
    card = json.loads((home / "adapters" / "my_labels_r1-mini" / "card.json").read_text())
    assert card["engine"]["scores"] == turn["scores"] and card["strategy"] == "decoder"
    run_adapter = tmp_path / "work" / "round-1" / "run" / "adapter.safetensors"
    assert (home / "adapters" / "my_labels_r1-mini" / "adapter.safetensors").read_bytes() == run_adapter.read_bytes()
    # the next turn, compared with the first one's adapter, takes the next name
    second = _engine(str(annotations), *common, "--previous", "my_labels_r1-mini", home=home)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert "installed my_labels_r2-mini" in second.stdout and "my_labels_r1-mini: box mean IoU" in second.stdout
    listed = _samadapt("list", home=home)
    assert "my_labels_r1-mini" in listed.stdout and "my_labels_r2-mini" in listed.stdout
    assert hashlib.sha256(annotations.read_bytes()).hexdigest() == before


def test_samadapt_engine_refuses_fewer_than_four_labelled_images_before_training(labelled_frames, tmp_path):
    annotations, images = labelled_frames
    data = json.loads(annotations.read_text())
    few = write_subset(data, labelled_images(data)[:3], tmp_path / "few.json")
    out = _engine(str(few), "--images", str(images), home=tmp_path / "home")
    assert out.returncode == 2
    assert "at least 4 labelled images" in out.stderr and "3 have annotations" in out.stderr
    assert not (tmp_path / "home" / "adapters").exists() and not (tmp_path / "few-engine").exists()


def test_install_adapter_refuses_a_taken_name_and_a_file_that_is_no_adapter(tmp_path, monkeypatch):
    import samadapt
    from samadapt.adapter_store import install_adapter
    from samadapt.errors import AdapterFileError

    monkeypatch.setenv("SAMADAPT_HOME", str(tmp_path / "home"))
    model = samadapt.adapt(samadapt.build_sam("mini"), "decoder")
    path = samadapt.save_adapter(model, tmp_path / "a.safetensors")
    installed = install_adapter(path, "proj_r1-mini", {"note": "x"})
    assert installed.read_bytes() == path.read_bytes()
    assert json.loads((installed.parent / "card.json").read_text())["note"] == "x"
    with pytest.raises(ConfigError, match="exists already"):
        install_adapter(path, "proj_r1-mini", {})
    (tmp_path / "junk.safetensors").write_bytes(b"not an adapter")
    with pytest.raises(AdapterFileError):
        install_adapter(tmp_path / "junk.safetensors", "proj_r2-mini", {})
    assert not (tmp_path / "home" / "adapters" / "proj_r2-mini").exists()
