"""What every tool of ``benchmarks/peers.py`` gets: the TrashCan frames (imported with samadapt's
importer, written as COCO subsets for samadapt and .npz files for the peers), samadapt's per-epoch
frame order, the weights (one SAM checkpoint, and the transformers folder made from it), and
micro-sam's own virtualenv (see ``peers.py``'s docstring)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as C
import torch

MICROSAM_PINS = ["micro-sam==1.8.14", "torch-em==0.10.9", "python-elf==0.9.2", "segment-anything-py==1.0.1"]
MICROSAM_DEPS = [
    "imageio",
    "bioimage-cpp",
    "scikit-image",
    "scikit-learn",
    "kornia",
    "pooch",
    "xxhash",
    "zarr",
    "natsort",
    "h5py",
    "xarray",
]


# ------------------------------------------------------------------------------------------ inputs
def import_trashcan(source: Path, work: Path) -> Path:
    """TrashCan's instance version, imported with samadapt's importer (image files linked)."""
    from samadapt.data.importers import import_trashcan

    return (
        Path(import_trashcan(source, work / "trashcan", versions=["instance"], progress=False).out) / "instance_version"
    )


def frames(root: Path, work: Path, n_train: int, prompts: int) -> dict[str, Any]:
    """``n_train`` training frames and one validation frame of the imported TrashCan ``root``, each
    with 1..prompts instances that all survive in an instance label map, written as COCO subsets
    (samadapt) and .npz files (the peers)."""
    work.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {}
    for split, n, key in (("train", n_train, "frames"), ("val", 1, "val_frames")):
        chosen = _choose_frames(root / split, root / f"instances_{split}_trashcan.json", n, prompts)
        subset = work / f"{split}.json"
        _write_subset(root / f"instances_{split}_trashcan.json", [c["id"] for c in chosen], subset)
        data[f"{split}_root"], data[f"{split}_json"] = str(root / split), str(subset)
        data[key] = [_write_npz(c, work / f"{split}-{i:03d}.npz") for i, c in enumerate(chosen)]
        data[f"{split}_files"] = [c["file_name"] for c in chosen]
    return data


def _choose_frames(images_root: Path, ann: Path, n: int, prompts: int) -> list[dict[str, Any]]:
    import numpy as np

    from samadapt.data.coco import CocoInstances

    ds = CocoInstances(images_root, ann)
    order = sorted(range(len(ds)), key=lambda i: ds.image_info(i)["file_name"])
    counts = [len(ds.instance_annotations(i)) for i in order]
    candidates = [i for i, c in zip(order, counts) if 1 <= c <= prompts]
    picked: list[dict[str, Any]] = []
    # spread over the (sorted = per video) frames; skip frames whose label map loses an instance
    for k in np.linspace(0, len(candidates) - 1, num=min(len(candidates), 4 * n)).round().astype(int):
        item = ds[candidates[k]]
        labels = np.zeros(item["image"].shape[:2], np.int32)
        for j, m in enumerate(item["masks"], start=1):
            labels[m] = j
        if len(np.unique(labels)) - 1 == len(item["masks"]) and all(
            (labels == j).sum() >= 16 for j in range(1, len(item["masks"]) + 1)
        ):
            picked.append({**item, "labels": labels, "id": item["image_id"]})
        if len(picked) == n:
            return picked
    raise SystemExit(f"only {len(picked)} usable frames in {ann} (need {n})")


def _write_subset(ann: Path, ids: list[int], out: Path) -> None:
    d = json.loads(ann.read_text())
    keep = set(ids)
    d["images"] = [im for im in d["images"] if im["id"] in keep]
    d["annotations"] = [a for a in d["annotations"] if a["image_id"] in keep]
    out.write_text(json.dumps(d))


def _write_npz(item: dict[str, Any], path: Path) -> str:
    import numpy as np

    np.savez(path, image=item["image"], boxes=item["boxes"], labels=item["labels"], masks=item["masks"])
    return str(path)


def epoch_orders(n: int, epochs: int, seed: int) -> list[list[int]]:
    """samadapt's frame order per epoch (``EpochShuffled``), handed to the peers' loaders."""
    from samadapt.training.state import EpochShuffled

    shuffled = EpochShuffled(list(range(n)), seed)
    orders = []
    for e in range(max(epochs, 1)):
        shuffled.set_epoch(e)
        orders.append([int(i) for i in shuffled.order])
    return orders


def write_weights(variant: dict[str, Any], folder: Path, *, hf: bool) -> dict[str, str]:
    """Random weights of ``variant`` as a SAM checkpoint, and (``hf``) as a transformers folder (kept
    in ``folder`` for the tasks that follow)."""
    import _peer_jobs as J

    import samadapt
    from samadapt.exporters.hf import write_hf

    out = {"checkpoint": str(folder / "sam.pth")}
    if (folder / "sam.pth").is_file() and (not hf or (folder / "hf" / "config.json").is_file()):
        return {**out, "hf_dir": str(folder / "hf")} if hf else out
    folder.mkdir(parents=True, exist_ok=True)
    sam = C.build_variant(variant["model_type"], seed=0, **C.variant_kwargs(variant))
    if variant == {"model_type": "mini"}:  # mini's built-in pretrained weights: its IoU means something
        from samadapt.models.registry import build_sam

        sam.load_state_dict(build_sam("mini").state_dict())
    torch.save(sam.state_dict(), out["checkpoint"])
    if hf:
        from samadapt.models.registry import BaseInfo

        name = J.register_variant(variant)  # a reduced input size is a model type of its own here
        sam.samadapt_base = BaseInfo(name, f"random:{name}", None)
        write_hf(samadapt.adapt(sam, "decoder"), folder / "hf", {"what": "random weights for benchmarks/peers.py"})
        out["hf_dir"] = str(folder / "hf")
    return out


# ------------------------------------------------------------------------------------------ micro-sam's env
def microsam_python(env: Path) -> Path:
    """micro-sam's own virtualenv (made once; see the module docstring), its python."""
    import sysconfig

    py = env / "bin" / "python"
    probe = [str(py), "-c", "import micro_sam.training, segment_anything, torch; print(torch.__version__)"]
    if py.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.strip() == torch.__version__:
        return py
    print(f"making micro-sam's environment in {env} ...", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True)
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # after ENV's own packages: this environment's, so that micro-sam runs on the same torch build
    Path(site, "_samadapt_benchmark_parent.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pins = Path(env, "constraints.txt")
    pins.write_text("".join(f"{p}=={_version(p)}\n" for p in ("torch", "torchvision", "numpy") if _version(p)))
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-c", str(pins)]
    with open(env / "install.log", "w") as log:
        for args in (["--no-deps", *MICROSAM_PINS], MICROSAM_DEPS):
            if subprocess.run([*pip, *args], stdout=log, stderr=subprocess.STDOUT).returncode:
                raise SystemExit(f"pip could not install {args} into {env}: see {env / 'install.log'}")
    check = subprocess.run(probe, capture_output=True, text=True)
    if check.stdout.strip() != torch.__version__:
        raise SystemExit(f"micro-sam's environment {env} does not work:\n{check.stderr[-2000:]}")
    print(f"micro-sam's environment ready ({time.perf_counter() - t0:.0f} s)", flush=True)
    return py


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None
