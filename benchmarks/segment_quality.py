"""Quality of prompt-free segmentation (docs/segment.md): automatic masks zero-shot vs each strategy
(class-agnostic mask AR@100 and AP), masks from ground-truth boxes for reference, and the class head
(class-aware AP, per-class AP, accuracy vs the majority class).

    python benchmarks/segment_quality.py --dataset demo
    python benchmarks/segment_quality.py --dataset trashcan --data-root TRASHCAN_COCO --version instance \\
        --adapter decoder=RUNS/decoder-f100-s0/adapter.safetensors --adapter full=RUNS/full-f100-s0/adapter.safetensors

Data: ``--dataset demo`` generates the waste demo data (``--train-images`` training images, and a
validation split cut into ``--val-images`` for the trainers' early stopping, ``--cal-images`` for the
calibration and ``--eval-images`` scored); ``--dataset trashcan`` reads an import of the real dataset
(``samadapt data import-trashcan``) and cuts seeded subsets of its official train / val frames the
same way. Models: zero-shot ``mini``; one adapter per ``--strategies`` trained here (the trainer's
default prompts: boxes and clicks, with corrective clicks; and ``decoder-box``: box prompts only,
``--train-prompts box --click-rounds 0``, the protocol of "Don't waste SAM"), or given by
``--adapter LABEL=FILE``; a ``decoder --classify`` adapter for the class head. Every model is
calibrated on the calibration images (``samadapt.segment.calibrate``) and scored on the same
evaluation images, at SAM's fixed thresholds and at its own; 95% intervals: image bootstrap.

Writes benchmarks/results/segment_quality-<tag>.json and .md, and a figure (``--figure``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from _common import machine_info, write_json  # noqa: E402

import samadapt  # noqa: E402
from samadapt.data.coco import CocoInstances  # noqa: E402
from samadapt.errors import ConfigError  # noqa: E402
from samadapt.segment.api import proposal_records, resolve_auto_config, segment_embedded  # noqa: E402
from samadapt.segment.automatic import (  # noqa: E402
    SAM_DEFAULTS,
    content_region,
    encode_images,
    filter_candidates,
    propose_masks,
)
from samadapt.segment.calibration import calibrate, describe  # noqa: E402
from samadapt.segment.head_check import head_accuracy  # noqa: E402
from samadapt.segment.results import coco_results, evaluate_results  # noqa: E402

RESULTS = HERE / "results"
SAM_KEY = "SAM's 0.88 / 0.95"
DEFAULT_KEY = "default"  # what `samadapt segment --auto` uses with no flags: shipped / end-of-training calibration
SETTINGS = (SAM_KEY, DEFAULT_KEY, "calibrated")
DEMO_VAL_OFFSET = 40  # TrainConfig.demo_val_images


# ---------------------------------------------------------------------------- data
def _subset(src: Path, image_ids: list[int], dst: Path) -> Path:
    data = json.loads(src.read_text())
    keep = set(image_ids)
    out = {
        **data,
        "images": [im for im in data["images"] if im["id"] in keep],
        "annotations": [a for a in data["annotations"] if a["image_id"] in keep],
    }
    dst.write_text(json.dumps(out))
    return dst


def _with_objects(path: Path) -> list[int]:
    data = json.loads(path.read_text())
    has = {a["image_id"] for a in data["annotations"] if not a.get("iscrowd")}
    return [im["id"] for im in data["images"] if im["id"] in has]


def prepare(args, work: Path) -> dict[str, tuple[Path, Path]]:
    """(images folder, annotation file) of the train, val (early stopping), cal and eval parts."""
    work.mkdir(parents=True, exist_ok=True)
    n_val = args.val_images + args.cal_images + args.eval_images
    if args.dataset == "demo":
        # validation images are rendered by index, the same for any count: skip the first DEMO_VAL_OFFSET, the
        # ones `samadapt train` validates on by default, so its adapters are never scored on them
        root = samadapt.data.make_demo_dataset(
            work / "demo", n_train=args.train_images, n_val=DEMO_VAL_OFFSET + n_val, seed=0, progress=False
        )
        train = (root / "train" / "images", root / "train" / "annotations.json")
        val_images, val_file = root / "val" / "images", root / "val" / "annotations.json"
        first = {im["id"] for im in json.loads(val_file.read_text())["images"][:DEMO_VAL_OFFSET]}
        pool = [i for i in _with_objects(val_file) if i not in first]
    else:
        base = Path(args.data_root) / f"{args.version}_version"
        rng = np.random.default_rng(args.seed)
        train_file = base / "instances_train_trashcan.json"
        ids = _with_objects(train_file)
        train = (
            base / "train",
            _subset(
                train_file, sorted(rng.choice(ids, args.train_images, replace=False).tolist()), work / "train.json"
            ),
        )
        val_images, val_file = base / "val", base / "instances_val_trashcan.json"
        pool = rng.permutation(_with_objects(val_file)).tolist()
    parts = {"train": train}
    start = 0
    for name, n in (("val", args.val_images), ("cal", args.cal_images), ("eval", args.eval_images)):
        parts[name] = (val_images, _subset(val_file, pool[start : start + n], work / f"{name}.json"))
        start += n
    return parts


# ---------------------------------------------------------------------------- models
def train_adapter(label: str, strategy: str, parts, args, work: Path, **extra) -> Path:
    """Train one adapter (reused when a finished run with the same options is there)."""
    from accelerate.state import AcceleratorState, GradientState

    from samadapt.config import TrainConfig
    from samadapt.training.trainer import train

    run = work / f"run-{label}"
    options = dict(
        strategy=strategy,
        model="mini",
        dataset="coco",
        images_root=str(parts["train"][0]),
        annotation_file=str(parts["train"][1]),
        val_images_root=str(parts["val"][0]),
        val_annotation_file=str(parts["val"][1]),
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        progress=False,
        zero_shot=False,
        num_examples=0,
        log_with=None,
        publish=False,
        output_dir=str(run),
        cache_dir=str(work / "cache"),
        **extra,
    )
    record = run / "segment_quality_args.json"
    if (run / "adapter.safetensors").is_file() and record.is_file() and json.loads(record.read_text()) == options:
        return run / "adapter.safetensors"
    t0 = time.perf_counter()
    try:
        train(TrainConfig(**options, overwrite=True))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    record.write_text(json.dumps(options))
    print(f"trained {label} in {time.perf_counter() - t0:.0f} s")
    return run / "adapter.safetensors"


# ---------------------------------------------------------------------------- scoring
def auto_scores(model, cal_set, eval_set, args) -> tuple[dict, dict]:
    """Calibrate, then score automatic masks at SAM's thresholds, at the default ones (the built-in
    weights' shipped calibration, an adapter's from the end of its training) and at the ones calibrated
    on the calibration images, all at the benchmark's grid (one decoding pass per image serves all)."""
    cal = calibrate(model, cal_set, max_images=None, points_per_side=args.points_per_side, progress=False)
    grid = args.points_per_side
    settings = {SAM_KEY: SAM_DEFAULTS.replace(points_per_side=grid), "calibrated": cal.auto_config(SAM_DEFAULTS)}
    try:
        settings[DEFAULT_KEY] = resolve_auto_config(model).replace(points_per_side=grid)
    except ConfigError as e:  # an adapter trained before the end-of-training calibration
        print(f"no default thresholds: {e}")
    probe = SAM_DEFAULTS.replace(points_per_side=grid, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    results = {k: [] for k in settings}
    records: dict[int, list] = {}
    ids = []
    for i in range(len(eval_set)):
        image = eval_set.load_image(i)
        emb = encode_images(model, [image])[0]
        cands = propose_masks(model, emb, image.shape[:2], probe, region=content_region(image), keep_all=True)
        image_id = int(eval_set.image_info(i)["id"])
        ids.append(image_id)
        for name, cfg in settings.items():
            recs = proposal_records(model, emb, image.shape[:2], filter_candidates(cands, cfg))
            results[name] += coco_results(image_id, recs)
            if name == "calibrated":
                records[image_id] = recs
    out = {
        name: {
            **evaluate_results(eval_set.coco, res, image_ids=ids, class_agnostic=True, bootstrap=args.bootstrap),
            "masks_per_image": len(res) / len(ids),
        }
        for name, res in results.items()
    }
    out["calibration"] = cal.to_dict()
    if DEFAULT_KEY in settings:
        default = settings[DEFAULT_KEY]
        out["default_thresholds"] = [default.pred_iou_thresh, default.stability_score_thresh]
        out["default_source"] = default.source
    print(describe(cal))
    return out, records


def box_scores(model, eval_set, args, *, classify: bool = False) -> dict:
    """Masks from the ground-truth boxes (the detector an oracle would be), score = predicted IoU;
    with ``classify`` also the class head's labels (class-aware AP, accuracy) vs the majority class."""
    kinds = ("class head", "majority class", "true class") if classify else ("agnostic",)
    results: dict[str, list] = {k: [] for k in kinds}
    predicted, truths = [], []
    for i in range(len(eval_set)):
        s = eval_set[i]
        emb = encode_images(model, [s["image"]])[0]
        recs = segment_embedded(model, emb, s["image"].shape[:2], boxes=s["boxes"], classify=classify)
        truth = [int(c) for c in s["category_ids"]]
        labelled = {
            "agnostic": [{**r, "score": r["predicted_iou"], "category_id": None} for r in recs],
            "class head": [{**r, "score": r["predicted_iou"] * (r["class_probability"] or 1.0)} for r in recs],
            "majority class": [{**r, "score": r["predicted_iou"], "category_id": args.majority} for r in recs],
            "true class": [{**r, "score": r["predicted_iou"], "category_id": t} for r, t in zip(recs, truth)],
        }
        for k in kinds:
            results[k] += coco_results(int(s["image_id"]), labelled[k])
        predicted.append([r["category_id"] for r in recs])
        truths.append(truth)
    out = {
        k: evaluate_results(
            eval_set.coco, v, image_ids=eval_set.image_ids, class_agnostic=not classify, bootstrap=args.bootstrap
        )
        for k, v in results.items()
    }
    if classify:  # the majority class of the evaluation images (what always answering one class gets right)
        acc = head_accuracy(predicted, truths, n_boot=max(args.bootstrap, 1), seed=args.seed)
        acc["majority_name"] = eval_set.categories.get(acc["majority_category"], acc["majority_category"])
        out["accuracy"] = acc
    return out


# ---------------------------------------------------------------------------- output
def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}"


