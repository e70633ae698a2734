"""Trainable parameters and adapter file sizes for every model type x strategy (default options):
SAM 1's types and SAM 2.1's (``samadapt.model_types()``; SAM 2.1's need Meta's ``sam2`` package).

Models are built on the meta device (no weights). The file size is the exact size of what
``samadapt.save_adapter`` writes with no ``info`` (the dataset, metrics and training config a real
run adds take a few kB more), computed by ``samadapt.sizes.adapter_file_size``. Every file below
``--verify-below`` MB is also written for real by ``save_adapter`` (zeros as weights) and its size
compared: the script fails if they differ.

    python benchmarks/adapter_sizes.py            # writes benchmarks/results/adapter_sizes.json, prints a table
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import safetensors

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from _common import machine_info, write_json  # noqa: E402

import samadapt  # noqa: E402
from samadapt.sizes import strategy_size, written_adapter_size  # noqa: E402

RESULTS = HERE / "results" / "adapter_sizes.json"


def measure(verify_below_mb: float) -> list[dict]:
    rows = []
    for model_type in samadapt.model_types():
        for strategy in samadapt.STRATEGIES:
            size = strategy_size(model_type, strategy)
            verified = size.adapter_bytes < verify_below_mb * 1e6
            if verified:
                written = written_adapter_size(model_type, strategy)
                if written != size.adapter_bytes:
                    raise SystemExit(f"{model_type}/{strategy}: computed {size.adapter_bytes} B, written {written} B")
            rows.append(
                {
                    "model_type": model_type,
                    "strategy": strategy,
                    "base_parameters": size.base,
                    "total_parameters": size.total,
                    "trainable_parameters": size.trainable,
                    "trainable_percent": round(size.trainable_percent, 3),
                    "adapter_bytes": size.adapter_bytes,
                    "verified_by_writing": verified,
                }
            )
    return rows


def _bytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model type | strategy | trainable parameters | % of the model | adapter file |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model_type']} | {r['strategy']} | {r['trainable_parameters']:,} | "
            f"{r['trainable_percent']:.2f} % | {_bytes(r['adapter_bytes'])} ({r['adapter_bytes']:,} B) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument(
        "--verify-below",
        type=float,
        default=200.0,
        metavar="MB",
        help="write files up to this size for real to check the computed size (default 200)",
    )
    args = parser.parse_args(argv)

    rows = measure(args.verify_below)
    result = {
        "benchmark": "adapter_sizes",
        "samadapt": samadapt.__version__,
        "safetensors": safetensors.__version__,
        "machine": machine_info("cpu"),  # date and torch version included
        "options": "each strategy's defaults; adapter_bytes without info (a real run adds a few kB)",
        "rows": rows,
    }
    write_json(args.out, result)
    print(markdown(rows))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
