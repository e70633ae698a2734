"""SAM's training loss: focal + dice on the mask logits, MSE on the IoU head.

SAM (Kirillov et al. 2023, appendix A) supervises masks with a linear combination of focal and dice
loss in the ratio 20:1 and its IoU-prediction head with the mean squared error between the predicted
IoU and the IoU of the predicted mask with the ground truth. With multimask output (3 masks per
prompt) only the mask with the lowest mask loss is back-propagated. "Don't waste SAM" fine-tunes the
mask decoder with the same three terms.

Two pitfalls of public fine-tuning code are avoided on purpose (REFERENCE.md section 4): the focal
loss is computed per pixel (not on the mean BCE), and the IoU target thresholds the logits at 0
(SAM's ``mask_threshold``), not at 0.5.

Every function reduces over the last two dimensions (the pixels) and keeps the leading ones, so
``(N, h, w)`` gives ``(N,)`` and ``(N, M, h, w)`` gives ``(N, M)``. Everything is computed in float32
whatever the input dtype (bf16 autocast included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from ..errors import ConfigError

__all__ = ["LossOutput", "SamLoss", "dice_loss", "focal_loss", "iou_of_logits"]


def _pair(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 logits and targets of the same shape (targets broadcast to the logits)."""
    logits = logits.float()
    targets = targets.to(dtype=torch.float32, device=logits.device)
    if targets.shape != logits.shape:
        try:
            targets = targets.expand_as(logits)
        except RuntimeError:
            raise ConfigError(
                f"targets of shape {tuple(targets.shape)} do not broadcast to logits of shape {tuple(logits.shape)}"
            ) from None
    if logits.ndim < 2:
        raise ConfigError(f"logits must be (..., h, w), got shape {tuple(logits.shape)}")
    return logits, targets


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al. 2017) per pixel, averaged over the pixels of each mask.

    Per pixel: ``-alpha_t (1 - p_t)^gamma log(p_t)``, exactly ``torchvision.ops.sigmoid_focal_loss``
    with ``reduction="none"``; ``alpha < 0`` disables the class weighting.

    Args:
        logits: (..., h, w) mask logits.
        targets: (..., h, w) in {0, 1} (bool or float), broadcastable to ``logits``.

    Returns:
        (...) float32, the mean over the h*w pixels.
    """
    logits, targets = _pair(logits, targets)
    return sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="none").mean(dim=(-2, -1))


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft dice loss on the sigmoid probabilities, per mask.

    ``1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)`` with the sums over the pixels.

    Args:
        logits: (..., h, w) mask logits.
        targets: (..., h, w) in {0, 1}, broadcastable to ``logits``.

    Returns:
        (...) float32 in [0, 1).
    """
    logits, targets = _pair(logits, targets)
    p = logits.sigmoid()
    inter = (p * targets).sum(dim=(-2, -1))
    return 1.0 - (2.0 * inter + smooth) / (p.sum(dim=(-2, -1)) + targets.sum(dim=(-2, -1)) + smooth)


