"""Export an adapted model for other tools: ``samadapt.export(model, to=..., out=...)``.

Formats (one module each; the runtime that reads each one checks it in ``tests/exporters/test_export.py``):

- ``sam``  (:mod:`.sam`): one file, a plain SAM state dict with LoRA merged and the trained decoder in
  place; ``segment_anything.sam_model_registry[type](checkpoint=...)`` loads it.
- ``onnx`` (:mod:`.onnx`): a folder with ``encoder.onnx`` (adaptation inside) and ``decoder.onnx``
  (``segment_anything.utils.onnx.SamOnnxModel``'s interface); optionally an int8 pair.
- ``hf``   (:mod:`.hf`): a folder ``transformers.SamModel`` / ``SamProcessor.from_pretrained`` read.
- ``peft`` (:mod:`.peft`): peft's own LoRA folder.

SAM 2.1 models (``model.family.name == "sam2"``) go through the same four formats, each writer
dispatching on the family: ``sam`` writes ``{"model": state_dict}`` (:mod:`.sam2_checkpoint`, what
``sam2.build_sam.build_sam2`` loads), ``hf`` a ``Sam2Model`` / ``Sam2Processor`` folder
(:mod:`.sam2_hf`), ``onnx`` the SAM 2.1 encoder / decoder pair (:mod:`.sam2_onnx`; its options
``quantize`` and ``rgb_encoder`` are SAM 1's only and refused), ``peft`` the same folder layout on
Hiera's layers. Checked by ``tests/exporters/test_sam2_adapted_export.py``.

Every export refuses to overwrite without ``force``, is written atomically (a failed export leaves
nothing, or the previous output, at ``out``), records the adapter's metadata (``samadapt.json`` beside
the weights, and inside the files where the format has room), and is refused before anything is
written when the format cannot carry the model (``adapter`` blocks in a plain SAM checkpoint).
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..adapted import AdaptedSam
from ..errors import ConfigError, ExportError, UnknownNameError
from ..files import atomic_directory, atomic_write

METADATA_FILE = "samadapt.json"


@dataclass(frozen=True)
class ExportFormat:
    """One export format.

    name: the ``to=`` value; description: one line for ``--help``; folder: writes a folder (else
    one file, with its metadata in ``<out>.json``); carries_added_modules: can hold modules that do
    not fold into SAM's weights; writer: ``"module:function"`` called as ``writer(model, tmp_out,
    metadata, **options)``; options: the keyword options it takes; sam2_options: those of them it
    takes for a SAM 2.1 model (the others are refused before anything is written); requires: the
    optional packages (``pip install "samadapt[export]"``) it needs.
    """

    name: str
    description: str
    folder: bool
    carries_added_modules: bool
    writer: str
    options: tuple[str, ...] = ()
    sam2_options: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()  # modules of the optional extra "export" that the writer imports

    def write(self, model: AdaptedSam, out: Path, metadata: dict[str, Any], **options: Any) -> None:
        module, function = self.writer.split(":")
        getattr(importlib.import_module(module, __name__), function)(model, out, metadata, **options)


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat(
            "sam",
            "plain SAM checkpoint (.pth state dict) for segment_anything, CVAT's SAM function "
            "(SAM 2.1: {'model': state dict} for sam2's build_sam2)",
            folder=False,
            carries_added_modules=False,
            writer=".sam:write_sam",
        ),
        ExportFormat(
            "onnx",
            "encoder.onnx + decoder.onnx (SamOnnxModel interface; SAM 2.1: samexporter's SAM 2 "
            "interface) for onnxruntime and labelling tools",
            folder=True,
            carries_added_modules=True,
            writer=".onnx:write_onnx",
            options=("quantize", "rgb_encoder"),
            requires=("onnx", "onnxruntime"),
        ),
        ExportFormat(
            "hf",
            "transformers SamModel + SamProcessor folder (SAM 2.1: Sam2Model + Sam2Processor)",
            folder=True,
            carries_added_modules=False,
            writer=".hf:write_hf",
            requires=("transformers",),
        ),
        ExportFormat(
            "peft",
            "peft LoRA folder (lora strategy only)",
            folder=True,
            carries_added_modules=False,
            writer=".peft:write_peft",
        ),
    )
}


def export_metadata(model: AdaptedSam, fmt: str, source: Path | None = None) -> dict[str, Any]:
    """What an export records: the adapter's strategy and options, model type, base id and sha256,
    the dataset and metrics saved with the adapter, and the adapter file it came from."""
    from .._version import __version__
    from ..models.checkpoints import file_sha256

    info = dict(getattr(model, "adapter_info", None) or {})
    base_id = model.base.base_id
    digest = base_id.rsplit("@", 1)[-1] if base_id.startswith("builtin:") else base_id.removeprefix("sha256:")
    return {
        "exported_as": fmt,
        "samadapt_version": __version__,
        "model_type": model.model_type,
        "strategy": model.strategy,
        "strategy_config": model.config.to_dict(),
        "base_id": base_id,
        "base_sha256": digest if base_id.startswith(("sha256:", "builtin:")) else None,
        "dataset": info.get("dataset"),
        "metrics": info.get("metrics"),
        "info": info,
        "adapter_file": source.name if source is not None else None,
        "adapter_sha256": file_sha256(source, use_cache=False) if source is not None else None,
    }


def _check_installed(fmt: ExportFormat) -> None:
    """The optional packages of ``fmt`` import, or an error that says how to install them."""
    missing = []
    for module in fmt.requires:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ExportError(
            f"the {fmt.name!r} export needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            f'not installed: pip install "samadapt[export]"'
        )


def _family_of(model: AdaptedSam | Path):
    """The model family of an adapted model, or of the adapter file ``model`` (from its metadata,
    without loading it)."""
    if isinstance(model, AdaptedSam):
        return model.family
    from ..adapter_io import read_adapter_metadata
    from ..models.family import family_for_type

    return family_for_type(read_adapter_metadata(model)["model_type"])


def _check_family_options(fmt: ExportFormat, model: AdaptedSam | Path, options: dict[str, Any]) -> None:
    """Refuse the options of ``fmt`` its writer does not take for the model's family (SAM 2.1's ONNX
    pair has no int8 or RGB-input graphs)."""
    family = _family_of(model)
    if family.name != "sam2":
        return
    refused = sorted(set(options) - set(fmt.sam2_options))
    if refused:
        from .onnx import SAM2_NO_OPTIONS

        why = f": {SAM2_NO_OPTIONS}" if fmt.name == "onnx" else ""
        raise ConfigError(
            f"the {fmt.name!r} export of a {family.label} model takes no option {refused}; its options for "
            f"{family.label}: {list(fmt.sam2_options) or 'none'}{why}"
        )


def _check_can_carry(model: AdaptedSam, fmt: ExportFormat) -> None:
    if fmt.carries_added_modules:
        return
    from .sam import added_parameters

    added = added_parameters(model)
    if added:
        carriers = [f.name for f in FORMATS.values() if f.carries_added_modules]
        modules = sorted({".".join(n.split(".")[:-1]) for n in added})
        raise ExportError(
            f"this {model.strategy!r} model has modules that do not fold into SAM's weights "
            f"({', '.join(modules[:3])}{', ...' if len(modules) > 3 else ''}; {len(added)} tensors), so the "
            f"{fmt.name!r} format cannot carry it; export it with to={' or '.join(repr(c) for c in carriers)} "
            f"(they run those modules), or use the samadapt adapter file itself"
        )


def export(
    model: AdaptedSam | str | os.PathLike,
    *,
    to: str,
    out: str | os.PathLike,
    force: bool = False,
    checkpoint: str | os.PathLike | None = None,
    **options: Any,
) -> Path:
    """Write ``model`` in the format ``to`` at ``out`` and return ``out``.

    Args:
        model: an :class:`AdaptedSam`, or an adapter name or file, loaded with :func:`samadapt.load`
            onto the base it names (``checkpoint`` overrides where that base is).
        to: one of :data:`FORMATS` (``sam``, ``onnx``, ``hf``, ``peft``).
        out: the file (``sam``) or folder (the others) to write.
        force: replace an existing ``out``; without it an existing ``out`` is an error.
        options: format options: ``onnx`` takes ``quantize`` (also write int8 graphs,
            ``encoder_int8.onnx`` / ``decoder_int8.onnx``, with onnxruntime's dynamic quantisation)
            and ``rgb_encoder`` (also write ``encoder_rgb.onnx``, which takes the resized RGB image
            and normalises and pads it itself); see :mod:`samadapt.exporters.onnx`. Neither is
            taken for a SAM 2.1 model (``ConfigError``, before anything is loaded or written).

    Raises:
        UnknownNameError: ``to`` is not a format. ConfigError: an option the format does not take
            (for the model's family).
        ExportError: ``out`` exists (without ``force``), the format cannot carry the model, or its
            optional packages are not installed (``pip install "samadapt[export]"``).
        CheckpointNotFoundError: the base checkpoint of a named adapter is missing.
    """
    if to not in FORMATS:
        raise UnknownNameError(f"unknown export format {to!r}; choose one of {sorted(FORMATS)}")
    fmt = FORMATS[to]
    options = {k: v for k, v in options.items() if v not in (None, False)}
    unknown = sorted(set(options) - set(fmt.options))
    if unknown:
        raise ConfigError(f"the {to!r} export takes no option {unknown}; its options: {list(fmt.options) or 'none'}")
    _check_installed(fmt)
    source = None
    if not isinstance(model, AdaptedSam):
        from ..adapter_store import resolve_adapter

        source = resolve_adapter(model)
    _check_family_options(fmt, model if source is None else source, options)
    out = Path(out)
    side = out.with_name(out.name + ".json")  # the metadata of a one-file format
    taken = [p for p in ((out,) if fmt.folder else (out, side)) if p.exists() or p.is_symlink()]
    if taken and not force:
        raise ExportError(f"{str(taken[0])!r} exists; pass force=True (--force) to replace it, or choose another path")
    if not fmt.folder and out.is_dir():
        raise ExportError(
            f"{str(out)!r} is a folder; the {to!r} format writes one file: give a file name (e.g. model.pth)"
        )
    if source is not None:
        from ..adapter_store import load

        model = load(source, checkpoint=checkpoint)
    _check_can_carry(model, fmt)
    metadata = export_metadata(model, to, source)
    text = json.dumps(metadata, indent=2, sort_keys=True, default=str) + "\n"
    if fmt.folder:
        with atomic_directory(out) as tmp:
            fmt.write(model, tmp, metadata, **options)
            (tmp / METADATA_FILE).write_text(text)
    else:
        atomic_write(out, lambda tmp: fmt.write(model, Path(tmp), metadata, **options))
        atomic_write(side, lambda tmp: Path(tmp).write_text(text))
    return out


__all__ = ["FORMATS", "METADATA_FILE", "ExportFormat", "export", "export_metadata"]
