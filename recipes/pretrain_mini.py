"""Pretrain the built-in ``mini`` SAM on generated generic scenes, the way SAM was trained.

    python recipes/pretrain_mini.py                      # writes samadapt/weights/mini.safetensors + mini.json
    python recipes/pretrain_mini.py --steps 200 --out /tmp/mini-test   # a short run elsewhere

Every part trains (image encoder, prompt encoder, mask decoder) with SAM's promptable objective
(``samadapt.training.pretrain``). Then the model is evaluated zero-shot with exact ground-truth boxes on
generic validation scenes and on the waste-domain demo data, and the weights are written in fp16 with a
card (recipe, seed, data, steps, time, machine, metrics) and their sha256.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

import samadapt
from samadapt.data import make_demo_dataset, presets
from samadapt.data.prompts import PromptConfig
from samadapt.data.sam_dataset import SamPromptDataset
from samadapt.evaluation.evaluate import evaluate
from samadapt.evaluation.plots import plot_training_curves
from samadapt.training.pretrain import PretrainConfig, pretrain

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--time-budget-min", type=float, default=50.0, help="stop cleanly after this many minutes")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--prompts-per-image", type=int, default=6)
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--train-images", type=int, default=1500)
    ap.add_argument("--val-images", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data-dir", type=Path, default=None, help="default: $SAMADAPT_HOME/data")
    ap.add_argument(
        "--out", type=Path, default=REPO / "samadapt" / "weights", help="folder for mini.safetensors + mini.json"
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    data_dir = args.data_dir or samadapt.samadapt_home() / "data"
    t_start = time.perf_counter()
    generic = make_demo_dataset(
        data_dir / "pretrain-generic",
        domain="generic",
        n_train=args.train_images,
        n_val=args.val_images,
        seed=1000 + args.seed,
    )
    waste = make_demo_dataset(data_dir / "demo-waste", domain="waste", n_train=160, n_val=40, seed=0)
    train_set = presets.demo(generic, "train")

    torch.manual_seed(args.seed)
    model = samadapt.adapt(samadapt.build_sam("mini", pretrained=False), "full")
    dataset = SamPromptDataset(
        train_set,
        model.transform,
        PromptConfig(box_noise=0.1, num_points=1),
        max_instances=args.prompts_per_image,
        seed=args.seed,
    )
    cfg = PretrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        prompts_per_image=args.prompts_per_image,
        lr=args.lr,
        seed=args.seed,
        time_budget_s=args.time_budget_min * 60,
    )
    t0 = time.perf_counter()
    history = pretrain(model, dataset, cfg)
    train_seconds = time.perf_counter() - t0

    metrics = {}
    for name, root in (("generic_val", generic), ("waste_val", waste)):
        res = evaluate(model, presets.demo(root, "val"), prompt="box", seed=args.seed, progress=True)
        metrics[name] = {k: res.metrics[k] for k in ("mean_iou", "mean_precision", "mean_f1", "num_instances")}
        metrics[name]["coco_AP"] = res.metrics.get("coco", {}).get("AP")
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics[name].items() if isinstance(v, float)))

    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "mini.safetensors"
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.sam.state_dict().items()}
    from safetensors.torch import save_file

    samadapt.files.atomic_write(
        weights, lambda tmp: save_file(state, tmp, metadata={"format": "pt", "model_type": "mini"})
    )
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    card = {
        "model_type": "mini",
        "file": weights.name,
        "sha256": sha,
        "size_bytes": weights.stat().st_size,
        "dtype": "float16",
        "recipe": "python recipes/pretrain_mini.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "seed": args.seed,
        "data": {
            "domain": "generic",
            "generator": "samadapt.data.make_demo_dataset",
            "n_train": args.train_images,
            "n_val": args.val_images,
            "seed": 1000 + args.seed,
        },
        "steps": cfg.steps,
        "batch_size": args.batch_size,
        "prompts_per_image": args.prompts_per_image,
        "lr": args.lr,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "metrics_zero_shot_box_prompts": metrics,
        "history": history,
    }
    (args.out / "mini.json").write_text(json.dumps(card, indent=2))
    plot_training_curves(
        [{"step": h["step"], "train_loss": h["loss"]} for h in history], args.out / "mini_pretrain_curve.png"
    )
    print(
        json.dumps(
            {k: card[k] for k in ("sha256", "size_bytes", "steps", "train_seconds", "metrics_zero_shot_box_prompts")},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
