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


def test_families_benchmark_smoke_run(tmp_path):
    """benchmarks/families.py --smoke: mini and sam2.1_hiera_test side by side; every table of the
    JSON is there, the parameter groups add up, and every measured time is positive."""
    from sam2_helpers import require_sam2_or_skip

    require_sam2_or_skip()
    run_script("benchmarks/families.py", "--smoke", "--out", str(tmp_path), timeout=600)
    data = json.loads((tmp_path / "families-cpu.json").read_text())
    models = ["mini", "sam2.1_hiera_test"]
    assert data["benchmark"] == "families" and data["mode"] == "smoke" and data["device"] == "cpu"
    assert data["setup"]["models"] == models and data["setup"]["ratio_reference"] == "mini"
    for key in ("date", "torch", "cpu", "torch_threads", "loadavg_at_start", "loadavg_at_end"):
        assert key in data["machine"], key
    assert data["checks"] and all(c["passed"] for c in data["checks"]), data["checks"]
    tables = {t["title"].split(" (")[0]: t["rows"] for t in data["tables"]}

    params = {r["model_type"]: r for r in tables["parameters"]}
    assert set(params) == set(models)
    for r in params.values():
        parts = ("image_encoder", "prompt_encoder", "mask_decoder", "video_only", "other_image_path")
        assert r["total"] == sum(r[k] for k in parts) and all(r[k] > 0 for k in parts[:3])
    assert params["mini"]["video_only"] == 0 and params["sam2.1_hiera_test"]["video_only"] > 0
    assert params["sam2.1_hiera_test"]["total"] == 7_661_378

    sizes = tables["trainable parameters and adapter file bytes per strategy"]
    assert {(r["model_type"], r["strategy"]) for r in sizes} == {
        (m, s) for m in models for s in ("adapter", "bitfit", "decoder", "full", "lora")
    }
    for r in sizes:  # float32 tensors plus a header
        assert 0 < 4 * r["trainable_parameters"] < r["adapter_bytes"] < 4 * r["trainable_parameters"] + 100_000

    cache = {r["model_type"]: r for r in tables["embedding cache per image"]}
    assert cache["mini"]["values"] == 128 * 16 * 16 and len(cache["mini"]["shapes"]) == 1
    assert cache["sam2.1_hiera_test"]["bytes"] == 2**20 and len(cache["sam2.1_hiera_test"]["shapes"]) == 3

    times = tables["CPU wall time"]
    measured = {"encoder forward", "decoder step (cached features)", "lora step (through the encoder)", "predict"}
    assert {(r["measurement"], r["model_type"]) for r in times} == {(t, m) for t in measured for m in models}
    for r in times:
        assert r["wall_s_min"] > 0 and r["cpu_s_min"] > 0 and r["ratio_to_mini"] > 0 and r["n"] == 1

    rendered = run_script("benchmarks/families.py", "--render", str(tmp_path / "families-cpu.json")).stdout
    assert "| predict |" in rendered and "not measured" in rendered


def test_families_docs_tables_are_the_committed_json():
    """docs/sam2.md's side-by-side tables are ``families.py --render`` of the committed result,
    line for line: no number in them is typed by hand."""
    path = ROOT / "benchmarks" / "results" / "families-cpu-full.json"
    rendered = run_script("benchmarks/families.py", "--render", str(path)).stdout
    page = (ROOT / "docs" / "sam2.md").read_text().splitlines()
    missing = [line for line in rendered.splitlines() if line.startswith("|") and line not in page]
    assert not missing, missing
