"""One turn of the data engine: retrain on the annotations made so far, score the new model beside the
previous one on the held-out labelled images, and install it under the project's next name.

The turn (:func:`adapt_on_annotations`) reads a snapshot of the annotation file (the page may go on
writing it), splits its labelled images (:mod:`samadapt.engine.labels`), fine-tunes the ``decoder``
strategy from the base model on the training part with the trainer's defaults (cached embeddings,
box and click prompts, corrective-click rounds) for about :data:`DEFAULT_STEPS` steps, keeping the
last epoch, then scores both models on the held-out images: mean IoU from the exact boxes, and the click protocol's effort
(:mod:`samadapt.engine.effort`). Only when all of that has worked is the adapter installed in the
adapter store as ``<project>_r<k>-<model tag>``; a failure or Ctrl-C before leaves the store, the
annotation file and the caller's model as they were.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..files import atomic_write_text
from .effort import DEFAULT_TARGETS, MAX_CLICKS, effort_summary, measure
from .labels import labelled_images, split_labelled, write_subset

__all__ = [
    "DEFAULT_STEPS",
    "EngineTurn",
    "adapt_on_annotations",
    "engine_train_config",
    "epochs_for",
    "next_round",
    "project_name",
]

#: optimiser steps a turn aims at: its epochs are this over the steps of one epoch, within
#: [1, MAX_EPOCHS] (a few labelled images take many short epochs; docs/data_engine.md measured it)
DEFAULT_STEPS = 200
MAX_EPOCHS = 40


def epochs_for(train_images: int, *, batch_size: int | None = None, steps: int = DEFAULT_STEPS) -> int:
    """The epochs of a turn on ``train_images`` images (:data:`DEFAULT_STEPS`; batches of the
    trainer's default size unless ``batch_size`` says otherwise)."""
    from ..config import TrainConfig

    per_epoch = max(1, math.ceil(train_images / (batch_size or TrainConfig.batch_size)))
    return max(1, min(MAX_EPOCHS, math.ceil(steps / per_epoch)))


def project_name(annotation_file: str | os.PathLike) -> str:
    """The project of an annotation file: its name without suffix, as an adapter-name part
    (``Trash Labels.json`` -> ``trash_labels``)."""
    stem = re.sub(r"[^a-z0-9_]+", "_", Path(annotation_file).stem.lower()).strip("_")
    return stem or "labels"


def next_round(project: str, model_type: str) -> tuple[int, str]:
    """``(k, "<project>_r<k>-<tag>")`` with ``k`` one more than the store's highest for this project."""
    from ..adapter_store import adapter_name, list_adapters

    tag = adapter_name(f"{project}_r1", model_type, "decoder").split("-", 1)[1]
    pattern = re.compile(rf"^{re.escape(project)}_r(\d+)-{re.escape(tag)}$")
    k = 1 + max((int(m.group(1)) for a in list_adapters() if (m := pattern.match(a["name"]))), default=0)
    return k, adapter_name(f"{project}_r{k}", model_type, "decoder")


def engine_train_config(
    *,
    images_root: str | os.PathLike,
    train_file: Path,
    held_out_file: Path,
    run_dir: Path,
    model: str,
    checkpoint: str | os.PathLike | None,
    seed: int,
    epochs: int,
    progress: bool = False,
    **options: Any,
):
    """The :class:`~samadapt.config.TrainConfig` of a turn: the trainer's defaults (``decoder``,
    cached embeddings, box and click prompts with corrective rounds) on the labelled images, kept at
    the last epoch (the held-out ones are validated each epoch, for the curves, and score the turn);
    no automatic-mask calibration, nothing published, no tracker. ``options`` override."""
    from ..config import TrainConfig

    return TrainConfig(
        **{
            "strategy": "decoder",
            "model": model,
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "dataset": "coco",
            "images_root": str(images_root),
            "annotation_file": str(train_file),
            "val_images_root": str(images_root),
            "val_annotation_file": str(held_out_file),
            "epochs": epochs,
            "epoch_val_images": None,
            # the last epoch, not the held-out's best: on a few held-out images the best of many noisy
            # scores is mostly an early epoch that learnt little (docs/data_engine.md measured both)
            "keep_epoch": "last",
            "patience": 0,
            # the automatic-mask calibration would cost a turn more than its training (a few held-out
            # images could not calibrate anyway): `segment --auto` says how to calibrate such an adapter
            "auto_calibration_images": 0,
            "zero_shot": False,
            "num_examples": 0,
            "publish": False,
            "log_with": "none",
            "output_dir": str(run_dir),
            "seed": seed,
            "progress": progress,
            **options,
        }
    )


@dataclass
class EngineTurn:
    """What one turn made: the installed adapter's ``name`` and ``path``, the ``split``, the scores of
    the ``new`` and ``previous`` models on the held-out images, and the seconds of each phase."""

    name: str
    path: Path
    previous: str
    split: dict
    scores: dict
    seconds: dict = field(default_factory=dict)
    work_dir: Path | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "previous": self.previous,
            "split": self.split,
            "scores": self.scores,
            "seconds": self.seconds,
            "work_dir": str(self.work_dir),
        }

    def summary_lines(self) -> list[str]:
        """What ``samadapt engine`` prints at the end: the installed adapter and, for it and the
        previous model, box mean IoU and clicks per object on the held-out images."""
        t = self.scores["new"]["clicks_per_object"]["target"]
        lines = [f"engine: installed {self.name} ({self.path})", f"  held-out images: {len(self.split['held_out'])}"]
        for label, key in ((self.name, "new"), (self.previous, "previous")):
            s = self.scores[key]
            lines.append(
                f"  {label}: box mean IoU {100 * s['box_miou']['mean']:.1f}, clicks per object to IoU {t:g} "
                f"{s['clicks_per_object']['mean']:.2f} (never reached: {100 * s['clicks_per_object']['never_reached']:.0f}%)"
            )
        return lines


