"""``samadapt info``, ``samadapt list`` and ``samadapt download-checkpoint``: the model types and
strategies, the installed adapters, the official checkpoints."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import ConfigError

__all__ = [
    "add_download_arguments",
    "add_info_arguments",
    "add_list_arguments",
    "info",
    "run_download",
    "run_info",
    "run_list",
]


def _print_table(rows: list[list[str]], header: list[str]) -> None:
    from ..evaluation.report import text_table

    print(text_table(header, rows))


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


# ---------------------------------------------------------------------------- samadapt info
def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def info() -> dict[str, Any]:
    """What ``samadapt info --json`` prints: model types, strategies, trainable parameter counts."""
    from ..models.family import family_for_type, model_types
    from ..models.sam2_family import require_sam2
    from ..sizes import strategy_size
    from ..strategies import STRATEGIES

    cards = model_types()
    rows = [
        {
            "name": c.name,
            "tag": c.tag,
            "family": family_for_type(c.name).label,
            "image_size": c.image_size,
            "encoder": _encoder_shape(c),
            "checkpoint": c.checkpoint or (f"built-in {c.builtin_weights}" if c.builtin_weights else None),
            "description": c.description,
        }
        for c in cards.values()
    ]
    strategies = [{"name": s.name, "description": s.description} for s in STRATEGIES.values()]
    parameters, unavailable = {}, {}
    for mt in cards:
        if family_for_type(mt).name == "sam2":
            try:
                require_sam2()  # SAM 2.1's architectures come from Meta's package
            except ConfigError as e:
                unavailable[mt] = str(e).splitlines()[0]
                continue
        sizes = {s: strategy_size(mt, s) for s in STRATEGIES}
        parameters[mt] = {
            "base": next(iter(sizes.values())).base,
            "strategies": {
                s: {
                    "trainable": z.trainable,
                    "total": z.total,
                    "trainable_percent": round(z.trainable_percent, 3),
                    "adapter_bytes": z.adapter_bytes,
                }
                for s, z in sizes.items()
            },
        }
    return {
        "model_types": rows,
        "strategies": strategies,
        "parameters": parameters,
        "unavailable": unavailable,
        "note": "default options of each strategy; counted on the meta device (no weights)",
    }


def run_info(args: argparse.Namespace) -> int:
    data = info()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print("Model types")
    _print_table(
        [
            [
                m["name"],
                m["tag"],
                m["family"],
                str(m["image_size"]),
                m["encoder"],
                m["checkpoint"] or "-",
            ]
            for m in data["model_types"]
        ],
        ["name", "tag", "family", "image", "encoder", "weights"],
    )
    print("\nStrategies")
    _print_table([[s["name"], s["description"]] for s in data["strategies"]], ["name", "description"])
    print("\nTrainable parameters (default options; adapter file size in MB)")
    names = [s["name"] for s in data["strategies"]]
    rows = []
    for mt, p in data["parameters"].items():
        cells = [
            f"{_millions(p['strategies'][s]['trainable'])} ({p['strategies'][s]['adapter_bytes'] / 1e6:.1f} MB)"
            for s in names
        ]
        rows.append([mt, _millions(p["base"]), *cells])
    _print_table(rows, ["model", "total", *names])
    for mt, why in data["unavailable"].items():
        print(f"{mt}: not counted ({why})")
    return 0


def _encoder_shape(card) -> str:
    """The image encoder in a few words: ViT width x depth, heads (SAM 1); Hiera and its config (SAM 2.1)."""
    if hasattr(card, "encoder_embed_dim"):
        return f"ViT {card.encoder_embed_dim}x{card.encoder_depth}, {card.encoder_num_heads} heads"
    return f"Hiera ({card.config.rsplit('/', 1)[-1]}{', overrides' if card.overrides else ''})"


# ---------------------------------------------------------------------------- samadapt list
def add_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _main_metric(card: dict[str, Any]) -> str:
    """The headline number of an adapter card: fine-tuned mean IoU where the card has it."""
    metrics = card.get("metrics")
    if not isinstance(metrics, dict):
        return "-"
    note = " (on its training images)" if (card.get("data") or {}).get("note") else ""
    for where in (metrics.get("fine_tuned"), metrics):
        if isinstance(where, dict) and isinstance(where.get("mean_iou"), (int, float)):
            return f"mIoU {100 * where['mean_iou']:.2f}{note}"
    return "-"


def run_list(args: argparse.Namespace) -> int:
    from ..adapter_store import list_adapters
    from ..paths import adapters_dir

    adapters = list_adapters()
    if args.json:
        print(json.dumps(adapters, indent=2, default=str))
        return 0
    if not adapters:
        print(f"no adapters in {adapters_dir()}")
        return 0
    _print_table(
        [
            [
                a["name"],
                str(a.get("model_type", "?")),
                str(a.get("strategy", "?")),
                str(a.get("dataset", "?")),
                _main_metric(a),
                a["path"],
            ]
            for a in adapters
        ],
        ["name", "model type", "strategy", "dataset", "metric", "path"],
    )
    return 0


# ---------------------------------------------------------------------------- samadapt download-checkpoint
def add_download_arguments(parser: argparse.ArgumentParser) -> None:
    from ..models.checkpoints import downloadable_checkpoints

    parser.add_argument("model_type", choices=sorted(downloadable_checkpoints()))
    parser.add_argument("--url", help="download from this URL instead of the official one (a mirror)")
    parser.add_argument("--dir", help="target folder (default: $SAMADAPT_HOME/checkpoints)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--sha256", help=argparse.SUPPRESS)  # expected digest override, for tests of mirrors


def run_download(args: argparse.Namespace) -> int:
    from ..models.checkpoints import download_checkpoint

    path = download_checkpoint(
        args.model_type, url=args.url, directory=args.dir, progress=not args.no_progress, sha256=args.sha256
    )
    print(f"{path} (sha256 verified)")
    return 0
