"""Commands run again never lose or mix earlier results (issue 18, items 7 and 10).

- the README's main command, run twice as written: the second run goes to ``outputs/demo-mini-2``
  and the first stays as it was; an ``--output-dir`` given keeps its refusal (--resume / --overwrite);
- ``samadapt eval``: the same for its default folder; a ``--out`` folder that holds something is
  refused unless ``--overwrite``;
- ``samadapt segment``: an existing ``--out`` file (or metrics file, figure) is refused unless
  ``--force``, as ``samadapt export`` refuses.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
from pathlib import Path

from test_docs_commands import TINY  # the README's main command at tiny sizes, as the docs test runs it

from samadapt import cli

REPO = Path(__file__).resolve().parents[2]
RUN_FILES = ("adapter.safetensors", "best_adapter.safetensors", "config.yaml", "run_summary.json")


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def test_quick_start_command_runs_twice_and_keeps_both_runs(tmp_path, samadapt_home_dir):
    """`accelerate launch recipes/finetune.py --strategy decoder`, twice in one folder: exit 0 both
    times, the second run in outputs/demo-mini-2 (said in one line), the first run's files unchanged."""
    work = tmp_path / "clone"
    work.mkdir()
    (work / "recipes").symlink_to(REPO / "recipes")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", SAMADAPT_HOME=str(samadapt_home_dir))
    env.pop("ACCELERATE_USE_CPU", None)
    argv = ["accelerate", "launch", "recipes/finetune.py", "--strategy", "decoder", *TINY]
    first = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    run1 = work / "outputs" / "demo-mini"
    assert all((run1 / f).is_file() for f in RUN_FILES)
    before = _digest(run1)

    second = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Traceback" not in second.stderr
    run2 = work / "outputs" / "demo-mini-2"
    assert (
        "outputs/demo-mini holds an earlier run (kept as it is): this run goes to outputs/demo-mini-2" in second.stdout
    )
    assert all((run2 / f).is_file() for f in RUN_FILES)
    assert _digest(run1) == before  # the earlier run is untouched
    assert json.loads((run2 / "run_summary.json").read_text())["name"] == "demo-mini"  # published as demo-mini
    assert sorted(p.name for p in (work / "outputs").iterdir()) == ["demo-mini", "demo-mini-2"]
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.relative_to(work).as_posix(): p.stat().st_mode & 0o777 for p in work.glob("outputs/**/*") if p.is_file()}
    assert {p: m for p, m in modes.items() if m != 0o666 & ~umask} == {}  # no 0600 file (the epoch states were)


def test_an_output_dir_given_still_refuses_a_folder_with_a_run(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text("strategy: decoder\n")
    code, _, err = _run(["train", "--output-dir", str(folder), "--no-progress"])
    assert code == cli.EXIT_ERROR
    assert f"the run folder '{folder}' is not empty (a run was started there). Continue it with --resume" in err


def test_choose_run_folder_takes_the_next_free_name(tmp_path, monkeypatch):
    from samadapt.config import TrainConfig
    from samadapt.training.preflight import choose_run_folder

    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(progress=False)
    assert choose_run_folder(cfg) is cfg  # nothing there yet
    for name in ("demo-mini", "demo-mini-2"):
        (tmp_path / "outputs" / name).mkdir(parents=True)
        (tmp_path / "outputs" / name / "config.yaml").write_text("x")
    (tmp_path / "outputs" / "demo-mini-3").mkdir()  # empty: free
    assert choose_run_folder(cfg).output_dir == str(Path("outputs") / "demo-mini-3")
    for explicit in ({"output_dir": "outputs/demo-mini"}, {"resume": True}, {"overwrite": True}):
        other = TrainConfig(progress=False, **explicit)
        assert choose_run_folder(other) is other  # --output-dir, --resume, --overwrite: that folder


def test_ctrl_c_in_a_run_beside_an_earlier_one_names_its_folder_to_resume(tmp_path, monkeypatch):
    """ "The same command and --resume" would continue the earlier run: the message names the folder."""
    import pytest

    from samadapt.config import TrainConfig
    from samadapt.errors import TrainingInterrupted
    from samadapt.training import trainer

    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "demo-mini").mkdir(parents=True)
    (tmp_path / "outputs" / "demo-mini" / "config.yaml").write_text("x")

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_train", interrupted)
    with pytest.raises(TrainingInterrupted) as e:
        trainer.train(TrainConfig(progress=False))
    assert str(e.value).endswith(
        "continue with the same command and --resume --output-dir " + str(Path("outputs") / "demo-mini-2")
    )


# ---------------------------------------------------------------------------- eval
def test_eval_keeps_earlier_reports_and_refuses_a_full_out_folder(tmp_path, demo_data_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["eval", "--dataset", "demo", "--data-root", str(demo_data_root), "--max-images", "1", "--no-progress"]
    code, _, err = _run([*common, "--num-examples", "1"])
    assert code == 0, err
    first = tmp_path / "outputs" / "eval-demo"
    assert {"metrics.json", "metrics.md", "examples.png"} <= {p.name for p in first.iterdir()}
    before = _digest(first)
    code, out, err = _run(common)
    assert code == 0, err
    assert "outputs/eval-demo holds earlier results (kept as they are): this report goes to outputs/eval-demo-2" in out
    assert (tmp_path / "outputs" / "eval-demo-2" / "metrics.json").is_file() and _digest(first) == before

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "clicks.png").write_bytes(b"an older report's figure")
    (mine / "notes.txt").write_text("mine")
    code, _, err = _run([*common, "--out", str(mine)])
    assert code == cli.EXIT_ERROR
    assert err == (
        f"samadapt: error: --out '{mine}' is not empty (earlier results?); replace its report with --overwrite, "
        "or choose another --out\n"
    )
    assert sorted(p.name for p in mine.iterdir()) == ["clicks.png", "notes.txt"]
    code, _, err = _run([*common, "--out", str(mine), "--overwrite"])
    assert code == 0, err
    names = sorted(p.name for p in mine.iterdir())
    assert "clicks.png" not in names and "metrics.json" in names and "notes.txt" in names  # only the report replaced


# ---------------------------------------------------------------------------- segment
def test_segment_refuses_to_overwrite_results_without_force(tmp_path, demo_data_root):
    images, ann = demo_data_root / "val" / "images", demo_data_root / "val" / "annotations.json"
    gt = json.loads(ann.read_text())
    dets = tmp_path / "dets.json"
    dets.write_text(
        json.dumps([{"image_id": a["image_id"], "bbox": a["bbox"], "score": 1.0} for a in gt["annotations"]])
    )
    res = tmp_path / "res.json"
    argv = ["segment", "--images", str(images), "--detections", str(dets), "--out", str(res), "--no-progress"]
    argv += ["--annotation-file", str(ann)]
    assert _run(argv)[0] == 0
    written = {p: p.read_bytes() for p in (res, tmp_path / "res.metrics.json")}
    code, _, err = _run(argv)
    assert code == cli.EXIT_ERROR
    assert (
        f"samadapt: error: '{res}' exists (earlier results?); replace it with --force, or choose another --out" in err
    )
    assert {p: p.read_bytes() for p in written} == written
    res.unlink()  # the metrics file alone is in the way too
    code, _, err = _run(argv)
    assert code == cli.EXIT_ERROR and f"'{tmp_path / 'res.metrics.json'}' exists" in err
    code, _, err = _run([*argv, "--force"])
    assert code == 0, err
    assert res.is_file()
