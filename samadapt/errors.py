"""The library's own exception classes.

Every error samadapt raises on bad input derives from :class:`SamAdaptError`, and its message says
what is wrong (naming the bad value) and what to do about it.
"""

from __future__ import annotations


class SamAdaptError(Exception):
    """Base class of every samadapt error."""


class ConfigError(SamAdaptError, ValueError):
    """An option has a value outside its valid range or set of choices."""


class UnknownNameError(SamAdaptError, KeyError):
    """A registry lookup (model type, strategy, adapter name, dataset preset) failed."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class CheckpointError(SamAdaptError):
    """A SAM checkpoint is missing, corrupt, of another model type, or fails its sha256 check."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The base checkpoint an adapter needs is not on disk."""


class AdapterFileError(SamAdaptError):
    """An adapter file is truncated, not a safetensors file, or not written by samadapt."""


class AdapterMismatchError(SamAdaptError):
    """An adapter was made for another model type, base checkpoint, or strategy layout."""


class ExportError(SamAdaptError):
    """A model cannot be written in the format asked for, or the output path is in the way."""


class DataError(SamAdaptError):
    """A dataset file (annotations, image) is missing or invalid."""


class TrainingError(SamAdaptError):
    """Training cannot go on (non-finite loss, bad resume state)."""


class TrainingInterrupted(TrainingError):
    """Training stopped by Ctrl-C (SIGINT); the message says what was saved and how to resume."""

    exit_code = 130  # the shell's code for a process ended by SIGINT


def json_error_at(error) -> str:
    """Where a ``json.JSONDecodeError`` happened, in words: ``"Expecting value at line 3, column 9"``
    (the decoder's messages that end in "starting at" get no second "at")."""
    return f"{error.msg.removesuffix(' at')} at line {error.lineno}, column {error.colno}"
