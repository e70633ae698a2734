"""Pretraining a SAM-architecture model from scratch with SAM's promptable objective.

Used by ``recipes/pretrain_mini.py`` to make the built-in ``mini`` weights. Every part trains (image
encoder, prompt encoder, mask decoder). Each step alternates the prompt kind, as SAM's training mixes
them: noisy boxes (single-mask output) or one positive click (multimask output, the lowest of the
three losses back-propagated, since one click is ambiguous); then each corrective round adds a click
sampled from the error region of the previous prediction (positive where the object was missed,
negative where background was taken), gives that prediction's low-resolution logits as the mask
prompt (``mask_prompt``, as SAM was trained), and supervises the refined single-mask output.

Only the parameters that require grad train: the ``mask-prompt`` stage of ``recipes/pretrain_mini.py``
freezes all but the prompt encoder's mask path (``prompt_encoder.mask_downscaling``), which a model
pretrained without mask prompts never used.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..adapted import AdaptedSam
from .interactive import corrective_points
from .losses import SamLoss


@dataclass
class PretrainConfig:
    steps: int = 3000
    batch_size: int = 8
    prompts_per_image: int = 6
    lr: float = 8e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.02
    corrective_rounds: int = 1
    #: corrective rounds give the previous prediction's low-res logits as the mask prompt (SAM); the
    #: committed first stage of ``mini`` ran without (``recipes/pretrain_mini.py --no-mask-prompt``)
    mask_prompt: bool = True
    max_grad_norm: float = 1.0
    seed: int = 0
    log_every: int = 50
    time_budget_s: float | None = None  # stop early (cleanly) when this much time has passed
    history: list[dict[str, Any]] = field(default_factory=list)


def pretrain(
    model: AdaptedSam, dataset, cfg: PretrainConfig, *, progress: bool = True, log=print
) -> list[dict[str, Any]]:
    """Train every parameter of ``model`` on a ``SamPromptDataset`` whose samples carry both boxes
    and one positive point per instance. Returns the loss history (one row per ``log_every`` steps)."""
    import timm.scheduler
    from tqdm.auto import tqdm

    from ..data.sam_dataset import collate_sam

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = timm.scheduler.CosineLRScheduler(
        optimizer,
        t_initial=cfg.steps,
        lr_min=cfg.lr * cfg.min_lr_ratio,
        warmup_t=cfg.warmup_steps,
        warmup_lr_init=cfg.lr * 0.01,
        t_in_epochs=False,
    )
    loss_fn = SamLoss()
    model.train()
    step, epoch, t0 = 0, 0, time.perf_counter()
    running: list[float] = []
    bar = tqdm(total=cfg.steps, desc="pretraining", disable=not progress)
    while step < cfg.steps:
        dataset.set_epoch(epoch)
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(dataset))
        loader = DataLoader(
            torch.utils.data.Subset(dataset, order.tolist()),
            batch_size=cfg.batch_size,
            collate_fn=collate_sam,
            drop_last=True,
        )
        for batch in loader:
            if step >= cfg.steps:
                break
            loss = _prompted_loss(model, batch, loss_fn, cfg, gen, use_points=step % 2 == 1)
            if loss is None:  # no instance in the batch
                continue
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"non-finite loss at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            step += 1
            scheduler.step_update(step)
            running.append(loss.item())
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                cfg.history.append(
                    {
                        "step": step,
                        "loss": float(np.mean(running)),
                        "lr": optimizer.param_groups[0]["lr"],
                        "seconds": time.perf_counter() - t0,
                    }
                )
                running = []
                bar.set_postfix(loss=f"{cfg.history[-1]['loss']:.3f}")
            if cfg.time_budget_s is not None and time.perf_counter() - t0 > cfg.time_budget_s:
                log(f"time budget of {cfg.time_budget_s:.0f} s reached at step {step}; stopping")
                cfg.steps = step
                break
        epoch += 1
    bar.close()
    model.eval()
    return cfg.history


def _prompted_loss(
    model: AdaptedSam, batch, loss_fn: SamLoss, cfg: PretrainConfig, gen: torch.Generator, *, use_points: bool
) -> torch.Tensor | None:
    """The loss of one batch: the first prediction (noisy boxes, or one positive click with the
    multimask output) and ``cfg.corrective_rounds`` refinements, each with a click from the previous
    prediction's error (and its logits as the mask prompt). None when the batch holds no instance."""
    emb = model.encode(batch["images"])
    gt = torch.cat(batch["gt_masks"])
    if gt.shape[0] == 0:
        return None
    pts = [p[:, :1] for p in batch["points"]] if use_points else None
    lbl = [lab[:, :1] for lab in batch["point_labels"]] if use_points else None
    out = model.decode(emb, None if use_points else batch["boxes"], pts, lbl, multimask=use_points)
    first = loss_fn(out.low_res_logits, out.iou_predictions, gt)
    loss = first.loss
    counts = out.image_index.bincount(minlength=emb.shape[0]).tolist()
    clicks = torch.cat(pts) if use_points else torch.zeros(gt.shape[0], 0, 2)
    click_labels = torch.cat(lbl) if use_points else torch.zeros(gt.shape[0], 0, dtype=torch.long)
    prev = out.low_res_logits.gather(1, first.best_index[:, None, None, None].expand(-1, 1, *gt.shape[-2:]))
    for _ in range(cfg.corrective_rounds):
        c, lab = corrective_points(prev[:, 0].detach(), gt, gen)
        clicks, click_labels = torch.cat([clicks, c], 1), torch.cat([click_labels, lab], 1)
        out = model.decode(
            emb,
            None if use_points else batch["boxes"],
            list(clicks.split(counts)),
            list(click_labels.split(counts)),
            multimask=False,
            mask_inputs=list(prev.detach().split(counts)) if cfg.mask_prompt else None,
        )
        loss = loss + loss_fn(out.low_res_logits, out.iou_predictions, gt).loss
        prev = out.low_res_logits
    return loss
