"""The benchmark scripts run (in their tiny ``--smoke`` sizes), write the JSON the docs are built
from, and their equality checks pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from script_helpers import run_script

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_smoke_run_writes_json_with_passing_checks(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--smoke",
            "--no-profile",
            "--only",
            "decoder_step,batched_prediction,limits",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,  # seconds on an idle 2-core CPU; minutes when other jobs share it
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for name in ("decoder_step", "batched_prediction"):
        data = json.loads((tmp_path / f"{name}-cpu.json").read_text())
        assert data["benchmark"] == name and data["mode"] == "smoke" and data["device"] == "cpu"
        for key in ("torch", "date", "torch_threads", "cpu", "memory_total_gib", "loadavg_at_start"):
            assert key in data["machine"], key
        assert data["tables"] and data["tables"][0]["rows"]
        assert data["checks"] and all(c["passed"] for c in data["checks"]), data["checks"]
    prediction = json.loads((tmp_path / "batched_prediction-cpu.json").read_text())
    assert {"ours_s", "upstream_s", "speedup"} <= set(prediction["tables"][0]["rows"][0])
    limits = json.loads((tmp_path / "limits-cpu.json").read_text())
    assert limits["summary"]["matmul_peak_gflops_per_s"] > 0
    calls = {r["call"]: r for r in limits["tables"][0]["rows"]}
    assert set(calls) == {"decoder step (cached embeddings)", "encoder forward", "predict_batch"}
    for r in calls.values():  # FLOPs counted (CPU flash attention included), a share of the matmul, its causes
        assert r["gflop"] > 0 and 0 < r["share_of_matmul"] and 0 < r["matmul_time_share"] <= 1 and r["other_top_ops"]

    report = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "report.py"), "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert report.returncode == 0, report.stderr
    assert "| decoder |" in report.stdout and "SamPredictor" in report.stdout
    assert "Distance to the limit" in report.stdout


def test_full_size_cpu_results_sit_beside_the_quick_ones(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import _common
        import report
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert _common.result_file_name("train_step", "cpu", "quick") == "train_step-cpu.json"
    assert _common.result_file_name("train_step", "cpu", "full") == "train_step-cpu-full.json"
    assert _common.result_file_name("train_step", "cuda", "full") == "train_step-cuda.json"
    # the report names each table's own file
    src = json.loads((ROOT / "benchmarks" / "results" / "decoder_step-cpu.json").read_text())
    for mode, name in (("quick", "decoder_step-cpu.json"), ("full", "decoder_step-cpu-full.json")):
        (tmp_path / name).write_text(json.dumps({**src, "mode": mode}))
    text = report.render(tmp_path)
    assert "Source: `benchmarks/results/decoder_step-cpu.json`" in text
    assert "Source: `benchmarks/results/decoder_step-cpu-full.json`" in text


def test_cache_fill_benchmark_smoke_run(tmp_path):
    """benchmarks/cache_fill.py on 4 generated images: both fills write the same embeddings."""
    argv = ["--num-images", "4", "--rounds", "1", "--threads", "1", "--out", str(tmp_path)]
    run_script("benchmarks/cache_fill.py", *argv, timeout=300, threads=1)
    data = json.loads((tmp_path / "cache_fill-cpu.json").read_text())
    assert {r["variant"] for r in data["rows"]} == {"encoder alone", "fill before", "fill after"}
    assert len(data["checks"]) == 2 and all(c["passed"] for c in data["checks"])
    assert "loadavg_at_end" in data["machine"]
