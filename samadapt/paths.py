"""Where samadapt keeps its files: ``SAMADAPT_HOME`` and the folders under it.

A leaf module (it imports nothing of samadapt), so that every layer can find its files without
importing the adapter store.

Layout::

    $SAMADAPT_HOME/                       (default ~/.cache/samadapt)
        adapters/<name>/                  named adapters (samadapt.adapter_store)
        checkpoints/                      base checkpoints under their official file names
        cache/                            image-embedding caches of training runs
        data/                             generated demo data sets
        sha256-cache.json                 file hashes by (path, size, mtime)
"""

from __future__ import annotations

import os
from pathlib import Path


def samadapt_home() -> Path:
    """``$SAMADAPT_HOME``, or ``~/.cache/samadapt`` when it is unset or empty."""
    return Path(os.environ.get("SAMADAPT_HOME") or Path.home() / ".cache" / "samadapt")


def adapters_dir() -> Path:
    return samadapt_home() / "adapters"


def checkpoints_dir() -> Path:
    return samadapt_home() / "checkpoints"


def hash_cache_file() -> Path:
    return samadapt_home() / "sha256-cache.json"
