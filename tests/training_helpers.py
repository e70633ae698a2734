"""Helpers of the tests that train in this process (tests/training/test_training.py, test_interactive_training.py,
test_dora.py, test_segment_classes.py and conftest's fixtures): the tiny run as a config, and the run."""

from __future__ import annotations

from pathlib import Path

import torch

from samadapt.config import TrainConfig

#: the size of the session's demo data (conftest's ``demo_data_root``)
TINY_DEMO = {"train": 6, "val": 3}
#: the tiny run, seconds on a 2-core CPU: 2 epochs of 3 steps, no automatic-mask calibration at its end.
#: The one definition: :func:`tiny_config` (a config) and conftest's ``tiny_run_args`` (options) are it.
TINY_RUN = {"epochs": 2, "prompts_per_image": 4, "batch_size": 2, "auto_calibration_images": 0}


def tiny_config(demo_data_root: Path, folder: Path, checkpoint: Path | None = None, **overrides) -> TrainConfig:
    """The tiny run of conftest's ``tiny_run_args`` as a config writing into ``folder`` (``run/``,
    ``cache/``), quiet and without the extras (zero-shot evaluation, example figures, TensorBoard,
    publishing, automatic-mask calibration) unless ``overrides`` ask for them. ``checkpoint``: the
    base weights (None: the built-in ones)."""
    kw = dict(
        strategy="decoder",
        model="mini",
        checkpoint=None if checkpoint is None else str(checkpoint),
        dataset="demo",
        data_root=str(demo_data_root),
        demo_train_images=TINY_DEMO["train"],
        demo_val_images=TINY_DEMO["val"],
        **TINY_RUN,
        progress=False,
        zero_shot=False,
        num_examples=0,
        log_with=None,
        publish=False,
        output_dir=str(Path(folder) / "run"),
        cache_dir=str(Path(folder) / "cache"),
    )
    kw.update(overrides)
    return TrainConfig(**kw)


def train_here(cfg: TrainConfig):
    """``train(cfg)`` in this process on one thread (as the subprocesses run: the CPU is shared), then
    forget Accelerate's process-wide state (the next run may want other settings)."""
    from accelerate.state import AcceleratorState, GradientState

    from samadapt.training.trainer import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(cfg)
    finally:
        torch.set_num_threads(threads)
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