def _previous_model(previous: str | None, model_type: str, checkpoint, device):
    """(model, label, base model type, base checkpoint to train from) of the model to compare with."""
    from ..adapter_io import read_adapter_metadata
    from ..adapter_store import load, resolve_adapter
    from ..evaluation.run import zero_shot_model
    from ..models.checkpoints import find_base_checkpoint

    if previous is None:
        label = model_type if checkpoint is None else f"{model_type} ({Path(checkpoint).name})"
        return zero_shot_model(model_type, checkpoint, device=device), label, model_type, checkpoint
    path = resolve_adapter(previous)
    meta = read_adapter_metadata(path)
    if meta["base_id"].startswith("builtin:") and checkpoint is None:
        base_checkpoint = None
    else:
        base_checkpoint = find_base_checkpoint(meta["model_type"], meta["base_id"], checkpoint)
    return load(path, checkpoint=base_checkpoint, device=device), str(previous), meta["model_type"], base_checkpoint


def adapt_on_annotations(
    annotation_file: str | os.PathLike,
    images_root: str | os.PathLike,
    *,
    previous: str | None = None,
    model: str = "mini",
    checkpoint: str | os.PathLike | None = None,
    project: str | None = None,
    work_dir: str | os.PathLike | None = None,
    seed: int = 0,
    epochs: int | None = None,
    targets: Sequence[float] = DEFAULT_TARGETS,
    max_clicks: int = MAX_CLICKS,
    device: str | None = None,
    say: Callable[[dict], None] = lambda event: None,
) -> EngineTurn:
    """One turn of the data engine (module docstring).

    Args:
        annotation_file, images_root: the COCO file the page writes and its images folder.
        previous: the adapter (name or file) the annotations were made with, compared against; None:
            the base ``model`` (with ``checkpoint``). The new adapter is trained on the same base.
        project: the adapter-name prefix (default :func:`project_name` of the file).
        work_dir: where the snapshot, the splits and the training run go (default
            ``<file stem>-engine/`` beside the file); each turn takes ``round-<k>/`` in it.
        say: called with ``{"phase": ..., "message": ...}`` as the turn goes on.

    Returns:
        :class:`EngineTurn`; its ``to_dict()`` is also written to ``round-<k>/turn.json``.
    """
    import torch

    from ..adapter_store import install_adapter
    from ..data.coco_file import load_coco_json
    from ..training.trainer import train

    annotation_file = Path(annotation_file)
    data = load_coco_json(annotation_file)
    split = split_labelled(labelled_images(data), seed=seed)  # too few labelled images: refused here
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    prev_model, prev_label, model_type, base_checkpoint = _previous_model(previous, model, checkpoint, device)
    k, name = next_round(project or project_name(annotation_file), model_type)
    root = Path(work_dir) if work_dir else annotation_file.with_name(f"{annotation_file.stem}-engine")
    turn_dir, seconds = root / f"round-{k}", {}
    train_file, held_file = _turn_files(data, split, turn_dir)
    say({"phase": "train", "message": f"training {name} on {len(split.train)} images, {len(split.held_out)} held out"})
    with _timed(seconds, "train"):
        cfg = engine_train_config(
            images_root=images_root,
            train_file=train_file,
            held_out_file=held_file,
            run_dir=turn_dir / "run",
            model=model_type,
            checkpoint=base_checkpoint,
            seed=seed,
            epochs=epochs or epochs_for(len(split.train)),
        )
        result = train(cfg)
    say({"phase": "score", "message": f"scoring {name} and {prev_label} on {len(split.held_out)} held-out images"})
    with _timed(seconds, "score"):
        models = {"new": _load(result.adapter_path, base_checkpoint, device), "previous": prev_model}
        scores = _scores(models, images_root, held_file, targets, max_clicks)
    engine = {
        "annotation_file": str(annotation_file),
        "previous": prev_label,
        "split": split.to_dict(),
        "scores": scores,
    }
    card = {"dataset": name.split("-")[0], "engine": engine, "metrics": {"fine_tuned": result.fine_tuned}}
    path = install_adapter(result.adapter_path, name, card)
    turn = EngineTurn(name, path, prev_label, split.to_dict(), scores, seconds, turn_dir)
    atomic_write_text(turn_dir / "turn.json", json.dumps(turn.to_dict(), indent=2))
    say({"phase": "done", "message": f"{name} installed"})
    return turn


