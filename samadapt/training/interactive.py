"""Training prompts beyond boxes: one click per instance, and corrective clicks, as SAM was trained.

SAM's training (Kirillov et al. 2023, appendix A) simulates an annotator: the first prompt of a mask
is its (noisy) box or one positive click; each later round adds one click sampled uniformly from the
error region of the previous prediction (positive where the object was missed, negative where
background was taken) and gives the previous prediction's low-resolution logits as the mask prompt.
A single click is ambiguous, so it gets the three multimask outputs and only the lowest loss is
back-propagated; prompts of several parts get the single-mask output. SAM used 8 such rounds. The IoU
head is trained on all three candidates of a click (SAM 2's ``supervise_all_iou``), since picking
the candidate of highest predicted IoU is how one click is answered (SamPredictor, the click protocol).

:func:`training_loss` is what the trainer calls per step. With ``train_prompts=["box"]`` and
``click_rounds=0`` (the protocol of "Don't waste SAM") it is the plain box-prompted step. By default
(``["box", "point"]``, 3 rounds) every instance draws its first prompt kind from ``train_prompts`` (a
click with probability ``point_share``); the instances of each kind are decoded together, the image
embeddings are computed once per step (by the first decoder call, or read from the embedding cache)
and reused by every round, and the loss is ``first_round_weight`` times the first prediction's mean
plus the rest shared by the corrective rounds (``None``: the mean over instances and rounds, as in
SAM and micro-sam). With ``click_sampling="interior"`` (the default) the training clicks are the
click protocol's (RITM): the first towards the object's middle, each corrective one towards the
middle of the largest error region; ``"uniform"`` samples them as SAM did. The clicks come from a
generator seeded by (seed, epoch, the batch's dataset indices), so a resumed run and every process
draw what an uninterrupted run draws.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..config import TrainConfig
from ..data.prompts import PromptConfig, distance_to_background, largest_error_region
from .losses import LossOutput, SamLoss

__all__ = ["corrective_points", "is_interactive", "training_loss", "training_prompt_config"]

#: the low-res logits are 1/4 of the model's input frame (SAM's decoder upscales the 1/16 embedding 4x)
LOW_RES_STRIDE = 4


def training_prompt_config(cfg: TrainConfig) -> PromptConfig:
    """The prompts the training dataset builds per instance: its noisy box if ``"box"`` is among
    ``cfg.train_prompts``, one positive click inside it if ``"point"`` is (uniform, or towards the
    middle with ``cfg.click_sampling == "interior"``)."""
    return PromptConfig(
        box_noise=cfg.box_noise,
        box_noise_max_px=cfg.box_noise_max_px,
        use_boxes="box" in cfg.train_prompts,
        num_points=1 if "point" in cfg.train_prompts else 0,
        interior_points=cfg.click_sampling == "interior",
    )


def is_interactive(cfg: TrainConfig) -> bool:
    """True when a step needs more than one box-prompted decoder call."""
    return list(cfg.train_prompts) != ["box"] or cfg.click_rounds > 0


def corrective_points(
    low_res_logits: torch.Tensor,
    gt: torch.Tensor,
    generator: torch.Generator,
    valid: torch.Tensor | None = None,
    *,
    interior: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per prompt in the error region of a prediction, in the input frame.

    Args:
        low_res_logits: (N, h, w) logits of the chosen mask; gt: (N, h, w) in {0, 1}.
        generator: a CPU ``torch.Generator`` (the sampling runs on the CPU whatever the device).
        valid: optional (N, h, w) bool, the pixels that show the image (not the padding of the
            square input); errors elsewhere are ignored.
        interior: False: uniform over every error pixel (SAM). True: in the largest error region
            (:func:`~samadapt.data.prompts.largest_error_region`, where the click protocol's
            annotator clicks), with probability proportional to the distance to that region's
            boundary, so the clicks trained on are the clicks evaluated with (RITM).

    Returns:
        coords (N, 1, 2) XY in the model input frame (the centre of the low-res pixel, 4x), labels
        (N, 1) int64, on the device of ``low_res_logits``: 1 where the click falls on a missed object
        pixel, 0 on a false-positive pixel. Where a prediction has no error, a positive click inside
        the object is returned.
    """
    device = low_res_logits.device
    pred = low_res_logits.detach().cpu() > 0
    target = gt.detach().cpu() > 0.5
    if valid is not None:
        pred, target = pred & valid.cpu(), target & valid.cpu()
    weights = (_interior_weights(pred, target) if interior else (pred ^ target).flatten(1)).float()
    none = weights.sum(1) == 0
    weights[none] = target.flatten(1)[none].float() + 1e-6
    n, h, w = pred.shape
    idx = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    ys, xs = idx // w, idx % w
    labels = target.flatten(1).gather(1, idx[:, None]).long()
    coords = torch.stack([xs, ys], dim=1).float().add(0.5).mul(float(LOW_RES_STRIDE))[:, None, :]
    return coords.to(device), labels.to(device)


