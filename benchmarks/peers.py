"""samadapt beside what users pick instead: the same fine-tuning job and the same prediction job, run
side by side in one run, with each tool as its users run it.

    python benchmarks/peers.py --quick                 # 2-core CPU, under 20 minutes -> benchmarks/results/peers-cpu.json
    python benchmarks/peers.py --quick --out DIR       # everything into DIR (JSON, markdown, work files, micro-sam's env)
    python benchmarks/peers.py --smoke --out DIR       # seconds-to-minutes sizes (the test suite)
    python benchmarks/peers.py --quick --imported DIR  # frames of an earlier `samadapt data import-trashcan` in DIR
    python benchmarks/peers.py --device cuda --out DIR # full sizes

What it needs (pip, besides samadapt's own dependencies):

    pip install -e ".[peers]"          # transformers and monai: the transformers route
    # micro-sam: this script makes its own virtualenv (micro-sam depends on a fork of
    # segment-anything that installs as `segment_anything` too, and on napari / Qt): in ENV,
    #   python -m venv ENV   (+ a .pth file that puts this environment's site-packages after ENV's,
    #                         so micro-sam runs on the very same torch build)
    #   ENV/bin/pip install --no-deps micro-sam==1.8.14 torch-em==0.10.9 python-elf==0.9.2 segment-anything-py==1.0.1
    #   ENV/bin/pip install imageio bioimage-cpp scikit-image scikit-learn kornia pooch xxhash zarr natsort h5py xarray
    # (what micro_sam.training imports; the napari GUI stack is left out). --microsam-env ENV reuses one.

The tools (``tool`` in the JSON), each in a fresh process per repeat (``benchmarks/_peer_jobs.py``
says exactly what each runs):

- ``samadapt``: ``samadapt.training.train``, decoder strategy, box prompts and one decoder pass a
  step like the peers (``--train-prompts box --click-rounds 0``; the default's click rounds make
  4 passes); embeddings cached: epoch 1 encodes every image, later epochs read the cache;
  ``predict_batch`` for prediction.
- ``transformers``: ``SamModel`` + ``SamProcessor``, the loop of NielsRogge's SAM fine-tuning
  tutorial (processor on every sample, frozen vision encoder run every step).
- ``micro-sam``: micro-sam 1.8.14's trainer, decoder-only (``freeze=["image_encoder",
  "prompt_encoder"]``), box prompts (``MedSAMTrainer``). It builds only the official ViT
  architectures (not ``mini``).
- ``segment-anything``: upstream ``SamPredictor`` in a loop (prediction).

Same for all (``benchmarks/_peer_inputs.py`` makes it): the same weights written once as a SAM
checkpoint (``mini``: its built-in pretrained weights; ViT-B: random weights of the official
architecture; the transformers route gets them through ``samadapt export``'s transformers writer),
the same real TrashCan 1.0 frames (imported with ``samadapt.data.importers.import_trashcan`` from
``../shared/realdata/trashcan``), every instance of a frame prompted by its exact box, batch 1, the
same epochs and the same frame order per epoch (samadapt's seeded order, given to the peers'
loaders). Each tool keeps its own loss, optimiser and learning rate; the loss column says which. To
compare what training did, every tool's final mask decoder is also scored the same way (``iou_after``:
mean IoU of its single mask on the training frames' boxes, from the same cached embeddings).

JSON (``<out>/peers-<device>.json``): ``machine`` (date, CPU, platform, load average), ``rows`` (one
per tool x task x model x repeat: ``tool``, ``task``, ``model``, ``repeat``, ``epoch_s`` = seconds
per epoch, or per pass over the images for prediction; ``epoch_cpu_s`` the same in the job's own
CPU time, steadier than the wall-clock on a shared CPU), ``ratios`` (peer / samadapt per task: epoch 1
and later epochs, median and min-max over repeats x epochs, of both clocks) and the tables ``benchmarks/report.py``
renders into docs/performance.md; the same tables as markdown in ``<out>/peers-<device>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common as C  # noqa: E402
import torch  # noqa: E402
from _peer_inputs import epoch_orders, frames, import_trashcan, microsam_python, write_weights  # noqa: E402

HERE = Path(__file__).resolve().parent
JOBS = HERE / "_peer_jobs.py"
TRASHCAN = C.ROOT.parent / "shared" / "realdata" / "trashcan"
TOOLS = ("samadapt", "transformers", "micro-sam", "segment-anything")
TRAIN_JOBS = {"samadapt": "train_samadapt", "transformers": "train_transformers", "micro-sam": "train_microsam"}
PREDICT_JOBS = {"samadapt": "predict_samadapt", "segment-anything": "predict_segment_anything"}
FINETUNE, PREDICT = "decoder fine-tuning", "prediction"


# ------------------------------------------------------------------------------------------ plan
def plan(mode: str) -> dict[str, Any]:
    """Tasks of a mode: what, on which model, with how many frames, epochs (passes) and repeats."""
    mini, vit_b = {"model_type": "mini"}, {"model_type": "vit_b"}
    if mode == "smoke":
        small = {"model_type": "vit_b", "image_size": 256}  # micro-sam builds only ViT-B/L/H
        return {
            "prompts": 8,
            "tasks": [
                _task(FINETUNE, small, ["samadapt", "transformers", "micro-sam"], images=2, epochs=2, repeats=1),
                _task(PREDICT, mini, ["samadapt", "segment-anything"], images=2, passes=1, repeats=1),
            ],
        }
    if mode == "quick":
        return {
            "prompts": 8,
            "tasks": [
                _task(FINETUNE, mini, ["samadapt", "transformers"], images=16, epochs=3, repeats=3),
                _task(PREDICT, mini, ["samadapt", "segment-anything"], images=16, passes=2, repeats=3),
                # last, the longest: one frame, as the peers run the ViT-B encoder (16 s on one core)
                # every step, micro-sam also once per epoch to validate; per-epoch ratios do not
                # depend on the frame count
                _task(FINETUNE, vit_b, ["samadapt", "transformers", "micro-sam"], images=1, epochs=3, repeats=1),
            ],
            "not_run": {
                "prediction, vit_b": "at 1024 px the encoder is nearly all of it (the same math in both tools; the full "
                "run, python benchmarks/peers.py, compares it): left out to keep --quick under 20 minutes"
            },
        }
    return {
        "prompts": 8,
        "tasks": [
            _task(FINETUNE, mini, ["samadapt", "transformers"], images=64, epochs=4, repeats=3),
            _task(FINETUNE, vit_b, ["samadapt", "transformers", "micro-sam"], images=16, epochs=4, repeats=3),
            _task(PREDICT, mini, ["samadapt", "segment-anything"], images=64, passes=3, repeats=3),
            _task(PREDICT, vit_b, ["samadapt", "segment-anything"], images=16, passes=3, repeats=3),
        ],
    }


def _task(task: str, variant: dict, tools: list[str], *, images: int, repeats: int, epochs=0, passes=0) -> dict:
    return {
        "task": task,
        "variant": variant,
        "tools": tools,
        "images": images,
        "epochs": epochs,
        "passes": passes,
        "repeats": repeats,
    }


# ------------------------------------------------------------------------------------------ running
def run_job(python: Path, spec: dict[str, Any], where: Path, timeout: float) -> dict[str, Any]:
    """One job in a fresh process; its JSON result (spec and log beside it in ``where``)."""
    shutil.rmtree(where, ignore_errors=True)  # a fresh folder: nothing cached by an earlier run
    where.mkdir(parents=True)
    spec_file = where / "spec.json"
    spec_file.write_text(json.dumps(spec, indent=1))
    env = {**os.environ, "PYTHONPATH": str(C.ROOT), "OMP_NUM_THREADS": str(spec.get("threads") or "")}
    if not spec.get("threads"):
        env.pop("OMP_NUM_THREADS")
    env["MPLBACKEND"] = "Agg"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(python), str(JOBS), str(spec_file)], capture_output=True, text=True, timeout=timeout, env=env, cwd=where
    )
    (where / "log.txt").write_text(proc.stdout[-200_000:] + "\n--- stderr ---\n" + proc.stderr[-200_000:])
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(C.RESULT_TAG):
            return {**json.loads(line[len(C.RESULT_TAG) :]), "process_s": round(time.perf_counter() - t0, 1)}
    raise RuntimeError(
        f"{spec['job']} failed (exit {proc.returncode}); log {where / 'log.txt'}:\n{proc.stderr[-3000:]}"
    )


def run_task(args, task: dict[str, Any], prompts: int, work: Path, pythons: dict[str, Path], rows: list) -> None:
    """Run ``task`` (every tool, every repeat), appending to ``rows`` as jobs finish."""
    v = task["variant"]
    what = C.describe_variant(**v)["what"]
    model_tag = f"{v['model_type']}{v.get('image_size') or ''}"
    tag = f"{task['task'].split()[0]}-{model_tag}"
    base = work / tag
    data = frames(args.trashcan, base / "data", task["images"], prompts)
    data["orders"] = epoch_orders(task["images"], task["epochs"], args.seed)
    weights = write_weights(v, work / "weights" / model_tag, hf="transformers" in task["tools"])
    card = C.variant_card(v["model_type"], **C.variant_kwargs(v))
    mine: list[dict[str, Any]] = []
    for r in range(task["repeats"]):
        k = r % len(task["tools"])  # each repeat starts with another tool
        for tool in task["tools"][k:] + task["tools"][:k]:
            job = (TRAIN_JOBS if task["task"] == FINETUNE else PREDICT_JOBS)[tool]
            where = base / f"r{r}" / tool
            spec = {
                "job": job,
                "device": args.device,
                "threads": args.threads,
                "seed": args.seed,
                "variant": v,
                "card": {"image_size": card.image_size},
                "data": data,
                "prompts": prompts,
                "epochs": task["epochs"],
                "passes": task["passes"],
                "batch_size": 8,
                "work": str(where),
                "decoder_out": str(where / "decoder.safetensors"),
                "masks_out": str(where / "masks.npz"),
                **weights,
            }
            print(f"[{tag} r{r}] {tool} ...", flush=True)
            res = run_job(pythons.get(tool, Path(sys.executable)), spec, where, args.job_timeout)
            print(f"[{tag} r{r}] {tool}: epoch_s {[round(s, 2) for s in res['epoch_s']]}", flush=True)
            mine.append({"tool": tool, "task": task["task"], "model": what, "repeat": r, "dir": str(where), **res})
            rows.append(mine[-1])
    if task["task"] == FINETUNE and "samadapt" in task["tools"]:
        score_decoders(mine, v, data, weights, prompts)
    if task["task"] == PREDICT:
        compare_masks(mine)


def score_decoders(rows, variant, data, weights, prompts: int) -> None:
    """``iou_before`` / ``iou_after``: every tool's final mask decoder (repeat 0), scored the same way:
    mean IoU of the single mask of each exact box on the training frames, in the low-res frame, from
    samadapt's cached (bf16) embeddings of those frames."""
    import _peer_jobs as J
    from safetensors.torch import load_file

    import samadapt
    from samadapt.data.coco import CocoInstances
    from samadapt.data.prompts import PromptConfig
    from samadapt.data.sam_dataset import SamPromptDataset
    from samadapt.exporters.hf import to_transformers_keys
    from samadapt.models.registry import build_sam
    from samadapt.training.cache import EmbeddingCache

    model = samadapt.adapt(build_sam(J.register_variant(variant), weights["checkpoint"]), "decoder").eval()
    first = {r["tool"]: r for r in rows if r["repeat"] == 0}
    cache = EmbeddingCache(
        Path(first["samadapt"]["dir"]) / "cache",
        model_type=model.model_type,
        base_id=model.base.base_id,
        image_size=model.transform.image_size,
    )
    ds = SamPromptDataset(
        CocoInstances(data["train_root"], data["train_json"]),
        model.transform,
        PromptConfig(box_noise=0.0),
        max_instances=prompts,
        load_image=False,
    )
    samples = [ds[i] for i in range(len(ds))]
    embeddings = [cache.get(s["image_key"]) for s in samples]

    def mean_iou() -> float:
        ious = []
        with torch.no_grad():
            for s, e in zip(samples, embeddings):
                out = model(image_embeddings=e[None].float(), boxes=[s["boxes"]], multimask=False)
                pred, gt = out.low_res_logits[:, 0] > 0, s["gt_masks"] > 0.5
                ious += ((pred & gt).sum((1, 2)) / (pred | gt).sum((1, 2)).clamp(min=1)).tolist()
        return round(float(sum(ious) / len(ious)), 4)

    before = mean_iou()
    initial = {k: v.clone() for k, v in model.sam.mask_decoder.state_dict().items()}
    upstream_name = to_transformers_keys({k: k for k in model.sam.state_dict()})  # transformers' -> upstream's
    for tool, row in first.items():
        state = load_file(str(Path(row["dir"]) / "decoder.safetensors"))
        if tool == "transformers":  # transformers' names -> upstream's (samadapt's exporter mapping, inverted)
            state = {upstream_name[k]: v for k, v in state.items()}
        model.sam.mask_decoder.load_state_dict({k.removeprefix("mask_decoder."): v for k, v in state.items()})
        row.update(iou_before=before, iou_after=mean_iou())
        model.sam.mask_decoder.load_state_dict(initial)


