"""Peak memory of a benchmark step.

Peak memory, CPU, two measures of the same step, in a subprocess: (1) ``tensor_peak``: the peak of
live tensor bytes allocated during the step, from ``torch.profiler``'s memory events (what the
step's tensors need: activations kept for backward, gradients, temporaries); (2) ``rss``: the peak
resident set (``VmHWM`` of ``/proc/self/status``, reset through ``/proc/self/clear_refs`` after
``malloc_trim``) minus the resident set before the step: what the process really touched, including
pages glibc keeps after tensors are freed, which blurs differences of a few hundred MiB. Ratios use
the tensor peak. CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``,
minus ``memory_allocated()`` before the step (tensor level already); and the total peak (weights
included).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
from pathlib import Path
from typing import Any

import torch


def _status_kib(field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


class PeakMemory:
    """Peak memory of a region, in bytes (see the module docstring for what is counted)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.method = ""
        self.base = 0

    def start(self) -> None:
        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            self.method = "torch.cuda.max_memory_allocated() - memory_allocated() before"
            return
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM (reset via /proc/self/clear_refs) - VmRSS before, after malloc_trim"
        except OSError:
            self.method = "VmHWM - VmRSS before (high-water mark could not be reset: includes earlier peaks)"
        self.base = _status_kib("VmRSS") * 1024

    def stop(self) -> dict[str, Any]:
        if self.device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            return {"peak_step_bytes": peak - self.base, "peak_total_bytes": peak, "memory_method": self.method}
        peak = _status_kib("VmHWM") * 1024
        return {"peak_step_bytes": peak - self.base, "peak_total_bytes": peak, "memory_method": self.method}


class TensorPeak:
    """Peak bytes of live tensors allocated inside a ``with`` block (CPU: from torch.profiler's memory
    events, which see every tensor allocation and free, not the allocator's retained pages).

    Allocations are attributed to the op that made them, at its start: an op's internal temporaries
    freed before it returns count at their full size.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self) -> "TensorPeak":
        from torch.profiler import ProfilerActivity, profile

        if self.device == "cpu":
            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device != "cpu":
            return
        self._prof.__exit__(*exc)
        deltas = []
        for e in self._prof.events():
            d = e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
            if d:
                deltas.append((e.time_range.start, d))
        deltas.sort(key=lambda x: x[0])
        cur = 0
        for _, d in deltas:
            cur += d
            self.peak = max(self.peak, cur)
