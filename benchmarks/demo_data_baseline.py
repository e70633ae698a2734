"""Is there a generic -> waste gap in the generated data before any training? A non-learned check.

For each ground-truth box of the validation split, a box-prompted "segmenter" with no learning:
take the median colour of a 2-px ring just outside the box (the background, when objects stand out
from it) and call every pixel inside the box whose RGB distance to that colour exceeds a threshold
the object. Simple scenes (``generic``) should score high; waste scenes (clutter, texture,
transparency, shadows, camouflage) clearly lower. The threshold is picked on generic validation
data only, as the ``mini`` model is pretrained there. It also times the generation of each domain.

    python benchmarks/demo_data_baseline.py            # 200 train + 50 val images per domain

Writes ``benchmarks/results/demo_data_baseline.json`` (machine described inside).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from samadapt.data.synthetic import DEMO_VERSION, make_demo_dataset  # noqa: E402

THRESHOLDS = (20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0)


def border_colour_baseline(image: np.ndarray, box_xywh, threshold: float, ring: int = 2) -> np.ndarray:
    """Predict a mask for one box prompt without learning.

    Args:
        image: RGB uint8 (H, W, 3).
        box_xywh: the prompt box (x, y, w, h) in pixels (COCO bbox of the ground-truth mask).
        threshold: RGB distance (0..441) above which a pixel differs from the background.
        ring: width in px of the band just outside the box that samples the background.

    Returns:
        bool (H, W) mask, True inside the box where the colour differs from the ring's median.
    """
    h, w = image.shape[:2]
    x0, y0, bw, bh = (int(round(v)) for v in box_xywh)
    x1, y1 = x0 + bw, y0 + bh
    outer = np.zeros((h, w), bool)
    outer[max(0, y0 - ring) : min(h, y1 + ring), max(0, x0 - ring) : min(w, x1 + ring)] = True
    outer[y0:y1, x0:x1] = False
    if not outer.any():  # the box is the whole image: use its outermost pixels
        outer[:] = True
        outer[ring:-ring, ring:-ring] = False
    background = np.median(image[outer].astype(np.float32), axis=0)
    dist = np.linalg.norm(image[y0:y1, x0:x1].astype(np.float32) - background, axis=-1)
    pred = np.zeros((h, w), bool)
    pred[y0:y1, x0:x1] = dist > threshold
    return pred


def evaluate(split_dir: Path, thresholds=THRESHOLDS) -> dict:
    """Mean IoU of :func:`border_colour_baseline` per threshold, and per scene / category /
    transparency at each threshold, over every annotation of a COCO split."""
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools chatters
        coco = COCO(str(split_dir / "annotations.json"))
    cats = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    rows = []  # (scene, category, transparent, iou per threshold)
    box_fill = []  # IoU of the whole box: how far the masks are from their boxes
    for img_id in coco.getImgIds():
        info = coco.loadImgs(img_id)[0]
        image = np.asarray(Image.open(split_dir / "images" / info["file_name"]).convert("RGB"))
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
            gt = coco.annToMask(ann).astype(bool)
            ious = []
            for t in thresholds:
                pred = border_colour_baseline(image, ann["bbox"], t)
                ious.append((pred & gt).sum() / max(1, (pred | gt).sum()))
            rows.append((info["scene"], cats[ann["category_id"]], ann["attributes"]["transparent"], ious))
            box_fill.append(gt.sum() / (ann["bbox"][2] * ann["bbox"][3]))
    iou = np.array([r[3] for r in rows])  # (N, T)

    def group(key):
        out = {}
        for value in sorted({key(r) for r in rows}, key=str):
            sel = np.array([key(r) == value for r in rows])
            out[str(value)] = {"n": int(sel.sum()), "miou": [round(float(m), 4) for m in iou[sel].mean(0)]}
        return out

    return {
        "thresholds": list(thresholds),
        "n_annotations": len(rows),
        "miou": [round(float(m), 4) for m in iou.mean(0)],
        "box_fill_miou": round(float(np.mean(box_fill)), 4),
        "per_scene": group(lambda r: r[0]),
        "per_category": group(lambda r: r[1]),
        "per_transparent": group(lambda r: r[2]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-val", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "demo_data_baseline.json")
    args = parser.parse_args()
    load_at_start = [round(x, 2) for x in os.getloadavg()]  # the machine may be shared: say how busy

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for domain in ("generic", "waste"):
            root = Path(tmp) / domain
            kw = dict(domain=domain, n_train=args.n_train, n_val=args.n_val, seed=args.seed, progress=False)
            start, cpu_start = time.perf_counter(), time.process_time()
            make_demo_dataset(root, **kw)
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            start = time.perf_counter()
            make_demo_dataset(root, **kw)  # parameters unchanged: must be a cache hit
            cached = time.perf_counter() - start
            results[domain] = {
                "generation_s": round(seconds, 2),
                "generation_cpu_s": round(cpu_seconds, 2),
                "cached_call_s": round(cached, 4),
                "counts": json.loads((root / "dataset.json").read_text())["counts"],
                "val": evaluate(root / "val"),
            }
    # One threshold for both domains, chosen on generic validation data only.
    best = int(np.argmax(results["generic"]["val"]["miou"]))
    summary = {d: results[d]["val"]["miou"][best] for d in results}
    best_waste = max(results["waste"]["val"]["miou"])  # the most favourable threshold for waste
    report = {
        "command": "python benchmarks/demo_data_baseline.py "
        f"--n-train {args.n_train} --n-val {args.n_val} --seed {args.seed}",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "load_average_at_start": load_at_start,
        },
        "demo_version": DEMO_VERSION,
        "threshold": THRESHOLDS[best],
        "baseline_miou": summary,
        "waste_miou_at_its_best_threshold": best_waste,
        "box_fill_miou": {d: results[d]["val"]["box_fill_miou"] for d in results},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for domain, r in results.items():
        n = r["counts"]
        print(
            f"{domain:8s} generated {n['train']['images']}+{n['val']['images']} images in "
            f"{r['generation_s']:.1f} s wall, {r['generation_cpu_s']:.1f} s CPU "
            f"(cached call {r['cached_call_s'] * 1000:.1f} ms)"
        )
        print(
            f"         baseline mIoU at t={THRESHOLDS[best]:.0f}: {summary[domain]:.3f} over "
            f"{r['val']['n_annotations']} objects (whole box: {r['val']['box_fill_miou']:.3f})"
        )
        for scene, s in r["val"]["per_scene"].items():
            print(f"    {scene:11s} n={s['n']:4d}  mIoU {s['miou'][best]:.3f}")
    print(f"waste at its own best threshold: {best_waste:.3f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
