"""Training with point prompts and corrective clicks (samadapt.training.interactive, TrainConfig's
``train_prompts`` / ``click_rounds``): the options, the click sampler on hand-made masks, what one
step feeds the model round by round, and tiny runs of every strategy (the decoder on the cache)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from training_helpers import tiny_config, train_here

import samadapt
from samadapt.config import TrainConfig
from samadapt.data import presets
from samadapt.data.sam_dataset import SamPromptDataset, collate_sam
from samadapt.errors import ConfigError
from samadapt.strategies import STRATEGIES
from samadapt.training.interactive import corrective_points, training_loss, training_prompt_config
from samadapt.training.losses import SamLoss

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread, as the tiny runs use (the CPU is shared; two threads only contend)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ============================================================================ options
@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(train_prompts=["box", "boxes"]), "`train_prompts` has 'boxes'; choose kinds from ['box', 'point']"),
        (
            dict(train_prompts="point"),
            "`train_prompts` is 'point'; give a list of distinct kinds from ['box', 'point']",
        ),
        (dict(train_prompts=[]), "`train_prompts` is []; give a list"),
        (dict(train_prompts=["point", "point"]), "`train_prompts` is ['point', 'point']; give a list of distinct"),
        (dict(point_share=1.0), "`point_share` should be a fraction strictly between 0 and 1 (SAM: 0.5), got 1.0"),
        (dict(click_rounds=-1), "`click_rounds` should be an integer >= 0 (SAM trained with 8), got -1"),
        (dict(click_rounds=True), "`click_rounds` should be an integer >= 0 (SAM trained with 8), got True"),
    ],
)
def test_config_rejects_bad_prompt_options(bad, message):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**bad)
    assert message in str(e.value)


def test_finetune_command_line_takes_the_options():
    spec = importlib.util.spec_from_file_location("samadapt_recipe_finetune_i14", REPO / "recipes" / "finetune.py")
    finetune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(finetune)
    cfg = finetune.config_from_args(["--train-prompts", "box", "point", "--click-rounds", "3"])
    assert cfg.train_prompts == ["box", "point"] and cfg.click_rounds == 3
    paper = finetune.config_from_args(["--train-prompts", "box", "--click-rounds", "0"])
    assert paper.train_prompts == ["box"] and paper.click_rounds == 0


@pytest.mark.parametrize("argv", [[], ["--train-prompts", "box", "point"]])
def test_asking_for_point_prompts_gives_the_settings_that_work(argv):
    """Issue 18 item 3: the settings measured in recipes/interactive.py are what a user gets, both
    without prompt flags and by asking for point prompts alone."""
    spec = importlib.util.spec_from_file_location("samadapt_recipe_finetune_i18", REPO / "recipes" / "finetune.py")
    finetune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(finetune)
    cfg = finetune.config_from_args(argv)
    assert cfg.train_prompts == ["box", "point"]
    assert (cfg.click_rounds, cfg.point_share, cfg.first_round_weight, cfg.click_sampling) == (3, 0.3, 0.5, "interior")
    equal = finetune.config_from_args([*argv, "--first-round-weight", "none"])
    assert equal.first_round_weight is None  # every round alike, as SAM
    again = TrainConfig.from_dict(__import__("yaml").safe_load(cfg.to_yaml()))
    assert again.train_prompts == ["box", "point"] and again.click_rounds == 3


def test_the_dataset_builds_the_prompts_the_kinds_need():
    for kinds, boxes, points in ((["box"], True, 0), (["box", "point"], True, 1), (["point"], False, 1)):
        pc = training_prompt_config(TrainConfig(train_prompts=kinds, box_noise=0.2))
        assert (pc.use_boxes, pc.num_points, pc.num_negative_points, pc.box_noise) == (boxes, points, 0, 0.2)


# ============================================================================ the click sampler
def test_corrective_points_fall_in_the_error_region():
    g = torch.Generator().manual_seed(0)
    gt = torch.zeros(3, 8, 8)
    logits = torch.full((3, 8, 8), -1.0)
    gt[0, 2, 5] = 1  # instance 0: one missed pixel -> a positive click on it
    logits[1, 6, 1] = 1.0  # instance 1: one false pixel -> a negative click on it
    gt[2, 3, 3] = 1  # instance 2: perfect -> a positive click inside the object
    logits[2, 3, 3] = 1.0
    for _ in range(5):
        coords, labels = corrective_points(logits, gt, g)
        # the centre of the low-res pixel, in the input frame (4x)
        assert coords[:, 0].tolist()[:2] == [[(5 + 0.5) * 4, (2 + 0.5) * 4], [(1 + 0.5) * 4, (6 + 0.5) * 4]]
        assert labels[:, 0].tolist()[:2] == [1, 0]
    hits = [tuple(corrective_points(logits, gt, g)[0][2, 0].tolist()) for _ in range(20)]
    assert hits.count((14.0, 14.0)) >= 19  # all but a 1e-6-weighted chance elsewhere


def test_corrective_points_ignore_the_padding():
    g = torch.Generator().manual_seed(0)
    gt = torch.zeros(1, 8, 8)
    logits = torch.full((1, 8, 8), -1.0)
    logits[0, :, 6:] = 1.0  # false foreground in the padding (columns 6, 7) ...
    logits[0, 4, 2] = 1.0  # ... and one false pixel on the image
    valid = torch.zeros(1, 8, 8, dtype=torch.bool)
    valid[0, :, :6] = True
    for _ in range(10):
        coords, labels = corrective_points(logits, gt, g, valid)
        assert coords[0, 0].tolist() == [10.0, 18.0] and labels.item() == 0


def test_interior_corrective_points_go_to_the_middle_of_the_largest_error():
    """click_sampling="interior": the click protocol's corrections (RITM), sampled: inside the largest
    error region, towards its middle, labelled by what the region is; padding ignored."""
    g = torch.Generator().manual_seed(0)
    gt = torch.zeros(2, 16, 16)
    logits = torch.full((2, 16, 16), -1.0)
    gt[0, 2:12, 2:12] = 1  # instance 0: the object's right part (cols 7..11) is missed: 50 pixels
    logits[0, 2:12, 2:7] = 1.0
    logits[0, 14, 0:3] = 1.0  # ... and a false strip of 3 pixels
    logits[1, 3:9, 3:9] = 1.0  # instance 1: a false 6x6 block (36 pixels) beside a missed 2x2 block
    gt[1, 12:14, 12:14] = 1
    valid = torch.ones(2, 16, 16, dtype=torch.bool)
    for _ in range(30):
        coords, labels = corrective_points(logits, gt, g, valid, interior=True)
        (x0, y0), (x1, y1) = ((c - 2) / 4 for c in coords[0, 0].tolist()), ((c - 2) / 4 for c in coords[1, 0].tolist())
        assert 7 <= x0 <= 11 and 2 <= y0 <= 11 and labels[0].item() == 1  # in the missed part
        assert 3 <= x1 <= 8 and 3 <= y1 <= 8 and labels[1].item() == 0  # in the false block
    # towards the middle: the block's border pixels are least likely (distance 1 vs up to 3)
    hits = [corrective_points(logits[1:], gt[1:], g, interior=True)[0][0, 0] for _ in range(300)]
    inner = sum(1 for x, y in hits if 4 <= (x - 2) / 4 <= 7 and 4 <= (y - 2) / 4 <= 7)
    assert inner / len(hits) > 16 / 36 + 0.15  # 16 of the 36 pixels are inner, with most of the weight
    # uniform (SAM) keeps its old draws: the interior option changes nothing there
    a = corrective_points(logits, gt, torch.Generator().manual_seed(3), valid)
    b = corrective_points(logits, gt, torch.Generator().manual_seed(3), valid, interior=False)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_the_iou_head_can_be_trained_on_every_candidate():
    logits = torch.full((1, 3, 4, 4), -5.0)
    logits[0, 0, :2, :2] = 5.0  # candidate 0: IoU 1 with the target
    logits[0, 1, :, :2] = 5.0  # candidate 1: IoU 0.5
    gt = torch.zeros(1, 4, 4)
    gt[0, :2, :2] = 1
    pred = torch.tensor([[0.8, 0.9, 0.0]])  # candidate 2 (empty): IoU 0
    loss = SamLoss(focal_weight=0, dice_weight=1, iou_weight=1)
    only_best = loss(logits, pred, gt)
    every = loss(logits, pred, gt, supervise_all_iou=True)
    assert only_best.best_index.tolist() == [0] and only_best.iou_mse.item() == pytest.approx(0.2**2)
    assert every.iou_mse.item() == pytest.approx((0.2**2 + 0.4**2 + 0.0) / 3)
    assert every.dice.item() == pytest.approx(only_best.dice.item())  # the masks' loss is the same


def test_round_weights_of_the_loss():
    from samadapt.training.interactive import _combine
    from samadapt.training.losses import LossOutput

    def out(v):
        t = torch.tensor(float(v))
        return LossOutput(t, t, t, t, torch.zeros(0, dtype=torch.long))

    # round 0: 3 box prompts (loss 1) + 1 click (loss 5); rounds 1 and 2: all 4 prompts at 2 and 4
    parts = [(out(1), 3, 0), (out(5), 1, 0), (out(2), 4, 1), (out(4), 4, 2)]
    best = torch.zeros(4, dtype=torch.long)
    assert _combine(parts, best, 2, None).loss.item() == pytest.approx((3 + 5 + 8 + 16) / 12)
    # first_round_weight 0.5: half on round 0's mean (2), half on the corrective rounds' mean (3)
    assert _combine(parts, best, 2, 0.5).loss.item() == pytest.approx(0.5 * 2 + 0.5 * 3)
    assert _combine(parts[:2], best, 0, 0.5).loss.item() == pytest.approx(2)  # no rounds: the mean
    with pytest.raises(ConfigError, match="`first_round_weight` should be a fraction strictly between 0 and 1"):
        TrainConfig(first_round_weight=1.0)


# ============================================================================ one step
class Spy(nn.Module):
    """Records the keyword arguments of every forward call of the wrapped model."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls: list[dict] = []

    def forward(self, **kw):
        self.calls.append(kw)
        return self.model(**kw)


