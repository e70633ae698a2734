"""What a training run writes besides its adapter: the report, history and curves, the summary
printed at the end, and the numbers that go into them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..adapted import AdaptedSam
from ..config import TrainConfig
from ..files import atomic_write
from .preflight import run_name
from .state import TrainProgress


def json_default(x):
    return float(x) if isinstance(x, (np.floating, np.integer)) else str(x)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA max allocated on a GPU, else the peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def write_outputs(
    run_dir: Path,
    cfg: TrainConfig,
    progress: TrainProgress,
    final: dict,
    zs_examples,
    ft_examples,
    plot_training_curves,
    data: dict[str, Any] | None = None,
) -> None:
    """``metrics.json`` / ``metrics.md`` / ``examples.png`` (with ``data``, what the run trained and
    measured on), ``history.json`` and ``curves.png`` (every step's loss within the epochs)."""
    from ..evaluation.report import write_report

    results = (
        {"fine-tuned": final} if progress.zero_shot is None else {"zero-shot": progress.zero_shot, "fine-tuned": final}
    )
    examples = {"zero-shot": zs_examples, "fine-tuned": ft_examples} if zs_examples else {"fine-tuned": ft_examples}
    write_report(
        results,
        run_dir,
        dataset_name=cfg.dataset_tag,
        examples=examples,
        max_examples=max(1, cfg.num_examples),
        data=data,
    )
    atomic_write(run_dir / "history.json", lambda tmp: Path(tmp).write_text(json.dumps(progress.history, indent=2)))
    if progress.history:
        plot_training_curves(
            progress.history,
            run_dir / "curves.png",
            zero_shot=progress.zero_shot_epoch_val or progress.zero_shot,  # on the images the epochs were scored on
            step_losses=progress.step_losses,
        )


def summary_text(
    cfg, model: AdaptedSam, progress: TrainProgress, final, cache, adapter_path: Path, published, run_dir
) -> str:
    n_t, n = model.num_parameters(True), model.num_parameters()
    lines = [
        "",
        f"== samadapt: {run_name(cfg)} ({cfg.strategy} on {cfg.model}, dataset {cfg.dataset_tag}) ==",
        f"trainable parameters  {n_t:,} of {n:,} ({100 * n_t / n:.2f}%)",
        f"epochs                {progress.epoch} run, best {progress.best_epoch}"
        f"{', stopped early' if progress.stopped_early else ''}; {progress.global_step} steps, "
        f"{progress.train_seconds:.1f} s training ({progress.train_seconds / max(1, len(progress.history)):.1f} s/epoch)",
    ]
    if cache is not None:
        lines.append(f"embedding cache       {cache.summary()}")
    lines.append(
        f"validation            {final['num_instances']} instances, prompts: {cfg.eval_prompt}"
        f"{'; on the TRAINING images (--validate-on-train), not held out' if cfg.validate_on_train else ''}"
    )
    lines.append(f"{'':22}{'mean IoU':>10}{'precision':>11}{'mean F1':>9}{'mask AP':>9}")
    rows = ([("zero-shot", progress.zero_shot)] if progress.zero_shot else []) + [("fine-tuned", final)]
    for label, m in rows:
        ap = m.get("coco", {}).get("AP", float("nan"))
        lines.append(
            f"  {label:20}{100 * m['mean_iou']:>10.2f}{100 * m['mean_precision']:>11.2f}{100 * m['mean_f1']:>9.2f}{100 * ap:>9.2f}"
        )
    if progress.zero_shot:
        lines.append(f"  {'gain':20}{100 * (final['mean_iou'] - progress.zero_shot['mean_iou']):>+10.2f}")
    size = adapter_path.stat().st_size / 2**20
    lines.append(f"adapter               {adapter_path} ({size:.2f} MiB)")
    if published:
        lines.append(f"load it with          samadapt.load({published!r})")
    lines.append(f"outputs               {run_dir}/ (metrics.json, metrics.md, examples.png, curves.png, logs/)")
    return "\n".join(lines)
