"""The labelled images of an annotation file, split into the images to train on and those held out
(validated each epoch, and scoring the new model against the previous one).

An image is *labelled* once it holds at least one annotation. Each labelled image is held out or not
by a hash of (seed, file name), independently of the others, so an image keeps its side as the file
grows: an adapter of an earlier round never trained on an image held out now (except for the small
corrections below), and its held-out score is not inflated. About a quarter is held out; with few
images at least one is, and at least :data:`MIN_TRAIN` are trained on (the corrections take the
images nearest the threshold).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..files import atomic_write_text

__all__ = [
    "HELD_OUT_SHARE",
    "MIN_LABELLED",
    "MIN_TRAIN",
    "LabelledSplit",
    "labelled_images",
    "split_labelled",
    "write_subset",
]

#: the share of the labelled images held out (chooses the epoch, scores the new model against the old)
HELD_OUT_SHARE = 0.25
#: images trained on at least
MIN_TRAIN = 3
#: labelled images a run needs: MIN_TRAIN to train on, one held out
MIN_LABELLED = MIN_TRAIN + 1


@dataclass(frozen=True)
class LabelledSplit:
    train: list[str]  # file names, in the file's order
    held_out: list[str]

    def to_dict(self) -> dict:
        return {"train": self.train, "held_out": self.held_out}


def labelled_images(data: dict) -> list[str]:
    """File names of the images of the COCO dict ``data`` holding at least one annotation, in file order."""
    with_annotations = {a.get("image_id") for a in data["annotations"] if not a.get("iscrowd", 0)}
    return [im["file_name"] for im in data["images"] if im.get("id") in with_annotations]


def _rank(seed: int, file_name: str) -> float:
    """A number in [0, 1) fixed by (seed, file name)."""
    digest = hashlib.sha1(f"{seed}/engine-held-out/{file_name}".encode()).hexdigest()
    return int(digest[:12], 16) / 16**12


def split_labelled(file_names: list[str], *, seed: int = 0) -> LabelledSplit:
    """Hold out about :data:`HELD_OUT_SHARE` of ``file_names`` (module docstring).

    Raises:
        ConfigError: fewer than :data:`MIN_LABELLED` images.
    """
    if len(file_names) < MIN_LABELLED:
        raise ConfigError(
            f"adapting needs at least {MIN_LABELLED} labelled images ({MIN_TRAIN} to train on, one held out "
            f"to score the new model against the previous one); {len(file_names)} have annotations so far"
        )
    rank = {f: _rank(seed, f) for f in file_names}
    held = {f for f in file_names if rank[f] < HELD_OUT_SHARE}
    by_rank = sorted(file_names, key=lambda f: (rank[f], f))
    if not held:
        held = {by_rank[0]}
    while len(file_names) - len(held) < MIN_TRAIN:
        held.discard(max(held, key=lambda f: (rank[f], f)))
    return LabelledSplit([f for f in file_names if f not in held], [f for f in file_names if f in held])


def write_subset(data: dict, file_names: list[str], path: str | os.PathLike) -> Path:
    """Write the COCO dict ``data`` cut to the images ``file_names`` (and their annotations) to ``path``."""
    keep = set(file_names)
    images = [im for im in data["images"] if im["file_name"] in keep]
    if len(images) != len(keep):
        missing = sorted(keep - {im["file_name"] for im in images})
        raise ConfigError(f"images {missing[:3]} are not in the annotation file")
    ids = {im["id"] for im in images}
    subset = {
        **{k: v for k, v in data.items() if k not in ("images", "annotations")},
        "images": images,
        "annotations": [a for a in data["annotations"] if a.get("image_id") in ids],
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(subset))
    return path
