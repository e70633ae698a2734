"""The fine-tuning loop: Accelerate for devices, mixed precision, gradient accumulation and several
processes; timm for the learning-rate schedule; our loss, metrics, embedding cache and adapter files.

A run is three steps, ``_train``: :func:`~samadapt.training.setup.setup` (in ``setup.py``: check names, paths and the run folder
(``preflight``) -> model -> Accelerate -> data and its loader check -> fill the embedding caches
(``cache``) -> zero-shot evaluation -> optimizer, loader and schedule, a resumed state loaded), which
returns a :class:`Run`; :func:`fit` (the epochs: train, validate, keep the best or last epoch, stop
early, save the resumable state (``state``)); :func:`finish` (final evaluation of the kept epoch ->
adapter, card, report, curves, summary, publishing).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..adapter_io import save_adapter
from ..adapter_store import publish_adapter
from ..config import TrainConfig
from ..errors import TrainingError, TrainingInterrupted
from ..files import atomic_write
from .losses import LossOutput
from .outputs import json_default, peak_memory_mb, summary_text, write_outputs
from .preflight import (
    choose_run_folder,
    run_folder,
    run_name,
)
from .setup import Run, evaluate_sharded, setup
from .state import (
    TrainProgress,
    catch_sigint,
    check_interrupt,
    interrupted_message,
    save_state,
)
from .state import load_trainable as _load_trainable  # (a module global: tests wrap it)

logger = logging.getLogger("samadapt.training")

BEST_ADAPTER = "best_adapter.safetensors"


# ---------------------------------------------------------------------------- small pieces
@dataclass
class TrainResult:
    run_dir: Path
    adapter_path: Path
    published_name: str | None
    zero_shot: dict[str, Any] | None
    fine_tuned: dict[str, Any]
    best_epoch: int
    history: list[dict[str, Any]]


# ---------------------------------------------------------------------------- the run
def train(cfg: TrainConfig) -> TrainResult:
    """Fine-tune as ``cfg`` says (see the module docstring). Ctrl-C ends it with
    :class:`TrainingInterrupted`, whose message says what is saved and how to continue."""
    chosen = choose_run_folder(cfg)  # outputs/<name>-2 where outputs/<name> holds an earlier run
    resume = "--resume" if chosen is cfg else f"--resume --output-dir {chosen.output_dir}"
    try:
        with catch_sigint():
            return _train(chosen)
    except KeyboardInterrupt:
        raise TrainingInterrupted(interrupted_message(run_folder(chosen), resume)) from None


def _train(cfg: TrainConfig) -> TrainResult:
    run = setup(cfg)
    fit(run)
    return finish(run)


# ---------------------------------------------------------------------------- fit
def fit(run: Run) -> None:
    """The epochs, from the first not yet run: train, validate on the per-epoch subset
    (--epoch-val-images), keep the best (or the last) epoch's adapter, stop early, save the state
    that --resume continues from."""
    cfg, progress = run.cfg, run.progress
    for epoch in range(progress.epoch, cfg.epochs):
        if progress.stopped_early:
            break
        trained = _train_epoch(run, epoch)
        val, _, _ = evaluate_sharded(
            run.accelerator,
            run.unwrapped,
            run.data.val,
            cfg,
            indices=run.data.epoch_val,
            desc=f"validation {epoch + 1}",
            embeddings=run.val_embeddings,
        )
        improved = _keep_epoch(run, epoch, val)
        progress.history.append(
            {
                "epoch": epoch + 1,
                "step": progress.global_step,
                "train_loss": trained.loss,
                "val_mean_iou": val["mean_iou"],
                "val_mean_f1": val["mean_f1"],
                "val_images": len(run.data.epoch_val),
                "seconds": trained.seconds,
                "cpu_seconds": trained.cpu_seconds,  # this process's CPU time: steadier than wall-clock on a busy CPU
                "encoder_images": trained.encoder_images,
            }
        )
        _report_epoch(run, progress.history[-1], val, best=improved and cfg.keep_epoch == "best")
        if progress.bad_epochs >= cfg.patience > 0:
            progress.stopped_early = True
            run.say(f"early stopping: no improvement of validation mean IoU for {cfg.patience} epochs")
        progress.epoch = epoch + 1
        save_state(run.accelerator, run.state_root, progress.epoch)
        check_interrupt()
    check_interrupt()


@dataclass
class EpochTraining:
    """The training half of an epoch's row of the history."""

    loss: float  # mean over the epoch's steps (nan when every step was skipped)
    seconds: float
    cpu_seconds: float
    encoder_images: int  # image-encoder forwards (0 on cached embeddings)


