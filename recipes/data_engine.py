"""The data engine, simulated on real frames: does retraining while labelling save clicks?

    python recipes/data_engine.py --data-root outputs/trashcan-coco --out outputs/data-engine   # docs/data_engine.md
    python recipes/data_engine.py --data-root outputs/trashcan-coco --frames-per-round 4 --rounds 1 \\
        --seeds 0 --val-frames 4 --epochs 1 --out /tmp/engine       # a smoke run (a minute)

A simulated annotator labels TrashCan frames (imported with `samadapt data import-trashcan`) with the
click protocol of ``samadapt.evaluation.clicks``: each object's first click at its most interior
pixel, each next one at the centre of the largest error region, until the mask reaches the target
IoU or the cap (``samadapt.engine.effort``). An object that never reaches the target is finished by
hand; as after SAM's brush-and-eraser refinement, the labels it leaves are the dataset's masks.

Two arms, per seed:
- **loop**: rounds of ``--frames-per-round`` frames from the train split (a seeded draw); after each
  round the model is retrained on every frame labelled so far, exactly as ``samadapt engine`` and
  the page's "Adapt" button do (``samadapt.engine.retrain.engine_train_config``: the decoder strategy
  from the base model for about 200 steps, the last epoch kept; ``--keep-epoch best`` lets a quarter
  of the labelled frames, held out, choose the epoch instead);
- **control**: the same frames labelled, never retrained (the base model throughout).

After each round, both arms are measured on held-out frames of the val split (``--val-frames``,
seeded by ``--val-seed``; the same for every seed and round): clicks per object to each target (the
cap where never reached, with the share never reached), mean IoU after 1 and 3 clicks, and mean IoU
from the exact boxes. Round 0 is the base model. Intervals: 95% bootstrap over the val frames and
the seeds; the loop's gain over the control is paired on the same frames. The effort of labelling
each round's own frames is recorded too (``labelling``; frames differ by seed, so its interval pools
the seeds' frames). Everything goes under ``--out``: ``data_engine.json`` (the interface below),
``data_engine.png``, ``data_engine.md`` and, per seed and round, the training run and the records
(a rerun reuses finished rounds, so Ctrl-C loses at most the round in progress).

JSON: ``{"arms": {"loop": {"rounds": [{"round": 0, "labelled_frames": 0, "clicks_per_object":
{"mean", "low", "high", "target", "never_reached"}, "clicks_per_object_at": {"0.5": ...},
"miou_after_1", "miou_after_3", "box_miou", "labelling"}, ...]}, "control": {...}}, "gain": [...],
"machine": {...}, "minutes": {...}, "settings": {...}}``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- options
def parse_args(argv=None) -> argparse.Namespace:
    from samadapt.engine import DEFAULT_TARGETS, MAX_CLICKS
    from samadapt.engine.retrain import DEFAULT_STEPS

    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data-root", help="the folder `samadapt data import-trashcan` wrote")
    p.add_argument("--version", choices=("instance", "material"), default="instance")
    p.add_argument("--train-annotation-file", help="the pool's COCO file (default: the imported train split)")
    p.add_argument("--train-images-root", help="its images (default: the file's folder's train/ or the imported one)")
    p.add_argument("--val-annotation-file", help="the held-out COCO file (default: the imported val split)")
    p.add_argument("--val-images-root", help="its images")
    p.add_argument("--frames-per-round", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--val-frames", type=int, default=40, help="held-out frames measured after each round")
    p.add_argument("--val-seed", type=int, default=None, help="seed of the val frames (default: the first seed)")
    p.add_argument(
        "--targets", type=float, nargs="+", default=list(DEFAULT_TARGETS), help="IoU targets (first: headline)"
    )
    p.add_argument("--max-clicks", type=int, default=MAX_CLICKS, help="clicks per object before it is finished by hand")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs of each retraining (default: about {DEFAULT_STEPS} steps, as samadapt engine)",
    )
    p.add_argument(
        "--keep-epoch",
        choices=("best", "last"),
        default="last",
        help="the epoch each retraining keeps (default last, as samadapt engine; best: the held-out frames' best)",
    )
    p.add_argument("--model", default="mini")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    _check(p, args)
    return args


def _check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("frames_per_round", "rounds", "val_frames", "max_clicks", "epochs"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.frames_per_round < 4:
        p.error(f"--frames-per-round {args.frames_per_round}: a retraining needs at least 4 labelled frames")
    if not all(0 < t <= 1 for t in args.targets):
        p.error(f"--targets must be IoUs in (0, 1], got {args.targets}")
    if args.data_root is None and not (args.train_annotation_file and args.val_annotation_file):
        p.error("pass --data-root (an imported TrashCan) or both --train-annotation-file and --val-annotation-file")
    if args.val_seed is None:
        args.val_seed = args.seeds[0]


def _split_files(args, split: str) -> tuple[Path, Path]:
    """(COCO file, images folder) of ``split`` (train / val)."""
    given = getattr(args, f"{split}_annotation_file")
    if given:
        root = getattr(args, f"{split}_images_root") or Path(given).parent / split
        return Path(given), Path(root)
    base = Path(args.data_root) / f"{args.version}_version"
    return base / f"instances_{split}_trashcan.json", Path(getattr(args, f"{split}_images_root") or base / split)


# ---------------------------------------------------------------------------- pieces
class Embeddings:
    """index -> the base encoder's embedding of a dataset image, computed once (every model of the
    simulation is a decoder on the frozen base encoder)."""

    def __init__(self, model, dataset) -> None:
        self.model, self.dataset, self.store, self.seconds = model, dataset, {}, 0.0

    def __call__(self, index: int):
        import torch

        if index not in self.store:
            start = time.perf_counter()
            image = self.dataset.load_image(index)
            with torch.no_grad():
                x = self.model.transform.preprocess_image(image)[None].to(self.model.device)
                self.store[index] = self.model.encode(x)[0]
            self.seconds += time.perf_counter() - start
        return self.store[index]


def _save_records(path: Path, box, clicks) -> None:
    arrays = {"click_iou": clicks.iou, "click_image_ids": clicks.image_ids, "click_category_ids": clicks.category_ids}
    if box is not None:
        arrays.update(box_iou=box.iou, box_image_ids=box.image_ids, box_category_ids=box.category_ids)
    images = json.dumps(clicks.images)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, images=np.array(images), **arrays)
    os.replace(tmp, path)


def _load_records(path: Path):
    from samadapt.evaluation.clicks import ClickRecords
    from samadapt.evaluation.evaluate import EvalRecords

    z = np.load(path)
    images = json.loads(str(z["images"]))
    clicks = ClickRecords(z["click_iou"], z["click_image_ids"], z["click_category_ids"], images)
    box = None
    if "box_iou" in z:
        box = EvalRecords(
            iou=z["box_iou"], image_ids=z["box_image_ids"], category_ids=z["box_category_ids"], images=images
        )
    return box, clicks


def _cached(path: Path, compute):
    """The records at ``path``, else ``compute()``'s, saved there."""
    if path.is_file():
        return _load_records(path)
    box, clicks = compute()
    _save_records(path, box, clicks)
    return box, clicks


