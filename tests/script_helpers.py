"""Run one of the repository's scripts (a benchmark, a recipe) as a user does: a child process of this
Python, from the repository root, importing this checkout's samadapt; its exit status checked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_script(
    script: str, *argv: str, timeout: float = 600, threads: int | None = None
) -> subprocess.CompletedProcess:
    """``python <script> <argv>`` (``script`` relative to the repository, e.g. ``benchmarks/run.py``);
    fails the test with the ends of its output when it exits non-zero."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(
        [sys.executable, str(REPO / script), *argv], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n" + proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc
