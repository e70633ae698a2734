"""The fine-tuning loop: Accelerate for devices, mixed precision, gradient accumulation and several
processes; timm for the learning-rate schedule; our loss, metrics, embedding cache and adapter files.

A run is three steps, ``_train``: :func:`setup` (check names, paths and the run folder
(``preflight``) -> model -> Accelerate -> data and its loader check -> fill the embedding caches
(``cache``) -> zero-shot evaluation -> optimizer, loader and schedule, a resumed state loaded), which
returns a :class:`Run`; :func:`fit` (the epochs: train, validate, keep the best or last epoch, stop
early, save the resumable state (``state``)); :func:`finish` (final evaluation of the kept epoch ->
adapter, card, report, curves, summary, publishing).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..adapted import AdaptedSam, adapt
from ..adapter_io import save_adapter
from ..adapter_store import publish_adapter
from ..config import TrainConfig
from ..errors import TrainingError, TrainingInterrupted
from ..files import atomic_write
from ..models.registry import build_sam
from .cache import EmbeddingCache, cached_embedding, fill_run_caches
from .interactive import training_loss
from .losses import LossOutput, SamLoss
from .outputs import flat, json_default, peak_memory_mb, summary_text, write_outputs
from .preflight import (
    RunData,
    build_run_data,
    check_loaders,
    check_output_dir,
    choose_run_folder,
    launched_processes,
    run_folder,
    run_name,
)
from .state import (
    STATE_DIR,
    EpochShuffled,
    TrainProgress,
    catch_sigint,
    check_interrupt,
    interrupted_message,
    latest_state,
    register_trainable_only_state,
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


# ---------------------------------------------------------------------------- data
def _prompt_dataset(cfg: TrainConfig, instances, model: AdaptedSam, *, load_image: bool):
    from ..data.sam_dataset import SamPromptDataset
    from .interactive import training_prompt_config

    prompts = training_prompt_config(cfg)  # boxes and/or one click per instance, as cfg.train_prompts asks
    return SamPromptDataset(
        instances, model.transform, prompts, max_instances=cfg.prompts_per_image, seed=cfg.seed, load_image=load_image
    )


# ---------------------------------------------------------------------------- evaluation
def evaluate_sharded(
    accelerator,
    model: AdaptedSam,
    dataset,
    cfg: TrainConfig,
    *,
    indices: list[int] | None = None,
    num_examples: int = 0,
    desc: str = "validation",
    embeddings: Callable[[int], torch.Tensor] | None = None,
) -> tuple[dict[str, Any], list, Any]:
    """Evaluate on ``dataset`` (its ``indices``, default all) with the images split between
    processes; every sample is evaluated exactly once and the per-instance values are gathered
    before averaging. Returns the metrics, the examples of a figure of ``num_examples`` rows (one
    pool over all processes: ``evaluate_records``) and every process' records, merged.
    ``embeddings``: index -> cached image embedding (frozen encoders), as in ``evaluate_records``."""
    from accelerate.utils import gather_object

    from ..evaluation.evaluate import EvalRecords, evaluate_records, summarize_records
    from ..evaluation.examples import example_pool

    indices = list(range(len(dataset))) if indices is None else list(indices)
    pool = set(example_pool(dataset, num_examples, seed=cfg.seed, indices=indices)) if num_examples else set()
    model.eval()
    with accelerator.split_between_processes(indices) as mine:
        records = evaluate_records(
            model,
            dataset,
            mine,
            prompt=cfg.eval_prompt,
            seed=cfg.seed,
            progress=cfg.progress and accelerator.is_local_main_process,
            desc=desc,
            example_indices=[i for i in mine if i in pool],
            embeddings=embeddings,
        )
    merged = EvalRecords.merge(gather_object([records]))
    return summarize_records(merged, dataset.categories, prompt=cfg.eval_prompt), merged.examples, merged


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


@dataclass
class StepLoss:
    """The loss of one training step, built once per run: SAM's loss over the batch's prompts and
    corrective click rounds (``interactive.training_loss``), on the cached image embeddings when
    the encoder is frozen, plus the class head's cross-entropy with --classify."""

    model: Any  # as prepared by Accelerate: every decoder call goes through its forward (DDP, autocast)
    unwrapped: AdaptedSam
    loss_fn: SamLoss
    cfg: TrainConfig
    cache: EmbeddingCache | None  # the training images' embeddings (frozen encoders), else None
    device: torch.device

    def __call__(self, batch: dict[str, Any], epoch: int) -> LossOutput:
        from ..models.parts.class_head import loss_with_class_head

        emb = None
        if self.cache is not None:
            emb = torch.stack([cached_embedding(self.cache, k, f"training image {k}") for k in batch["image_key"]])
            emb = emb.to(self.device, torch.float32)
        gt = torch.cat([g.to(self.device) for g in batch["gt_masks"]])
        # box prompts; or boxes / clicks per instance and corrective click rounds (interactive.py)
        step = functools.partial(
            training_loss, self.model, batch, gt, self.loss_fn, self.cfg, image_embeddings=emb, epoch=epoch
        )
        return loss_with_class_head(self.unwrapped, batch, step)  # + class cross-entropy with --classify


