"""The recipes end to end: ``recipes/finetune.py`` under ``accelerate launch`` (every strategy,
YAML config, outputs, publishing, resume after a kill) and ``recipes/evaluate.py``.

Training runs once per module (``trained``): decoder and LoRA as ``accelerate launch`` subprocesses,
running side by side, and the adapter strategy in this process through ``main([...])`` from a YAML
file. Every run uses a random ``mini`` checkpoint (the built-in weights may not be installed) and
the session's tiny demo data; one test runs the bare default command on the built-in weights when
they exist.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import samadapt
from samadapt.config import TrainConfig
from samadapt.data import presets
from samadapt.errors import ConfigError, SamAdaptError

REPO = Path(__file__).resolve().parents[2]
FINETUNE = REPO / "recipes" / "finetune.py"
EVALUATE = REPO / "recipes" / "evaluate.py"
PUBLISHED = {"decoder": "demo-mini", "lora": "demo-mini-lora", "adapter": "demo-mini-adapter"}
RUN_FILES = (
    "adapter.safetensors",
    "metrics.json",
    "metrics.md",
    "examples.png",
    "curves.png",
    "config.yaml",
    "history.json",
)


def _recipe(name: str):
    """Import ``recipes/<name>.py`` (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"samadapt_recipe_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env(home: Path) -> dict[str, str]:
    """Subprocess environment: our SAMADAPT_HOME, one thread (bit-identical reruns), this checkout
    first on the path, and no user Accelerate config."""
    env = {
        **os.environ,
        "SAMADAPT_HOME": str(home),
        "OMP_NUM_THREADS": "1",
        "HF_HOME": str(home / "hf"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    return env


def _accelerate_launch(*args) -> list[str]:
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
        "--cpu",
        str(FINETUNE),
        *map(str, args),
    ]


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@dataclass
class Run:
    run_dir: Path
    stdout: str
    returncode: int
    log: str = ""  # stdout + stderr, for failure messages


@dataclass
class Trained:
    home: Path
    checkpoint: Path
    args: list[str]
    data_root: Path
    runs: dict[str, Run]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mini_checkpoint, tiny_run_args, demo_data_root) -> Trained:
    root = tmp_path_factory.mktemp("recipes")
    home = root / "home"
    runs: dict[str, Run] = {}

    # decoder and lora: `accelerate launch recipes/finetune.py ...`, side by side
    procs = {}
    for strategy in ("decoder", "lora"):
        run_dir = root / "runs" / strategy
        out, err = open(root / f"{strategy}.out", "w"), open(root / f"{strategy}.err", "w")
        cmd = _accelerate_launch(
            "--strategy", strategy, "--checkpoint", mini_checkpoint, *tiny_run_args, "--output-dir", run_dir
        )
        procs[strategy] = (subprocess.Popen(cmd, cwd=root, env=_env(home), stdout=out, stderr=err), run_dir, out, err)

    try:
        # adapter: in this process, from a YAML file whose `epochs` the command line overrides
        config = root / "adapter.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "strategy": "adapter",
                    "checkpoint": str(mini_checkpoint),
                    "data-root": str(demo_data_root),
                    "demo_train_images": 6,
                    "demo_val_images": 3,
                    "epochs": 5,
                    "prompts_per_image": 4,
                    "batch_size": 2,
                    "progress": False,
                    "log_with": "none",
                }
            )
        )
        run_dir = root / "runs" / "adapter"
        buf = io.StringIO()
        threads = torch.get_num_threads()
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(buf):
            mp.setenv("SAMADAPT_HOME", str(home))
            torch.set_num_threads(1)  # the two subprocesses use one each; the CPU may have two
            try:
                rc = _recipe("finetune").main(["--config", str(config), "--epochs", "2", "--output-dir", str(run_dir)])
            finally:
                torch.set_num_threads(threads)
                _reset_accelerate()
        runs["adapter"] = Run(run_dir, buf.getvalue(), rc, buf.getvalue())
    finally:
        for strategy, (proc, run_dir, out, err) in procs.items():
            try:
                proc.wait(timeout=600)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                out.close(), err.close()
            stdout = (root / f"{strategy}.out").read_text()
            runs[strategy] = Run(
                run_dir, stdout, proc.returncode, stdout + (root / f"{strategy}.err").read_text()[-4000:]
            )
    return Trained(home, mini_checkpoint, tiny_run_args, demo_data_root, runs)


