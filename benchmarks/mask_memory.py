"""Peak memory of ground-truth masks at TACO's largest image size (6000x5312), before and after.

Two measurements, each in a fresh Python process, on a synthetic COCO file with one 6000x5312 image
and 90 objects (ellipse polygons of 48 vertices, radii 40-1500 px; every other one stored as a
compressed RLE, as TACO and TrashCan files mix both):

- ``train``: one training sample of ``SamPromptDataset`` (16 box-prompted instances, the default
  ``max_instances``; no image: ``load_image=False``). *before* is the old code path, reimplemented
  here: each instance decoded to a full-resolution bool mask, its box from the mask, its low-res
  target from a full-resolution float32 copy (``SamTransform.masks_to_low_res_reference``).
  *after* is ``SamPromptDataset`` itself (targets from the RLE, see
  ``SamTransform.sampled_to_low_res``).
- ``val``: one validation image as ``evaluate_records`` consumes it: the image, every instance's
  ground truth, scored ``max_mask_pixels`` (its default, 2^29) pixels of masks at a time. *before*:
  the old ``CocoInstances.__getitem__`` (all 90 masks decoded into one (N, H, W) bool array, then
  copied to drop empty masks); *after*: ``CocoInstances.item(lazy_masks=True)``, its masks decoded
  a chunk at a time.

Both paths' results are compared (targets, boxes and masks must be equal, bit for bit). Memory is the
resident-set peak of the step minus the resident set before it (VmHWM reset through
/proc/self/clear_refs) and the Python/numpy allocation peak (tracemalloc; torch tensors are not
seen by it).

    python benchmarks/mask_memory.py            # writes benchmarks/results/mask_memory-cpu.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from _common import machine_info, mib, write_json  # noqa: E402
from _memory import PeakMemory

RESULTS = HERE / "results" / "mask_memory-cpu.json"
H, W = 6000, 5312  # TACO's largest photo (HxW)
N_OBJECTS = 90  # TACO's most crowded image
IMAGE_SIZE = 1024  # the official models' input side
MAX_MASK_PIXELS = 1 << 29  # evaluate_records' default chunk


def make_coco(folder: Path, n_objects: int = N_OBJECTS, seed: int = 0) -> Path:
    """A COCO file with one HxW image (a flat grey JPEG) and ``n_objects`` ellipses."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    Image.new("RGB", (W, H), (120, 120, 120)).save(folder / "big.jpg", quality=90)
    anns = []
    t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    for k in range(n_objects):
        r = float(np.exp(rng.uniform(np.log(40), np.log(1500))))
        ry, rx = r * rng.uniform(0.5, 1.0), r * rng.uniform(0.5, 1.0)
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        poly = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1).clip([0, 0], [W, H]).ravel().tolist()
        seg: list | dict = [poly]
        if k % 2:  # stored as compressed RLE
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], H, W))
            seg = {"size": [H, W], "counts": rle["counts"].decode("ascii")}
        anns.append(
            {
                "id": k + 1,
                "image_id": 1,
                "category_id": 1,
                "segmentation": seg,
                "iscrowd": 0,
                "bbox": [0, 0, 1, 1],
                "area": 1.0,
            }
        )
    coco = {
        "images": [{"id": 1, "file_name": "big.jpg", "height": H, "width": W}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "object"}],
    }
    path = folder / "annotations.json"
    path.write_text(json.dumps(coco))
    return path


# ------------------------------------------------------------------------------- the two paths
def train_before(ds, index: int):
    """The old SamPromptDataset loop (box prompts, eval noise): full-resolution masks, float32 resize."""
    import torch

    from samadapt.data.prompts import boxes_from_masks

    inst, tf = ds.instances, ds.transform
    hw = inst.original_size(index)
    boxes, targets = [], []
    for ann in ds.choose_annotations(index, ds.rng(index)):
        mask = inst.decode_masks(index, [ann])
        if not mask.any():
            continue
        boxes.append(boxes_from_masks(mask))
        targets.append(tf.masks_to_low_res_reference(mask, hw))
    return {"boxes": tf.apply_boxes(np.concatenate(boxes), hw), "gt_masks": torch.cat(targets)}


def train_after(ds, index: int):
    s = ds[index]
    return {"boxes": s["boxes"], "gt_masks": s["gt_masks"]}


def val_before(inst, index: int):
    """The old CocoInstances.__getitem__: all masks at once, then a copy without the empty ones."""
    from samadapt.data.prompts import boxes_from_masks

    image = inst.load_image(index)
    anns = inst.instance_annotations(index)
    masks = inst.decode_masks(index, anns)
    keep = masks.reshape(len(anns), -1).any(axis=1)
    masks = masks[keep]
    return image, masks, boxes_from_masks(masks)


