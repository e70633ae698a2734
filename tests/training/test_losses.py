"""SAM's loss: per-pixel focal, dice, hard IoU at threshold 0, multimask selection, N = 0, bf16."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from samadapt.errors import ConfigError
from samadapt.training.losses import SamLoss, dice_loss, focal_loss, iou_of_logits


def test_focal_is_torchvision_per_pixel_mean():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 8, 8, generator=g) * 3
    targets = (torch.rand(3, 8, 8, generator=g) > 0.5).float()
    expected = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="none").mean(dim=(1, 2))
    assert torch.allclose(focal_loss(logits, targets), expected)
    # per pixel, not focal of the mean BCE (a pitfall of public fine-tuning code)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=(1, 2))
    pt = torch.exp(-bce)
    focal_of_mean = 0.25 * (1 - pt) ** 2 * bce
    assert not torch.allclose(focal_loss(logits, targets), focal_of_mean, atol=1e-4)


def test_focal_hand_value_one_pixel():
    # logit 0 -> p = 0.5; target 1: 0.25 * 0.5^2 * ln 2
    out = focal_loss(torch.zeros(1, 1, 1), torch.ones(1, 1, 1))
    assert out.shape == (1,)
    assert out.item() == pytest.approx(0.25 * 0.25 * math.log(2), rel=1e-6)


def test_dice_known_value():
    # logits +-inf-like: p is exactly the indicator. pred = 2 pixels, target = 3 pixels, overlap 1
    logits = torch.full((1, 2, 3), -100.0)
    logits[0, 0, 0] = logits[0, 0, 1] = 100.0
    target = torch.zeros(1, 2, 3)
    target[0, 0, 1] = target[0, 1, 1] = target[0, 1, 2] = 1
    # 1 - (2*1 + 1) / (2 + 3 + 1) = 0.5
    assert dice_loss(logits, target).item() == pytest.approx(0.5, abs=1e-6)
    # logit 0 everywhere: p = 0.5 on 6 px; target 3 px -> 1 - (2*1.5 + 1)/(3 + 3 + 1) = 3/7
    assert dice_loss(torch.zeros(1, 2, 3), target).item() == pytest.approx(3 / 7, abs=1e-6)


def test_iou_threshold_is_zero_not_half():
    # sigmoid(0.2) = 0.55 > 0.5 but sigmoid(-0.2) = 0.45: the pixel with logit -0.2 is outside at 0 and 0.5 alike;
    # logit 0.1 is inside at threshold 0 but would be outside if logits were thresholded at 0.5
    logits = torch.tensor([[[0.1, 0.7, -0.2, -3.0]]])
    target = torch.tensor([[[1.0, 1.0, 0.0, 1.0]]])
    # threshold 0: pred {0, 1}, gt {0, 1, 3} -> 2 / 3; threshold 0.5 on logits would give 1 / 3
    assert iou_of_logits(logits, target).item() == pytest.approx(2 / 3)
    assert iou_of_logits(torch.full((1, 2, 2), -1.0), torch.zeros(1, 2, 2)).item() == 1.0  # both empty
    assert iou_of_logits(torch.full((1, 2, 2), -1.0), torch.ones(1, 2, 2)).item() == 0.0


def _three_candidates():
    """GT: left half of 8x8. Prompt 0: candidate 1 is the GT; prompt 1: candidate 2 is. The others are wrong."""
    gt = torch.zeros(2, 8, 8)
    gt[:, :, :4] = 1
    logits = torch.full((2, 3, 8, 8), -4.0)
    logits[:, 0] = 4.0  # everything
    logits[:, 1, :, :4] = 4.0  # the GT
    logits[:, 2, :2, :] = 4.0  # a stripe
    logits[1] = logits[1, [0, 2, 1]]
    return logits, gt


def test_multimask_picks_lowest_loss_and_only_it_gets_gradient():
    logits, gt = _three_candidates()
    logits = logits.clone().requires_grad_(True)
    iou_pred = torch.full((2, 3), 0.5, requires_grad=True)
    out = SamLoss()(logits, iou_pred, gt)
    assert out.best_index.tolist() == [1, 2]
    out.loss.backward()
    g = logits.grad
    for prompt, best in enumerate([1, 2]):
        assert g[prompt, best].abs().sum() > 0
        assert iou_pred.grad[prompt, best] != 0
        for other in {0, 1, 2} - {best}:
            assert torch.equal(g[prompt, other], torch.zeros_like(g[prompt, other]))
            assert iou_pred.grad[prompt, other] == 0
    # the loss is the weighted sum of the chosen candidates' terms
    chosen = logits.detach()[[0, 1], [1, 2]]
    f = focal_loss(chosen, gt).mean()
    d = dice_loss(chosen, gt).mean()
    mse = (0.5 - 1.0) ** 2  # candidate 1 matches the GT exactly: IoU 1
    assert out.loss.item() == pytest.approx(20 * f.item() + d.item() + mse, rel=1e-5)
    assert out.focal.item() == pytest.approx(f.item(), rel=1e-5)
    assert out.iou_mse.item() == pytest.approx(mse)


def test_multimask_choice_follows_the_weights():
    # candidate 0 (unconfident, all pixels right) has the lower focal loss, candidate 1 (confident, one
    # pixel wrong) the lower dice loss: the choice depends on the weights
    gt = torch.zeros(1, 4, 4)
    gt[0, :2, :2] = 1
    logits = torch.empty(1, 2, 4, 4)
    logits[0, 0] = torch.where(gt[0] > 0, 0.5, -0.5)  # right side of 0 everywhere but unconfident
    logits[0, 1] = torch.where(gt[0] > 0, 6.0, -6.0)
    logits[0, 1, 3, 3] = 6.0  # confident, one wrong pixel
    iou = torch.zeros(1, 2)
    f = focal_loss(logits, gt[:, None])[0]
    d = dice_loss(logits, gt[:, None])[0]
    assert f[0] < f[1] and d[1] < d[0]
    assert SamLoss(focal_weight=1.0, dice_weight=0.0).forward(logits, iou, gt).best_index.item() == 0
    assert SamLoss(focal_weight=0.0, dice_weight=1.0).forward(logits, iou, gt).best_index.item() == 1


def test_iou_mse_target_is_hard_iou_at_zero():
    gt = torch.zeros(1, 1, 4)
    gt[0, 0, :2] = 1
    logits = torch.tensor([[[[0.1, 2.0, 0.3, -1.0]]]])  # pred (>0) = {0, 1, 2}, gt {0, 1} -> IoU 2/3
    pred_iou = torch.tensor([[0.9]])
    out = SamLoss(focal_weight=0.0, dice_weight=1.0, iou_weight=1.0)(logits, pred_iou, gt)
    assert out.iou_mse.item() == pytest.approx((0.9 - 2 / 3) ** 2, rel=1e-5)


def test_empty_batch_backprops():
    w = torch.nn.Parameter(torch.ones(1))
    logits = torch.zeros(0, 3, 16, 16) * w
    iou = torch.zeros(0, 3) * w
    out = SamLoss()(logits, iou, torch.zeros(0, 16, 16))
    assert out.loss.item() == 0.0 and out.loss.grad_fn is not None
    out.loss.backward()
    assert w.grad is not None and w.grad.item() == 0.0
    assert out.best_index.shape == (0,)


def test_bf16_inputs_give_float32_loss():
    logits, gt = _three_candidates()
    out = SamLoss()(logits.bfloat16().requires_grad_(), torch.full((2, 3), 0.5, dtype=torch.bfloat16), gt)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()


def test_single_mask_output():
    logits, gt = _three_candidates()
    out = SamLoss()(logits[:1, 1:2], torch.ones(1, 1), gt[:1])
    assert out.best_index.tolist() == [0]
    assert out.iou_mse.item() == pytest.approx(0.0)


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"focal_weight": -1.0}, "-1.0"),
        ({"dice_weight": float("nan")}, "nan"),
        ({"iou_weight": -0.5}, "-0.5"),
        ({"focal_weight": 0.0, "dice_weight": 0.0}, "both 0"),
    ],
)
def test_bad_weights_are_named(kwargs, bad):
    with pytest.raises(ConfigError, match=bad):
        SamLoss(**kwargs)


def test_shape_mismatch_is_reported():
    with pytest.raises(ConfigError, match="gt_masks"):
        SamLoss()(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1), torch.zeros(2, 4, 4))
