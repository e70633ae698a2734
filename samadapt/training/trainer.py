"""The fine-tuning loop: Accelerate for devices, mixed precision, gradient accumulation and several
processes; timm for the learning-rate schedule; our loss, metrics, embedding cache and adapter files.

Read top to bottom: check names, paths and the run folder (``preflight``) -> model -> data and its
loader check -> (fill the embedding cache) -> zero-shot evaluation -> epochs of training with
validation, early stopping and a resumable state (``state``) -> final evaluation of the best epoch ->
adapter, card, report, curves.
"""

from __future__ import annotations

import dataclasses
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
from ..config import TrainConfig
from ..errors import TrainingError, TrainingInterrupted
from ..files import atomic_write
from ..hub import publish_adapter
from ..models.registry import build_sam
from ..paths import samadapt_home
from .cache import cached_embedding, fill_run_caches
from .outputs import flat, json_default, peak_memory_mb, summary_text, write_outputs
from .preflight import (
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


# ---------------------------------------------------------------------------- the loop
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
    import timm.scheduler
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    from ..data.sam_dataset import collate_sam
    from ..evaluation.evaluate import summarize_records
    from ..evaluation.plots import plot_training_curves
    from ..segment.class_head import attach_class_head, loss_with_class_head
    from ..segment.finish import finish_adapter
    from .interactive import training_loss
    from .losses import SamLoss

    # --- every name, path and option is checked before anything is read or written
    run_dir = run_folder(cfg)
    cfg.check_files()
    check_output_dir(cfg)
    sam = build_sam(cfg.model, cfg.checkpoint)  # a checkpoint of another model type fails here
    model = adapt(sam, cfg.strategy, **cfg.strategy_options)

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
    if cfg.mixed_precision is None:  # the launcher's choice; recorded in config.yaml as resolved
        cfg = dataclasses.replace(cfg, mixed_precision=accelerator.mixed_precision)
    saved_config = run_dir / "config.yaml"
    if cfg.resume and latest_state(run_dir / STATE_DIR) is not None and saved_config.is_file():
        cfg.check_resumable(TrainConfig.from_yaml(saved_config), saved_config)
    is_main = accelerator.is_main_process
    say = accelerator.print
    set_seed(cfg.seed)
    accelerator.wait_for_everyone()  # every process has checked the folder before the main one writes it
    if is_main:
        if cfg.overwrite and run_dir.exists():
            shutil.rmtree(run_dir)
            say(f"--overwrite: deleted {run_dir}")
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "config.yaml", lambda tmp: Path(tmp).write_text(cfg.to_yaml()))

    # --- data
    with accelerator.main_process_first():
        data = build_run_data(cfg)  # the splits, cut to the seeded subsets the options ask for
        check_loaders(cfg, data.train, data.val)
    train_instances, val_instances = data.train, data.val
    if cfg.classify:  # a head on the decoder's mask token, trained beside it (samadapt.segment.class_head)
        attach_class_head(model, train_instances.categories)
    if cfg.activation_checkpointing:
        model.set_fast_paths(activation_checkpointing=True)
    model.to(accelerator.device)
    use_cache = cfg.cache_embeddings and model.encoder_is_frozen
    train_ds = _prompt_dataset(cfg, train_instances, model, load_image=not use_cache)
    say(
        f"samadapt: {cfg.strategy} on {cfg.model} ({model.num_parameters(True):,} trainable of "
        f"{model.num_parameters():,} parameters), {len(train_instances)} training / {len(val_instances)} "
        f"validation images, {accelerator.num_processes} process(es) on {accelerator.device}, "
        f"mixed precision {cfg.mixed_precision}"
    )
    if data.describe():
        say(data.describe())

    progress = TrainProgress()
    state_root = run_dir / STATE_DIR
    resume_from = latest_state(state_root) if cfg.resume else None
    if cfg.resume and resume_from is None:
        say(f"--resume: no saved state under {state_root}; starting from scratch")

    # --- embedding caches: training images in bf16, validation images in fp32 (cache.fill_run_caches)
    cache = val_embeddings = None
    if use_cache:
        cache, val_embeddings = fill_run_caches(
            accelerator,
            model,
            _prompt_dataset(cfg, train_instances, model, load_image=True),
            _prompt_dataset(cfg, val_instances, model, load_image=True),
            directory=Path(cfg.cache_dir) if cfg.cache_dir else samadapt_home() / "cache",
            batch_size=cfg.batch_size,
            progress=cfg.progress,
            say=say,
        )

    # --- zero-shot baseline (the adapted model starts identical to the base)
    if cfg.zero_shot and resume_from is None:
        zs, zs_examples, zs_records = evaluate_sharded(
            accelerator,
            model,
            val_instances,
            cfg,
            num_examples=cfg.num_examples,
            desc="zero-shot evaluation",
            embeddings=val_embeddings,
        )
        progress.zero_shot = zs
        if len(data.epoch_val) < len(val_instances):  # the reference of the per-epoch numbers (curves.png)
            epoch_ids = [val_instances.image_ids[i] for i in data.epoch_val]
            progress.zero_shot_epoch_val = summarize_records(zs_records.select(epoch_ids), coco=False)
        say(
            f"zero-shot: mean IoU {zs['mean_iou']:.4f}  mean precision {zs['mean_precision']:.4f}  "
            f"mean F1 {zs['mean_f1']:.4f}"
        )
    else:
        zs_examples = []

    # --- optimisation
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
        say(f"resumed from {resume_from} (epoch {progress.epoch}, step {progress.global_step})")
    unwrapped: AdaptedSam = accelerator.unwrap_model(model)
    loss_fn = SamLoss(focal_weight=cfg.focal_weight, dice_weight=cfg.dice_weight, iou_weight=cfg.iou_weight)
    if cfg.log_with:
        accelerator.init_trackers(run_name(cfg), config=flat(cfg.to_dict()))

    # --- epochs
    for epoch in range(progress.epoch, cfg.epochs):
        if progress.stopped_early:
            break
        # Accelerate's loader calls dataset.set_epoch(<its own count of passes>) when iterated; that
        # count restarts at 0 in a resumed run, so set it too, or epoch 2 would replay epoch 1's order
        loader.set_epoch(epoch)
        shuffled.set_epoch(epoch)
        model.train()
        t0, cpu0 = time.perf_counter(), time.process_time()
        enc_before = unwrapped.encoder_images_seen
        losses: list[float] = []
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not (cfg.progress and accelerator.is_local_main_process),
        )
        for batch in bar:
            check_interrupt()
            with accelerator.accumulate(model):
                emb = None
                if cache is not None:
                    emb = torch.stack([cached_embedding(cache, k, f"training image {k}") for k in batch["image_key"]])
                    emb = emb.to(accelerator.device, torch.float32)
                gt = torch.cat([g.to(accelerator.device) for g in batch["gt_masks"]])
                # box prompts; or boxes / clicks per instance and corrective click rounds (interactive.py)
                lo = loss_with_class_head(
                    unwrapped,
                    batch,
                    lambda: training_loss(  # + class cross-entropy with --classify
                        model, batch, gt, loss_fn, cfg, image_embeddings=emb, epoch=epoch
                    ),
                )
                finite = accelerator.gather(torch.isfinite(lo.loss.detach()).float().reshape(1)).min().item() == 1.0
                if not finite:
                    _non_finite(cfg, progress, epoch, state_root)
                    optimizer.zero_grad()
                    continue
                accelerator.backward(lo.loss)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                progress.global_step += 1
                scheduler.step_update(progress.global_step)
            losses.append(lo.loss.item())
            progress.step_losses.append([progress.global_step, losses[-1]])  # curves.png within the epoch
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if cfg.log_with:
                accelerator.log(
                    {
                        "train/loss": lo.loss.item(),
                        "train/focal": float(lo.focal),
                        "train/dice": float(lo.dice),
                        "train/iou_mse": float(lo.iou_mse),
                        "lr": optimizer.param_groups[0]["lr"],
                    },
                    step=progress.global_step,
                )
        epoch_seconds, epoch_cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
        progress.train_seconds += epoch_seconds
        train_encoder_images = unwrapped.encoder_images_seen - enc_before  # before validation encodes its images

        val, _, _ = evaluate_sharded(  # on the per-epoch subset (--epoch-val-images)
            accelerator,
            unwrapped,
            val_instances,
            cfg,
            indices=data.epoch_val,
            desc=f"validation {epoch + 1}",
            embeddings=val_embeddings,
        )
        improved = cfg.keep_epoch == "last" or val["mean_iou"] > progress.best_metric + cfg.min_delta
        if improved:
            progress.best_metric, progress.best_epoch, progress.bad_epochs = val["mean_iou"], epoch + 1, 0
            if is_main:
                save_adapter(unwrapped, run_dir / BEST_ADAPTER, epoch=epoch + 1, metrics=val)
        else:
            progress.bad_epochs += 1
        row = {
            "epoch": epoch + 1,
            "step": progress.global_step,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "val_mean_iou": val["mean_iou"],
            "val_mean_f1": val["mean_f1"],
            "val_images": len(data.epoch_val),
            "seconds": epoch_seconds,
            "cpu_seconds": epoch_cpu_seconds,  # this process's CPU time: steadier than wall-clock on a busy CPU
            "encoder_images": train_encoder_images,
        }
        progress.history.append(row)
        say(
            f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, val mean IoU {val['mean_iou']:.4f}"
            f"{' (best)' if improved and cfg.keep_epoch == 'best' else ''}, {epoch_seconds:.1f} s, image-encoder forwards in training {row['encoder_images']}"
        )
        if cfg.log_with:
            accelerator.log(
                {
                    "val/mean_iou": val["mean_iou"],
                    "val/mean_f1": val["mean_f1"],
                    "val/mean_precision": val["mean_precision"],
                },
                step=progress.global_step,
            )
        if progress.bad_epochs >= cfg.patience > 0:
            progress.stopped_early = True
            say(f"early stopping: no improvement of validation mean IoU for {cfg.patience} epochs")
        progress.epoch = epoch + 1
        save_state(accelerator, state_root, progress.epoch)
        check_interrupt()

    check_interrupt()
    # --- final: best epoch, evaluation, outputs
    accelerator.wait_for_everyone()
    if progress.best_epoch < 0:
        raise TrainingError("no epoch finished with a finite validation score; nothing to save")
    _load_trainable(unwrapped, run_dir / BEST_ADAPTER)
    final, ft_examples, _ = evaluate_sharded(
        accelerator,
        unwrapped,
        val_instances,
        cfg,
        num_examples=cfg.num_examples,
        desc="final evaluation",
        embeddings=val_embeddings,
    )
    adapter_path = run_dir / "adapter.safetensors"
    published = None
    if is_main:  # automatic-mask calibration and the class head's check, saved in the adapter
        final.update(finish_adapter(unwrapped, val_instances, cfg, len(val_instances), val_embeddings, say))
        training = {
            "config": cfg.to_dict(),
            "best_epoch": progress.best_epoch,
            "epochs_run": progress.epoch,
            "stopped_early": progress.stopped_early,
            "train_seconds": progress.train_seconds,
            "skipped_steps": progress.skipped_steps,
            "data": data.card,  # the images trained and measured on, subsets included
        }
        save_adapter(
            unwrapped,
            adapter_path,
            dataset=cfg.dataset_tag,
            metrics=final,
            zero_shot=progress.zero_shot,
            training=training,
        )
        if cfg.publish:
            publish_adapter(
                unwrapped,
                cfg.dataset_tag,
                name=cfg.name,
                card={
                    "metrics": {"fine_tuned": final, "zero_shot": progress.zero_shot, "eval_prompt": cfg.eval_prompt},
                    "data": data.card,
                    "training": training,
                },
            )
            published = run_name(cfg)
        write_outputs(run_dir, cfg, progress, final, zs_examples, ft_examples, plot_training_curves, data.card)
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
            "data": data.card,
            "zero_shot": progress.zero_shot,
            "fine_tuned": final,
        }
        atomic_write(
            run_dir / "run_summary.json",
            lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=2, default=json_default)),
        )
        say(summary_text(cfg, unwrapped, progress, final, cache, adapter_path, published, run_dir))
    accelerator.wait_for_everyone()
    # finishes the trackers and destroys the process group: nothing collective may follow it
    accelerator.end_training()
    return TrainResult(
        run_dir, adapter_path, published, progress.zero_shot, final, progress.best_epoch, progress.history
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
