"""The report figures: curves.png (zero-shot reference, whole-number epoch ticks) and examples.png
(per-image IoU in the titles, a category legend whose colours are the masks' colours)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import samadapt
from samadapt.evaluation.evaluate import evaluate
from samadapt.evaluation.metrics import instance_metrics
from samadapt.evaluation.plots import (
    examples_figure,
    plot_examples,
    plot_training_curves,
    training_curves_figure,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _history(epochs: int) -> list[dict]:
    return [
        {
            "epoch": e,
            "step": 4 * e,
            "train_loss": 1.0 / e,
            "val_mean_iou": 0.5 + 0.05 * e,
            "val_mean_f1": 0.6 + 0.04 * e,
        }
        for e in range(1, epochs + 1)
    ]


def _axis(fig, title: str):
    (ax,) = [a for a in fig.axes if a.get_title() == title]
    return ax


def _zero_shot_lines(ax):
    return [ln for ln in ax.get_lines() if ln.get_label().startswith("zero-shot")]


# ---------------------------------------------------------------------------- curves.png
def test_zero_shot_reference_line_on_iou_and_f1():
    fig = training_curves_figure(_history(3), zero_shot={"mean_iou": 0.41, "mean_f1": 0.552})
    for title, value in (("validation mean IoU", 41.0), ("validation mean F1", 55.2)):
        ax = _axis(fig, title)
        (line,) = _zero_shot_lines(ax)
        assert line.get_label() == f"zero-shot {value:.2f}"
        assert line.get_linestyle() == "--"
        np.testing.assert_allclose(line.get_ydata(), [value, value])
        lo, hi = ax.get_ylim()
        assert lo <= value <= hi  # visible, though below every fine-tuned point
        assert line.get_label() in [t.get_text() for t in ax.get_legend().get_texts()]
    assert not _zero_shot_lines(_axis(fig, "training loss"))


def test_no_zero_shot_line_without_zero_shot_metrics():
    fig = training_curves_figure(_history(2), zero_shot=None)
    assert not any(_zero_shot_lines(ax) for ax in fig.axes)
    # an F1 panel only when the history has F1
    fig = training_curves_figure(
        [{"epoch": 1, "step": 3, "train_loss": 0.5, "val_mean_iou": 0.6}], zero_shot={"mean_iou": 0.4, "mean_f1": 0.5}
    )
    assert [a.get_title() for a in fig.axes] == ["training loss", "validation mean IoU"]
    assert len(_zero_shot_lines(fig.axes[1])) == 1
    # a loss-only history (pretraining) gets the loss panel alone, not an empty validation one
    fig = training_curves_figure([{"step": s, "train_loss": 1.0 / s} for s in range(1, 5)])
    assert [a.get_title() for a in fig.axes] == ["training loss"]


@pytest.mark.parametrize("epochs", [1, 3])
def test_epoch_and_step_ticks_are_whole_numbers(epochs):
    history = _history(epochs)
    fig = training_curves_figure(history, zero_shot={"mean_iou": 0.4, "mean_f1": 0.5})
    fig.canvas.draw()
    for ax, xs in (
        (fig.axes[0], [r["step"] for r in history]),
        (fig.axes[1], [r["epoch"] for r in history]),
        (fig.axes[2], [r["epoch"] for r in history]),
    ):
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        labels = [t.get_text() for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)
        assert labels and all(s.isdigit() for s in labels), (ax.get_title(), labels)
        if ax.get_xlabel() == "epoch":
            assert set(xs) <= {int(t) for t in ticks}  # every epoch has its tick


def test_one_epoch_curves_show_every_step_and_mark_the_single_point():
    """A 1-epoch run is not a single dot: its loss is drawn per step with the epoch mean marked, and
    its one validation point is a marker beside the zero-shot line, with a note saying so."""
    from samadapt.evaluation.plots import training_curves_data

    steps = [[1, 0.9], [2, 0.8], [3, 0.85], [4, 0.6]]
    data = training_curves_data(_history(1), {"mean_iou": 0.4, "mean_f1": 0.5}, steps)
    assert data["loss"] == {"x": [1.0, 2.0, 3.0, 4.0], "y": [0.9, 0.8, 0.85, 0.6], "xlabel": "step"}
    assert data["loss_epochs"] == {"x": [4.0], "y": [1.0]}
    for panel in data["panels"]:
        assert len(panel["x"]) == 1 and panel["best"] == (1.0, panel["y"][0])
        assert panel["note"] == "one epoch: one validation point; dashed: zero-shot"
    fig = training_curves_figure(_history(1), {"mean_iou": 0.4, "mean_f1": 0.5}, steps)
    (step_line, _) = [ln for ln in fig.axes[0].get_lines()]
    assert len(step_line.get_xdata()) == 4
    assert _axis(fig, "validation mean IoU").get_lines()[0].get_marker() == "o"
    # several epochs: no note; without step losses, one point per epoch as before
    data = training_curves_data(_history(3))
    assert data["loss"]["x"] == [4.0, 8.0, 12.0] and not data["loss_epochs"]["x"]
    assert all(p["note"] is None for p in data["panels"])


def test_plot_training_curves_writes_the_png(tmp_path):
    out = plot_training_curves(_history(3), tmp_path / "curves.png", zero_shot={"mean_iou": 0.4, "mean_f1": 0.5})
    assert out == tmp_path / "curves.png" and out.read_bytes()[:8] == PNG
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # the temporary file was renamed


def test_trainer_passes_the_zero_shot_metrics_to_the_curves(tmp_path):
    from samadapt.training.outputs import write_outputs
    from samadapt.training.state import TrainProgress

    seen = {}

    def spy(history, path, zero_shot=None, step_losses=None):
        seen.update(history=history, path=path, zero_shot=zero_shot, step_losses=step_losses)

    zero_shot = {"mean_iou": 0.3, "mean_f1": 0.4}
    progress = TrainProgress(history=_history(1), zero_shot=zero_shot, step_losses=[[1, 0.9], [2, 0.7]])
    cfg = SimpleNamespace(dataset_tag="demo", num_examples=6)
    write_outputs(tmp_path, cfg, progress, {"mean_iou": 0.5, "mean_f1": 0.6}, [], [], spy)
    assert seen["zero_shot"] == zero_shot and seen["path"] == tmp_path / "curves.png"
    assert seen["step_losses"] == [[1, 0.9], [2, 0.7]]


# ---------------------------------------------------------------------------- examples.png
def _box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _examples():
    """Two images, three categories (7 named nowhere); two models with different predictions."""
    rng = np.random.default_rng(0)
    h, w = 40, 50
    rows = []
    for image_id, gt_boxes, cats in (
        (1, [(2, 20, 2, 20), (22, 38, 25, 48)], [1, 2]),
        (2, [(5, 30, 5, 30), (5, 30, 31, 45)], [2, 7]),
    ):
        gt = np.stack([_box(h, w, *b) for b in gt_boxes])
        rows.append(
            {
                "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                "gt": gt,
                "category_ids": np.array(cats),
                "category_names": {1: "bottle", 2: "can"} if image_id == 1 else {2: "can"},
                "image_id": image_id,
                "file_name": f"dir/img{image_id}.jpg",
                "boxes": np.array([[x0, y0, x1 - 1, y1 - 1] for y0, y1, x0, x1 in gt_boxes], np.float32),
            }
        )
    zero = [{**r, "pred": np.roll(r["gt"], 6, axis=2)} for r in rows]  # shifted: partial overlap
    tuned = [{**r, "pred": np.roll(r["gt"], 1, axis=1)} for r in rows]
    return {"zero-shot": zero, "fine-tuned": tuned}


def test_example_titles_show_each_images_mean_iou():
    ex = _examples()
    fig = examples_figure(ex)
    axes = np.array(fig.axes).reshape(2, 4)
    for r in range(2):
        assert axes[r, 0].get_title() == f"img{r + 1}.jpg"
        assert axes[r, 1].get_title() == "ground truth (2 instances)"
        for c, model in enumerate(ex):
            e = ex[model][r]
            expected = 100 * instance_metrics(e["pred"], e["gt"])["iou"].mean()
            assert axes[r, 2 + c].get_title() == f"{model}: mean IoU {expected:.1f}%"
    # the two models really differ, so a title cannot be right by accident
    assert axes[0, 2].get_title().split()[-1] != axes[0, 3].get_title().split()[-1]


def test_example_title_prefers_the_full_resolution_iou():
    ex = _examples()
    ex["fine-tuned"][0] = {**ex["fine-tuned"][0], "iou": np.array([0.25, 0.5])}
    axes = np.array(examples_figure(ex).axes).reshape(2, 4)
    assert axes[0, 3].get_title() == "fine-tuned: mean IoU 37.5%"


def test_legend_names_the_categories_in_their_mask_colours():
    ex = _examples()
    fig = examples_figure(ex, categories={7: "carton"})
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["bottle", "can", "carton"]
    colors = {t.get_text(): np.array(p.get_facecolor()[:3]) for t, p in zip(legend.get_texts(), legend.get_patches())}
    # a ground-truth pixel inside an instance, away from its outline: image blended half-half with its colour
    axes = np.array(fig.axes).reshape(2, 4)
    for r, (y, x, name) in (
        (0, (10, 10, "bottle")),
        (0, (30, 35, "can")),
        (1, (15, 15, "can")),
        (1, (15, 38, "carton")),
    ):
        shown = np.asarray(axes[r, 1].get_images()[0].get_array())[y, x]
        image = ex["zero-shot"][r]["image"][y, x] / 255.0
        np.testing.assert_allclose(shown, 0.5 * image + 0.5 * colors[name], atol=1e-6)
    assert len({tuple(c) for c in colors.values()}) == 3


def test_unnamed_category_is_shown_by_number_and_no_categories_means_no_legend():
    ex = _examples()
    fig = examples_figure(ex)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["bottle", "can", "category 7"]
    plain = {
        m: [{k: v for k, v in e.items() if k not in ("category_ids", "category_names")} for e in rows]
        for m, rows in ex.items()
    }
    assert not examples_figure(plain).legends


class OneImage:
    """A one-item dataset shaped like ``CocoInstances``."""

    def __init__(self, item, categories):
        self.item, self.categories = item, categories

    def __len__(self):
        return 1

    def __getitem__(self, index):
        return self.item


def test_evaluate_examples_carry_iou_and_category_names(tmp_path):
    """Through the real evaluation: the example's ``iou`` is the per-instance IoU of the metrics and
    the title shows that image's mean, the legend the dataset's names."""
    model = samadapt.adapt(samadapt.build_sam("mini", pretrained=False), "decoder")
    rng = np.random.default_rng(3)
    h, w = 36, 44
    masks = np.stack([_box(h, w, 3, 20, 4, 24), _box(h, w, 18, 34, 20, 40)])
    item = {
        "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "masks": masks,
        "category_ids": np.array([2, 1]),
        "image_id": 5,
        "file_name": "a.png",
    }
    dataset = OneImage(item, {1: "bottle", 2: "can", 3: "unused"})
    r = evaluate(model, dataset, progress=False, coco=False, return_examples=1)
    (e,) = r.examples
    np.testing.assert_allclose(e["iou"], r.records.iou)
    assert e["category_names"] == {1: "bottle", 2: "can"}
    fig = examples_figure({"zero-shot": r.examples})
    assert fig.axes[2].get_title() == f"zero-shot: mean IoU {100 * r.per_image[0]['mean_iou']:.1f}%"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["bottle", "can"]
    out = plot_examples({"zero-shot": r.examples}, tmp_path / "examples.png")
    assert out.read_bytes()[:8] == PNG


def test_plot_examples_writes_the_png(tmp_path):
    out = plot_examples(_examples(), tmp_path / "examples.png")
    assert out.read_bytes()[:8] == PNG
    assert [p.name for p in tmp_path.iterdir()] == ["examples.png"]


# ---------------------------------------------------------------------------- which examples
def _video_dataset(root) -> "CocoInstances":  # noqa: F821
    """30 small frames in TrashCan's naming: the first 10 are one video with one class (as TrashCan's
    first validation frames), then 10 more videos of 2 frames each with other classes."""
    import json

    from PIL import Image

    from samadapt.data import CocoInstances

    rng = np.random.default_rng(0)
    frames = [(1, f, 1) for f in range(10)] + [(v, f, 2 + v % 4) for v in range(2, 12) for f in range(2)]
    images, annotations = [], []
    for k, (video, frame, cat) in enumerate(frames):
        name = f"vid_{video:06d}_frame{frame:07d}.jpg"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / name)
        images.append({"id": k + 1, "file_name": name, "height": 40, "width": 48})
        x0, y0, side = int(rng.integers(2, 20)), int(rng.integers(2, 16)), int(rng.integers(8, 20))
        poly = [x0, y0, x0 + side, y0, x0 + side, y0 + side, x0, y0 + side]
        annotations.append(
            {
                "id": k + 1,
                "image_id": k + 1,
                "category_id": cat,
                "segmentation": [poly],
                "iscrowd": 0,
                "bbox": [x0, y0, side, side],
                "area": side * side,
            }
        )
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, 6)]
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return CocoInstances(root, root / "ann.json")


def test_example_pool_spreads_over_sequences_and_classes_seeded(tmp_path):
    from samadapt.data.subsets import sequence_of
    from samadapt.evaluation.examples import POOL_PER_ROW, example_pool

    ds = _video_dataset(tmp_path)
    assert {sequence_of(ds.image_info(i)["file_name"]) for i in range(10)} == {"vid_000001"}
    pool = example_pool(ds, 4, seed=0)
    assert len(pool) == 4 * POOL_PER_ROW and pool == sorted(pool)
    sequences = {sequence_of(ds.image_info(i)["file_name"]) for i in pool}
    classes = {a["category_id"] for i in pool for a in ds.instance_annotations(i)}
    assert len(sequences) == 11 and classes == {1, 2, 3, 4, 5}  # every video before any repeats
    assert example_pool(ds, 4, seed=0) == pool and example_pool(ds, 4, seed=1) != pool


def test_choose_rows_spans_the_iou_range():
    from samadapt.evaluation.examples import choose_rows

    ious = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6]
    pool = [{"image_id": k, "iou": np.array([v])} for k, v in enumerate(ious)]
    assert choose_rows({"a": pool}, 3) == [0, 1, 2]  # worst, median, best (in the pool's order)
    assert choose_rows({"a": pool}, 9) == list(range(9)) and choose_rows({"a": pool[:2]}, 6) == [0, 1]
    # ranked by the mean over the models: a second model that lifts image 1 to the top
    other = [{"image_id": k, "iou": np.array([2.0 if k == 1 else v])} for k, v in enumerate(ious)]
    assert choose_rows({"a": pool, "b": other}, 3) == [1, 5, 8]  # best 1 (mean 1.05), worst 5, median 8 (0.6)


def test_examples_of_an_evaluation_span_sequences_classes_and_ious(tmp_path):
    """The figure of a dataset whose first frames are one video shows frames of several videos and
    classes, from the worst image of the pool to the best, with the ground truth beside them."""
    from samadapt.data.subsets import sequence_of

    ds = _video_dataset(tmp_path)
    model = samadapt.adapt(samadapt.build_sam("mini"), "decoder")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared: two threads on a busy one are many times slower
    try:
        result = evaluate(model, ds, return_examples=4, progress=False, coco=False)
    finally:
        torch.set_num_threads(threads)
    pool_ious = {e["image_id"]: float(np.mean(e["iou"])) for e in result.examples}
    fig = examples_figure({"zero-shot": result.examples}, max_rows=4)
    axes = np.array(fig.axes).reshape(4, 3)
    names = [axes[r, 0].get_title() for r in range(4)]
    shown = [e for e in result.examples if e["file_name"] in names]
    assert len({sequence_of(n) for n in names}) >= 3
    assert len({int(c) for e in shown for c in e["category_ids"]}) >= 2
    assert all(axes[r, 1].get_title().startswith("ground truth") for r in range(4))
    shown_ious = [pool_ious[e["image_id"]] for e in shown]
    assert min(shown_ious) == min(pool_ious.values()) and max(shown_ious) == max(pool_ious.values())


def test_example_pool_on_real_trashcan_frames_spans_videos_and_classes(trashcan_coco):
    """TrashCan's first validation frames are a few videos: the pool of a 6-row figure draws its 18
    frames from many more videos and classes, and another seed draws others."""
    from samadapt.data import presets
    from samadapt.data.subsets import sequence_of
    from samadapt.evaluation.examples import POOL_PER_ROW, example_pool

    val = presets.trashcan(trashcan_coco, "val")
    size = 6 * POOL_PER_ROW

    def spread(indices):
        videos = {sequence_of(val.image_info(i)["file_name"]) for i in indices}
        classes = {a["category_id"] for i in indices for a in val.instance_annotations(i)}
        return len(videos), len(classes)

    first = [i for i in range(len(val)) if val.instance_annotations(i)][:size]
    pool = example_pool(val, 6, seed=0)
    assert len(pool) == size and all(val.instance_annotations(i) for i in pool)
    (first_videos, first_classes), (videos, classes) = spread(first), spread(pool)
    assert videos == size > first_videos  # one frame per video
    assert classes > first_classes and classes >= 8
    assert example_pool(val, 6, seed=0) == pool and example_pool(val, 6, seed=1) != pool
