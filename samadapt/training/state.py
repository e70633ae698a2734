"""What a run keeps on disk to be resumed: the epoch order, the progress, the saved states.

``accelerator.save_state`` writes the optimizer, scheduler, RNG and :class:`TrainProgress`; the hooks
of :func:`register_trainable_only_state` make it write only the trainable tensors (not the frozen
2.5 GB ViT-H). A state folder is written under a temporary name and renamed, so a kill while saving
leaves the previous one intact.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from torch.utils.data import Dataset

from ..adapted import AdaptedSam
from ..files import atomic_write

STATE_DIR = "checkpoints"


class EpochShuffled(Dataset):
    """A dataset seen in a different, seeded order each epoch: the order depends only on
    (seed, epoch), so a resumed run and every process see exactly what an uninterrupted run sees."""

    def __init__(self, dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed
        self.order = np.arange(len(dataset))

    def set_epoch(self, epoch: int) -> None:
        self.order = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.dataset[int(self.order[i])]


@dataclass
class TrainProgress:
    """Everything about the run's position that ``--resume`` must restore besides weights,
    optimizer, scheduler, scaler and RNG states (which Accelerate saves)."""

    epoch: int = 0  # completed epochs
    global_step: int = 0
    best_metric: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    skipped_steps: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[list[float]] = field(default_factory=list)  # [step, loss] of every batch
    zero_shot: dict[str, Any] | None = None
    zero_shot_epoch_val: dict[str, Any] | None = None  # zero-shot on the per-epoch validation subset

    def state_dict(self) -> dict[str, Any]:
        return {"json": json.dumps(self.__dict__, default=float)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        data = json.loads(state["json"])
        data["best_metric"] = float(data["best_metric"])
        self.__dict__.update(data)


def latest_state(state_root: Path) -> Path | None:
    done = sorted(p for p in state_root.glob("epoch_*") if p.is_dir() and not p.name.endswith(".tmp"))
    return done[-1] if done else None


def save_state(accelerator, state_root: Path, epoch: int, keep: int = 2) -> None:
    """``accelerator.save_state`` into a temp folder, then renamed: a kill mid-save leaves the
    previous state intact."""
    final = state_root / f"epoch_{epoch:04d}"
    tmp = state_root / f"epoch_{epoch:04d}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in sorted(p for p in state_root.glob("epoch_*") if p.is_dir() and not p.name.endswith(".tmp"))[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def register_trainable_only_state(accelerator) -> None:
    """Make ``save_state`` write only the trainable tensors (not the frozen 2.5 GB ViT-H)."""
    from safetensors.torch import load_file, save_file

    def save_hook(models, weights, output_dir):
        for i, m in enumerate(models):
            m = accelerator.unwrap_model(m)
            tensors = {n: p.detach().cpu().contiguous() for n, p in m.sam.named_parameters() if p.requires_grad}
            if accelerator.is_main_process:  # atomic_write also gives the usual mode (safetensors makes 0600)
                atomic_write(Path(output_dir) / f"trainable_{i}.safetensors", lambda tmp: save_file(tensors, tmp))
        weights.clear()

    def load_hook(models, input_dir):
        for i, m in enumerate(list(models)):
            m = accelerator.unwrap_model(m)
            m.load_trainable_state(load_file(str(Path(input_dir) / f"trainable_{i}.safetensors")))
        models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def load_trainable(model: AdaptedSam, path: Path) -> None:
    from safetensors.torch import load_file

    model.load_trainable_state(load_file(str(path)))


def interrupted_message(run_dir: Path, resume: str = "--resume") -> str:
    """What Ctrl-C leaves for ``--resume``, in one line (``resume``: the options that continue it)."""
    state = latest_state(run_dir / STATE_DIR)
    if state is None:
        saved = "no epoch had finished (the embedding cache keeps the images already encoded)"
    else:
        saved = f"the state after epoch {int(state.name.split('_')[1])} is saved in {state}"
    return f"interrupted: {saved}; continue with the same command and {resume}"


#: set by Ctrl-C during training (:func:`catch_sigint`); checked after every step and epoch
#: (:func:`check_interrupt`), so an interrupt that Python raised where it is swallowed (a
#: ``__del__``, a weakref callback, a library's cleanup) still stops the run at the next step
#: instead of letting it run to the end
_INTERRUPT = threading.Event()


def _on_sigint(signum, frame) -> None:
    _INTERRUPT.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def catch_sigint() -> Iterator[None]:
    """Within the block, Ctrl-C raises ``KeyboardInterrupt`` as usual and is also remembered for
    :func:`check_interrupt`; the previous handler comes back after. (Main thread only: elsewhere
    signals cannot be handled, and the block does nothing.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _INTERRUPT.clear()
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _INTERRUPT.clear()


def check_interrupt() -> None:
    """Raise ``KeyboardInterrupt`` if Ctrl-C came since :func:`catch_sigint` began."""
    if _INTERRUPT.is_set():
        raise KeyboardInterrupt
