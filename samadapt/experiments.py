"""The experiment harness of the recipes and benchmarks: training runs as child processes
(``python -m samadapt train``, the options of ``recipes/finetune.py``), several at a time, each
reused when it finished earlier with the same options; and the description of the machine that
ran them, for the tables that quote their numbers.

Used by ``recipes/compare.py``, ``recipes/compare_trashcan.py``, ``recipes/interactive.py`` and
``benchmarks/class_head.py``; none of them imports another's harness.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["Run", "cpu_model", "machine_info", "machine_line", "protocol_argv", "run_all", "torch_threads"]

#: what a finished run records beside its outputs: the options it ran with
ARGS_RECORD = "compare_args.json"


def torch_threads(jobs: int) -> int:
    """Torch threads of each training process when ``jobs`` run at once."""
    return max(1, (os.cpu_count() or 1) // jobs)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _physical_cores() -> int | None:
    """Distinct (socket, core) pairs of /proc/cpuinfo; the logical count where it does not say."""
    try:
        cores, socket = set(), "0"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "physical id":
                socket = value
            elif key == "core id":
                cores.add((socket, value))
        return len(cores) or os.cpu_count()
    except OSError:
        return os.cpu_count()


def machine_line(jobs: int = 1) -> str:
    """One line for a results page: CPU, cores, the runs at a time and their threads, GPU, torch."""
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.system()} {cpu}, {os.cpu_count()} CPU cores ({jobs} training run(s) at a time, "
        f"{torch_threads(jobs)} torch thread(s) each), {gpu}, torch {torch.__version__}"
    )


def machine_info(device: str) -> dict[str, Any]:
    """The machine in a benchmark's JSON: date, versions, CPU, cores, memory, load, and the GPU on CUDA."""
    import segment_anything
    import torch

    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "segment_anything": getattr(segment_anything, "__version__", "1.0"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count_logical": os.cpu_count(),
        "cpu_count_physical": _physical_cores(),
        "memory_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "loadavg_at_start": list(os.getloadavg()),
    }
    if device == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(
            device_name=p.name,
            device_memory_gib=round(p.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    else:
        info["device_name"] = cpu_model()
    return info


@dataclasses.dataclass
class Run:
    """One training process: its folder and command-line options."""

    key: str
    run_dir: Path
    argv: list[str]

    @property
    def done(self) -> bool:
        """Finished earlier with the same options (its summary and our record of the options exist)."""
        record = self.run_dir / ARGS_RECORD
        return (
            (self.run_dir / "run_summary.json").is_file()
            and record.is_file()
            and json.loads(record.read_text()) == self.argv
        )

    def summary(self) -> dict:
        return json.loads((self.run_dir / "run_summary.json").read_text())


def run_all(runs: list[Run], jobs: int, log_dir: Path, *, who: str = "compare") -> None:
    """Run the runs not done yet, ``jobs`` at a time, each on cpu_count // jobs torch threads; the
    first failure stops the others and ends the program with the end of its log."""
    todo = [r for r in runs if not r.done]
    for r in runs:
        if r not in todo:
            print(f"reusing {r.run_dir} (finished with the same options)", flush=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    running: list[tuple[Run, subprocess.Popen, Any]] = []
    while todo or running:
        while todo and len(running) < jobs:
            running.append(_start(todo.pop(0), jobs, log_dir))
        time.sleep(0.5)
        for item in list(running):
            r, proc, log = item
            if proc.poll() is None:
                continue
            log.close()
            running.remove(item)
            if proc.returncode != 0:
                for _, p, lg in running:
                    p.kill()
                    lg.close()
                tail = (log_dir / f"{r.key}.log").read_text()[-3000:]
                raise SystemExit(f"{who}: run {r.key} failed (exit {proc.returncode}); its log ends:\n{tail}")
            (r.run_dir / ARGS_RECORD).write_text(json.dumps(r.argv))
            print(f"finished {r.key}", flush=True)


def _start(r: Run, jobs: int, log_dir: Path) -> tuple[Run, subprocess.Popen, Any]:
    package_parent = str(Path(__file__).resolve().parents[1])  # the child imports this samadapt
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(torch_threads(jobs)),
        "PYTHONPATH": os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])),
    }
    cmd = [sys.executable, "-m", "samadapt", "train", *r.argv, "--overwrite"]
    print("$ " + " ".join(cmd), flush=True)
    log = open(log_dir / f"{r.key}.log", "w")
    return r, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log


def protocol_argv(options, strategy: str, seed: int, run_dir: Path, data_root: Path) -> list[str]:
    """The training options of a comparison run under the protocol of "Don't waste SAM": box prompts
    only (the trainer's default adds clicks), every epoch run (patience = epochs). ``options`` has
    ``dataset``, ``model``, ``epochs``, ``checkpoint``, ``extra`` (more options, appended) and, for
    generated data (``demo``), ``demo_train_images`` / ``demo_val_images``, else ``version`` (the
    dataset's versioning option, TrashCan's ``version``)."""
    from .data.presets import get_dataset_card

    o, card = options, get_dataset_card(options.dataset)
    argv = ["--strategy", strategy, "--dataset", o.dataset, "--model", o.model, "--epochs", str(o.epochs)]
    argv += ["--seed", str(seed), "--output-dir", str(run_dir), "--data-root", str(data_root)]
    argv += ["--patience", str(o.epochs), "--no-progress", "--no-publish"]
    argv += ["--train-prompts", "box", "--click-rounds", "0"]
    if card.generate is not None:  # generated data: of the asked size
        argv += ["--demo-train-images", str(o.demo_train_images), "--demo-val-images", str(o.demo_val_images)]
    else:  # real data: its version, no zero-shot pass or example figure in each run (the recipe makes them)
        if card.tag_option is not None:
            argv += ["--dataset-options", json.dumps({card.tag_option[0]: o.version})]
        argv += ["--no-zero-shot", "--num-examples", "0"]
    if o.checkpoint:
        argv += ["--checkpoint", o.checkpoint]
    return argv + o.extra
