"""Option dataclasses as command-line options: the one helper of ``samadapt train`` and ``samadapt eval``.

A field made with :func:`samadapt.options.option` (help, choices, hidden in its metadata) becomes one
``--flag``, with its help, default and choices; :func:`add_dataclass_options` adds every field of a
dataclass. An option left out is absent from the namespace (``default=argparse.SUPPRESS``), so the
dataclass keeps its own default and a YAML file's value is not overridden.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any, Callable, Mapping, Sequence

__all__ = ["add_dataclass_options", "add_option", "none_or"]


def none_or(kind: type) -> Callable[[str], Any]:
    """An argparse ``type`` reading ``kind``, or ``None`` from the word ``none``."""

    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def _shown(default: Any) -> Any:
    """A default as ``--help`` shows it."""
    if default is None:
        return "none"
    if isinstance(default, (list, tuple)):
        return " ".join(map(str, default))
    return json.dumps(default) if isinstance(default, dict) else default


def _option_kwargs(f: dataclasses.Field, hint: Any, dest: str, choices: Sequence[str] | None) -> dict[str, Any]:
    """``add_argument`` keywords of one field, but its help."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    optional = origin in (typing.Union, types.UnionType) and type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    choices = choices or f.metadata.get("choices")
    kw: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "metavar": f.name.upper()}
    if base is bool:
        kw = {"dest": dest, "default": argparse.SUPPRESS, "action": argparse.BooleanOptionalAction}
    elif typing.get_origin(base) in (tuple, list):
        kw["nargs"] = "+"
    elif typing.get_origin(base) is dict or base is dict:
        kw.update(type=json.loads, metavar="JSON")
    elif base in (int, float, str):
        kw["type"] = none_or(base) if optional else base
    if choices:
        # "none" (-> None) is a choice where it means something other than leaving the option out: a
        # field whose default is None gains nothing from it ("--mixed-precision none" beside "no")
        with_none = "none" in choices or (optional and default is not None)
        kw["choices"] = [c for c in choices if c != "none"] + ([None] if with_none else [])
        kw["metavar"] = "{" + ",".join([c for c in choices if c != "none"] + (["none"] if with_none else [])) + "}"
        if not with_none:
            kw["type"] = base
    return kw


def add_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    f: dataclasses.Field,
    hint: Any,
    dest: str,
    choices: Sequence[str] | None = None,
    aliases: tuple[str, ...] = (),
) -> None:
    """One dataclass field (``f``, its resolved type ``hint``) as the option ``flag`` (and its old
    names, ``aliases``) stored in ``dest``, with its help, default and choices (``choices``, else the
    field's own)."""
    kw = _option_kwargs(f, hint, dest, choices)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    text = f.metadata.get("help") or ""
    # a help text that explains its default itself ("default: the preset's split") keeps its words
    kw["help"] = (text if "default" in text else f"{text} (default: {_shown(default)})").replace("%", "%%")
    if aliases:
        kw["help"] += f" (formerly {', '.join(aliases)})"
    parser.add_argument(flag, *aliases, **kw)


def add_dataclass_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    prefix: str = "",
    dest_prefix: str = "",
    skip: Sequence[str] = (),
    groups: Mapping[str, argparse.ArgumentParser | argparse._ArgumentGroup] | None = None,
    choices: Mapping[str, Sequence[str]] | None = None,
    aliases: Mapping[str, tuple[str, ...]] | None = None,
) -> None:
    """Every field of the dataclass ``cls`` but the hidden ones and ``skip``, in field order, as
    ``--<prefix><field-name>`` stored in ``<dest_prefix><field_name>`` (:func:`add_option`).

    groups: field name -> the parser or argument group it goes to (default: ``parser``);
    choices: field name -> its choices (a registry's names), over the field's own;
    aliases: field name -> its old flags, still accepted.
    """
    groups, choices, aliases = groups or {}, choices or {}, aliases or {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("hidden"):
            continue
        add_option(
            groups.get(f.name, parser),
            f"--{prefix}{f.name.replace('_', '-')}",
            f,
            hints[f.name],
            f"{dest_prefix}{f.name}",
            choices.get(f.name),
            aliases.get(f.name, ()),
        )