@dataclass
class Run:
    """What the epochs (:func:`fit`) and the end of a run (:func:`finish`) need; made by :func:`setup`."""

    cfg: TrainConfig  # mixed precision resolved (the launcher's choice)
    accelerator: Any
    run_dir: Path
    data: RunData
    model: Any  # as prepared by Accelerate (DDP-wrapped with several processes): what steps run
    unwrapped: AdaptedSam  # the model itself: what is validated and saved
    optimizer: torch.optim.Optimizer
    scheduler: Any  # timm's cosine schedule, stepped per optimizer step
    loader: DataLoader
    shuffled: EpochShuffled  # the training prompts in each epoch's seeded order
    params: list[torch.nn.Parameter]  # the trainable ones (gradient clipping)
    step_loss: StepLoss
    progress: TrainProgress  # what --resume restores besides weights, optimizer and RNG
    cache: EmbeddingCache | None  # the training images' embeddings (frozen encoders)
    val_embeddings: Callable[[int], torch.Tensor] | None  # validation index -> fp32 embedding
    zs_examples: list  # the zero-shot rows of examples.png

    @property
    def state_root(self) -> Path:
        return self.run_dir / STATE_DIR

    def say(self, *args: Any) -> None:
        self.accelerator.print(*args)


# ---------------------------------------------------------------------------- setup
def setup(cfg: TrainConfig) -> Run:
    """Everything before the first step, in this order: checks, model, Accelerate and the run
    folder; data; the resumed state's folder; embedding caches; the zero-shot baseline; optimizer,
    loader and schedule (with a resumed run's state loaded into them); the step's loss; trackers."""
    cfg, accelerator, model, run_dir = _open_run(cfg)
    data, train_ds, use_cache = _run_data(cfg, accelerator, model)
    progress = TrainProgress()
    resume_from = latest_state(run_dir / STATE_DIR) if cfg.resume else None
    if cfg.resume and resume_from is None:
        accelerator.print(f"--resume: no saved state under {run_dir / STATE_DIR}; starting from scratch")
    cache = val_embeddings = None
    if use_cache:  # training images in bf16, validation images in fp32 (cache.fill_run_caches)
        cache, val_embeddings = fill_run_caches(
            accelerator,
            model,
            _prompt_dataset(cfg, data.train, model, load_image=True),
            _prompt_dataset(cfg, data.val, model, load_image=True),
            directory=cfg.cache_dir,
            batch_size=cfg.batch_size,
            progress=cfg.progress,
            say=accelerator.print,
        )
    zs_examples = []
    if cfg.zero_shot and resume_from is None:  # the adapted model starts identical to the base
        zs_examples = _zero_shot(cfg, accelerator, model, data, progress, val_embeddings)
    model, optimizer, loader, scheduler, shuffled, params = _optimization(
        cfg, accelerator, model, train_ds, progress, resume_from
    )
    unwrapped: AdaptedSam = accelerator.unwrap_model(model)
    loss_fn = SamLoss(focal_weight=cfg.focal_weight, dice_weight=cfg.dice_weight, iou_weight=cfg.iou_weight)
    step_loss = StepLoss(model, unwrapped, loss_fn, cfg, cache, accelerator.device)
    if cfg.log_with:
        accelerator.init_trackers(run_name(cfg), config=flat(cfg.to_dict()))
    return Run(
        cfg=cfg,
        accelerator=accelerator,
        run_dir=run_dir,
        data=data,
        model=model,
        unwrapped=unwrapped,
        optimizer=optimizer,
        scheduler=scheduler,
        loader=loader,
        shuffled=shuffled,
        params=params,
        step_loss=step_loss,
        progress=progress,
        cache=cache,
        val_embeddings=val_embeddings,
        zs_examples=zs_examples,
    )