@contextlib.contextmanager
def _timed(seconds: dict, phase: str):
    start = time.perf_counter()
    yield
    seconds[phase] = round(time.perf_counter() - start, 2)


def _turn_files(data: dict, split, turn_dir: Path) -> tuple[Path, Path]:
    """The turn's folder afresh (what a turn that failed before installing left there goes), with the
    snapshot of the annotations and the two subsets."""
    if turn_dir.exists():
        shutil.rmtree(turn_dir)
    turn_dir.mkdir(parents=True)
    atomic_write_text(turn_dir / "annotations.json", json.dumps(data))
    train_file = write_subset(data, split.train, turn_dir / "train.json")
    return train_file, write_subset(data, split.held_out, turn_dir / "held_out.json")


def _load(adapter: Path, checkpoint, device):
    from ..adapter_store import load

    return load(adapter, checkpoint=checkpoint, device=device)


def _scores(models: dict, images_root, held_file: Path, targets, max_clicks: int) -> dict:
    """Each model's :func:`effort_summary` (with box mean IoU) on the held-out images."""
    from ..data.presets import get_dataset

    held = get_dataset("coco", images_root=images_root, annotation_file=held_file)
    out = {}
    for key, model in models.items():
        box, clicks = measure(model, held, max_clicks=max_clicks)
        out[key] = effort_summary([clicks], targets, box_runs=[box], n_boot=1000)
    return out
