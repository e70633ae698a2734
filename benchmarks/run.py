"""Speed and memory of samadapt beside the baselines it replaces, each with its output checked.

    python benchmarks/run.py --quick                  # 2-core CPU, about 5 minutes
    python benchmarks/run.py --device cuda --dtype bf16 --models vit_b,vit_h   # full sizes (GPU)
    python benchmarks/run.py --quick --only sdpa_attention,decoder_step --out /tmp/bench

Benchmarks, one module each beside this file (``--only`` takes a comma-separated subset):

- ``train_step``: one optimiser step per strategy x model (time, samples/s, peak memory, trainable
  parameters, adapter file size).
- ``inference``: images/s and prompts/s of ``AdaptedSam.predict_batch``.
- ``cached_embeddings`` (a): decoder training on cached embeddings vs re-running the frozen encoder
  every step, beside the ideal ratio (encoder + decoder step) / decoder step from the same run.
- ``batched_prediction`` (b): ``predict_batch`` vs a loop of upstream ``SamPredictor``; masks must
  be identical.
- ``sdpa_attention`` (c): SDPA vs upstream attention in ViT-B blocks at 1024 px (one windowed, one
  global), outputs and gradients equal to 1e-4.
- ``activation_checkpointing`` (d): peak memory and time of a lora/adapter step with and without
  checkpointing; gradients equal.
- ``decoder_step``: the batched decoder with and without the shared first-block image work, with
  a ``torch.profiler`` table of where the step's time goes.
- ``limits``: the decoder step on cached embeddings, the encoder forward and ``predict_batch`` as a
  share of a plain matrix product's FLOP/s in the same dtype, and what keeps each below it.

Each writes ``<out>/<name>-<device>.json`` (machine, torch version, threads, date, load average,
what exactly was measured, results, checks, targets) and prints its tables. Exit status 1 when an
equality check failed. ``benchmarks/report.py`` renders the JSON as the tables of
``docs/performance.md``. How time and memory are measured, and ``Bench`` that collects the JSON:
``benchmarks/_common.py``.

A benchmark module has ``plan(mode, models)``, its sizes per mode (``smoke``: seconds, for the test
suite; ``quick``: a busy 2-core CPU in minutes; ``full``: ``models`` at their real sizes, meant for
a GPU), and ``run(args, plan) -> Bench``. Adding one is a module and a line in ``BENCHMARKS``.
Work that needs a fresh process (peak memory) runs as ``run.py --worker SPEC``: ``WORKERS``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common as C  # noqa: E402
import activation_checkpointing  # noqa: E402
import batched_prediction  # noqa: E402
import cached_embeddings  # noqa: E402
import decoder_step  # noqa: E402
import inference  # noqa: E402
import limits  # noqa: E402
import sdpa_attention  # noqa: E402
import torch  # noqa: E402
import train_step  # noqa: E402

#: name -> module, in the order a full run goes through them
BENCHMARKS = {
    "train_step": train_step,
    "inference": inference,
    "cached_embeddings": cached_embeddings,
    "batched_prediction": batched_prediction,
    "sdpa_attention": sdpa_attention,
    "activation_checkpointing": activation_checkpointing,
    "decoder_step": decoder_step,
    "limits": limits,
}
#: ``spec["kind"]`` of ``run.py --worker SPEC`` -> the function run in that fresh process
WORKERS = {"train_steps": train_step.worker_train_steps, "attention": sdpa_attention.worker_attention}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="sizes for a 2-core CPU (about 5 minutes)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (for the test suite)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16 = torch.autocast(bfloat16)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {list(BENCHMARKS)}")
    ap.add_argument("--models", default="vit_b,vit_h", help="model types for the full (non-quick) run")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: 1 with --quick/--smoke on CPU, else torch's default)",
    )
    ap.add_argument("--no-profile", dest="profile", action="store_false", help="skip the torch.profiler tables")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        spec = json.loads(args.worker)
        C.emit(WORKERS[spec["kind"]](spec))
        return 0

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.threads is None and args.device == "cpu" and args.mode != "full":
        args.threads = 1
        args.threads_note = (
            "1 torch thread: on a CPU shared with other jobs, two OpenMP threads stall at every "
            "barrier while the other core is busy, which made timings vary tenfold; one thread "
            "gives stable ratios (absolute times are those of one core)"
        )
    else:
        args.threads_note = "torch's default thread count" if args.threads is None else f"--threads {args.threads}"
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    bad = [n for n in names if n not in BENCHMARKS]
    if bad:
        ap.error(f"unknown benchmark(s) {bad}; choose from {list(BENCHMARKS)}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]

    t0 = time.perf_counter()
    failed: list[str] = []
    for name in names:
        print(
            f"\n==================== {name} ({args.mode}, {args.device}, {args.dtype}) ====================", flush=True
        )
        try:
            module = BENCHMARKS[name]
            bench = module.run(args, module.plan(args.mode, models))
        except Exception:  # one broken benchmark should not hide the others' results
            traceback.print_exc()
            failed.append(f"{name} (error)")
            continue
        bench.write()
        if not bench.passed:
            failed.append(name)
    print(f"\nall done in {time.perf_counter() - t0:.0f} s" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
