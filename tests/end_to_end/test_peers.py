"""``benchmarks/peers.py``: the same job with samadapt and with the tools users pick instead."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
TRASHCAN = ROOT.parent / "shared" / "realdata" / "trashcan"
sys.path.insert(0, str(ROOT / "benchmarks"))

import peers  # noqa: E402
from script_helpers import run_script  # noqa: E402


def test_every_tool_gets_samadapts_frame_order():
    from samadapt.training.state import EpochShuffled

    orders = peers.epoch_orders(7, 3, seed=4)
    shuffled = EpochShuffled(list(range(7)), 4)
    for e, order in enumerate(orders):
        shuffled.set_epoch(e)
        assert order == list(shuffled.order)
    assert orders[0] != orders[1]  # a new order each epoch
    import _peer_jobs as J

    sampler = J.EpochOrder(orders)
    assert [list(sampler) for _ in range(3)] == orders


def test_transformers_route_gets_the_same_weights(tmp_path):
    """The SamModel the transformers job loads computes what samadapt computes, and its trained
    decoder maps back onto upstream's names (how every tool's decoder is scored)."""
    pytest.importorskip("transformers")
    from transformers import SamModel

    import samadapt
    from samadapt.exporters.hf import to_transformers_keys
    from samadapt.models.registry import build_sam

    w = peers.write_weights({"model_type": "mini"}, tmp_path, hf=True)
    ours = samadapt.adapt(build_sam("mini", w["checkpoint"]), "decoder").eval()
    hf = SamModel.from_pretrained(w["hf_dir"]).eval()
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.allclose(hf.get_image_embeddings(x), ours.encode(x), atol=1e-4)
    upstream_name = to_transformers_keys({k: k for k in ours.sam.state_dict()})
    back = {upstream_name[f"mask_decoder.{k}"]: v for k, v in hf.mask_decoder.state_dict().items()}
    expected = {f"mask_decoder.{k}": v for k, v in ours.sam.mask_decoder.state_dict().items()}
    assert back.keys() == expected.keys()
    assert all(torch.equal(back[k], expected[k]) for k in expected)


def _rows(tool, repeats):
    return [
        {"tool": tool, "task": peers.FINETUNE, "model": "m", "repeat": r, "epoch_s": e, "peak_memory_mib": 1.0}
        for r, e in enumerate(repeats)
    ]


def test_ratios_pair_each_later_epoch_with_samadapts_same_epoch():
    rows = _rows("samadapt", [[10, 1, 2], [12, 2, 2]]) + _rows("transformers", [[11, 4, 4], [12, 4, 8]])
    (r,) = peers.ratios(rows)
    assert r["peer"] == "transformers" and r["n_pairs_later"] == 4
    assert r["later_cpu_ratio"] is None and r["n_pairs_later_cpu"] == 0  # rows without CPU times
    assert r["later_ratio"] == {"median": 3.0, "min": 2.0, "max": 4.0}
    assert r["epoch1_ratio"]["min"] == 1.0 and r["epoch1_ratio"]["max"] == 1.1
    summary = {s["tool"]: s for s in peers.summary_rows(rows, [r])}
    assert summary["transformers"]["later_vs_samadapt"] == "3 (2-4)"
    assert summary["samadapt"]["later_vs_samadapt"] is None


def test_quick_plan_runs_samadapt_beside_two_peers_at_the_same_sizes():
    """--quick (the committed results) fine-tunes with samadapt and at least two peers, one task at a
    time so every tool gets the same frames, epochs and repeats; every tool has a job."""
    import _peer_jobs as J

    for mode in ("smoke", "quick", "full"):
        cfg = peers.plan(mode)
        assert cfg["prompts"] >= 1
        for task in cfg["tasks"]:
            assert task["tools"][0] == "samadapt"  # the reference of every ratio
            jobs = peers.TRAIN_JOBS if task["task"] == peers.FINETUNE else peers.PREDICT_JOBS
            assert all(jobs[t] in J.JOBS and J.JOBS[jobs[t]].__name__ == jobs[t] for t in task["tools"])
            assert task["repeats"] >= 1 and task["images"] >= 1
            assert (task["epochs"] >= 2) if task["task"] == peers.FINETUNE else (task["passes"] >= 1)
    quick = peers.plan("quick")["tasks"]
    finetune_peers = {t for task in quick if task["task"] == peers.FINETUNE for t in task["tools"]} - {"samadapt"}
    assert len(finetune_peers) >= 2
    assert any(task["task"] == peers.PREDICT and "segment-anything" in task["tools"] for task in quick)
    assert {t for task in peers.plan("full")["tasks"] for t in task["tools"]} == set(peers.TOOLS)


def _fake_run_task(epochs_by_tool, fail_on=None):
    """A stand-in for ``peers.run_task`` that appends what a real one would (no jobs run)."""

    def run_task(args, task, prompts, work, pythons, rows):
        if task["task"] == fail_on:
            raise KeyboardInterrupt
        for r in range(task["repeats"]):
            for tool in task["tools"]:
                s = epochs_by_tool[tool][: task["epochs"] or task["passes"]]
                rows.append(
                    {
                        "tool": tool,
                        "task": task["task"],
                        "model": task["variant"]["model_type"],
                        "repeat": r,
                        "dir": str(work / tool),
                        "epoch_s": s,
                        "peak_memory_mib": 100.0,
                        "loss_by_epoch": [1.0] * len(s),
                    }
                )

    return run_task


def _fake_source(tmp_path):
    source = tmp_path / "trashcan"
    (source / "original_data").mkdir(parents=True)
    return source


def test_out_gets_the_json_and_markdown_and_results_stays_untouched(tmp_path, monkeypatch):
    epochs = {"samadapt": [4.0, 1.0, 1.0], "transformers": [8.0, 8.0, 6.0], "micro-sam": [9.0, 9.0, 9.0]}
    epochs["segment-anything"] = [2.0, 2.0]
    monkeypatch.setattr(peers, "import_trashcan", lambda source, work: work / "imported")
    monkeypatch.setattr(peers, "microsam_python", lambda env: Path(sys.executable))
    monkeypatch.setattr(peers, "run_task", _fake_run_task(epochs))
    results = ROOT / "benchmarks" / "results"
    before = {f.name: f.stat().st_mtime for f in results.iterdir()}
    out = tmp_path / "out"
    assert peers.main(["--quick", "--out", str(out), "--source", str(_fake_source(tmp_path))]) == 0
    assert {f.name: f.stat().st_mtime for f in results.iterdir()} == before

    data = json.loads((out / "peers-cpu.json").read_text())
    assert data["benchmark"] == "peers" and data["mode"] == "quick"
    assert {"date", "cpu", "platform"} <= set(data["machine"])
    assert {r["tool"] for r in data["rows"]} == set(peers.TOOLS)
    for r in data["rows"]:
        assert r["task"] in (peers.FINETUNE, peers.PREDICT) and isinstance(r["epoch_s"], list)
        assert "dir" not in r  # work folders are not results
    later = {(r["peer"], r["model"]): r["later_ratio"] for r in data["ratios"] if r["task"] == peers.FINETUNE}
    assert later[("transformers", "vit_b")] == {"median": 7.0, "min": 6.0, "max": 8.0}
    assert later[("micro-sam", "vit_b")]["median"] == 9.0
    assert data["setup"]["tasks"] and data["not_run"]  # what was run, and what --quick leaves out
    md = (out / "peers-cpu.md").read_text()
    assert md.count("| decoder fine-tuning |") == 5 and "7 (6-8)" in md
    assert not (out / "work").exists()


def test_a_stopped_run_keeps_what_finished_beside_a_complete_one(tmp_path, monkeypatch):
    epochs = {t: [1.0, 1.0, 1.0] for t in peers.TOOLS}
    monkeypatch.setattr(peers, "import_trashcan", lambda source, work: work / "imported")
    monkeypatch.setattr(peers, "run_task", _fake_run_task(epochs, fail_on=peers.PREDICT))
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        peers.main(
            ["--quick", "--out", str(out), "--source", str(_fake_source(tmp_path))]
            + ["--tools", "samadapt,transformers,segment-anything"]
        )
    data = json.loads((out / "peers-partial-cpu.json").read_text())
    assert {r["tool"] for r in data["rows"]} == {"samadapt", "transformers"}  # the fine-tuning that finished
    assert not (out / "peers-cpu.json").exists()


def test_bad_arguments_stop_before_any_work(tmp_path, capsys):
    for argv, words in (
        (["--tools", "samadapt,sam-hq"], "sam-hq"),
        (["--source", str(tmp_path)], "original_data"),
        (["--imported", str(tmp_path)], "instance_version"),
    ):
        with pytest.raises(SystemExit) as e:
            peers.main(["--quick", "--out", str(tmp_path / "out"), *argv])
        assert e.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.skipif(not (TRASHCAN / "original_data").is_dir(), reason="needs ../shared/realdata/trashcan")
def test_smoke_run_measures_every_tool_and_writes_only_into_out(tmp_path):
    results = ROOT / "benchmarks" / "results"
    before = {f.name: f.stat().st_mtime for f in results.iterdir()}
    run_script("benchmarks/peers.py", "--smoke", "--out", str(tmp_path), timeout=3600)
    data = json.loads((tmp_path / "peers-cpu.json").read_text())
    assert {"date", "cpu", "platform"} <= set(data["machine"])
    rows = data["rows"]
    assert {r["tool"] for r in rows} == {"samadapt", "transformers", "micro-sam", "segment-anything"}
    for r in rows:
        assert r["task"] in (peers.FINETUNE, peers.PREDICT)
        assert isinstance(r["epoch_s"], list) and r["epoch_s"] and all(s > 0 for s in r["epoch_s"])
        assert r["peak_memory_mib"] > 0
    train = [r for r in rows if r["task"] == peers.FINETUNE]
    assert all(len(r["epoch_s"]) == 2 for r in train)
    assert all(0 <= r["iou_after"] <= 1 for r in train)  # every tool's trained decoder, scored the same way
    ours = next(r for r in train if r["tool"] == "samadapt")
    assert ours["encoder_forwards_in_epochs"] == [0, 0]  # epochs read the cache filled before epoch 1
    assert ours["cache_fill_s"] > 0
    assert {(r["peer"], r["task"]) for r in data["ratios"]} >= {
        ("transformers", peers.FINETUNE),
        ("micro-sam", peers.FINETUNE),
        ("segment-anything", peers.PREDICT),
    }
    predicted = [r for r in rows if r["task"] == peers.PREDICT and r["tool"] == "segment-anything"]
    assert predicted[0]["masks_differ_from_samadapt"] <= 1e-4 * predicted[0]["mask_pixels"]
    assert (tmp_path / "peers-cpu.md").read_text().count("| decoder fine-tuning |") == 3
    assert (tmp_path / "envs" / "micro-sam" / "bin" / "python").exists()  # micro-sam's own environment
    assert not (tmp_path / "work").exists()  # work files removed
    assert {f.name: f.stat().st_mtime for f in results.iterdir()} == before