def _open_run(cfg: TrainConfig) -> tuple[TrainConfig, Any, AdaptedSam, Path]:
    """Check every name, path and option before anything is read or written, build the adapted
    model and Accelerate, seed, and write the run folder's ``config.yaml``. Returns the config with
    its mixed precision resolved, the accelerator, the model and the run folder."""
    from accelerate.utils import set_seed

    run_dir = run_folder(cfg)
    cfg.check_files()
    check_output_dir(cfg)
    set_seed(cfg.seed)  # before the strategy draws its initial weights (torch starts each process at random)
    sam = build_sam(cfg.model, cfg.checkpoint)  # a checkpoint of another model type fails here
    model = adapt(sam, cfg.strategy, **cfg.strategy_options)
    accelerator = _accelerator(cfg, model, run_dir)
    if cfg.mixed_precision is None:  # the launcher's choice; recorded in config.yaml as resolved
        cfg = dataclasses.replace(cfg, mixed_precision=accelerator.mixed_precision)
    saved_config = run_dir / "config.yaml"
    if cfg.resume and latest_state(run_dir / STATE_DIR) is not None and saved_config.is_file():
        cfg.check_resumable(TrainConfig.from_yaml(saved_config), saved_config)
    set_seed(cfg.seed)  # again: the data order and prompts draw from here, as they always have
    accelerator.wait_for_everyone()  # every process has checked the folder before the main one writes it
    if accelerator.is_main_process:
        if cfg.overwrite and run_dir.exists():
            shutil.rmtree(run_dir)
            accelerator.print(f"--overwrite: deleted {run_dir}")
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "config.yaml", lambda tmp: Path(tmp).write_text(cfg.to_yaml()))
    return cfg, accelerator, model, run_dir