@pytest.fixture
def one_thread():
    """Torch on one thread in this process, as the training subprocesses: on a shared 2-core CPU two
    threads per process mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _load_published(monkeypatch, trained: Trained, name: str) -> samadapt.AdaptedSam:
    monkeypatch.setenv("SAMADAPT_HOME", str(trained.home))
    return samadapt.load(name, checkpoint=trained.checkpoint)


# ============================================================================ finetune.py
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["decoder", "lora", "adapter"])
def test_finetune_recipe(trained, strategy, monkeypatch, demo_data_root, one_thread):
    run = trained.runs[strategy]
    assert run.returncode == 0, run.log
    out = run.stdout

    # zero-shot vs fine-tuned, printed
    assert re.search(r"^zero-shot: mean IoU \d\.\d{4}  mean precision \d\.\d{4}  mean F1 \d\.\d{4}$", out, re.M)
    assert f"== samadapt: {PUBLISHED[strategy]} ({strategy} on mini, dataset demo) ==" in out
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert metrics["dataset"] == "demo" and list(metrics["models"]) == ["zero-shot", "fine-tuned"]
    for label in ("zero-shot", "fine-tuned"):
        m = metrics["models"][label]
        assert m["num_images"] == 3 and m["num_instances"] > 0 and m["prompt"] == "box"
        row = f"  {label:20}{100 * m['mean_iou']:>10.2f}{100 * m['mean_precision']:>11.2f}{100 * m['mean_f1']:>9.2f}"
        assert row in out, f"summary row {row!r} not in\n{out}"
    assert re.search(r"^  gain +[+-]\d+\.\d\d$", out, re.M)
    assert f"load it with          samadapt.load('{PUBLISHED[strategy]}')" in out
    assert "epochs                2 run" in out

    # the run folder
    for name in RUN_FILES:
        assert (run.run_dir / name).is_file() and (run.run_dir / name).stat().st_size > 0, name
    assert (run.run_dir / "examples.png").read_bytes()[:4] == b"\x89PNG"
    cfg = TrainConfig.from_yaml(run.run_dir / "config.yaml")
    assert (cfg.strategy, cfg.epochs, cfg.checkpoint) == (strategy, 2, str(trained.checkpoint))
    history = json.loads((run.run_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    if strategy != "adapter":  # the adapter run turns TensorBoard off (log_with: none)
        assert list((run.run_dir / "logs").rglob("events.out.tfevents.*")), "no TensorBoard events file"

    # published under its name, loadable onto the base it was trained from, and it predicts
    published = trained.home / "adapters" / PUBLISHED[strategy]
    assert (published / "adapter.safetensors").is_file()
    card = json.loads((published / "card.json").read_text())
    assert (card["strategy"], card["model_type"], card["dataset"]) == (strategy, "mini", "demo")
    model = _load_published(monkeypatch, trained, PUBLISHED[strategy])
    assert model.strategy == strategy
    saved = load_file(str(run.run_dir / "adapter.safetensors"))
    state = model.trainable_state_dict()
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved)
    sample = presets.demo(demo_data_root, "val")[0]
    masks, scores = model.predict(sample["image"], boxes=sample["boxes"])
    n, (h, w) = len(sample["boxes"]), sample["image"].shape[:2]
    assert masks.shape == (n, h, w) and masks.dtype == bool and scores.shape == (n,)


@pytest.mark.slow
def test_finetune_config_file_with_overrides(trained):
    run = trained.runs["adapter"]
    assert run.returncode == 0, run.log
    saved = yaml.safe_load((run.run_dir / "config.yaml").read_text())
    assert saved["strategy"] == "adapter"  # from the file
    assert saved["epochs"] == 2  # the command line beats the file's 5
    assert saved["log_with"] is None  # "none" in the file
    assert saved["data_root"] == str(trained.data_root)  # "data-root" in the file


def test_config_from_args_merges_yaml_and_command_line(tmp_path):
    finetune = _recipe("finetune")
    config = tmp_path / "run.yaml"
    config.write_text("strategy: lora\nepochs: 5\nlr: 0.001\nstrategy_options: {rank: 8}\ndataset: taco\n")
    cfg = finetune.config_from_args(
        [
            "--config",
            str(config),
            "--epochs",
            "3",
            "--lora-alpha",
            "2",
            "--data-root",
            str(tmp_path),
            "--no-progress",
            "--log-with",
            "none",
        ]
    )
    assert (cfg.strategy, cfg.epochs, cfg.lr, cfg.dataset, cfg.data_root) == ("lora", 3, 0.001, "taco", str(tmp_path))
    assert cfg.strategy_options == {"rank": 8, "alpha": 2.0}  # the file's and the command line's
    assert cfg.progress is False and cfg.log_with is None
    # the command line's strategy options override the file's
    assert finetune.config_from_args(
        ["--config", str(config), "--lora-rank", "2", "--data-root", str(tmp_path)]
    ).strategy_options == {"rank": 2}


def test_config_from_args_errors(tmp_path):
    finetune = _recipe("finetune")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config keys \['epochz'\]"):
        finetune.config_from_args(["--config", str(bad)])
    with pytest.raises(ConfigError, match="does not exist"):
        finetune.config_from_args(["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(SamAdaptError, match=r"--lora-rank belong\(s\) to --strategy lora, but --strategy is 'decoder'"):
        finetune.config_from_args(["--lora-rank", "8"])
    assert finetune.main(["--log-with", "tensorbord"]) == 2  # argparse names the choices
    assert finetune.main(["--strategy", "nope"]) == 2


# ============================================================================ resume
@pytest.mark.slow
def test_resume_after_kill_is_bit_identical(trained, tmp_path):
    """Kill a run (SIGKILL) once epoch 1's state is saved, rerun it with --resume: the adapter and
    the last epoch's weights equal those of the uninterrupted decoder run with the same options."""
    reference = trained.runs["decoder"]
    assert reference.returncode == 0, reference.log
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        str(FINETUNE),
        "--strategy",
        "decoder",
        "--checkpoint",
        str(trained.checkpoint),
        *trained.args,
        "--output-dir",
        str(run_dir),
        "--no-publish",
    ]
    env = _env(trained.home)  # the same embedding cache as the reference run

    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while not (run_dir / "checkpoints" / "epoch_0001").is_dir():
                assert proc.poll() is None, (tmp_path / "killed.log").read_text()
                assert time.monotonic() < deadline, "epoch 1 never finished"
                time.sleep(0.02)
            assert proc.poll() is None, "the run finished before it could be killed"
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert not (run_dir / "adapter.safetensors").exists(), "killed too late: the run had finished"

    resumed = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr[-4000:]
    assert re.search(r"resumed from .*epoch_0001 \(epoch 1, step 3\)", resumed.stdout), resumed.stdout
    assert "zero-shot: mean IoU" not in resumed.stdout  # not rerun; its numbers come from the saved state

    def same(a: Path, b: Path) -> bool:
        x, y = load_file(str(a)), load_file(str(b))
        return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)

    assert same(run_dir / "adapter.safetensors", reference.run_dir / "adapter.safetensors")
    last = Path("checkpoints") / "epoch_0002" / "trainable_0.safetensors"  # the weights after the last epoch
    assert same(run_dir / last, reference.run_dir / last)
    ours, theirs = (json.loads((d / "history.json").read_text()) for d in (run_dir, reference.run_dir))
    assert [r["train_loss"] for r in ours] == [r["train_loss"] for r in theirs]
    ours, theirs = (json.loads((d / "metrics.json").read_text())["models"] for d in (run_dir, reference.run_dir))
    assert ours["zero-shot"] == theirs["zero-shot"] and ours["fine-tuned"] == theirs["fine-tuned"]