@pytest.fixture
def batch_and_model(demo_data_root, mini_checkpoint):
    def make(strategy="decoder", **cfg_kw):
        cfg = TrainConfig(strategy=strategy, **cfg_kw)
        model = samadapt.adapt(samadapt.build_sam("mini", mini_checkpoint), strategy)
        ds = SamPromptDataset(
            presets.demo(demo_data_root, "train"), model.transform, training_prompt_config(cfg), max_instances=4
        )
        return cfg, model, collate_sam([ds[0], ds[1]])

    return make


def test_a_step_decodes_each_kind_round_by_round(batch_and_model):
    cfg, model, batch = batch_and_model("lora", train_prompts=["box", "point"], click_rounds=2, seed=3)
    gt = torch.cat(batch["gt_masks"])
    n = gt.shape[0]
    spy = Spy(model)
    lo = training_loss(spy, batch, gt, SamLoss(), cfg, epoch=1)
    assert model.encoder_images_seen == 2  # the images are encoded once for every round
    assert len(spy.calls) == 2 * 3  # (box group, point group) x (first prediction + 2 rounds)
    assert "images" in spy.calls[0] and all("image_embeddings" in c for c in spy.calls[1:])
    box_calls = [c for c in spy.calls if c["boxes"] is not None]
    point_calls = [c for c in spy.calls if c["boxes"] is None]
    n_box = sum(b.shape[0] for b in box_calls[0]["boxes"])
    n_point = sum(p.shape[0] for p in point_calls[0]["points"])
    assert len(box_calls) == len(point_calls) == 3 and n_box + n_point == n and n_box and n_point
    # box prompts: the box alone, then 1 and 2 clicks; one click alone: multimask, then 2 and 3 clicks
    assert box_calls[0]["points"] is None and not box_calls[0]["multimask"]
    assert [c["points"][0].shape[1] for c in box_calls[1:]] == [1, 2]
    assert point_calls[0]["multimask"] and [c["points"][0].shape[1] for c in point_calls] == [1, 2, 3]
    assert all(not c["multimask"] for c in box_calls[1:] + point_calls[1:])
    # the mask prompt: none first, then the previous prediction's low-res logits (detached)
    assert box_calls[0]["mask_inputs"] is None and point_calls[0]["mask_inputs"] is None
    for c in box_calls[1:] + point_calls[1:]:
        m = torch.cat(c["mask_inputs"])
        assert m.shape[1:] == (1, 64, 64) and not m.requires_grad
    # every round is supervised; gradients reach the decoder and the LoRA layers of the encoder
    assert torch.isfinite(lo.loss) and lo.best_index.shape == (n,)
    lo.loss.backward()
    grads = {name: p.grad for name, p in model.trainable_named_parameters()}
    assert any(g is not None and g.abs().sum() > 0 for name, g in grads.items() if "image_encoder" in name)
    assert any(g is not None and g.abs().sum() > 0 for name, g in grads.items() if "mask_decoder" in name)