def _interior_weights(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, h*w): each pixel's distance to the boundary of its instance's largest error region, 0
    elsewhere (all 0 where a prediction has no error)."""
    out = torch.zeros(pred.shape[0], pred[0].numel(), dtype=torch.float64)
    for i, (p, t) in enumerate(zip(pred.numpy(), target.numpy())):
        found = largest_error_region(t, p)
        if found is not None:
            out[i] = torch.from_numpy(distance_to_background(found[0]).ravel())
    return out


def _step_generator(cfg: TrainConfig, epoch: int, indices: Sequence[int]) -> torch.Generator:
    """The step's generator: a function of (seed, epoch, dataset indices of the batch) only."""
    state = np.random.SeedSequence([int(cfg.seed), int(epoch), 14, *(int(i) for i in indices)]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _valid_region(input_sizes: torch.Tensor, counts: Sequence[int], side: int) -> torch.Tensor:
    """(N, side, side) bool: the low-res pixels of each instance's image that are not padding.

    input_sizes: (B, 2) (h, w) of each image after resizing; counts: instances per image."""
    rows = torch.arange(side)
    out = []
    for (h, w), n in zip(input_sizes.tolist(), counts):
        hs, ws = -(-h // LOW_RES_STRIDE), -(-w // LOW_RES_STRIDE)  # partly covered pixels count
        region = (rows[:, None] < hs) & (rows[None, :] < ws)
        out.append(region.expand(n, side, side))
    return torch.cat(out) if out else torch.zeros(0, side, side, dtype=torch.bool)


@dataclass
class _Group:
    """The instances of a step that start from one prompt kind, and their clicks so far."""

    kind: str
    index: torch.Tensor  # (n,) their positions in the batch's instance order
    counts: list[int]  # per image
    gt: torch.Tensor  # (n, h, w)
    valid: torch.Tensor  # (n, h, w) bool
    boxes: torch.Tensor | None  # (n, 4) in the input frame
    points: torch.Tensor | None  # (n, P, 2): the first click, then the corrective ones
    labels: torch.Tensor | None  # (n, P)
    prev_logits: torch.Tensor | None = None  # (n, 1, h, w), detached

    @property
    def n(self) -> int:
        return int(self.index.numel())

    def per_image(self, t: torch.Tensor | None) -> list[torch.Tensor] | None:
        return None if t is None else list(t.split(self.counts))

    def add_clicks(self, coords: torch.Tensor, labels: torch.Tensor) -> None:
        self.points = coords if self.points is None else torch.cat([self.points, coords], 1)
        self.labels = labels if self.labels is None else torch.cat([self.labels, labels], 1)


def _cat(per_image: Sequence[torch.Tensor | None] | None) -> torch.Tensor | None:
    """Per-image prompts concatenated over images; None where the batch has none (collate_sam gives
    a list of None then)."""
    if per_image is None or any(t is None for t in per_image):
        return None
    return torch.cat(list(per_image))


def _groups(batch: Mapping[str, Any], gt: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> list[_Group]:
    """Split the batch's instances by the first prompt kind each one draws from ``cfg.train_prompts``."""
    device = gt.device
    counts = [int(g.shape[0]) for g in batch["gt_masks"]]
    n = sum(counts)
    kinds = list(cfg.train_prompts)
    if len(kinds) > 1:  # a click with probability point_share, else the box
        is_point = torch.rand(n, generator=generator) < cfg.point_share
        draw = torch.where(is_point, kinds.index("point"), kinds.index("box"))
    else:
        draw = torch.zeros(n, dtype=torch.long)
    image_of = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long))
    valid = _valid_region(batch["input_size"], counts, gt.shape[-1])
    boxes, points, labels = (_cat(batch.get(key)) for key in ("boxes", "points", "point_labels"))
    groups = []
    for k, kind in enumerate(kinds):
        sel = torch.nonzero(draw == k).squeeze(1)
        if sel.numel() == 0:
            continue
        per_image = torch.bincount(image_of[sel], minlength=len(counts)).tolist()
        take = lambda t: None if t is None else t[sel].to(device)  # noqa: E731
        if kind == "box":
            groups.append(_Group(kind, sel, per_image, gt[sel.to(device)], valid[sel], take(boxes), None, None))
        else:  # one positive click, the dataset's first point
            groups.append(
                _Group(
                    kind, sel, per_image, gt[sel.to(device)], valid[sel], None, take(points[:, :1]), take(labels[:, :1])
                )
            )
    return groups


def _combine(
    parts: Sequence[tuple[LossOutput, int, int]],
    best_index: torch.Tensor,
    rounds: int,
    first_round_weight: float | None,
) -> LossOutput:
    """Several :class:`LossOutput` (each of ``count`` prompts in round ``r``) as one: the mean over
    every (instance, round), or with ``first_round_weight`` f, f times the first round's mean over
    instances plus (1 - f) times the corrective rounds' mean."""
    if first_round_weight is None or rounds == 0:  # every (instance, round) alike (the arithmetic of SAM's mean)
        total = sum(c for _, c, _ in parts)

        def mean(name: str) -> torch.Tensor:
            return sum(getattr(lo, name) * c for lo, c, _ in parts) / total

        return LossOutput(
            loss=mean("loss"), focal=mean("focal"), dice=mean("dice"), iou_mse=mean("iou_mse"), best_index=best_index
        )
    weights = {}
    for r in range(1 + rounds):
        n = sum(c for _, c, rr in parts if rr == r)
        share = first_round_weight if r == 0 else (1 - first_round_weight) / rounds
        weights[r] = share / n

    def weighted(name: str) -> torch.Tensor:
        return sum(getattr(lo, name) * c * weights[r] for lo, c, r in parts)

    return LossOutput(
        loss=weighted("loss"),
        focal=weighted("focal"),
        dice=weighted("dice"),
        iou_mse=weighted("iou_mse"),
        best_index=best_index,
    )


def training_loss(
    model,
    batch: Mapping[str, Any],
    gt: torch.Tensor,
    loss_fn: SamLoss,
    cfg: TrainConfig,
    *,
    image_embeddings: torch.Tensor | None = None,
    epoch: int = 0,
) -> LossOutput:
    """The loss of one training step on a batch of :func:`~samadapt.data.sam_dataset.collate_sam`.

    Args:
        model: the (possibly Accelerate-wrapped) :class:`~samadapt.adapted.AdaptedSam`; every
            decoder call goes through its ``forward``, so mixed precision and DDP see them all.
        batch: ``images`` (B, 3, S, S) unless ``image_embeddings`` are given; per image ``boxes``
            (N_i, 4), ``points`` (N_i, P, 2) and ``point_labels`` as ``cfg.train_prompts`` need
            (:func:`training_prompt_config`), ``gt_masks``, ``index`` and ``input_size``.
        gt: (N, S/4, S/4) the batch's low-res targets, concatenated over images, on the model's device.
        loss_fn: SAM's loss.
        cfg: ``train_prompts``, ``point_share``, ``click_rounds``, ``first_round_weight``, ``multimask``
            (for box prompts), ``seed``.
        image_embeddings: (B, C, S/16, S/16) from the embedding cache (frozen encoders).
        epoch: seeds the prompt kinds and clicks with the batch's dataset indices.

    Returns:
        :class:`~samadapt.training.losses.LossOutput`; ``loss`` is the mean over instances and over
        the ``1 + click_rounds`` rounds (or, with ``cfg.first_round_weight`` f, f times the first
        round's mean plus 1 - f times the corrective rounds' mean); ``best_index`` is the first round's supervised mask of each
        instance, in the batch's instance order; ``prompt_order`` the instances in the order the first
        round decoded them (by prompt kind), which a class head reads (``loss_with_class_head``).
    """
    source = {"images": batch.get("images")} if image_embeddings is None else {"image_embeddings": image_embeddings}
    if not is_interactive(cfg) or gt.shape[0] == 0:
        # the plain step; also a batch without instances (its zero loss stays connected to the model)
        out = model(
            **source,
            boxes=batch.get("boxes"),
            points=batch.get("points"),
            point_labels=batch.get("point_labels"),
            multimask=cfg.multimask,
        )
        return loss_fn(out.low_res_logits, out.iou_predictions, gt)

    generator = _step_generator(cfg, epoch, batch["index"].tolist())
    groups = _groups(batch, gt, cfg, generator)
    parts: list[tuple[LossOutput, int, int]] = []
    best_index = torch.zeros(gt.shape[0], dtype=torch.long, device=gt.device)
    for round_ in range(1 + cfg.click_rounds):
        for g in groups:
            # one click alone is ambiguous: SAM's three outputs, the best one supervised
            multimask = (cfg.multimask if g.kind == "box" else True) if round_ == 0 else False
            out = model(
                **source,
                boxes=g.per_image(g.boxes),
                points=g.per_image(g.points),
                point_labels=g.per_image(g.labels),
                mask_inputs=g.per_image(g.prev_logits),
                multimask=multimask,
            )
            source = {"image_embeddings": out.image_embeddings}  # encode once per step
            # the IoU head ranks the three candidates at inference: train it on all of them
            lo = loss_fn(out.low_res_logits, out.iou_predictions, g.gt, supervise_all_iou=multimask)
            parts.append((lo, g.n, round_))
            if round_ == 0:
                best_index[g.index.to(gt.device)] = lo.best_index
            rows = torch.arange(g.n, device=lo.best_index.device)
            # the supervised mask's logits are the next round's mask prompt (no gradient through it)
            g.prev_logits = out.low_res_logits[rows, lo.best_index][:, None].detach().float()
        if round_ < cfg.click_rounds:
            for g in groups:
                clicks = corrective_points(
                    g.prev_logits[:, 0], g.gt, generator, g.valid, interior=cfg.click_sampling == "interior"
                )
                g.add_clicks(*clicks)
    out = _combine(parts, best_index, cfg.click_rounds, cfg.first_round_weight)
    return dataclasses.replace(out, prompt_order=torch.cat([g.index for g in groups]))
