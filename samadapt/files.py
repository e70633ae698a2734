"""Atomic file and folder writes: a crash or Ctrl-C never leaves a partial output.

A leaf module (it imports nothing of samadapt): every writer of the library uses it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: a crash never leaves a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """The folder version of :func:`atomic_write`: yields an empty sibling folder to fill; when the
    ``with`` block ends normally it is renamed to ``path`` (replacing a file or folder there), and on
    any error it is deleted, so ``path`` is never left half-written. Callers decide whether an
    existing ``path`` may be replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the folder the usual permissions
    try:
        yield tmp
        if not (path.exists() or path.is_symlink()):
            os.replace(tmp, path)
            return
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        old.rmdir()  # a free name beside path: the old output moves there while the new one moves in
        os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(old, path)
            raise
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding=encoding))


def holds_something(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file, or a folder with anything in it."""
    path = Path(path)
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def next_free_folder(folder: str | os.PathLike) -> Path:
    """``folder`` when it is missing or empty, else the first of ``folder-2``, ``folder-3``, ... that
    is: where a new output goes beside the earlier ones, which stay untouched."""
    folder = Path(folder)
    k, candidate = 2, folder
    while holds_something(candidate):
        candidate, k = folder.with_name(f"{folder.name}-{k}"), k + 1
    return candidate