def test_a_step_is_a_function_of_seed_epoch_and_images(batch_and_model):
    cfg, model, batch = batch_and_model(train_prompts=["box", "point"], click_rounds=1)
    gt = torch.cat(batch["gt_masks"])
    emb = model.encode(batch["images"]).detach()

    def loss(epoch):
        spy = Spy(model)
        value = training_loss(spy, batch, gt, SamLoss(), cfg, image_embeddings=emb, epoch=epoch).loss.item()
        return value, [torch.cat(c["points"]).tolist() for c in spy.calls if c["points"] is not None]

    first, again, other = loss(0), loss(0), loss(1)
    assert first == again
    assert first[1] != other[1]  # other clicks (and prompt kinds) in another epoch
    assert model.encoder_images_seen == 1 * 2  # only the one encode above: the embeddings were reused


def test_the_box_only_step_is_the_plain_box_step(batch_and_model):
    cfg, model, batch = batch_and_model(train_prompts=["box"], click_rounds=0)
    gt = torch.cat(batch["gt_masks"])
    spy = Spy(model)
    lo = training_loss(spy, batch, gt, SamLoss(), cfg)
    assert len(spy.calls) == 1 and "mask_inputs" not in spy.calls[0]
    assert all(p is None for p in spy.calls[0]["points"])
    out = model(images=batch["images"], boxes=batch["boxes"], multimask=False)
    assert lo.loss.item() == pytest.approx(SamLoss()(out.low_res_logits, out.iou_predictions, gt).loss.item(), abs=1e-6)