def _iv(m: dict, key: str) -> str:
    iv = m.get("interval", {}).get(key)
    return f"{_pct(m[key])} [{_pct(iv[0])}, {_pct(iv[1])}]" if iv else _pct(m[key])


def markdown(report: dict) -> str:
    lines = [
        "| model | thresholds (pred. IoU / stability) | masks / image | AR@100 | AP | AP50 | AP (GT boxes) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label, m in report["models"].items():
        cal = m["auto"]["calibration"]
        thresholds = {
            SAM_KEY: "0.88 / 0.95",
            DEFAULT_KEY: "{:.2f} / {:.2f}".format(*m["auto"].get("default_thresholds", (float("nan"),) * 2)),
            "calibrated": f"{cal['pred_iou_thresh']:.2f} / {cal['stability_score_thresh']:.2f}",
        }
        for name in (k for k in SETTINGS if k in m["auto"]):
            a = m["auto"][name]
            th = thresholds[name]
            lines.append(
                f"| {label} | {name}: {th} | {a['masks_per_image']:.1f} | {_iv(a, 'AR100')} | {_iv(a, 'AP')} | "
                f"{_pct(a['AP50'])} | {_pct(m['boxes']['agnostic']['AP']) if name == 'calibrated' else ''} |"
            )
    c = report.get("classes")
    if c:
        lines += ["", "| labels of the masks of the ground-truth boxes | class-aware AP | AP50 |", "|---|---:|---:|"]
        for k in ("class head", "majority class", "true class"):
            lines.append(f"| {k} | {_iv(c['boxes'][k], 'AP')} | {_pct(c['boxes'][k]['AP50'])} |")
        auto = c["auto"]
        lines.append(f"| class head, automatic masks (calibrated) | {_iv(auto, 'AP')} | {_pct(auto['AP50'])} |")
        acc = c["boxes"]["accuracy"]
        lines += [
            "",
            f"Accuracy on {acc['instances']} instances: class head {_pct(acc['accuracy'])}%, majority class "
            f"({acc['majority_name']}) {_pct(acc['majority_accuracy'])}%; gain 95% interval "
            f"[{_pct(acc['gain_interval'][0])}, {_pct(acc['gain_interval'][1])}] points; balanced accuracy "
            f"(mean of the per-category recalls) {_pct(acc['balanced_accuracy'])}% vs "
            f"{_pct(acc['balanced_majority'])}%.",
            "",
            "| category | AP (class head, GT boxes) |",
            "|---|---:|",
        ]
        lines += [f"| {k} | {_pct(v)} |" for k, v in c["boxes"]["class head"]["per_category"].items()]
    return "\n".join(lines)


def figure(report_records: dict, eval_set, path: Path, n: int = 2) -> None:
    from samadapt.segment.figures import plot_segments

    rows = []
    for i in range(min(n, len(eval_set))):
        s = eval_set[i]
        from samadapt.evaluation.metrics import encode_mask

        gt = [
            {
                "segmentation": encode_mask(m),
                "bbox": [float(b[0]), float(b[1]), 0, 0],
                "score": 1.0,
                "area": int(m.sum()),
                "category_name": eval_set.categories[int(c)],
            }
            for m, b, c in zip(s["masks"], s["boxes"], s["category_ids"])
        ]
        panels = {"ground truth": gt}
        panels.update({label: recs[int(s["image_id"])] for label, recs in report_records.items()})
        rows.append({"image": s["image"], "panels": panels})
    plot_segments(rows, path, max_masks=40)
    print(f"wrote {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("demo", "trashcan"), default="demo")
    p.add_argument("--data-root", help="trashcan: the folder `samadapt data import-trashcan` wrote")
    p.add_argument("--version", choices=("instance", "material"), default="instance")
    p.add_argument("--strategies", nargs="*", default=["decoder", "decoder-box", "lora", "adapter", "full"])
    p.add_argument("--adapter", action="append", default=[], metavar="LABEL=FILE", help="an adapter trained elsewhere")
    p.add_argument("--no-classify", dest="classify", action="store_false", help="no class-head adapter")
    p.add_argument("--train-images", type=int, default=40)
    p.add_argument("--classify-train-images", type=int, default=None, help="default: --train-images")
    p.add_argument("--classify-adapter", help="a --classify adapter trained elsewhere (instead of training one)")
    p.add_argument("--val-images", type=int, default=6)
    p.add_argument("--cal-images", type=int, default=4)
    p.add_argument("--eval-images", type=int, default=10)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--points-per-side", type=int, default=8)
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", help="folder for data and runs (default outputs/segment-quality-<tag>)")
    p.add_argument("--figure", help="PNG of two evaluation images")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tag = args.dataset if args.dataset == "demo" else f"trashcan_{args.version}"
    work = Path(args.work or f"outputs/segment-quality-{tag}")
    t0 = time.perf_counter()
    parts = prepare(args, work)
    cal_set, eval_set = (CocoInstances(*parts[k], name=k) for k in ("cal", "eval"))
    counts: dict[int, int] = {}
    for a in json.loads(parts["train"][1].read_text())["annotations"]:
        counts[a["category_id"]] = counts.get(a["category_id"], 0) + 1
    args.majority = max(counts, key=counts.get)
    adapters = {}
    for s in args.strategies:
        extra = {"train_prompts": ["box"], "click_rounds": 0} if s.endswith("-box") else {}
        adapters[s] = train_adapter(s, s.removesuffix("-box"), parts, args, work, **extra)
    adapters.update(dict(a.split("=", 1) for a in args.adapter))
    models = {"zero-shot": samadapt.adapt(samadapt.build_sam("mini"), "decoder").eval()}
    models.update({label: samadapt.load(path) for label, path in adapters.items()})
    report: dict = {
        "dataset": tag,
        "args": {k: v for k, v in vars(args).items()},
        "models": {},
        "images": {k: len(CocoInstances(*v)) for k, v in parts.items()},
    }
    shown = {}
    for label, model in models.items():
        auto, recs = auto_scores(model, cal_set, eval_set, args)
        report["models"][label] = {"auto": auto, "boxes": box_scores(model, eval_set, args)}
        if label in ("zero-shot", args.strategies[0] if args.strategies else label):
            shown[f"{label}: automatic"] = recs
        a = auto["calibrated"]
        print(
            f"{label}: AR@100 {_pct(a['AR100'])} AP {_pct(a['AP'])} (SAM thresholds: AR@100 "
            f"{_pct(auto[SAM_KEY]['AR100'])})"
        )
    if args.classify:
        n_train = args.classify_train_images or args.train_images
        cparts = parts if n_train == args.train_images else {**parts, "train": prepare_train(args, work, n_train)}
        path = args.classify_adapter or train_adapter(
            f"decoder-classify-{n_train}", "decoder", cparts, args, work, classify=True
        )
        model = samadapt.load(path)
        boxes = box_scores(model, eval_set, args, classify=True)
        cal = calibrate(model, cal_set, max_images=None, points_per_side=args.points_per_side, progress=False)
        results, recs = [], {}
        for i in range(len(eval_set)):
            image = eval_set.load_image(i)
            emb = encode_images(model, [image])[0]
            r = segment_embedded(
                model,
                emb,
                image.shape[:2],
                auto=cal.auto_config(SAM_DEFAULTS),
                classify=True,
                region=content_region(image),
            )
            recs[int(eval_set.image_info(i)["id"])] = r
            results += coco_results(int(eval_set.image_info(i)["id"]), r)
        auto = evaluate_results(eval_set.coco, results, image_ids=eval_set.image_ids, bootstrap=args.bootstrap)
        report["classes"] = {"boxes": boxes, "auto": auto, "train_images": n_train}
        shown["class head: automatic"] = recs
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["machine"] = machine_info("cpu")
    write_json(RESULTS / f"segment_quality-{tag}.json", report)
    md = markdown(report)
    (RESULTS / f"segment_quality-{tag}.md").write_text(md + "\n")
    print(md)
    if args.figure:
        figure(shown, eval_set, Path(args.figure))
    return 0


def prepare_train(args, work: Path, n: int) -> tuple[Path, Path]:
    """A training part of ``n`` images (the class head's, when it gets more data than the strategies)."""
    sub = argparse.Namespace(**{**vars(args), "train_images": n})
    return prepare(sub, work / f"train{n}")["train"]


if __name__ == "__main__":
    sys.exit(main())