def _train_epoch(run: Run, epoch: int) -> EpochTraining:
    """One pass over the training prompts in the epoch's seeded order."""
    from tqdm.auto import tqdm

    cfg, accelerator, progress = run.cfg, run.accelerator, run.progress
    # Accelerate's loader calls dataset.set_epoch(<its own count of passes>) when iterated; that
    # count restarts at 0 in a resumed run, so set it too, or epoch 2 would replay epoch 1's order
    run.loader.set_epoch(epoch)
    run.shuffled.set_epoch(epoch)
    run.model.train()
    t0, cpu0 = time.perf_counter(), time.process_time()
    enc_before = run.unwrapped.encoder_images_seen
    losses: list[float] = []
    show = cfg.progress and accelerator.is_local_main_process
    bar = tqdm(run.loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show)
    for batch in bar:
        check_interrupt()
        lo = _step(run, batch, epoch)
        if lo is None:  # a non-finite loss, skipped
            continue
        if accelerator.sync_gradients:
            progress.global_step += 1
            run.scheduler.step_update(progress.global_step)
        losses.append(lo.loss.item())
        progress.step_losses.append([progress.global_step, losses[-1]])  # curves.png within the epoch
        bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{run.optimizer.param_groups[0]['lr']:.2e}")
        if cfg.log_with:
            accelerator.log(
                {
                    "train/loss": lo.loss.item(),
                    "train/focal": float(lo.focal),
                    "train/dice": float(lo.dice),
                    "train/iou_mse": float(lo.iou_mse),
                    "lr": run.optimizer.param_groups[0]["lr"],
                },
                step=progress.global_step,
            )
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    progress.train_seconds += seconds
    return EpochTraining(
        loss=float(np.mean(losses)) if losses else float("nan"),
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        encoder_images=run.unwrapped.encoder_images_seen - enc_before,  # before validation encodes its images
    )


def _step(run: Run, batch: dict[str, Any], epoch: int) -> LossOutput | None:
    """One batch under gradient accumulation: the loss, backward, clipping and the optimizer's
    step. None when the loss is not finite on some process (``_non_finite``: skipped under fp16)."""
    accelerator, optimizer = run.accelerator, run.optimizer
    with accelerator.accumulate(run.model):
        lo = run.step_loss(batch, epoch)
        finite = accelerator.gather(torch.isfinite(lo.loss.detach()).float().reshape(1)).min().item() == 1.0
        if not finite:
            _non_finite(run.cfg, run.progress, epoch, run.state_root)
            optimizer.zero_grad()
            return None
        accelerator.backward(lo.loss)
        if accelerator.sync_gradients and run.cfg.max_grad_norm:
            accelerator.clip_grad_norm_(run.params, run.cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
    return lo


def _keep_epoch(run: Run, epoch: int, val: dict[str, Any]) -> bool:
    """Whether this epoch's adapter is kept as ``best_adapter.safetensors`` (every epoch with
    --keep-epoch last; else one whose validation mean IoU beats the best by more than --min-delta)."""
    progress = run.progress
    improved = run.cfg.keep_epoch == "last" or val["mean_iou"] > progress.best_metric + run.cfg.min_delta
    if improved:
        progress.best_metric, progress.best_epoch, progress.bad_epochs = val["mean_iou"], epoch + 1, 0
        if run.accelerator.is_main_process:
            save_adapter(run.unwrapped, run.run_dir / BEST_ADAPTER, epoch=epoch + 1, metrics=val)
    else:
        progress.bad_epochs += 1
    return improved


def _report_epoch(run: Run, row: dict[str, Any], val: dict[str, Any], *, best: bool) -> None:
    run.say(
        f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}, val mean IoU {val['mean_iou']:.4f}"
        f"{' (best)' if best else ''}, {row['seconds']:.1f} s, "
        f"image-encoder forwards in training {row['encoder_images']}"
    )
    if run.cfg.log_with:
        run.accelerator.log(
            {
                "val/mean_iou": val["mean_iou"],
                "val/mean_f1": val["mean_f1"],
                "val/mean_precision": val["mean_precision"],
            },
            step=run.progress.global_step,
        )


