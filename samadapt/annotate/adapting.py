"""The page's "Adapt" button: one turn of the data engine in a background process, then the swap.

:class:`AdaptJob` runs ``samadapt engine <out> --images <folder> --json`` (:mod:`samadapt.engine`) as a
child process, so the page stays responsive and a crash of the training cannot take the server (or
the annotation file, which the engine only reads) with it. The child's JSON lines are its progress;
its last line names the installed adapter and the scores of the new and previous models on the
held-out labelled images. Only then is the new adapter loaded and swapped in
(:meth:`AnnotateSession.swap`), so annotations accepted afterwards record its name. A failed or
stopped run leaves the model as it was. ``swap`` goes back to the previous model (and forth again).

Routes (mounted by :func:`adapt_router` behind the page's token):

- ``GET /api/adapt``: the job's state (``idle``, ``running``, ``done``, ``failed``), progress, result;
- ``POST /api/adapt``: start a run (409 while one runs; 400 with fewer than 4 labelled images);
- ``POST /api/adapt/swap``: put the other model of the last run in (the previous, or the new again).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from fastapi import APIRouter

from ..errors import ConfigError, DataError
from .session import AnnotateSession, Predictor
from .store import AnnotationStore

__all__ = ["AdaptJob", "JobRunningError", "adapt_router"]


class JobRunningError(DataError):
    """A run is going on already (answered 409, as other requests that come at the wrong time)."""


class AdaptJob:
    """The page's adapt runs (module docstring).

    Args:
        session, store: the page's.
        images: the folder being labelled.
        model, checkpoint, device: the base model (the page's ``--model`` / ``--checkpoint``).
        load: name -> :class:`Predictor` of an installed adapter (the command's loader).
        epochs: epochs of each run (default: the engine's).
    """

    def __init__(
        self,
        session: AnnotateSession,
        store: AnnotationStore,
        images: str | Path,
        *,
        load: Callable[[str], Predictor],
        model: str | None = None,
        checkpoint: str | None = None,
        device: str | None = None,
        epochs: int | None = None,
    ) -> None:
        self.session, self.store, self.images = session, store, Path(images)
        self.load, self.model, self.checkpoint, self.device, self.epochs = load, model, checkpoint, device, epochs
        self.state, self.phase, self.message, self.result, self.error = "idle", None, "", None, None
        self.started: float | None = None
        self.other: Predictor | None = None  # the model swapped out by the last run (swap puts it back)
        self._log: deque[str] = deque(maxlen=40)
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the child process
    def command(self) -> list[str]:
        """The ``samadapt engine`` command of a run against the current model."""
        current = self.session.predictor
        cmd = [sys.executable, "-m", "samadapt", "engine", str(self.store.path), "--images", str(self.images), "--json"]
        if current.source is not None:
            cmd += ["--previous", current.source]
        elif self.model:
            cmd += ["--model", self.model]
        for flag, value in (("--checkpoint", self.checkpoint), ("--device", self.device), ("--epochs", self.epochs)):
            if value is not None:
                cmd += [flag, str(value)]
        return cmd

    def start(self) -> dict[str, Any]:
        from ..engine.labels import MIN_LABELLED

        with self._lock:
            if self.state == "running":
                raise JobRunningError("an adapt run is going on already; wait for it to end")
            labelled = len(self.store.done_names())
            if labelled < MIN_LABELLED:
                raise ConfigError(
                    f"adapting needs at least {MIN_LABELLED} labelled images (one is held out to score the "
                    f"new model); {labelled} have annotations so far"
                )
            self.state, self.phase, self.message, self.result, self.error = "running", "start", "starting", None, None
            self.started = time.monotonic()
            self._log.clear()
            self._proc = subprocess.Popen(
                self.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
            )
        threading.Thread(target=self._watch, args=(self._proc,), name="samadapt-adapt", daemon=True).start()
        return self.status()

    def _watch(self, proc: subprocess.Popen) -> None:
        turn = None
        for line in proc.stdout:
            line = line.rstrip()
            event = _event(line)
            if event is None:
                self._log.append(line)
            elif event.get("phase") == "result":
                turn = event["turn"]
            else:
                self.phase, self.message = event.get("phase"), event.get("message", "")
        code = proc.wait()
        if code != 0 or turn is None:
            self._fail(f"the run stopped (exit status {code}): {self._last_error()}")
            return
        try:
            new = self.load(turn["name"])
        except Exception as e:  # the model stays; the adapter is in the store for a later look
            self._fail(f"{turn['name']} was installed but could not be loaded: {e}")
            return
        with self._lock:
            self.other = self.session.predictor
            self.session.swap(new)
            self.state, self.phase, self.result = "done", "done", turn
            self.message = f"{turn['name']} is in use"

    def _last_error(self) -> str:
        lines = [ln for ln in self._log if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()]
        return (errors or lines or ["no output"])[-1][:500]

    def _fail(self, text: str) -> None:
        with self._lock:
            self.state, self.phase, self.error, self.message = "failed", "failed", text, text

    # ------------------------------------------------------------------ the page's view
    def status(self) -> dict[str, Any]:
        with self._lock:
            elapsed = None if self.started is None else round(time.monotonic() - self.started, 1)
            return {
                "state": self.state,
                "phase": self.phase,
                "message": self.message,
                "error": self.error,
                "seconds": elapsed,
                "result": self.result,
                "model": self.session.predictor.name,
                "other": None if self.other is None else self.other.name,
            }

    def swap(self) -> dict[str, Any]:
        with self._lock:
            if self.state == "running":
                raise JobRunningError("an adapt run is going on; swap when it has ended")
            if self.other is None:
                raise ConfigError("no other model to swap to: adapt first")
            current = self.session.predictor
            self.session.swap(self.other)
            self.other = current
        return self.status()

    def close(self) -> None:
        """Stop a run in progress (the server is stopping); nothing of it is installed."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _event(line: str) -> dict | None:
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "phase" in event else None


def adapt_router(job: AdaptJob) -> APIRouter:
    router = APIRouter()

    @router.get("/api/adapt")
    def adapt_status() -> dict[str, Any]:
        return job.status()

    @router.post("/api/adapt")
    def adapt_start() -> dict[str, Any]:
        return job.start()

    @router.post("/api/adapt/swap")
    def adapt_swap() -> dict[str, Any]:
        return job.swap()

    return router