@pytest.mark.slow
def test_resume_with_other_settings_is_refused(trained, tmp_path, monkeypatch, capsys):
    """--resume continues a run only with its own settings: a changed learning rate or epoch count
    is an error naming both values, before anything in the run folder changes."""
    reference = trained.runs["decoder"]
    assert reference.returncode == 0, reference.log
    run_dir = tmp_path / "run"
    shutil.copytree(reference.run_dir / "checkpoints", run_dir / "checkpoints")
    shutil.copy(reference.run_dir / "config.yaml", run_dir / "config.yaml")
    before = (run_dir / "config.yaml").read_text()
    monkeypatch.setenv("SAMADAPT_HOME", str(trained.home))
    args = [
        "--strategy",
        "decoder",
        "--checkpoint",
        str(trained.checkpoint),
        *map(str, trained.args),
        "--output-dir",
        str(run_dir),
        "--resume",
        "--no-publish",
    ]
    try:
        assert _recipe("finetune").main(args + ["--lr", "0.5", "--epochs", "4"]) == 2
    finally:
        _reset_accelerate()
    err = capsys.readouterr().err
    assert "epochs 2 -> 4" in err and "lr 0.0003 -> 0.5" in err, err
    assert f"--config {run_dir / 'config.yaml'} --resume" in err
    assert (run_dir / "config.yaml").read_text() == before