# ---------------------------------------------------------------------------- finish
def finish(run: Run) -> TrainResult:
    """The end of a run: the kept epoch's adapter loaded back and evaluated on every validation
    image; then (main process) the automatic-mask calibration and class head's check, the adapter
    with its card, the report, curves and summary, and the published adapter."""
    from ..evaluation.plots import plot_training_curves
    from ..segment.finish import finish_adapter

    cfg, accelerator, progress, unwrapped = run.cfg, run.accelerator, run.progress, run.unwrapped
    accelerator.wait_for_everyone()
    if progress.best_epoch < 0:
        raise TrainingError("no epoch finished with a finite validation score; nothing to save")
    _load_trainable(unwrapped, run.run_dir / BEST_ADAPTER)
    final, ft_examples, _ = evaluate_sharded(
        accelerator,
        unwrapped,
        run.data.val,
        cfg,
        num_examples=cfg.num_examples,
        desc="final evaluation",
        embeddings=run.val_embeddings,
    )
    adapter_path = run.run_dir / "adapter.safetensors"
    published = None
    if accelerator.is_main_process:  # automatic-mask calibration and the class head's check, saved in the adapter
        final.update(finish_adapter(unwrapped, run.data.val, cfg, len(run.data.val), run.val_embeddings, run.say))
        published = _save_and_publish(run, final, adapter_path)
        write_outputs(
            run.run_dir, cfg, progress, final, run.zs_examples, ft_examples, plot_training_curves, run.data.card
        )
        _write_run_summary(run, final, adapter_path)
        run.say(summary_text(cfg, unwrapped, progress, final, run.cache, adapter_path, published, run.run_dir))
    accelerator.wait_for_everyone()
    # finishes the trackers and destroys the process group: nothing collective may follow it
    accelerator.end_training()
    return TrainResult(
        run.run_dir, adapter_path, published, progress.zero_shot, final, progress.best_epoch, progress.history
    )


def _save_and_publish(run: Run, final: dict[str, Any], adapter_path: Path) -> str | None:
    """``adapter.safetensors`` with its metrics and training card; installed under the run's name
    unless --no-publish. Returns the published name, or None."""
    cfg, progress = run.cfg, run.progress
    training = {
        "config": cfg.to_dict(),
        "best_epoch": progress.best_epoch,
        "epochs_run": progress.epoch,
        "stopped_early": progress.stopped_early,
        "train_seconds": progress.train_seconds,
        "skipped_steps": progress.skipped_steps,
        "data": run.data.card,  # the images trained and measured on, subsets included
    }
    save_adapter(
        run.unwrapped,
        adapter_path,
        dataset=cfg.dataset_tag,
        metrics=final,
        zero_shot=progress.zero_shot,
        training=training,
    )
    if not cfg.publish:
        return None
    publish_adapter(
        run.unwrapped,
        cfg.dataset_tag,
        name=cfg.name,
        card={
            "metrics": {"fine_tuned": final, "zero_shot": progress.zero_shot, "eval_prompt": cfg.eval_prompt},
            "data": run.data.card,
            "training": training,
        },
    )
    return run_name(cfg)


def _write_run_summary(run: Run, final: dict[str, Any], adapter_path: Path) -> None:
    cfg, progress, unwrapped, accelerator = run.cfg, run.progress, run.unwrapped, run.accelerator
    summary = {
        "name": run_name(cfg),
        "strategy": cfg.strategy,
        "model": cfg.model,
        "dataset": cfg.dataset_tag,
        "trainable_parameters": unwrapped.num_parameters(True),
        "total_parameters": unwrapped.num_parameters(),
        "adapter_bytes": adapter_path.stat().st_size,
        "best_epoch": progress.best_epoch,
        "epochs_run": progress.epoch,
        "seconds_per_epoch": progress.train_seconds / max(1, len(progress.history)),
        "peak_memory_mb": peak_memory_mb(accelerator.device),
        "device": str(accelerator.device),
        "num_processes": accelerator.num_processes,
        "data": run.data.card,
        "zero_shot": progress.zero_shot,
        "fine_tuned": final,
    }
    atomic_write(
        run.run_dir / "run_summary.json",
        lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2, default=json_default)),
    )


# ---------------------------------------------------------------------------- helpers
def _non_finite(cfg: TrainConfig, progress: TrainProgress, epoch: int, state_root: Path) -> None:
    progress.skipped_steps += 1
    if cfg.mixed_precision == "fp16" and progress.skipped_steps <= 50:
        logger.warning(
            "non-finite loss at epoch %d step %d under fp16: step skipped (%d so far)",
            epoch + 1,
            progress.global_step,
            progress.skipped_steps,
        )
        return
    raise TrainingError(
        f"the loss became non-finite (NaN or inf) at epoch {epoch + 1}, step {progress.global_step} "
        f"(lr {cfg.lr}, mixed precision {cfg.mixed_precision!r}). No adapter was written from this state. "
        f"Lower the learning rate, keep max_grad_norm set, or use bf16/fp32; the last good state is under {state_root}."
    )
