"""Parts of a dataset: seeded subsets of its images, and the sequence (video, batch folder) each
image comes from.

:func:`seeded_subset` ranks images by a hash of (seed, purpose, file name), like
:func:`~samadapt.data.presets.seeded_split`: the choice is the same on every machine and numpy
version, another seed picks other images, and the first ``n`` of one ranking hold the first ``m < n``
(so the per-epoch validation subset lies inside the evaluated subset). :func:`sequence_of` names the
sequence of a frame, so that figures can show frames of several videos rather than consecutive
frames of one.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from pathlib import PurePosixPath

from ..errors import ConfigError

__all__ = ["seeded_indices", "seeded_subset", "sequence_of"]

# ``vid_000123_frame0000045`` (TrashCan), ``09_frame_002000`` (ZeroWaste-f), ``clip3-frame12``
_FRAME = re.compile(r"^(?P<sequence>.*?)[_\-. ]*frame[_\-. ]*\d+$", re.IGNORECASE)
_TRAILING_NUMBER = re.compile(r"[_\-. ]*\d+$")


def seeded_subset(images: Iterable[tuple[int, str]], n: int | None, *, seed: int, purpose: str) -> list[int]:
    """The ids of ``n`` of ``images`` ((image id, file name) pairs), chosen at random by ``seed``,
    in the order given; all of them when ``n`` is None or not smaller.

    Args:
        purpose: what the subset is for (``"train"``, ``"eval"``): subsets for different purposes
            are drawn independently, subsets for one purpose are nested (the first ``n`` of one
            ranking by ``sha1(f"{seed}/{purpose}/{file_name}")``).
    """
    images = list(images)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ConfigError(f"a subset needs a number of images >= 0, got {n!r}")
    if n is None or n >= len(images):
        return [i for i, _ in images]
    ranked = sorted(images, key=lambda im: (hashlib.sha1(f"{seed}/{purpose}/{im[1]}".encode()).hexdigest(), im[0]))
    keep = {i for i, _ in ranked[:n]}
    return [i for i, _ in images if i in keep]


def sequence_of(file_name: str) -> str:
    """The sequence an image belongs to, from its file name: the video of a frame
    (``vid_000123_frame0000045.jpg`` -> ``vid_000123``, ZeroWaste-f's ``09_frame_002000.PNG`` ->
    ``09``), else the name without its trailing number, inside its folder (TACO's
    ``batch_1/000006.jpg`` -> ``batch_1/``). Images of one sequence look alike; different
    sequences are different scenes."""
    path = PurePosixPath(str(file_name).replace("\\", "/"))
    stem = path.stem
    match = _FRAME.match(stem)
    prefix = match.group("sequence") if match else _TRAILING_NUMBER.sub("", stem)
    folder = str(path.parent) if str(path.parent) != "." else ""
    return f"{folder}/{prefix}" if folder else prefix


def seeded_indices(
    dataset, n: int | None, *, seed: int, purpose: str, indices: Iterable[int] | None = None
) -> list[int]:
    """:func:`seeded_subset` of a dataset's indices (default all; else ``indices``), ranked by each
    image's ``file_name`` where the dataset names it (``image_info``), else by its index."""
    indices = range(len(dataset)) if indices is None else indices
    named = hasattr(dataset, "image_info")
    pairs = [(int(i), str(dataset.image_info(int(i)).get("file_name")) if named else f"#{int(i)}") for i in indices]
    return seeded_subset(pairs, n, seed=seed, purpose=purpose)
