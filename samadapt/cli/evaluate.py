"""``samadapt eval`` and ``recipes/evaluate.py``: their options and what they run.

The prompt, batch and example options are the fields of :class:`~samadapt.evaluation.config.EvalConfig`
(help, default and choices from its ``option(...)`` metadata, as ``samadapt train`` builds its
options from :class:`~samadapt.config.TrainConfig`: :func:`samadapt.cli.options.add_dataclass_options`);
the data, model and output options name what to evaluate and where the report goes. :func:`run_eval`
turns the parsed options into library calls (:mod:`samadapt.evaluation.run`,
:mod:`samadapt.evaluation.report`) and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re

from ..errors import ConfigError, DataError
from ..evaluation.config import CLICK_PROMPT, EvalConfig
from .options import add_dataclass_options

__all__ = ["add_eval_arguments", "eval_config_from_args", "run_eval"]

#: the option group of each EvalConfig field on the command line (the others: prompts)
_GROUPS = {"max_images": "data", "num_examples": "output", "batch_size": "output"}


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``recipes/evaluate.py`` and ``samadapt eval``."""
    groups = {"data": _add_data_options(parser)}
    _add_model_options(parser)
    groups.update(prompts=parser.add_argument_group("prompts"), output=parser.add_argument_group("output"))
    add_dataclass_options(groups["prompts"], EvalConfig, groups={k: groups[g] for k, g in _GROUPS.items()})
    _add_output_options(groups["output"])


def _add_data_options(parser: argparse.ArgumentParser):
    from ..data.presets import DATASET_CARDS

    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default="demo",
        choices=sorted(DATASET_CARDS),
        help="dataset preset, or coco for any COCO file (default: demo)",
    )
    data.add_argument("--data-root", help="folder holding the dataset (demo: default SAMADAPT_HOME/data/demo-waste)")
    data.add_argument(
        "--split",
        default="test",
        help="split of the preset (default test: TACO's seeded test, ZeroWaste-f's test, TrashCan's and demo's val)",
    )
    data.add_argument("--images-root", help="dataset coco: the images folder")
    data.add_argument("--annotation-file", help="dataset coco: the COCO annotation file")
    data.add_argument(
        "--dataset-options",
        type=json.loads,
        default=None,
        metavar="JSON",
        help='options of the preset, e.g. \'{"version": "material"}\' for trashcan',
    )
    for split in ("train", "val"):
        name = "training" if split == "train" else "validation"
        data.add_argument(
            f"--demo-{split}-images",
            type=int,
            default=None,
            help=f"demo: regenerate the demo data with this many {name} images (as training did)",
        )
    return data


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    from ..models.family import model_types

    models = parser.add_argument_group("models")
    models.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME_OR_PATH",
        help="a named adapter (demo-mini, taco-vith-lora) or an adapter file; repeat for several",
    )
    models.add_argument(
        "--model",
        default=None,
        choices=sorted(model_types()),
        help="model type of the zero-shot baseline (default: the first adapter's, else mini)",
    )
    models.add_argument(
        "--checkpoint",
        default=None,
        help="base SAM checkpoint, for the zero-shot baseline and the adapters (default: the "
        "adapters' recorded base, the built-in mini weights, or the official file in "
        "SAMADAPT_HOME/checkpoints)",
    )
    models.add_argument(
        "--zero-shot",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also evaluate the un-tuned base (default: yes)",
    )
    models.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def _add_output_options(out) -> None:
    out.add_argument(
        "--out",
        default=None,
        help="folder for metrics.json, metrics.md, examples.png (default: outputs/eval-<dataset>, or the next "
        "free outputs/eval-<dataset>-2, -3, ... when it holds earlier results); a --out folder that holds "
        "something is refused unless --overwrite",
    )
    out.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the report files in a --out folder that holds earlier results (other files are left alone)",
    )
    out.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bars")