def val_after(inst, index: int):
    s = inst.item(index, lazy_masks=True)
    return s["image"], s["masks"], s["boxes"]


def consume(masks, fingerprint: list) -> None:
    """What evaluate_records does with the ground truth: one chunk of masks at a time."""
    n = masks.shape[0]
    per_chunk = max(1, MAX_MASK_PIXELS // (H * W))
    for a in range(0, n, per_chunk):
        gt = np.asarray(masks[a : a + per_chunk], dtype=bool)
        fingerprint.append(gt.sum(axis=(1, 2)).tolist())
        del gt


# ------------------------------------------------------------------------------- one case per process
def run_case(case: str, folder: Path) -> dict:
    import hashlib

    import torch

    from samadapt.data.coco import CocoInstances
    from samadapt.data.prompts import PromptConfig
    from samadapt.data.sam_dataset import SamPromptDataset
    from samadapt.transforms import SamTransform

    inst = CocoInstances(folder, folder / "annotations.json")
    ds = SamPromptDataset(
        inst, SamTransform(IMAGE_SIZE), PromptConfig(box_noise=0.0, loose_margin=0.0), load_image=False
    )
    what, when = case.split("-")
    if what == "train":  # warm-up on a small instance: one-off probes and caches are not the step
        train_after(SamPromptDataset(inst, SamTransform(IMAGE_SIZE), ds.prompts, max_instances=1, load_image=False), 0)
    mem = PeakMemory("cpu")
    tracemalloc.start()
    mem.start()
    if what == "train":
        out = (train_before if when == "before" else train_after)(ds, 0)
        digest = hashlib.sha256(out["gt_masks"].numpy().tobytes() + out["boxes"].numpy().tobytes()).hexdigest()
        extra = {"instances": int(out["gt_masks"].shape[0])}
    else:
        image, masks, boxes = (val_before if when == "before" else val_after)(inst, 0)
        fp: list = []
        consume(masks, fp)
        digest = hashlib.sha256(json.dumps([fp, np.asarray(boxes).tolist()]).encode()).hexdigest()
        extra = {"instances": int(masks.shape[0]), "image_bytes": int(image.nbytes)}
    peak = mem.stop()
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del torch
    return {
        "case": case,
        "rss_peak_bytes": peak["peak_step_bytes"],
        "tracemalloc_peak_bytes": traced,
        "memory_method": peak["memory_method"],
        "result_sha256": digest,
        **extra,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print("RESULT " + json.dumps(run_case(args.case, args.folder)), flush=True)
        return

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_coco(folder)
        for case in ("train-before", "train-after", "val-before", "val-after"):
            proc = subprocess.run(
                [sys.executable, __file__, "--case", case, "--folder", str(folder)],
                capture_output=True,
                text=True,
                timeout=1800,
                check=False,
            )
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                raise SystemExit(f"{case} failed:\n{proc.stderr[-3000:]}")
            rows[case] = json.loads(line[-1][len("RESULT ") :])
            r = rows[case]
            print(
                f"{case:13s} RSS peak {mib(r['rss_peak_bytes']):8.1f} MiB, numpy/Python peak "
                f"{mib(r['tracemalloc_peak_bytes']):8.1f} MiB, {r['instances']} instances",
                flush=True,
            )
    checks = {
        what: rows[f"{what}-before"]["result_sha256"] == rows[f"{what}-after"]["result_sha256"]
        for what in ("train", "val")
    }
    result = {
        "benchmark": "mask_memory",
        "command": "python benchmarks/mask_memory.py",
        "machine": machine_info("cpu"),
        "setup": {
            "image_hw": [H, W],
            "objects": N_OBJECTS,
            "image_size": IMAGE_SIZE,
            "train_instances": 16,
            "max_mask_pixels": MAX_MASK_PIXELS,
            "one_mask_bool_mib": mib(H * W),
            "one_mask_float32_mib": mib(4 * H * W),
        },
        "rows": list(rows.values()),
        "checks": [
            {"name": f"{what}: after == before (sha256 of targets/boxes or mask sums/boxes)", "passed": ok}
            for what, ok in checks.items()
        ],
    }
    write_json(args.out, result)
    print(f"-> {args.out}")
    if not all(checks.values()):
        raise SystemExit(f"results differ: {checks}")


if __name__ == "__main__":
    main()
