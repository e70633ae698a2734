"""Evaluate zero-shot SAM and fine-tuned adapters on one dataset, with the same prompts.

What ``recipes/evaluate.py`` and ``samadapt eval`` run (their options: :mod:`samadapt.cli.evaluate`),
from Python::

    dataset = load_eval_dataset("demo")
    models = {"zero-shot": zero_shot_model("mini"), "demo-mini": samadapt.load("demo-mini")}
    results = evaluate_models(models, dataset, EvalConfig(prompt="jitter"))
    write_report(results, "outputs/eval-demo", dataset_name=dataset.name)   # samadapt.evaluation.report

Every model sees exactly the same prompts: they are drawn from a generator seeded by (seed, image id)
(:mod:`samadapt.evaluation.evaluate`), so the numbers of a model are the ones the trainer reports for
it when the seed, prompt kind and images are the same.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ..adapted import AdaptedSam, adapt
from ..errors import CheckpointError, CheckpointNotFoundError, ConfigError
from .config import CLICK_PROMPT, EvalConfig
from .evaluate import EvalResult, evaluate

__all__ = [
    "ZERO_SHOT_LABEL",
    "adapter_label",
    "compare_models",
    "evaluate_models",
    "load_eval_dataset",
    "zero_shot_model",
]

ZERO_SHOT_LABEL = "zero-shot"


# ---------------------------------------------------------------------------- pieces
def load_eval_dataset(
    dataset: str,
    *,
    data_root: str | os.PathLike | None = None,
    split: str = "test",
    images_root: str | os.PathLike | None = None,
    annotation_file: str | os.PathLike | None = None,
    dataset_options: Mapping[str, Any] | None = None,
    demo_train_images: int | None = None,
    demo_val_images: int | None = None,
    progress: bool = True,
):
    """The images to evaluate on, as a :class:`~samadapt.data.coco.CocoInstances`.

    Args:
        dataset: ``taco``, ``zerowaste``, ``trashcan``, ``demo`` (presets, read from ``data_root``)
            or ``coco`` (any COCO file: ``images_root`` + ``annotation_file``).
        split: of a preset; ``"test"`` is the held-out split of each (TACO's seeded 80/20 test,
            ZeroWaste-f's test, TrashCan's and demo's val).
        dataset_options: passed to the preset (e.g. ``{"version": "material"}`` for trashcan).
        demo_train_images, demo_val_images: ``demo`` only. When both are None and ``data_root``
            (default ``SAMADAPT_HOME/data/demo-waste``, where training writes it) already holds a
            demo dataset, it is used as it is; otherwise it is generated with these counts
            (defaults: the training defaults), exactly as training generates it.
    """
    from ..data import presets

    options = dict(dataset_options or {})
    card = presets.get_dataset_card(dataset)
    if card.held_out_file:  # the file given is the held-out file
        return card.open("val", options=options, images_root=images_root, annotation_file=annotation_file)
    root = card.root(data_root)
    if card.generate is not None:
        asked = demo_train_images is not None or demo_val_images is not None
        if asked or not card.generated(root):
            card.generate(
                root,
                n_train=presets.DEMO_TRAIN_IMAGES if demo_train_images is None else demo_train_images,
                n_val=presets.DEMO_VAL_IMAGES if demo_val_images is None else demo_val_images,
                progress=progress,
            )
    return card.open(split, options=options, data_root=root)


def zero_shot_model(
    model_type: str,
    checkpoint: str | os.PathLike | None = None,
    *,
    base_id: str | None = None,
    device: str | torch.device = "cpu",
) -> AdaptedSam:
    """The un-tuned SAM, wrapped as an :class:`AdaptedSam` (the ``decoder`` strategy only marks the
    decoder trainable, so the weights are exactly the base's).

    The base: ``checkpoint`` if given; else the base an adapter was trained on (``base_id`` from its
    metadata); else samadapt's built-in weights (``mini``) or the official checkpoint in
    ``SAMADAPT_HOME/checkpoints``. Never random weights.
    """
    from ..models.checkpoints import find_base_checkpoint, official_checkpoint
    from ..models.family import build_model, get_card
    from ..paths import checkpoints_dir

    card = get_card(model_type)
    if checkpoint is not None:
        sam = build_model(model_type, checkpoint)
    elif base_id is not None and base_id.startswith("random:"):
        raise CheckpointError(
            f"the adapters were trained on randomly initialised {model_type} weights, which cannot "
            "be rebuilt; pass --checkpoint with the file they were trained from"
        )
    elif base_id is not None and not base_id.startswith("builtin:"):
        sam = build_model(model_type, find_base_checkpoint(model_type, base_id))
    elif card.builtin_weights is not None:
        sam = build_model(model_type)  # raises when the built-in weights are not installed
    else:
        official = official_checkpoint(model_type)
        path = checkpoints_dir() / official.filename if official is not None else None
        if path is None or not path.is_file():
            where = f"{path}" if path is not None else "SAMADAPT_HOME/checkpoints"
            raise CheckpointNotFoundError(
                f"zero-shot {model_type} needs its weights: pass --checkpoint, or run `samadapt download-checkpoint "
                f"{model_type}` (expected at {where})"
            )
        sam = build_model(model_type, path)
    return adapt(sam, "decoder").to(device).eval()


def compare_models(
    models: Mapping[str, AdaptedSam],
    dataset,
    config: EvalConfig | None = None,
    *,
    progress: bool = True,
    **options: Any,
) -> dict[str, EvalResult]:
    """Evaluate each model on the same images with the same prompts.

    Args:
        models: label -> model (e.g. ``{"zero-shot": ..., "taco-vith": ...}``).
        dataset: a :class:`~samadapt.data.coco.CocoInstances` (or anything
            :func:`~samadapt.evaluation.evaluate.evaluate` takes).
        config: the :class:`~samadapt.evaluation.config.EvalConfig` (``options``: fields of it to
            replace); ``config.num_examples`` images are kept per model for the examples figure.

    Returns:
        label -> :class:`~samadapt.evaluation.evaluate.EvalResult`, in the order of ``models``.
    """
    cfg = EvalConfig.of(config, **options)
    if not models:
        raise ConfigError("compare_models needs at least one model")
    return {
        label: evaluate(
            model, dataset, cfg, progress=progress, return_examples=cfg.num_examples, desc=f"evaluating {label}"
        )
        for label, model in models.items()
    }


def evaluate_models(
    models: Mapping[str, AdaptedSam],
    dataset,
    config: EvalConfig | None = None,
    *,
    progress: bool = True,
    **options: Any,
) -> dict[str, EvalResult | dict[str, Any]]:
    """:func:`compare_models`, or with ``prompt="clicks"`` the click protocol
    (:func:`~samadapt.evaluation.clicks.evaluate_clicks`: ``max_clicks``, ``mask_prompt``; its
    clicks are deterministic) on the seeded subset of ``max_images`` images that
    :func:`~samadapt.evaluation.evaluate.evaluate` takes.

    Returns:
        label -> :class:`~samadapt.evaluation.evaluate.EvalResult`, or for clicks the metrics dict
        of :meth:`~samadapt.evaluation.clicks.ClickRecords.metrics`; what
        :func:`~samadapt.evaluation.report.write_report` takes.
    """
    cfg = EvalConfig.of(config, **options)
    if cfg.prompt != CLICK_PROMPT:
        return compare_models(models, dataset, cfg, progress=progress)
    from .clicks import evaluate_clicks

    if not models:
        raise ConfigError("evaluate_models needs at least one model")
    indices = None
    if cfg.max_images is not None:
        from ..data.subsets import seeded_indices

        indices = seeded_indices(dataset, cfg.max_images, seed=cfg.seed, purpose="eval")
    return {
        label: evaluate_clicks(
            model,
            dataset,
            indices,
            max_clicks=cfg.max_clicks,
            mask_prompt=cfg.mask_prompt,
            progress=progress,
            desc=f"clicks: {label}",
        ).metrics()
        for label, model in models.items()
    }


def adapter_label(name_or_path: str, taken: set[str]) -> str:
    """A short label of an adapter, unique among ``taken`` (and added to it): the adapter's name, or
    its file (folder) name."""
    p = Path(name_or_path)
    if p.is_dir() or (p.is_file() and p.name == "adapter.safetensors"):
        label = (p if p.is_dir() else p.parent).name
    elif p.is_file():
        label = p.stem
    else:
        label = str(name_or_path)
    base, k = label, 2
    while label in taken:
        label, k = f"{base} ({k})", k + 1
    taken.add(label)
    return label