def compare_masks(rows) -> None:
    """``masks_differ_from_samadapt``: pixels where a peer's masks differ from samadapt's (repeat 0)."""
    import numpy as np

    first = {r["tool"]: r for r in rows if r["repeat"] == 0}
    if "samadapt" not in first:
        return
    ours = np.load(Path(first["samadapt"]["dir"]) / "masks.npz")
    for tool, row in first.items():
        theirs = np.load(Path(row["dir"]) / "masks.npz")
        row["masks_differ_from_samadapt"] = int(sum((ours[k] != theirs[k]).sum() for k in ours.files))
        row["mask_pixels"] = int(sum(ours[k].size for k in ours.files))


# ------------------------------------------------------------------------------------------ summary
def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """peer / samadapt seconds, per task and model: epoch 1 and later epochs (each later epoch paired
    with samadapt's same epoch of the same repeat); median and min-max over those pairs. Of wall-clock
    (``epoch1_ratio``, ``later_ratio``) and, where the jobs recorded it, of their CPU time
    (``epoch1_cpu_ratio``, ``later_cpu_ratio``)."""
    out = []
    for task, model in dict.fromkeys((r["task"], r["model"]) for r in rows):
        mine = [r for r in rows if (r["task"], r["model"]) == (task, model)]
        ours = {r["repeat"]: r for r in mine if r["tool"] == "samadapt"}
        for tool in dict.fromkeys(r["tool"] for r in mine if r["tool"] != "samadapt"):
            pairs = [(r, ours[r["repeat"]]) for r in mine if r["tool"] == tool and r["repeat"] in ours]
            row = {"task": task, "model": model, "peer": tool}
            for key, name in (("epoch_s", ""), ("epoch_cpu_s", "_cpu")):
                first, later = _paired(task, [(a.get(key), b.get(key)) for a, b in pairs])
                row[f"epoch1{name}_ratio"], row[f"later{name}_ratio"] = _spread(first), _spread(later)
                row[f"n_pairs_later{name}"] = len(later)
            out.append(row)
    return out