def test_point_share_sets_the_share_of_click_first_instances(batch_and_model):
    counts = {}
    for share in (0.1, 0.9):
        cfg, model, batch = batch_and_model(train_prompts=["box", "point"], point_share=share, click_rounds=0)
        spy = Spy(model)
        training_loss(spy, batch, torch.cat(batch["gt_masks"]), SamLoss(), cfg)
        counts[share] = sum(p.shape[0] for c in spy.calls if c["boxes"] is None for p in c["points"])
    n = sum(g.shape[0] for g in batch["gt_masks"])
    assert counts[0.1] < n / 2 < counts[0.9]


def test_box_prompts_with_corrective_clicks(batch_and_model):
    cfg, model, batch = batch_and_model(train_prompts=["box"], click_rounds=2)
    assert all(p is None for p in batch["points"])
    spy = Spy(model)
    lo = training_loss(spy, batch, torch.cat(batch["gt_masks"]), SamLoss(), cfg)
    assert [c["points"] is None for c in spy.calls] == [True, False, False]
    assert [c["points"][0].shape[1] for c in spy.calls[1:]] == [1, 2] and torch.isfinite(lo.loss)


def test_points_only_training_takes_no_boxes(batch_and_model):
    cfg, model, batch = batch_and_model(train_prompts=["point"], click_rounds=1)
    assert all(b is None for b in batch["boxes"])
    spy = Spy(model)
    training_loss(spy, batch, torch.cat(batch["gt_masks"]), SamLoss(), cfg)
    assert len(spy.calls) == 2 and all(c["boxes"] is None for c in spy.calls)