def _accelerator(cfg: TrainConfig, model: AdaptedSam, run_dir: Path):
    """Accelerate as ``cfg`` and the launcher say, with every launched process joined."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        log_with=cfg.log_with,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
        # `accelerate launch --multi_gpu` on a machine without GPUs starts several processes, which
        # Accelerate would run as independent single-process runs: join them on the CPU (gloo)
        cpu=launched_processes() > 1 and not torch.cuda.is_available(),
        # parameters outside the graph of a step (the prompt encoder's unused point / mask
        # embeddings, when it is trained) need DDP's search; it warns on every run otherwise
        kwargs_handlers=[
            DistributedDataParallelKwargs(
                find_unused_parameters=any(p.requires_grad for p in model.sam.prompt_encoder.parameters())
            )
        ],
    )
    if accelerator.num_processes != launched_processes():
        raise TrainingError(
            f"{launched_processes()} processes were launched but Accelerate joined "
            f"{accelerator.num_processes}; each would train alone into the same folder"
        )
    return accelerator


def _run_data(cfg: TrainConfig, accelerator, model: AdaptedSam):
    """The run's images (the loaders checked), the class head with --classify, the model on its
    device, and the training prompts (without images where the embedding cache stands in for them).
    Returns the data, the training prompts' dataset and whether the embeddings are cached."""
    from ..models.parts.class_head import attach_class_head

    with accelerator.main_process_first():
        data = build_run_data(cfg)  # the splits, cut to the seeded subsets the options ask for
        check_loaders(cfg, data.train, data.val)
    if cfg.classify:  # a head on the decoder's mask token, trained beside it (samadapt.models.parts.class_head)
        attach_class_head(model, data.train.categories)
    if cfg.activation_checkpointing:
        model.set_fast_paths(activation_checkpointing=True)
    model.to(accelerator.device)
    use_cache = cfg.cache_embeddings and model.encoder_is_frozen
    train_ds = _prompt_dataset(cfg, data.train, model, load_image=not use_cache)
    accelerator.print(
        f"samadapt: {cfg.strategy} on {cfg.model} ({model.num_parameters(True):,} trainable of "
        f"{model.num_parameters():,} parameters), {len(data.train)} training / {len(data.val)} "
        f"validation images, {accelerator.num_processes} process(es) on {accelerator.device}, "
        f"mixed precision {cfg.mixed_precision}"
    )
    if data.describe():
        accelerator.print(data.describe())
    return data, train_ds, use_cache


def _zero_shot(cfg: TrainConfig, accelerator, model: AdaptedSam, data: RunData, progress: TrainProgress, embeddings):
    """The un-tuned model on every validation image (and on the per-epoch subset, the reference of
    curves.png), kept in ``progress``. Returns the examples of its rows of examples.png."""
    from ..evaluation.evaluate import summarize_records

    zs, zs_examples, zs_records = evaluate_sharded(
        accelerator,
        model,
        data.val,
        cfg,
        num_examples=cfg.num_examples,
        desc="zero-shot evaluation",
        embeddings=embeddings,
    )
    progress.zero_shot = zs
    if len(data.epoch_val) < len(data.val):  # the reference of the per-epoch numbers (curves.png)
        epoch_ids = [data.val.image_ids[i] for i in data.epoch_val]
        progress.zero_shot_epoch_val = summarize_records(zs_records.select(epoch_ids), coco=False)
    accelerator.print(
        f"zero-shot: mean IoU {zs['mean_iou']:.4f}  mean precision {zs['mean_precision']:.4f}  "
        f"mean F1 {zs['mean_f1']:.4f}"
    )
    return zs_examples


def _optimization(cfg: TrainConfig, accelerator, model: AdaptedSam, train_ds, progress: TrainProgress, resume_from):
    """The optimizer, the loader of each epoch's seeded order and the cosine schedule, prepared by
    Accelerate and registered for its saved state, which a resumed run loads into them. Returns the
    prepared model, optimizer and loader, the schedule, the epochs' dataset and the trainable parameters."""
    import timm.scheduler

    from ..data.sam_dataset import collate_sam

    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    shuffled = EpochShuffled(train_ds, cfg.seed)
    loader = DataLoader(
        shuffled, batch_size=cfg.batch_size, shuffle=False, collate_fn=collate_sam, num_workers=cfg.num_workers
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = max(1, math.ceil(len(loader) / cfg.grad_accum))
    scheduler = timm.scheduler.CosineLRScheduler(
        optimizer,
        t_initial=cfg.epochs * steps_per_epoch,
        lr_min=cfg.lr * cfg.min_lr_ratio,
        warmup_t=cfg.warmup_steps,
        warmup_lr_init=cfg.lr * 0.01,
        t_in_epochs=False,
    )
    accelerator.register_for_checkpointing(scheduler)
    accelerator.register_for_checkpointing(progress)
    register_trainable_only_state(accelerator)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        accelerator.print(f"resumed from {resume_from} (epoch {progress.epoch}, step {progress.global_step})")
    return model, optimizer, loader, scheduler, shuffled, params


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