class Clock:
    """Seconds per phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


# ---------------------------------------------------------------------------- the simulation
class Simulation:
    def __init__(self, args: argparse.Namespace) -> None:
        from samadapt.data.coco_file import load_coco_json
        from samadapt.data.presets import get_dataset
        from samadapt.data.subsets import seeded_indices
        from samadapt.evaluation.run import zero_shot_model

        self.args, self.clock = args, Clock()
        self.train_file, self.train_root = _split_files(args, "train")
        val_file, val_root = _split_files(args, "val")
        self.train_data = load_coco_json(self.train_file)
        self.pool = get_dataset(
            "coco", images_root=self.train_root, annotation_file=self.train_file, empty_images="skip"
        )
        self.val = get_dataset("coco", images_root=val_root, annotation_file=val_file, empty_images="skip")
        self.val_indices = seeded_indices(self.val, args.val_frames, seed=args.val_seed, purpose="engine-val")
        self.base = zero_shot_model(args.model, args.checkpoint)
        self.pool_embeddings = Embeddings(self.base, self.pool)
        self.val_embeddings = Embeddings(self.base, self.val)
        needed = args.frames_per_round * args.rounds
        if needed > len(self.pool):
            raise SystemExit(f"--frames-per-round x --rounds = {needed} frames, the pool has {len(self.pool)}")

    def frames(self, seed: int, r: int) -> list[int]:
        """Pool indices labelled in round ``r`` (1-based) of ``seed``."""
        from samadapt.data.subsets import seeded_indices

        n = self.args.frames_per_round
        before = set(seeded_indices(self.pool, (r - 1) * n, seed=seed, purpose="engine-pool"))
        return [i for i in seeded_indices(self.pool, r * n, seed=seed, purpose="engine-pool") if i not in before]

    def measure_val(self, model):
        from samadapt.engine.effort import measure

        with self.clock("measure"):
            return measure(
                model, self.val, self.val_indices, max_clicks=self.args.max_clicks, embeddings=self.val_embeddings
            )

    def label(self, model, indices: list[int]):
        from samadapt.evaluation.clicks import evaluate_clicks

        with self.clock("label"):
            clicks = evaluate_clicks(
                model,
                self.pool,
                indices,
                max_clicks=self.args.max_clicks,
                embeddings=self.pool_embeddings,
                progress=False,
            )
        return None, clicks

    def retrain(self, seed: int, r: int, folder: Path):
        """The loop's model after round ``r``: ``samadapt engine``'s turn on the frames labelled so far."""
        from samadapt.adapter_store import load
        from samadapt.engine.labels import split_labelled, write_subset
        from samadapt.engine.retrain import engine_train_config, epochs_for
        from samadapt.training.trainer import train

        adapter = folder / "run" / "adapter.safetensors"
        if not adapter.is_file():
            labelled = [self.pool.image_info(i)["file_name"] for r_ in range(1, r + 1) for i in self.frames(seed, r_)]
            split = split_labelled(sorted(labelled), seed=seed)
            cfg = engine_train_config(
                images_root=self.train_root,
                train_file=write_subset(self.train_data, split.train, folder / "train.json"),
                held_out_file=write_subset(self.train_data, split.held_out, folder / "held_out.json"),
                run_dir=folder / "run",
                model=self.args.model,
                checkpoint=self.args.checkpoint,
                seed=seed,
                epochs=self.args.epochs or epochs_for(len(split.train)),
                keep_epoch=self.args.keep_epoch,
                overwrite=True,
            )
            with self.clock("train"), open(folder / "train.log", "w") as log, contextlib.redirect_stdout(log):
                train(cfg)
        return load(adapter, checkpoint=self.args.checkpoint)

    def run_seed(self, seed: int) -> dict:
        """Per arm, the val records after rounds 0..R and the labelling records of rounds 1..R."""
        out = self.args.out / f"seed-{seed}"
        out.mkdir(parents=True, exist_ok=True)
        base_val = _cached(self.args.out / "base-val.npz", lambda: self.measure_val(self.base))
        arms = {"loop": {"val": [base_val], "labelling": []}, "control": {"val": [base_val], "labelling": []}}
        model = self.base
        for r in range(1, self.args.rounds + 1):
            frames = self.frames(seed, r)
            print(f"seed {seed}, round {r}: labelling {len(frames)} frames", flush=True)
            arms["loop"]["labelling"].append(_cached(out / f"label-{r}-loop.npz", lambda: self.label(model, frames)))
            arms["control"]["labelling"].append(
                _cached(out / f"label-{r}-control.npz", lambda: self.label(self.base, frames))
            )
            print(f"seed {seed}, round {r}: retraining on {r * self.args.frames_per_round} frames", flush=True)
            model = self.retrain(seed, r, out / f"round-{r}")
            arms["loop"]["val"].append(_cached(out / f"val-{r}.npz", lambda: self.measure_val(model)))
            arms["control"]["val"].append(base_val)
        return arms


# ---------------------------------------------------------------------------- the numbers
def _pooled(records: list):
    """Click records of different frames per seed as one run (image ids made unique per seed)."""
    from samadapt.evaluation.clicks import ClickRecords

    parts = []
    for k, rec in enumerate(records):
        offset = (k + 1) * 10**9
        images = [{**im, "id": int(im["id"]) + offset} for im in rec.images]
        parts.append(ClickRecords(rec.iou, rec.image_ids + offset, rec.category_ids, images))
    return ClickRecords.merge(parts)


def summarise(per_seed: list[dict], args: argparse.Namespace) -> dict:
    from samadapt.engine.effort import effort_gain, effort_summary

    n = args.bootstrap
    arms, gains = {}, []
    for arm in ("loop", "control"):
        rounds = []
        for r in range(args.rounds + 1):
            val = [s[arm]["val"][r] for s in per_seed]
            entry = {"round": r, "labelled_frames": r * args.frames_per_round}
            entry.update(effort_summary([c for _, c in val], args.targets, box_runs=[b for b, _ in val], n_boot=n))
            entry["per_seed"] = [
                {
                    "seed": seed,
                    "clicks_per_object": effort_summary([c], args.targets[:1], n_boot=n)["clicks_per_object"],
                }
                for seed, (_, c) in zip(args.seeds, val)
            ]
            if r:
                labelling = _pooled([s[arm]["labelling"][r - 1][1] for s in per_seed])
                entry["labelling"] = effort_summary([labelling], args.targets, n_boot=n)
            rounds.append(entry)
        arms[arm] = {"rounds": rounds}
    for r in range(args.rounds + 1):
        loop, control = ([s[a]["val"][r][1] for s in per_seed] for a in ("loop", "control"))
        gains.append({"round": r, "clicks_per_object": [effort_gain(loop, control, t, n_boot=n) for t in args.targets]})
    return {"arms": arms, "gain": gains}


def machine() -> dict:
    import torch

    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg_at_end": list(os.getloadavg()),
    }


# ---------------------------------------------------------------------------- the page
def _fmt(iv: dict, scale: float = 1.0, digits: int = 2) -> str:
    return f"{scale * iv['mean']:.{digits}f} [{scale * iv['low']:.{digits}f}, {scale * iv['high']:.{digits}f}]"


def markdown(result: dict) -> str:
    s, t = result["settings"], result["settings"]["targets"][0]
    lines = [
        f"| round | frames labelled | loop: clicks/object to IoU {t:g} | control | gain (loop - control) "
        f"| loop never reached | loop mIoU@1 | loop mIoU@3 | loop box mIoU | control box mIoU |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for loop, control, gain in zip(
        result["arms"]["loop"]["rounds"], result["arms"]["control"]["rounds"], result["gain"]
    ):
        lines.append(
            f"| {loop['round']} | {loop['labelled_frames']} | {_fmt(loop['clicks_per_object'])} "
            f"| {_fmt(control['clicks_per_object'])} | {_fmt(gain['clicks_per_object'][0])} "
            f"| {100 * loop['clicks_per_object']['never_reached']:.0f}% | {_fmt(loop['miou_after_1'], 100, 1)} "
            f"| {_fmt(loop['miou_after_3'], 100, 1)} | {_fmt(loop['box_miou'], 100, 1)} | {_fmt(control['box_miou'], 100, 1)} |"
        )
    head = (
        f"{s['val_frames']} held-out val frames ({result['arms']['loop']['rounds'][0]['objects']} objects), seeds "
        f"{s['seeds']}, {s['frames_per_round']} frames per round, cap {s['max_clicks']} clicks; 95% intervals."
    )
    return head + "\n\n" + "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["settings"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for arm, colour in (("loop", "tab:green"), ("control", "tab:grey")):
        rounds = result["arms"][arm]["rounds"]
        x = [r["labelled_frames"] for r in rounds]
        for ax, key, scale in ((axes[0], "clicks_per_object", 1), (axes[1], "miou_after_3", 100)):
            y = np.array([scale * r[key]["mean"] for r in rounds])
            err = np.array(
                [[scale * (r[key]["mean"] - r[key]["low"]), scale * (r[key]["high"] - r[key]["mean"])] for r in rounds]
            ).T
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=colour, label=arm)
    axes[0].set(
        xlabel="frames labelled (retrained on, loop arm)", ylabel=f"clicks per object to IoU {s['targets'][0]:g}"
    )
    axes[1].set(xlabel="frames labelled", ylabel="mean IoU after 3 clicks (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(
        f"data engine on held-out frames: {s['val_frames']} frames, seeds {s['seeds']}, 95% intervals", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- main
#: options that do not change what is measured (a rerun into the same --out may change them)
_FREE = ("out", "threads", "bootstrap")


def accumulated(out: Path, seconds: dict) -> dict:
    """Seconds per phase over every invocation into ``out`` (``timing.json``): a rerun that reuses
    finished rounds reports the time of the work it reused too."""
    path = out / "timing.json"
    total = json.loads(path.read_text()) if path.is_file() else {}
    for phase, value in seconds.items():
        total[phase] = total.get(phase, 0.0) + value
    path.write_text(json.dumps(total, indent=2))
    return total


def check_out(args: argparse.Namespace) -> None:
    """``--out`` holds this run's finished rounds (reused) or nothing: a folder of a run with other
    settings is refused, since its rounds would be mixed into this one's."""
    wanted = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in _FREE}
    marker = args.out / "settings.json"
    if marker.is_file():
        held = json.loads(marker.read_text())
        changed = sorted(k for k in set(held) | set(wanted) if held.get(k) != wanted.get(k))
        if changed:
            raise SystemExit(
                f"--out {args.out} holds a run with other settings "
                f"({', '.join(f'{k}: {held.get(k)!r} there, {wanted.get(k)!r} now' for k in changed)}); "
                "choose another --out, or delete it to start afresh"
            )
    elif args.out.is_dir() and any(args.out.iterdir()):
        raise SystemExit(f"--out {args.out} holds files of something else; choose another --out")
    args.out.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(wanted, indent=2))


def main(argv=None) -> int:
    import torch

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    check_out(args)
    started = time.perf_counter()
    sim = Simulation(args)
    per_seed = [sim.run_seed(seed) for seed in args.seeds]
    result = summarise(per_seed, args)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    seconds = dict(sim.clock.seconds, encode=sim.pool_embeddings.seconds + sim.val_embeddings.seconds)
    seconds["total"] = time.perf_counter() - started
    minutes = {k: round(v / 60, 2) for k, v in accumulated(args.out, seconds).items()}
    command = "python recipes/data_engine.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result.update(command=command, settings=settings, machine=machine(), minutes=minutes)
    (args.out / "data_engine.json").write_text(json.dumps(result, indent=2))
    (args.out / "data_engine.md").write_text(markdown(result))
    plot(result, args.out / "data_engine.png")
    print(markdown(result))
    print(f"minutes: {minutes}; wrote {args.out}/data_engine.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