# ============================================================================ whole runs
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_interactive_training_runs_for_every_strategy(strategy, tmp_path, demo_data_root, mini_checkpoint):
    result = train_here(
        tiny_config(
            demo_data_root,
            tmp_path,
            mini_checkpoint,
            strategy=strategy,
            epochs=1,
            prompts_per_image=2,
            train_prompts=["box", "point"],
            click_rounds=1,
        )
    )
    assert len(result.history) == 1 and math.isfinite(result.history[0]["train_loss"])
    assert result.adapter_path.is_file()
    # the frozen-encoder strategy trains on the embedding cache: no encoder forward in training
    frozen = samadapt.adapt(samadapt.build_sam("mini", mini_checkpoint), strategy).encoder_is_frozen
    assert result.history[0]["encoder_images"] == (0 if frozen else 6)
    saved = TrainConfig.from_yaml(tmp_path / "run" / "config.yaml")
    assert saved.train_prompts == ["box", "point"] and saved.click_rounds == 1


@pytest.mark.slow
def test_interactive_recipe_writes_its_section(tmp_path, samadapt_home_dir):
    """recipes/interactive.py end to end on a few images: both runs, the evaluation, the page section."""
    import json

    spec = importlib.util.spec_from_file_location("samadapt_recipe_interactive", REPO / "recipes" / "interactive.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    out = tmp_path / "docs"
    assert (
        recipe.main(
            [
                "--epochs",
                "1",
                "--demo-train-images",
                "6",
                "--demo-val-images",
                "3",
                "--max-clicks",
                "2",
                "--bootstrap",
                "50",
                "--out",
                str(out),
                "--runs",
                str(tmp_path / "runs"),
            ]
        )
        == 0
    )
    page = (out / "strategies.md").read_text()
    assert "<!-- compare:interactive -->" in page and "| mixed-trained |" in page and "NoC@90" in page
    data = json.loads((out / "interactive.json").read_text())
    assert set(data["models"]) == {"zero-shot", "box-trained", "mixed-trained"}
    assert len(data["models"]["mixed-trained"]["clicks"]["miou_at"]) == 2
    assert set(data["checks"]) == {
        "box_within",
        "one_click_not_worse",
        "corrected_gain",
        "clicks_never_fall",
        "clicks_at_least_zero_shot",
    }
    assert (out / "figures" / "interactive_clicks.png").stat().st_size > 0
    # the mixed run is what a user gets without prompt flags; the box run the paper's protocol
    argv = json.loads((tmp_path / "runs" / "mixed" / "compare_args.json").read_text())
    assert "--train-prompts" not in argv and "--click-rounds" not in argv
    assert data["mixed"] == {
        "train_prompts": ["box", "point"],
        "point_share": 0.3,
        "click_sampling": "interior",
        "click_rounds": 3,
        "first_round_weight": 0.5,
    }
    box_argv = json.loads((tmp_path / "runs" / "box" / "compare_args.json").read_text())
    assert box_argv[box_argv.index("--train-prompts") + 1 :] == ["box", "--click-rounds", "0"]


def _records(iou):
    """Hand-made click records: one instance per image, IoU (instances, clicks)."""
    from samadapt.evaluation.clicks import ClickRecords

    iou = np.asarray(iou, dtype=np.float64)
    ids = np.arange(len(iou), dtype=np.int64)
    return ClickRecords(iou, ids, np.ones(len(iou), dtype=np.int64), [{"id": int(i), "num_instances": 1} for i in ids])


def test_click_checks_on_hand_made_curves():
    """Correctable: over the first 5 clicks no step falls and no click is below zero-shot beyond the
    paired bootstrap interval; a collapse fails, a wobble inside the noise does not."""
    spec = importlib.util.spec_from_file_location("samadapt_recipe_interactive_c", REPO / "recipes" / "interactive.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    rng = np.random.default_rng(0)
    n = 60
    base = rng.uniform(0.2, 0.6, size=(n, 1))
    zs = _records(base + np.array([0.0, 0.02, 0.03, 0.04, 0.05, -0.3]) + rng.normal(0, 0.01, (n, 6)))
    rising = base + np.array([0.01, 0.05, 0.05, 0.07, 0.08, -0.35])  # click 6 is not checked
    good = recipe.click_checks(_records(rising + rng.normal(0, 0.01, (n, 6))), zs, n_boot=500)
    assert good["clicks_never_fall"]["passed"] and good["clicks_at_least_zero_shot"]["passed"]
    assert good["clicks_at_least_zero_shot"]["value"] == pytest.approx(1.0, abs=0.5)
    # a wobble: half the instances lose 3 points at click 3, half gain 2.4 -> mean -0.3, inside the noise
    wobble = rising.copy()
    wobble[:, 2:] += np.where(np.arange(n) % 2 == 0, -0.03, 0.024)[:, None]
    assert recipe.click_checks(_records(wobble), zs, n_boot=500)["clicks_never_fall"]["passed"]
    collapse = base + np.array([0.01, -0.35, -0.35, -0.35, -0.35, -0.35])  # the collapse of issue 18
    falls = recipe.click_checks(_records(collapse), zs, n_boot=500)
    assert not falls["clicks_never_fall"]["passed"] and falls["clicks_never_fall"]["value"] == pytest.approx(-36.0)
    assert not falls["clicks_at_least_zero_shot"]["passed"]
    below = recipe.click_checks(_records(base + np.array([-0.03, 0.0, 0.01, 0.02, 0.03, 0.0])), zs, n_boot=500)
    assert below["clicks_never_fall"]["passed"] and not below["clicks_at_least_zero_shot"]["passed"]


# ============================================================================ interior clicks
def test_distance_to_background_counts_the_border_as_background():
    from samadapt.data.prompts import distance_to_background

    m = torch.zeros(9, 10, dtype=torch.bool).numpy()
    m[0:5, 0:5] = True  # a 5x5 square in the top-left corner
    d = distance_to_background(m)
    assert d[2, 2] == 3 and d[0, 0] == 1 and d[4, 4] == 1 and d[1, 2] == 2 and d[6, 6] == 0
    assert distance_to_background(m[:0]).shape == (0, 10)


def test_interior_clicks_follow_the_distance_to_the_background():
    import numpy as np

    from samadapt.data.prompts import sample_points

    m = np.zeros((1, 7, 7), dtype=bool)
    m[0, 2:5, 2:5] = True  # 3x3: the centre is 2 px from the outside, the 8 others 1 px
    coords, labels = sample_points(np.repeat(m, 4000, 0), 1, 0, np.random.default_rng(0), interior=True)
    centre = np.all(coords[:, 0] == [3.5, 3.5], axis=1).mean()
    assert labels.min() == 1 and 0.18 < centre < 0.22  # weight 2 of 8 * 1 + 2 = 10, not 1/9 (uniform)
    inside = m[0][coords[:, 0, 1].astype(int), coords[:, 0, 0].astype(int)]
    assert inside.all()
    cfg = TrainConfig(train_prompts=["box", "point"], click_sampling="interior")
    assert training_prompt_config(cfg).interior_points
    with pytest.raises(ConfigError, match=r"`click_sampling` is 'centre'; choose one of \['uniform', 'interior'\]"):
        TrainConfig(click_sampling="centre")