def _paired(task: str, pairs: list[tuple[list[float] | None, list[float] | None]]) -> tuple[list, list]:
    first, later = [], []
    for a, b in pairs:
        if not a or not b:
            continue
        if task == FINETUNE:
            first.append(a[0] / b[0])
            later += [x / y for x, y in zip(a[1:], b[1:])]
        else:  # prediction: every pass is alike
            later += [x / y for x, y in zip(a, b)]
    return first, later


def _spread(xs: list[float]) -> dict[str, Any] | None:
    if not xs:
        return None
    return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3)}


def _fmt_spread(s: dict[str, Any] | None) -> str | None:
    return None if s is None else f"{s['median']:.3g} ({s['min']:.3g}-{s['max']:.3g})"


def summary_rows(rows: list[dict[str, Any]], rat: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per tool x task x model: medians over repeats, and the ratio to samadapt."""
    out = []
    by_key = {(r["task"], r["model"], r["peer"]): r for r in rat}
    for key in dict.fromkeys((r["task"], r["model"], r["tool"]) for r in rows):
        mine = [r for r in rows if (r["task"], r["model"], r["tool"]) == key]
        e1 = [r["epoch_s"][0] for r in mine]
        later = [statistics.mean(r["epoch_s"][1:]) for r in mine if len(r["epoch_s"]) > 1]
        first = mine[0]
        ratio = by_key.get(key)
        out.append(
            {
                "task": key[0],
                "model": key[1],
                "tool": key[2],
                "repeats": len(mine),
                "epoch1_s": round(statistics.median(e1), 3) if key[0] == FINETUNE else None,
                "later_epoch_s": round(statistics.median(later if key[0] == FINETUNE else e1), 3)
                if later or e1
                else None,
                "peak_memory_MiB": round(statistics.median(r["peak_memory_mib"] for r in mine), 1),
                "loss_last_epoch": round(first["loss_by_epoch"][-1], 4) if first.get("loss_by_epoch") else None,
                "iou_before": first.get("iou_before"),
                "iou_after": first.get("iou_after"),
                "epoch1_vs_samadapt": _fmt_spread(ratio["epoch1_ratio"]) if ratio else None,
                "later_vs_samadapt": _fmt_spread(ratio["later_ratio"]) if ratio else None,
                "later_cpu_vs_samadapt": _fmt_spread(ratio.get("later_cpu_ratio")) if ratio else None,
            }
        )
    return out


SUMMARY_COLUMNS = [
    "task",
    "model",
    "tool",
    "repeats",
    "epoch1_s",
    "later_epoch_s",
    "epoch1_vs_samadapt",
    "later_vs_samadapt",
    "later_cpu_vs_samadapt",
    "peak_memory_MiB",
    "loss_last_epoch",
    "iou_before",
    "iou_after",
]


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="sizes for the 2-core CPU (under 20 minutes)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (the test suite)")
    ap.add_argument(
        "--out", help="folder for everything this run writes (default: benchmarks/results, work files in a temp folder)"
    )
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated subset of {list(TOOLS)}")
    ap.add_argument("--source", type=Path, default=TRASHCAN, help="TrashCan 1.0 raw frames (original_data/, splits/)")
    ap.add_argument(
        "--imported",
        type=Path,
        help="a folder samadapt's TrashCan import wrote (samadapt data import-trashcan SOURCE DIR): read, not "
        "imported again (the import takes minutes)",
    )
    ap.add_argument(
        "--microsam-env", type=Path, help="micro-sam's virtualenv (made if missing; default <out>/envs/micro-sam)"
    )
    ap.add_argument("--threads", type=int, help="torch threads per job (default: 1 on CPU, see run.py)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--job-timeout", type=float, default=3600, help="seconds one job may take")
    ap.add_argument("--keep-work", action="store_true", help="keep the work files (frames, weights, runs, logs)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if bad := [t for t in tools if t not in TOOLS]:
        ap.error(f"unknown tool(s) {bad}; choose from {list(TOOLS)}")
    if args.imported is not None:
        args.imported = args.imported.resolve()  # the jobs run in folders of their own
        if not (args.imported / "instance_version" / "instances_train_trashcan.json").is_file():
            ap.error(f"--imported {args.imported} has no instance_version/instances_train_trashcan.json")
    elif not (args.source / "original_data").is_dir():
        ap.error(f"--source {args.source} has no original_data/ (TrashCan 1.0's raw frames); see ../shared/realdata")
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    args.dtype = "fp32"
    if args.threads is None and args.device == "cpu" and args.mode != "full":
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads_note = (
        f"{args.threads} torch thread(s) in every job" if args.threads else "torch's default thread count in every job"
    )
    if args.out:  # everything into --out (absolute: the jobs run in folders of their own)
        args.out = str(Path(args.out).resolve())
        work, env = Path(args.out) / "work", Path(args.out) / "envs" / "micro-sam"
    else:
        from samadapt.paths import samadapt_home

        work, env = Path(tempfile.mkdtemp(prefix="samadapt-peers-")), samadapt_home() / "benchmarks" / "micro-sam-env"
        args.out = str(HERE / "results")
    cfg = plan(args.mode)
    tasks = [{**t, "tools": [x for x in t["tools"] if x in tools]} for t in cfg["tasks"]]
    tasks = [t for t in tasks if t["tools"]]
    b = C.Bench("peers", args, args.mode)
    describe(b, cfg, tasks)
    pythons = {}
    if any("micro-sam" in t["tools"] for t in tasks):
        t_env = time.perf_counter()
        pythons["micro-sam"] = microsam_python((args.microsam_env or env).resolve())
        b.data["summary"]["microsam_env_s"] = round(time.perf_counter() - t_env, 1)  # made, or checked
    rows: list[dict[str, Any]] = []
    signal.signal(signal.SIGTERM, _stop)  # a kill from outside still writes what finished
    try:
        args.trashcan = args.imported / "instance_version" if args.imported else import_trashcan(args.source, work)
        for task in tasks:
            run_task(args, task, cfg["prompts"], work, pythons, rows)
    except BaseException:  # keep what was measured, beside (not over) a complete run's file
        b.name = b.data["benchmark"] = "peers-partial"
        raise
    finally:
        for row in rows:
            row.pop("dir", None)
        b.data["rows"] = rows
        b.data["ratios"] = rat = ratios(rows)
        b.table(
            "the same job with each tool (medians over repeats; ratios: median (min-max))",
            SUMMARY_COLUMNS,
            summary_rows(rows, rat),
        )
        _write_markdown(b.write())
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def describe(b: C.Bench, cfg: dict[str, Any], tasks: list[dict[str, Any]]) -> None:
    """What the JSON's numbers mean (``setup``), and what this mode leaves out (``not_run``)."""
    if b.args.device == "cpu":
        b.data["machine"]["shared_cpu"] = (
            "the CPU is shared with other jobs (see the load averages): the absolute times vary with their "
            "load; ratios come from runs side by side, each repeat running every tool in turn"
        )
    b.data["setup"] = {
        "what": "the same job with each tool, each in a fresh process per repeat (benchmarks/_peer_jobs.py): "
        "same weights, same TrashCan frames, every instance prompted by its exact box, batch 1, same epochs "
        "and frame order per epoch, one box pass per instance and step (samadapt: --train-prompts box "
        "--click-rounds 0); each tool keeps its own loss, optimiser and learning rate",
        "weights": "mini: its built-in pretrained weights; other models: random weights of the official "
        "architecture (seed 0), written once as a SAM checkpoint",
        "epoch_s": "training loop of each epoch (no validation); samadapt's epoch 1 includes filling its "
        "embedding cache. Prediction: seconds per pass over the frames",
        "frame_order": "samadapt's seeded per-epoch order, given to the transformers and micro-sam loaders; "
        "micro-sam validates one frame after every epoch (outside the timed loop), as its trainer always does",
        "peak_memory": "peak resident set of the job's process (VmHWM: libraries, weights, data and "
        "training), or max_memory_allocated on CUDA",
        "iou": "each tool's final mask decoder scored the same way: mean IoU of its single mask per exact box "
        "on the training frames (low-res frame, samadapt's cached embeddings); iou_before: the initial weights",
        "ratios": "peer / samadapt seconds; epoch 1, and each later epoch paired with samadapt's same epoch "
        "of the same repeat; median (min-max) over the pairs. *_cpu_*: the same of each job's own CPU time "
        "(epoch_cpu_s: time.process_time, one torch thread, no loader workers), which the other jobs on a "
        "shared CPU disturb far less than the wall-clock",
        "prompts_per_image": cfg["prompts"],
        "tasks": tasks,
    }
    b.data["not_run"].update(cfg.get("not_run", {}))


def _stop(signum, frame) -> None:
    raise SystemExit(f"stopped by signal {signum}: writing the rows measured so far")


def _write_markdown(path: Path) -> None:
    import report

    d = json.loads(path.read_text())
    path.with_suffix(".md").write_text(report.render_one({**d, "_file": path.name}) + "\n")


if __name__ == "__main__":
    sys.exit(main())