@torch.no_grad()
def iou_of_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Hard IoU of the masks ``logits > 0`` (SAM's ``mask_threshold``) with the targets, per mask.

    An empty prediction of an empty target has IoU 1 (the convention of :mod:`.metrics`).

    Args:
        logits: (..., h, w) mask logits.
        targets: (..., h, w) in {0, 1}, broadcastable to ``logits``.

    Returns:
        (...) float32 in [0, 1], without gradient.
    """
    logits, targets = _pair(logits, targets)
    pred = logits > 0
    gt = targets > 0.5
    inter = (pred & gt).sum(dim=(-2, -1)).float()
    union = (pred | gt).sum(dim=(-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@dataclass
class LossOutput:
    """What :class:`SamLoss` returns.

    loss: scalar to back-propagate (mean over prompts of the weighted sum of the three terms).
    focal, dice, iou_mse: detached scalars, the unweighted means over prompts of each term (for logs).
    best_index: (N,) int64, the mask of each prompt that was supervised (always 0 when M = 1).
    prompt_order: None when the N prompts were decoded in instance order, once; else (N,) int64, the
        instances in the order their first prompts were decoded (before any other decoding of the step).
    """

    loss: torch.Tensor
    focal: torch.Tensor
    dice: torch.Tensor
    iou_mse: torch.Tensor
    best_index: torch.Tensor
    prompt_order: torch.Tensor | None = None


def _check_weight(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"`{name}` must be a finite number >= 0, got {value!r}")
    return float(value)


class SamLoss(nn.Module):
    """``focal_weight * focal + dice_weight * dice + iou_weight * MSE(iou_pred, IoU)``, averaged over prompts.

    Args:
        focal_weight: weight of the per-pixel focal loss (SAM: 20).
        dice_weight: weight of the dice loss (SAM: 1).
        iou_weight: weight of the MSE of the IoU head (SAM: 1).
        focal_alpha, focal_gamma: the focal loss parameters (torchvision's defaults 0.25, 2).

    Raises:
        ConfigError: a weight is negative or not finite, or ``focal_weight`` and ``dice_weight`` are
            both 0 (the masks would get no loss and the multimask choice would be arbitrary).
    """

    def __init__(
        self,
        focal_weight: float = 20.0,
        dice_weight: float = 1.0,
        iou_weight: float = 1.0,
        *,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        self.focal_weight = _check_weight("focal_weight", focal_weight)
        self.dice_weight = _check_weight("dice_weight", dice_weight)
        self.iou_weight = _check_weight("iou_weight", iou_weight)
        if self.focal_weight + self.dice_weight == 0:
            raise ConfigError(
                f"`focal_weight` and `dice_weight` are both 0 (got {focal_weight!r}, {dice_weight!r}): "
                "the masks would get no loss; SAM uses 20 and 1"
            )
        self.focal_gamma = _check_weight("focal_gamma", focal_gamma)
        if isinstance(focal_alpha, bool) or not isinstance(focal_alpha, (int, float)) or not focal_alpha <= 1:
            raise ConfigError(f"`focal_alpha` must be a number <= 1 (negative disables it), got {focal_alpha!r}")
        self.focal_alpha = float(focal_alpha)

    def extra_repr(self) -> str:
        return f"focal_weight={self.focal_weight}, dice_weight={self.dice_weight}, iou_weight={self.iou_weight}"

    def forward(
        self,
        low_res_logits: torch.Tensor,
        iou_predictions: torch.Tensor,
        gt_masks: torch.Tensor,
        *,
        supervise_all_iou: bool = False,
    ) -> LossOutput:
        """Loss of N prompts with M candidate masks each.

        Args:
            low_res_logits: (N, M, h, w) mask logits (``SamOutput.low_res_logits``).
            iou_predictions: (N, M) the IoU head's outputs.
            gt_masks: (N, h, w) ground truth in {0, 1} in the same frame
                (``SamTransform.masks_to_low_res``).
            supervise_all_iou: with M > 1, train the IoU head on every candidate (the mean of the M
                squared errors), not only on the supervised one, so that picking the candidate of
                highest predicted IoU (what SamPredictor users and the click protocol do) is trained.

        Returns:
            :class:`LossOutput`. With M > 1 each prompt is supervised through its candidate of lowest
            ``focal_weight * focal + dice_weight * dice``; the other masks get no gradient. With N = 0 the
            loss is a zero that is still connected to the inputs, so ``backward`` (and DDP) work.
        """
        if low_res_logits.ndim != 4:
            raise ConfigError(f"low_res_logits must be (N, M, h, w), got shape {tuple(low_res_logits.shape)}")
        n, m, h, w = low_res_logits.shape
        if tuple(iou_predictions.shape) != (n, m):
            raise ConfigError(f"iou_predictions must be (N, M) = {(n, m)}, got {tuple(iou_predictions.shape)}")
        if tuple(gt_masks.shape) != (n, h, w):
            raise ConfigError(f"gt_masks must be (N, h, w) = {(n, h, w)} like the logits, got {tuple(gt_masks.shape)}")
        device = low_res_logits.device
        if n == 0:
            # multiplying by 0 keeps a grad_fn, so backward() and DDP's reducer see every parameter
            zero = (low_res_logits.float().sum() + iou_predictions.float().sum()) * 0.0
            z = zero.detach()
            return LossOutput(zero, z, z, z, torch.zeros(0, dtype=torch.int64, device=device))

        logits = low_res_logits.float()
        target = gt_masks.to(device=device, dtype=torch.float32)[:, None]  # (N, 1, h, w)
        focal = focal_loss(logits, target, self.focal_alpha, self.focal_gamma)  # (N, M)
        dice = dice_loss(logits, target)  # (N, M)
        with torch.no_grad():
            best = (self.focal_weight * focal + self.dice_weight * dice).argmin(dim=1)  # (N,)
        rows = torch.arange(n, device=device)
        focal_b, dice_b = focal[rows, best], dice[rows, best]  # indexing: the other masks get zero gradient
        if supervise_all_iou:  # every candidate's IoU (SAM 2's supervise_all_iou): choosing by it then works
            iou_mse = ((iou_predictions.float() - iou_of_logits(logits, target)) ** 2).mean(dim=1)
        else:
            iou_true = iou_of_logits(logits[rows, best], target[:, 0])  # detached
            iou_mse = (iou_predictions.float()[rows, best] - iou_true) ** 2
        per_prompt = self.focal_weight * focal_b + self.dice_weight * dice_b + self.iou_weight * iou_mse
        return LossOutput(
            loss=per_prompt.mean(),
            focal=focal_b.detach().mean(),
            dice=dice_b.detach().mean(),
            iou_mse=iou_mse.detach().mean(),
            best_index=best,
        )
