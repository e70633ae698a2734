"""Pretrain the built-in ``mini`` SAM on generated generic scenes, the way SAM was trained.

    python recipes/pretrain_mini.py                      # writes samadapt/weights/mini.safetensors + mini.json
    python recipes/pretrain_mini.py --steps 200 --out /tmp/mini-test   # a short run elsewhere
    python recipes/pretrain_mini.py --stage interactive  # the second stage of the committed weights

Stage ``full`` (the default): every part trains from random weights (image encoder, prompt encoder,
mask decoder) with SAM's promptable objective (``samadapt.training.pretrain``). Stage ``interactive``
starts from the weights in ``--out``, freezes the image encoder and trains the prompt encoder and the
mask decoder on several corrective rounds, each fed the previous prediction's logits as the mask
prompt, as SAM was trained: the committed first stage ran with one corrective round and
``--no-mask-prompt``, so the mask path had never been used (a mask prompt turned every refinement into
noise) and more clicks did not help.

Then the model is evaluated zero-shot with exact ground-truth boxes and with the click protocol
(mIoU after each of 5 clicks, the previous logits fed back) on generic validation scenes and on the
waste-domain demo data, and the weights are written in fp16 with a card (recipe, seed, data, steps,
time, machine, metrics, one record per stage) and their sha256.
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
STAGES = ("full", "interactive")
#: what the interactive stage trains (the image encoder stays frozen)
PROMPTABLE = ("prompt_encoder.", "mask_decoder.")


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=STAGES, default="full")
    ap.add_argument("--steps", type=int, default=None, help="default: 3000 (full), 600 (interactive)")
    ap.add_argument("--time-budget-min", type=float, default=50.0, help="stop cleanly after this many minutes")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--prompts-per-image", type=int, default=6)
    ap.add_argument("--lr", type=float, default=None, help="default: 8e-4 (full), 2e-4 (interactive)")
    ap.add_argument("--corrective-rounds", type=int, default=None, help="default: 1 (full), 4 (interactive)")
    ap.add_argument(
        "--mask-prompt",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="feed the previous logits as the mask prompt in corrective rounds (SAM)",
    )
    ap.add_argument(
        "--train-images", type=int, default=None, help="default: 1500 (full), the first stage's (interactive)"
    )
    ap.add_argument("--val-images", type=int, default=None, help="default: 100 (full), the first stage's (interactive)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data-dir", type=Path, default=None, help="default: $SAMADAPT_HOME/data")
    ap.add_argument(
        "--out", type=Path, default=REPO / "samadapt" / "weights", help="folder for mini.safetensors + mini.json"
    )
    args = ap.parse_args(argv)
    full = args.stage == "full"
    args.steps = args.steps or (3000 if full else 600)
    args.lr = args.lr or (8e-4 if full else 2e-4)
    args.corrective_rounds = args.corrective_rounds if args.corrective_rounds is not None else (1 if full else 4)
    if not full and not args.mask_prompt:
        ap.error("--stage interactive trains on the mask prompt: it needs --mask-prompt")
    if not full and not (args.out / "mini.safetensors").is_file():
        ap.error(f"--stage interactive starts from {args.out / 'mini.safetensors'}, which does not exist")
    # the interactive stage trains on the first stage's scenes (its card records how many)
    data = {} if full else json.loads((args.out / "mini.json").read_text()).get("data", {})
    args.train_images = args.train_images or data.get("n_train", 1500)
    args.val_images = args.val_images or data.get("n_val", 100)
    return args


def _model(args):
    """The model to train: random weights (full), or the weights in --out with the image encoder frozen."""
    torch.manual_seed(args.seed)
    if args.stage == "full":
        return samadapt.adapt(samadapt.build_sam("mini", pretrained=False), "full")
    from safetensors.torch import load_file

    sam = samadapt.build_sam("mini", pretrained=False)
    sam.load_state_dict({k: v.float() for k, v in load_file(args.out / "mini.safetensors").items()})
    model = samadapt.adapt(sam, "full")
    for name, p in model.sam.named_parameters():
        p.requires_grad_(name.startswith(PROMPTABLE))
    return model


#: images of each validation set that the click protocol runs on (it is the slow part of the evaluation)
CLICK_IMAGES = 40


def _evaluate(model, roots: dict, seed: int) -> dict:
    """Box metrics on each validation set, and the click protocol (5 clicks, the previous logits fed
    back) on its first :data:`CLICK_IMAGES` images."""
    from samadapt.evaluation.clicks import evaluate_clicks

    metrics = {}
    for name, root in roots.items():
        val = presets.demo(root, "val")
        res = evaluate(model, val, prompt="box", seed=seed, progress=True)
        m = {k: res.metrics[k] for k in ("mean_iou", "mean_precision", "mean_f1", "num_instances")}
        m["coco_AP"] = res.metrics.get("coco", {}).get("AP")
        clicks = evaluate_clicks(model, val, range(min(CLICK_IMAGES, len(val))), max_clicks=5, desc=f"clicks {name}")
        m["click_images"] = clicks.num_images
        m["click_miou_at"] = clicks.metrics()["clicks"]["miou_at"]
        metrics[name] = m
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float)))
        print(f"{name}: mIoU after 1..5 clicks " + " ".join(f"{100 * v:.2f}" for v in m["click_miou_at"]))
    return metrics


def _write_weights(model, out: Path) -> tuple[Path, str]:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    weights = out / "mini.safetensors"
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.sam.state_dict().items()}
    samadapt.files.atomic_write(
        weights, lambda tmp: save_file(state, tmp, metadata={"format": "pt", "model_type": "mini"})
    )
    return weights, hashlib.sha256(weights.read_bytes()).hexdigest()


def _first_stage_recorded(card: dict) -> dict:
    """A card written before stages were recorded gets its first stage as ``stages[0]``: the run its
    top-level fields describe, which had no mask prompt (the flag did not exist; ``--no-mask-prompt``
    reproduces it)."""
    if "stages" not in card:
        first = {k: card[k] for k in ("recipe", "steps", "batch_size", "prompts_per_image", "lr") if k in card}
        first["recipe"] = first.get("recipe", "python recipes/pretrain_mini.py") + " --no-mask-prompt"
        first.update(stage="full", trains="every parameter", corrective_rounds=1, mask_prompt=False)
        first.update({k: card[k] for k in ("train_seconds", "total_seconds", "machine", "date") if k in card})
        card["stages"] = [first]
    return card


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
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
    roots = {"generic_val": generic, "waste_val": waste}
    train_set = presets.demo(generic, "train")

    model = _model(args)
    before = None if args.stage == "full" else _evaluate(model, roots, args.seed)
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
        corrective_rounds=args.corrective_rounds,
        mask_prompt=args.mask_prompt,
        seed=args.seed,
        time_budget_s=args.time_budget_min * 60,
    )
    t0 = time.perf_counter()
    history = pretrain(model, dataset, cfg)
    train_seconds = time.perf_counter() - t0
    metrics = _evaluate(model, roots, args.seed)

    weights, sha = _write_weights(model, args.out)
    stage = {
        "stage": args.stage,
        "recipe": "python recipes/pretrain_mini.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "trains": "every parameter" if args.stage == "full" else "prompt encoder and mask decoder",
        "steps": cfg.steps,
        "batch_size": args.batch_size,
        "prompts_per_image": args.prompts_per_image,
        "lr": args.lr,
        "corrective_rounds": args.corrective_rounds,
        "mask_prompt": args.mask_prompt,
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
        "metrics_before": before,
        "metrics_after": metrics,
        "history": history,
    }
    card_path = args.out / "mini.json"
    card = _first_stage_recorded(json.loads(card_path.read_text())) if args.stage != "full" else {}
    card.update(
        {
            "model_type": "mini",
            "file": weights.name,
            "sha256": sha,
            "size_bytes": weights.stat().st_size,
            "dtype": "float16",
            "seed": args.seed,
            "data": {
                "domain": "generic",
                "generator": "samadapt.data.make_demo_dataset",
                "n_train": args.train_images,
                "n_val": args.val_images,
                "seed": 1000 + args.seed,
            },
            "metrics_zero_shot_box_prompts": metrics,
        }
    )
    if args.stage == "full":
        card.update({k: stage[k] for k in ("recipe", "steps", "batch_size", "prompts_per_image", "lr")})
        card.update({k: stage[k] for k in ("train_seconds", "total_seconds", "machine", "date", "history")})
    card["stages"] = [s for s in card.get("stages", []) if s["stage"] != args.stage] + [
        {k: v for k, v in stage.items() if k != "history" or args.stage != "full"}
    ]
    card_path.write_text(json.dumps(card, indent=2))
    if args.stage == "full":
        plot_training_curves(
            [{"step": h["step"], "train_loss": h["loss"]} for h in history], args.out / "mini_pretrain_curve.png"
        )
    print(json.dumps({k: card[k] for k in ("sha256", "size_bytes", "metrics_zero_shot_box_prompts")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
