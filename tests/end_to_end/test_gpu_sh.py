"""``bash benchmarks/gpu.sh --wheels DIR --out DIR --dry-run``, run as on the GPU machine: in a fresh
virtualenv that has this environment's packages except segment-anything, pycocotools and samadapt
(the GPU machine has PyTorch, accelerate, peft, timm, safetensors and transformers, but not those),
so the script must install them from the wheel folder it is given and write only into the output
folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GPU_SH = ROOT / "benchmarks" / "gpu.sh"
#: what the GPU machine lacks (module folders and dist-info folders start so), and samadapt itself
LACKING = ("segment_anything", "pycocotools", "samadapt", "__editable__", "_samadapt", "__pycache__")


def _gpu_like_python(tmp_path: Path) -> Path:
    """A virtualenv seeing this environment's site-packages through a folder of links that leaves
    out ``LACKING``; its own site-packages come first (where gpu.sh installs)."""
    view = tmp_path / "preinstalled"
    view.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(LACKING) and not entry.name.endswith(".pth"):
            (view / entry.name).symlink_to(entry)
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    py = env / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "preinstalled.pth").write_text(str(view) + "\n")
    probe = subprocess.run([str(py), "-c", "import torch, segment_anything"], capture_output=True, text=True)
    assert "No module named 'segment_anything'" in probe.stderr, probe.stderr  # torch there, segment_anything not
    return py


def _gpu_sh(py: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHON"] = str(py)
    return subprocess.run(
        ["bash", str(GPU_SH), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout
    )


def _results_state() -> dict[str, float]:
    return {str(f): f.stat().st_mtime for f in (ROOT / "benchmarks" / "results").rglob("*")}


@pytest.mark.slow
def test_dry_run_installs_from_the_wheel_folder_and_writes_only_into_out(tmp_path):
    py = _gpu_like_python(tmp_path)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "-d",
            str(wheels),
            "segment-anything",
            "pycocotools",
        ],
        check=True,
        timeout=300,
    )
    out = tmp_path / "out"
    before = _results_state()
    proc = _gpu_sh(py, "--wheels", str(wheels), "--out", str(out), "--dry-run", timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    # installed from the folder, into the fresh environment; torch untouched
    assert "installing from" in proc.stdout and "segment-anything" in proc.stdout and "pycocotools" in proc.stdout
    log = (out / "install.log").read_text()
    assert str(wheels) in log or "wheels" in log
    check = subprocess.run(
        [
            str(py),
            "-c",
            "import segment_anything, pycocotools, torch; print(segment_anything.__file__, pycocotools.__file__)",
        ],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert check.returncode == 0 and str(tmp_path / "venv") in check.stdout, check.stdout + check.stderr

    # every part ran and wrote its JSON into --out; the summary lists them, the GPU estimate fits
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] and summary["parts"]
    assert all(p["status"] == "passed" for p in summary["parts"]), summary["parts"]
    for p in summary["parts"]:
        assert (out / p["file"]).is_file(), p
    assert {Path(p["file"]).name for p in summary["parts"]} >= {
        "train_step-cpu.json",
        "cached_embeddings-cpu.json",
        "inference-cpu.json",
        "batched_prediction-cpu.json",
        "limits-cpu.json",
        "sdpa_attention-cpu.json",
        "activation_checkpointing-cpu.json",
    }
    assert summary["gpu_estimate"]["fits"] and summary["gpu_estimate"]["total_s"] <= 480
    # the targets of the GPU run are evaluated (on the tiny model) by the same code
    names = " ".join(t["name"] for t in summary["targets"])
    assert "checkpointing + bf16" in names and "prompts/s" in " ".join(t["target"] for t in summary["targets"])
    assert "images/s" in " ".join(t["target"] for t in summary["targets"])
    text = (out / "summary.md").read_text()
    assert "## Targets" in text and "Estimated time of the GPU run" in text
    assert _results_state() == before  # nothing written into benchmarks/results


def test_missing_wheels_stop_before_any_benchmark(tmp_path):
    py = _gpu_like_python(tmp_path)
    empty, out = tmp_path / "no-wheels", tmp_path / "out"
    empty.mkdir()
    proc = _gpu_sh(py, "--wheels", str(empty), "--out", str(out), "--dry-run", timeout=300)
    assert proc.returncode == 2
    assert "segment-anything" in proc.stderr and "pycocotools" in proc.stderr and str(empty) in proc.stderr
    assert "pip download" in proc.stderr
    assert not (out / "summary.json").exists()


def test_arguments_are_required(tmp_path):
    for args in (
        [],
        ["--wheels", str(tmp_path)],
        ["--out", str(tmp_path)],
        ["--wheels", str(tmp_path / "nope"), "--out", str(tmp_path)],
    ):
        proc = subprocess.run(["bash", str(GPU_SH), *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, args
        assert "usage" in proc.stderr or "not a folder" in proc.stderr


# ---------------------------------------------------------------- benchmarks/gpu.py's logic (seconds, no runs)
sys.path.insert(0, str(ROOT / "benchmarks"))


def _gpu_module():
    import gpu

    return gpu


def test_the_dry_run_takes_the_gpu_plans_code_paths():
    """Same parts, dtypes, output folders and plan keys in both plans: the dry run differs only in
    sizes, so a GPU run cannot reach code the dry run never ran."""
    import run as R

    gpu = _gpu_module()
    dry, real = gpu.plans(dry=True), gpu.plans(dry=False)
    assert [(p["name"], p["dtype"], p["out"]) for p in dry] == [(p["name"], p["dtype"], p["out"]) for p in real]
    for d, r in zip(dry, real):
        assert d["name"] in R.BENCHMARKS
        assert d["plan"].keys() == r["plan"].keys(), d["name"]
        assert [u[0] for u in d["units"]] == [u[0] for u in r["units"]]
    by_name = {(p["name"], p["dtype"]): p["plan"] for p in real}
    assert by_name[("train_step", "bf16")]["memory_target"] == {"variant": {"model_type": "vit_h"}, "gib": 16}
    assert by_name[("train_step", "bf16")]["batch"] == 2 and True in by_name[("train_step", "bf16")]["checkpointing"]
    assert by_name[("inference", "bf16")]["images_per_s_target"]["value"] == 25
    assert (
        by_name[("cached_embeddings", "bf16")]["throughput_batch"] * by_name[("cached_embeddings", "bf16")]["prompts"]
        == 256
    )  # the 2,000 prompts/s target's batch: 32 images x 8 prompts
    assert all(p["plan"].get("variants", [{"model_type": "mini"}])[0]["model_type"] == "mini" for p in dry[:5])


def test_the_estimate_adds_flops_at_the_assumed_rate_and_fixed_costs():
    gpu = _gpu_module()
    parts = gpu.plans(dry=True)
    rows, total = gpu.estimate(parts)
    assert [r["part"] for r in rows] == [f"{p['name']} ({p['dtype']})" for p in parts]
    assert all(r["tflop"] >= 0 and r["estimate_s"] >= r["fixed_s"] > 0 for r in rows)
    assert total == pytest.approx(sum(r["estimate_s"] for r in rows) + gpu.OVERHEAD["process"])
    enc = gpu.unit_flops("encoder", "mini", 1)
    assert gpu.unit_flops("predict", "mini", 3) > enc > 0
    assert gpu.unit_flops("train_lora", "mini", 2) == pytest.approx(2 * gpu.unit_flops("train_lora", "mini", 1))


def test_the_gpu_run_writes_every_part_into_out_and_starts_none_after_the_deadline(tmp_path, monkeypatch):
    """``gpu.py --out DIR`` on a (pretended) GPU: each part's JSON and the summary land in DIR; a part
    due after ``--deadline`` is listed as not run; a failed check fails the run and is named."""
    import _common as C

    gpu = _gpu_module()
    clock = iter(range(0, 10_000, 100))  # every reading of the clock: 100 s later
    monkeypatch.setattr(gpu.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(gpu.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(C, "machine_info", lambda device: {"torch": "x", "date": "today", "device_name": "H100"})
    ran = []

    def run_part(p, device, root):
        ran.append(p["name"])
        out = root / p["out"]
        out.mkdir(parents=True, exist_ok=True)
        fake = {
            "targets": [{"name": p["name"], "target": ">= 1", "value": 2, "met": True, "note": ""}],
            "checks": [{"name": "equal", "passed": p["name"] != "cached_embeddings"}],
        }
        (out / f"{p['name']}-cuda.json").write_text(json.dumps(fake))
        return {"status": "passed", "file": str((out / f"{p['name']}-cuda.json").relative_to(root))}

    monkeypatch.setattr(gpu, "run_part", run_part)
    out = tmp_path / "out"
    assert gpu.main(["--out", str(out), "--deadline", "350"]) == 1  # not every part ran
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["dry_run"] and summary["gpu_estimate"] is None
    started = [p for p in summary["parts"] if "file" in p]
    assert ran == [p["part"].split(" (")[0] for p in started] and 1 <= len(ran) < len(gpu.plans(dry=False))
    assert all(p["started_s"] <= 350 for p in started)
    assert all(p["status"].startswith("not run") and p["started_s"] > 350 for p in summary["parts"][len(ran) :])
    assert all((out / p["file"]).is_file() for p in started)
    assert summary["failed_checks"] == ["cached_embeddings-cuda.json: equal"]
    assert {t["file"] for t in summary["targets"]} == {p["file"] for p in started}
    md = (out / "summary.md").read_text()
    assert "## Targets" in md and "cached_embeddings-cuda.json: equal" in md and "not run" in md