# ============================================================================ the bare default command
def _builtin_mini_weights() -> bool:
    from samadapt.models.registry import builtin_weights_path, get_model_card

    return builtin_weights_path(get_model_card("mini")) is not None


@pytest.mark.slow
@pytest.mark.skipif(
    not _builtin_mini_weights(),
    reason="samadapt/weights/mini.safetensors is not installed (made by recipes/pretrain_mini.py; committed for CI)",
)
def test_default_command_on_builtin_weights(tmp_path, tiny_run_args, monkeypatch):
    """`accelerate launch recipes/finetune.py --strategy decoder` with no checkpoint: the built-in
    mini weights, the default output folder, and `samadapt.load("demo-mini")` with no checkpoint."""
    home = tmp_path / "home"
    proc = subprocess.run(
        _accelerate_launch("--strategy", "decoder", *tiny_run_args),
        cwd=tmp_path,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert "zero-shot: mean IoU" in proc.stdout and "load it with          samadapt.load('demo-mini')" in proc.stdout
    run_dir = tmp_path / "outputs" / "demo-mini"
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    monkeypatch.setenv("SAMADAPT_HOME", str(home))
    model = samadapt.load("demo-mini")
    assert model.base.base_id.startswith("builtin:mini@")
    image = np.full((120, 160, 3), 90, np.uint8)
    image[30:90, 40:120] = 220
    masks, scores = model.predict(image, boxes=np.array([[40, 30, 120, 90]], np.float32))
    assert masks.shape == (1, 120, 160) and scores.shape == (1,)


# ============================================================================ evaluate.py
@pytest.mark.slow
def test_evaluate_recipe(trained, tmp_path, monkeypatch, capsys, demo_data_root, one_thread):
    for run in trained.runs.values():
        assert run.returncode == 0, run.log
    monkeypatch.setenv("SAMADAPT_HOME", str(trained.home))
    out = tmp_path / "eval"
    rc = _recipe("evaluate").main(
        [
            "--dataset",
            "demo",
            "--data-root",
            str(demo_data_root),
            "--model",
            "mini",
            "--checkpoint",
            str(trained.checkpoint),
            "--adapter",
            "demo-mini",
            "--adapter",
            "demo-mini-lora",
            "--adapter",
            str(trained.runs["adapter"].run_dir / "adapter.safetensors"),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    for name in ("metrics.json", "metrics.md", "examples.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "metrics.json").read_text())["models"]
    assert list(results) == ["zero-shot", "demo-mini", "demo-mini-lora", "adapter"]  # a file is labelled by its folder

    # the same prompts and images as the trainer's evaluation: the same numbers (up to thread-count
    # rounding: the runs used one thread)
    def trainer_metrics(strategy, label):
        return json.loads((trained.runs[strategy].run_dir / "metrics.json").read_text())["models"][label]

    expected = {
        "zero-shot": trainer_metrics("decoder", "zero-shot"),
        "demo-mini": trainer_metrics("decoder", "fine-tuned"),
        "demo-mini-lora": trainer_metrics("lora", "fine-tuned"),
        "adapter": trainer_metrics("adapter", "fine-tuned"),
    }
    for label, want in expected.items():
        got = results[label]
        assert got["num_images"] == want["num_images"] == 3 and got["num_instances"] == want["num_instances"]
        for key in ("mean_iou", "mean_precision", "mean_f1"):
            assert got[key] == pytest.approx(want[key], abs=1e-4), (label, key)

    assert "demo/test: 3 images, prompts: box (seed 0)" in printed
    for label in expected:
        assert re.search(rf"^{re.escape(label)} +\d+\.\d\d +\d+\.\d\d +\d+\.\d\d +\d+\.\d\d +\d+$", printed, re.M), (
            printed
        )
    assert "| demo-mini-lora |" in (out / "metrics.md").read_text()


@pytest.mark.slow
def test_evaluate_recipe_prompt_kinds(trained, tmp_path, monkeypatch, capsys, demo_data_root, one_thread):
    """Click prompts on one image, adapters only; an adapter whose base file cannot be found is an
    error that says what to pass."""
    monkeypatch.setenv("SAMADAPT_HOME", str(trained.home))
    evaluate = _recipe("evaluate")
    rc = evaluate.main(
        [
            "--dataset",
            "demo",
            "--data-root",
            str(demo_data_root),
            "--adapter",
            "demo-mini",
            "--out",
            str(tmp_path / "e"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "base checkpoint with sha256" in err and "checkpoint" in err.split("sha256")[-1], err
    rc = evaluate.main(
        [
            "--dataset",
            "demo",
            "--data-root",
            str(demo_data_root),
            "--adapter",
            "demo-mini",
            "--checkpoint",
            str(trained.checkpoint),
            "--prompt",
            "points",
            "--num-points",
            "2",
            "--max-images",
            "1",
            "--no-zero-shot",
            "--num-examples",
            "0",
            "--out",
            str(tmp_path / "e"),
            "--no-progress",
        ]
    )
    assert rc == 0
    results = json.loads((tmp_path / "e" / "metrics.json").read_text())["models"]
    assert list(results) == ["demo-mini"] and results["demo-mini"]["prompt"] == "points"
    assert results["demo-mini"]["num_images"] == 1
    assert not (tmp_path / "e" / "examples.png").exists()


def test_evaluate_recipe_errors(tmp_path, capsys, samadapt_home_dir):
    evaluate = _recipe("evaluate")
    assert evaluate.main(["--no-zero-shot", "--out", str(tmp_path)]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
    assert evaluate.main(["--adapter", "taco-vith", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no adapter named 'taco-vith'" in err and "known adapters: none yet" in err
    with pytest.raises(SystemExit):
        evaluate.main(["--prompt", "circle"])
    assert "invalid choice: 'circle'" in capsys.readouterr().err


def test_evaluate_parser_is_reusable():
    """``samadapt eval`` builds its parser from the same function."""
    import argparse

    from samadapt.cli.evaluate import add_eval_arguments

    parser = argparse.ArgumentParser(prog="samadapt eval")
    add_eval_arguments(parser)
    args = parser.parse_args(["--adapter", "a", "--adapter", "b", "--prompt", "jitter", "--no-zero-shot"])
    assert (args.adapter, args.prompt, args.zero_shot, args.dataset, args.split) == (
        ["a", "b"],
        "jitter",
        False,
        "demo",
        "test",
    )
