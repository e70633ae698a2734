"""The page's Adapt runs (samadapt/annotate/adapting.py) without a browser or training: the child
process is replaced by small scripts, so what is checked is the job's own logic (the page's run on
real frames, with training: tests/annotate/test_annotate_adapt_browser.py)."""

from __future__ import annotations

import json
import sys
import time
from types import SimpleNamespace

import pytest

from samadapt.annotate.adapting import AdaptJob, JobRunningError
from samadapt.annotate.session import Predictor
from samadapt.errors import ConfigError

TURN = {
    "name": "labels_r1-mini",
    "previous": "mini",
    "split": {"train": ["a", "b", "c"], "held_out": ["d"]},
    "scores": {},
}


class Session:
    def __init__(self) -> None:
        self.predictor = Predictor("mini", None, "base")
        self.swaps = 0

    def swap(self, predictor: Predictor) -> None:
        self.predictor, self.swaps = predictor, self.swaps + 1


class ScriptJob(AdaptJob):
    """A job whose child process is ``script`` (Python source)."""

    script = ""

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.script]


def _job(labelled: int, script: str, tmp_path) -> ScriptJob:
    store = SimpleNamespace(path=tmp_path / "labels.json", done_names=lambda: {f"{k}.jpg" for k in range(labelled)})
    job = ScriptJob(Session(), store, tmp_path, load=lambda name: Predictor(name, None, "base", source=name))
    job.script = script
    return job


def _wait(job: AdaptJob, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while job.status()["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    return job.status()


def test_a_run_needs_four_labelled_images(tmp_path):
    job = _job(3, "", tmp_path)
    with pytest.raises(ConfigError, match="at least 4 labelled images.*3 have annotations"):
        job.start()
    assert job.status()["state"] == "idle"


def test_a_finished_run_swaps_the_new_model_in_and_swap_goes_back_and_forth(tmp_path):
    script = (
        "import json; print(json.dumps({'phase': 'train', 'message': 'training'})); print('epoch 1: ...'); "
        f"print(json.dumps({{'phase': 'result', 'turn': {TURN!r}}}))"
    )
    job = _job(4, script, tmp_path)
    assert job.start()["state"] == "running"
    st = _wait(job)
    assert st["state"] == "done" and st["result"]["name"] == "labels_r1-mini"
    assert job.session.predictor.name == "labels_r1-mini" and st["model"] == "labels_r1-mini" and st["other"] == "mini"
    assert job.swap()["model"] == "mini" and job.session.predictor.name == "mini"
    assert job.swap()["model"] == "labels_r1-mini"
    assert json.dumps(job.status())  # what the page polls is JSON


def test_a_failed_run_leaves_the_model_and_says_why(tmp_path):
    job = _job(5, "import sys; print('Error: the images folder is gone'); sys.exit(2)", tmp_path)
    job.start()
    st = _wait(job)
    assert st["state"] == "failed" and "exit status 2" in st["error"] and "images folder is gone" in st["error"]
    assert job.session.swaps == 0 and st["model"] == "mini"
    with pytest.raises(ConfigError, match="adapt first"):
        job.swap()
    # a run that ends without its result line (killed) is a failure too
    job.script = "print('training...')"
    job.start()
    assert _wait(job)["state"] == "failed" and job.session.swaps == 0


def test_one_run_at_a_time_and_close_stops_it(tmp_path):
    job = _job(4, "import time; time.sleep(60)", tmp_path)
    job.start()
    with pytest.raises(JobRunningError, match="going on already"):
        job.start()
    with pytest.raises(JobRunningError):
        job.swap()
    job.close()
    assert _wait(job, 20)["state"] == "failed" and job.session.swaps == 0


def test_the_command_compares_with_the_model_in_use(tmp_path):
    store = SimpleNamespace(path=tmp_path / "labels.json", done_names=set)
    job = AdaptJob(Session(), store, tmp_path / "images", load=None, model="mini", epochs=3)
    cmd = job.command()
    assert cmd[1:5] == ["-m", "samadapt", "engine", str(tmp_path / "labels.json")]
    assert ["--model", "mini"] == cmd[cmd.index("--model") : cmd.index("--model") + 2] and "--previous" not in cmd
    assert cmd[cmd.index("--epochs") + 1] == "3" and "--json" in cmd
    job.session.predictor = Predictor("labels_r1-mini", None, "base", source="labels_r1-mini")
    cmd = job.command()
    assert cmd[cmd.index("--previous") + 1] == "labels_r1-mini" and "--model" not in cmd