def eval_config_from_args(args: argparse.Namespace) -> EvalConfig:
    """The :class:`EvalConfig` of parsed :func:`add_eval_arguments` options (fields not given keep
    their defaults); its errors name the command-line flags."""
    names = {f.name for f in dataclasses.fields(EvalConfig)}
    try:
        return EvalConfig.from_dict({k: v for k, v in vars(args).items() if k in names})
    except ConfigError as e:
        raise ConfigError(re.sub(r"`(\w+)`", lambda m: "--" + m.group(1).replace("_", "-"), str(e))) from None


def run_eval(args: argparse.Namespace) -> int:
    """Build the dataset and the models, evaluate, write the report and print the table.

    Raises :class:`samadapt.SamAdaptError` on bad input (the caller prints it).
    """
    import torch

    from ..adapter_io import read_adapter_metadata
    from ..adapter_store import resolve_adapter
    from ..evaluation.report import report_folder
    from ..evaluation.run import evaluate_models

    if not args.adapter and not args.zero_shot:
        raise ConfigError("nothing to evaluate: give --adapter NAME (one or more) or drop --no-zero-shot")
    cfg = eval_config_from_args(args)
    out = report_folder(args.out, args.dataset, overwrite=args.overwrite)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    # check every adapter name before the (slow) dataset and models
    paths = [resolve_adapter(a) for a in args.adapter]
    metas = [read_adapter_metadata(p) for p in paths]
    dataset = _dataset(args)
    models = _models(args, paths, metas, device)
    results = evaluate_models(models, dataset, cfg, progress=args.progress)
    _report(results, dataset, cfg, out, args.dataset)
    return 0


def _dataset(args: argparse.Namespace):
    """The dataset to evaluate on, its image files checked (seconds, before the models)."""
    from ..evaluation.run import load_eval_dataset

    dataset = load_eval_dataset(
        args.dataset,
        data_root=args.data_root,
        split=args.split,
        images_root=args.images_root,
        annotation_file=args.annotation_file,
        dataset_options=args.dataset_options,
        demo_train_images=args.demo_train_images,
        demo_val_images=args.demo_val_images,
        progress=args.progress,
    )
    dataset.verify_images()  # seconds, before the models: names the missing files
    if dataset.num_instances == 0:
        raise DataError(
            f"{dataset.name}: {len(dataset)} images but no instance to evaluate (skips: "
            f"{dataset.skips or 'none'}); check --split and the annotation file"
        )
    return dataset


def _models(args: argparse.Namespace, paths: list, metas: list[dict], device: str) -> dict:
    """label -> model: the zero-shot base (unless --no-zero-shot), then each --adapter."""
    from ..adapter_store import load
    from ..evaluation.run import ZERO_SHOT_LABEL, adapter_label, zero_shot_model

    models = {}
    taken: set[str] = {ZERO_SHOT_LABEL}
    if args.zero_shot:
        model_type = args.model or (metas[0]["model_type"] if metas else "mini")
        same_base = bool(metas) and metas[0]["model_type"] == model_type
        models[ZERO_SHOT_LABEL] = zero_shot_model(
            model_type, args.checkpoint, base_id=metas[0]["base_id"] if same_base else None, device=device
        )
    for name, path in zip(args.adapter, paths):
        models[adapter_label(name, taken)] = load(path, checkpoint=args.checkpoint, device=device)
    return models


def _report(results: dict, dataset, cfg: EvalConfig, out, dataset_option: str) -> None:
    """Write the report into ``out`` and print the table and the files written."""
    from ..evaluation.report import REPORT_FILES, format_click_table, format_table, write_report

    table = format_click_table(results) if cfg.prompt == CLICK_PROMPT else format_table(results)
    dataset_name = getattr(dataset, "name", dataset_option)
    paths_written = write_report(results, out, dataset_name=dataset_name, max_examples=max(1, cfg.num_examples))
    for stale in sorted(set(REPORT_FILES) - {p.name for p in paths_written.values()}):  # --overwrite: no old figure
        (out / stale).unlink(missing_ok=True)
    first = next(iter(results.values()))
    n_images = (first if isinstance(first, dict) else first.metrics)["num_images"]
    print(f"{dataset_name}: {n_images} images, prompts: {cfg.prompt} (seed {cfg.seed})")
    print(table)
    print(f"wrote {', '.join(str(p) for p in paths_written.values())}")
