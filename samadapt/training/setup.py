"""The start of a fine-tuning run (:func:`setup`): checks, model, Accelerate, data, embedding caches,
the zero-shot baseline, optimizer, loader and schedule, all gathered in a :class:`Run` for the epochs
(:func:`samadapt.training.trainer.fit`) and the end (:func:`~samadapt.training.trainer.finish`); the
step's loss (:class:`StepLoss`), built once; and the evaluation shared between processes
(:func:`evaluate_sharded`), which the epochs and the end use too.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from ..adapted import AdaptedSam, adapt
from ..config import TrainConfig
from ..errors import TrainingError
from ..files import atomic_write
from ..models.family import build_model
from .cache import EmbeddingCache, cached_embedding, fill_run_caches
from .interactive import training_loss
from .losses import LossOutput, SamLoss
from .outputs import flat
from .preflight import (
    RunData,
    build_run_data,
    check_loaders,
    check_output_dir,
    launched_processes,
    run_folder,
    run_name,
)
from .state import (
    STATE_DIR,
    EpochShuffled,
    TrainProgress,
    latest_state,
    register_trainable_only_state,
)


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
            cached = [cached_embedding(self.cache, k, f"training image {k}") for k in batch["image_key"]]
            emb = self.unwrapped.family.stack(cached).to(self.device, torch.float32)  # SAM 2.1: Sam2Features
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
    sam = build_model(cfg.model, cfg.checkpoint)  # a checkpoint of another model type fails here
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
                find_unused_parameters=any(
                    p.requires_grad for p in model.family.parts(model.sam).prompt_encoder.parameters()
                )
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
