"""Render the benchmark JSON (``benchmarks/results/*.json`` written by ``run.py``) as markdown.

    python benchmarks/report.py                          # print the markdown
    python benchmarks/report.py --doc docs/performance.md  # replace the generated part of the doc

In ``--doc`` mode the text between ``<!-- BEGIN GENERATED: benchmarks/report.py -->`` and
``<!-- END GENERATED -->`` is replaced, so every number in the doc comes from the committed JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BEGIN = "<!-- BEGIN GENERATED: benchmarks/report.py -->"
END = "<!-- END GENERATED -->"
ORDER = [
    "cached_embeddings",
    "batched_prediction",
    "sdpa_attention",
    "activation_checkpointing",
    "decoder_step",
    "train_step",
    "inference",
    "limits",
    "peers",
    "peers-partial",
]
TITLES = {
    "cached_embeddings": "(a) Decoder training: cached embeddings vs the frozen encoder every step",
    "batched_prediction": "(b) Batched prediction vs a SamPredictor loop",
    "sdpa_attention": "(c) SDPA vs upstream encoder attention",
    "activation_checkpointing": "(d) Activation checkpointing",
    "decoder_step": "Decoder step: shared vs per-prompt image work",
    "train_step": "Training step per strategy",
    "inference": "Prediction throughput",
    "limits": "Distance to the limit: achieved FLOP/s beside a plain matrix product",
    "peers": "samadapt beside what users pick instead (benchmarks/peers.py)",
    "peers-partial": "samadapt beside what users pick instead (benchmarks/peers.py; stopped before its end)",
}


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v).replace("|", "\\|")


def md_table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(out)


def render_one(d: dict[str, Any]) -> str:
    m = d["machine"]
    lines = [f"### {TITLES.get(d['benchmark'], d['benchmark'])} — {d['device']}, {d['dtype']}, `{d['mode']}`", ""]
    lines.append(
        f"*{m.get('device_name', m.get('cpu'))}; torch {m['torch']}, {m['torch_threads']} thread(s); "
        f"{m['date']}; load average {m['loadavg_at_start'][0]:.1f} at start, "
        f"{m.get('loadavg_at_end', [float('nan')])[0]:.1f} at end; {d.get('elapsed_s', '?')} s. "
        f"Source: `benchmarks/results/{d['_file']}`.*"
    )
    lines.append("")
    setup = d.get("setup", {})
    for key in (
        "what",
        "step",
        "call",
        "ours",
        "upstream",
        "encoder_path",
        "cached_path",
        "ideal_ratio",
        "efficiency",
        "shared",
        "unshared",
        "memory_ratio",
        "adapter_bytes",
        "weights",
        "epoch_s",
        "frame_order",
        "peak_memory",
        "iou",
        "ratios",
    ):
        if key in setup:
            lines.append(f"- {key.replace('_', ' ')}: {setup[key]}")
    variants = setup.get("variants") or ([setup["variant"]] if isinstance(setup.get("variant"), dict) else [])
    for v in variants:
        lines.append(f"- model: {v['what']}")
    lines.append("")
    for t in d.get("tables", []):
        lines += [f"**{t['title']}**", "", md_table(t["columns"], t["rows"]), ""]
    if d.get("targets"):
        lines += [
            "Targets:",
            "",
            md_table(
                ["name", "target", "value", "met", "note"],
                [{**t, "met": "yes" if t["met"] else ("no" if t["met"] is False else "-")} for t in d["targets"]],
            ),
            "",
        ]
    if d.get("checks"):
        ok = sum(c["passed"] for c in d["checks"])
        lines.append(f"Equality checks: {ok}/{len(d['checks'])} passed.")
        for c in d["checks"]:
            extra = ", ".join(f"{k} {_cell(v)}" for k, v in c.items() if k not in ("name", "passed"))
            lines.append(f"- {'pass' if c['passed'] else '**FAIL**'}: {c['name']}" + (f" ({extra})" if extra else ""))
        lines.append("")
    for k, v in d.get("summary", {}).items():
        lines.append(f"- {k.replace('_', ' ')}: {_cell(v)}")
    for k, v in d.get("not_run", {}).items():
        lines.append(f"- not run: {k}: {v}")
    for n in d.get("notes", []):
        lines.append(f"- note: {n}")
    lines.append("")
    for p in d.get("profiles", []):
        lines += [
            f"<details><summary>Profile: {p['title']}</summary>",
            "",
            "```",
            p["table"].rstrip(),
            "```",
            "",
            "</details>",
            "",
        ]
    return "\n".join(lines)


def load(results: Path) -> list[dict[str, Any]]:
    docs = []
    for f in sorted(results.glob("*.json")):
        try:
            d = json.loads(f.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(d, dict) and d.get("benchmark") in ORDER and "tables" in d:
            docs.append({**d, "_file": f.name})
    docs.sort(key=lambda d: (ORDER.index(d["benchmark"]), d["device"], d["mode"] == "full"))
    return docs


# Targets that only a GPU run measures: (benchmark, target) -> shown as not run without its -cuda JSON.
GPU_TARGETS = [
    ("train_step", "ViT-H lora/adapter training, 1024 px, batch 2, checkpointing + bf16", "peak <= 16 GiB"),
    ("cached_embeddings", "decoder-only training on cached embeddings", ">= 2000 prompts/s"),
    ("inference", "ViT-H prediction, bf16", ">= 25 images/s"),
    ("batched_prediction", "predict_batch vs SamPredictor loop on GPU", ">= 1.5x"),
]


def targets_overview(docs: list[dict[str, Any]]) -> str:
    rows = []
    for d in docs:
        for t in d.get("targets", []):
            rows.append(
                {
                    "benchmark": f"{d['benchmark']} ({d['device']}, {d['mode']})",
                    "target": f"{t['name']}: {t['target']}",
                    "value": t["value"],
                    "met": "yes" if t["met"] else ("no" if t["met"] is False else "-"),
                    "note": t.get("note", ""),
                }
            )
    have = {(d["benchmark"], d["device"]) for d in docs}
    for bench, name, target in GPU_TARGETS:
        if (bench, "cuda") not in have:
            rows.append(
                {
                    "benchmark": f"{bench} (cuda)",
                    "target": f"{name}: {target}",
                    "value": None,
                    "met": "not run",
                    "note": "unmeasured: no GPU was lent so far; bash benchmarks/gpu.sh --wheels DIR --out DIR measures it",
                }
            )
    return "### Targets\n\n" + md_table(["benchmark", "target", "value", "met", "note"], rows) + "\n"


def render(results: Path) -> str:
    docs = load(results)
    if not docs:
        return "_No benchmark results yet: run `python benchmarks/run.py --quick`._\n"
    return targets_overview(docs) + "\n" + "\n".join(render_one(d) for d in docs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--doc", help="markdown file whose generated section to replace")
    args = ap.parse_args(argv)
    text = render(Path(args.results))
    if not args.doc:
        sys.stdout.write(text)
        return 0
    doc = Path(args.doc)
    src = doc.read_text()
    if BEGIN not in src or END not in src:
        raise SystemExit(f"{doc} has no {BEGIN} ... {END} section")
    head, rest = src.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n\n{text}\n{END}{tail}")
    print(f"updated {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
