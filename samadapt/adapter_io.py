"""Adapter files: the trainable tensors of an ``AdaptedSam`` as safetensors, with metadata.

Layout: one tensor per trainable parameter, keyed by its name in the adapted ``Sam`` (never by
position); metadata (all strings) records the format, samadapt version, strategy and options, model
type, base weights id, and the caller's ``info`` (dataset, metrics, training config) as JSON.
Loading is strict and checks everything before it changes the model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from segment_anything.modeling import Sam

from ._version import __version__
from .adapted import AdaptedSam, adapt
from .errors import AdapterFileError, AdapterMismatchError, SamAdaptError
from .files import atomic_write
from .models.family import family_for_type, family_of
from .models.parts import parts_metadata, parts_tensor_shapes, restore_parts, with_part
from .models.registry import base_info
from .strategies.base import get_strategy, peft_strategy

FORMAT = "samadapt-adapter"
FORMAT_VERSION = "1"


def adapter_metadata(model: AdaptedSam, info: dict[str, Any] | None = None) -> dict[str, str]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "samadapt_version": __version__,
        "strategy": model.strategy,
        "strategy_config": model.config.to_json(),
        "model_type": model.model_type,
        "base_id": model.base.base_id,
        "info": json.dumps(info or {}, sort_keys=True, default=str),
        **parts_metadata(model),  # model parts: class head categories, automatic-mask calibration (when present)
    }


def save_adapter(model: AdaptedSam, path: str | os.PathLike, **info: Any) -> Path:
    """Write the trainable tensors of ``model`` to ``path`` (safetensors), atomically.

    Non-finite tensors are refused (:class:`samadapt.errors.SamAdaptError`): a diverged run never
    leaves an adapter file behind.
    """
    path = Path(path)
    tensors = {n: t.detach().to("cpu").contiguous() for n, t in model.trainable_state_dict().items()}
    bad = [n for n, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise SamAdaptError(f"refusing to save an adapter with non-finite values in {bad[:3]}; the run diverged")
    meta = adapter_metadata(model, info)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


def read_adapter_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of an adapter file, with ``strategy_config`` and ``info`` parsed."""
    path = Path(path)
    if not path.is_file():
        raise AdapterFileError(f"adapter file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            keys = list(f.keys())
    except Exception as e:  # safetensors raises SafetensorError / OSError on truncated or foreign files
        raise AdapterFileError(
            f"{str(path)!r} is not a readable safetensors file ({type(e).__name__}: {e}); "
            "it may be truncated: save or download it again"
        ) from None
    if meta.get("format") != FORMAT:
        raise AdapterFileError(
            f"{str(path)!r} is a safetensors file but not a samadapt adapter (metadata format="
            f"{meta.get('format')!r}); for a peft LoRA folder use samadapt.import_peft"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise AdapterFileError(
            f"{str(path)!r} has adapter format version {meta.get('format_version')!r}; this samadapt reads "
            f"{FORMAT_VERSION!r}: upgrade samadapt"
        )
    try:
        meta["strategy_config"] = json.loads(meta["strategy_config"])
        meta["info"] = json.loads(meta.get("info", "{}"))
        meta["model_type"], meta["base_id"], meta["strategy"]
    except (KeyError, ValueError) as e:
        raise AdapterFileError(f"{str(path)!r} has corrupt samadapt metadata ({e})") from None
    meta["tensor_names"] = keys
    return meta


def store_calibration(path: str | os.PathLike, calibration) -> Path:
    """Write ``calibration`` (:class:`samadapt.models.parts.calibration.Calibration`) into the metadata of the adapter
    file ``path`` (atomically; tensors and the rest of the metadata unchanged), so later runs of the
    adapter use it."""
    from safetensors.torch import load_file

    path = Path(path)
    read_adapter_metadata(path)  # a samadapt adapter, readable
    with safe_open(str(path), framework="pt") as f:
        meta = with_part(dict(f.metadata() or {}), "auto_calibration", calibration.to_dict())
    tensors = load_file(str(path))
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


def expected_tensors(model_type: str, strategy: str, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Names and shapes an adapter of this kind holds, from a meta-device model (no memory)."""
    strat = get_strategy(strategy)
    cfg = strat.make_config(**config)
    family = family_for_type(model_type)
    with family.weightless():
        ghost = family.architecture(model_type)
        strat.apply(ghost, cfg)
    return {n: tuple(p.shape) for n, p in ghost.named_parameters() if p.requires_grad}


def _other_model_type(path: Path, made_for: str, sam, base_type: str) -> str:
    """The error of an adapter made for another model type; it names both families when they
    differ (a SAM 1 adapter on a SAM 2.1 base, or the other way round)."""
    try:
        family = family_for_type(made_for)
    except SamAdaptError:
        family = None
    have = family_of(sam)
    hint = family.build_hint(made_for) if family is not None else f"build_sam({made_for!r}, ...)"
    if family is not None and family is not have:
        return (
            f"adapter {str(path)!r} was made for the {family.label} model type {made_for!r}, but the base is the "
            f"{have.label} model type {base_type!r}: a {family.label} adapter cannot apply to a {have.label} "
            f"model; build the base with {hint}"
        )
    return (
        f"adapter {str(path)!r} was made for model type {made_for!r}, but the base is "
        f"{base_type!r}: build the base with {hint}"
    )


def load_adapter(path: str | os.PathLike, sam: Sam, *, check_base: bool = True) -> AdaptedSam:
    """Apply the adapter in ``path`` to a freshly built base ``sam`` (from ``build_sam``) and return it.

    Strict: the file must be made for the same model type and (with ``check_base``) the same base
    weights, and hold exactly the tensors the strategy creates, with the right shapes. Everything is
    checked before ``sam`` is changed, so a failure leaves it untouched.
    """
    path = Path(path)
    meta = read_adapter_metadata(path)
    base = base_info(sam)
    if meta["model_type"] != base.model_type:
        raise AdapterMismatchError(_other_model_type(path, meta["model_type"], sam, base.model_type))
    if check_base and meta["base_id"] != base.base_id:
        raise AdapterMismatchError(
            f"adapter {str(path)!r} was trained on base weights {meta['base_id']!r}, but this base is "
            f"{base.base_id!r}: load the checkpoint the adapter was made for (or pass check_base=False "
            "if you know the bases are equivalent)"
        )
    expected = expected_tensors(meta["model_type"], meta["strategy"], meta["strategy_config"])
    expected.update(parts_tensor_shapes(meta, sam))  # the class head's, when the adapter has one
    got: dict[str, tuple[int, ...]] = {}
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():
            got[k] = tuple(f.get_slice(k).get_shape())
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if missing or unexpected or shapes:
        raise AdapterMismatchError(
            f"adapter {str(path)!r} does not match strategy {meta['strategy']!r} on {meta['model_type']!r}: "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''} ({len(missing)}), unexpected "
            f"{unexpected[:3]} ({len(unexpected)}), wrong shapes {shapes[:3]} ({len(shapes)})"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise AdapterFileError(f"{str(path)!r}: tensor data unreadable ({e}); the file is truncated") from None
    model = adapt(sam, meta["strategy"], **meta["strategy_config"])
    restore_parts(model, meta)
    model.load_trainable_state(tensors)
    model.adapter_info = meta["info"]
    return model


# ---------------------------------------------------------------------------- peft interchange
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
DECODER_WEIGHTS = "mask_decoder.safetensors"


def import_peft(directory: str | os.PathLike, sam: Sam) -> AdaptedSam:
    """Read a peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``, and
    ``mask_decoder.safetensors`` if present) onto ``sam``, through the strategy that reads its
    ``peft_type`` (``LORA``, DoRA included: see :meth:`samadapt.strategies.Strategy.from_peft`).
    Everything is checked before ``sam`` changes, except that the tensors fit the layers."""
    from safetensors.torch import load_file

    directory = Path(directory)
    try:
        cfg = json.loads((directory / PEFT_CONFIG).read_text())
        peft_sd = load_file(str(directory / PEFT_WEIGHTS))
    except FileNotFoundError as e:
        raise AdapterFileError(f"{str(directory)!r} is not a peft adapter folder: {e.filename} is missing") from None
    except Exception as e:
        raise AdapterFileError(f"{str(directory)!r}: unreadable peft adapter ({e})") from None
    strategy = peft_strategy(cfg.get("peft_type"))
    decoder_file = directory / DECODER_WEIGHTS
    config = strategy.from_peft(cfg, train_decoder=decoder_file.is_file())
    model = adapt(sam, strategy.name, **config.to_dict())
    strategy.load_peft_weights(model.sam, peft_sd)
    if decoder_file.is_file():
        dec = load_file(str(decoder_file))
        params = dict(model.sam.named_parameters())
        # the trained mask decoder: every trainable parameter not the strategy's own (SAM 1's
        # mask_decoder.*, SAM 2.1's sam_mask_decoder.* but conv_s0 / conv_s1)
        want = {n for n, p in params.items() if p.requires_grad and not strategy.owns(n)}
        if set(dec) != want:
            raise AdapterMismatchError(f"{decoder_file} does not hold exactly the mask decoder's parameters")
        with torch.no_grad():
            for k, t in dec.items():
                params[k].copy_(t)
    return model
