"""Counting what a dataset loader skipped or repaired, and why.

Real annotation files are never clean (see docs/data.md). Instead of crashing on the first bad
annotation or silently dropping it, the loader records every problem as an :class:`Issue` with a
reason from :data:`REASONS`, logs a summary once, and exposes the counts (``dataset.skips``).
``strict=True`` turns the first problem into a :class:`~samadapt.errors.DataError` instead.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Hashable, Iterable

from ..errors import DataError

__all__ = ["Issue", "IssueLog", "REASONS", "DROPPED", "REPAIRED", "FILTERED"]

logger = logging.getLogger("samadapt.data")

DROPPED = "dropped"  # the annotation (or polygon part) is not used
REPAIRED = "repaired"  # the annotation is used after a fix
FILTERED = "filtered"  # valid COCO, deliberately not an instance (crowd, ignored category)

#: reason -> (kind, what it means). Counts are per annotation unless the text says otherwise.
REASONS: dict[str, tuple[str, str]] = {
    "non_finite": (DROPPED, "bbox or segmentation holds NaN or Infinity"),
    "malformed": (DROPPED, "annotation lacks image_id, category_id or segmentation, or they have the wrong type"),
    "bad_segmentation": (DROPPED, "segmentation is neither polygons nor RLE, or the RLE is invalid"),
    "rle_size_mismatch": (DROPPED, "RLE size differs from the image's height/width"),
    "empty_segmentation": (
        DROPPED,
        "no usable polygon left (empty list, or every part degenerate or outside the image)",
    ),
    "degenerate_polygon": (
        DROPPED,
        "polygon part with fewer than 3 distinct points or zero area (counted per part; "
        "the annotation is kept when other parts remain)",
    ),
    "outside_image": (DROPPED, "polygon part entirely outside the image (counted per part)"),
    "unknown_image": (DROPPED, "image_id is not in the file's images"),
    "unknown_category": (DROPPED, "category_id is not in the file's categories"),
    "empty_mask": (DROPPED, "mask has no pixel after rasterising (found when the image is first decoded)"),
    "missing_image": (DROPPED, "image file not found (missing_images='skip'; counted per image)"),
    "clipped": (REPAIRED, "coordinates below 0 or beyond the image; the mask is clipped to the image"),
    "duplicate_id": (REPAIRED, "annotation id used more than once (ids are renumbered internally)"),
    "crowd": (FILTERED, "iscrowd=1: a region of several objects, not an instance (never prompted)"),
    "ignored_category": (FILTERED, "category is in ignore_categories (e.g. '_background_')"),
}


@dataclass(frozen=True)
class Issue:
    """One problem found in an annotation file.

    ``annotation_id`` is the id as written in the file (not unique in TACO); ``image_id`` is None
    when the annotation names an image that does not exist.
    """

    reason: str
    image_id: int | None
    annotation_id: int | None
    detail: str = ""

    @property
    def kind(self) -> str:
        return REASONS[self.reason][0]

    def describe(self) -> str:
        where = []
        if self.annotation_id is not None:
            where.append(f"annotation {self.annotation_id}")
        if self.image_id is not None:
            where.append(f"image {self.image_id}")
        text = f"{' of '.join(where) or 'file'}: {self.reason} ({REASONS[self.reason][1]})"
        return f"{text}: {self.detail}" if self.detail else text


class IssueLog:
    """All issues of one annotation file, shared by the dataset and its subsets.

    Issues found while decoding (``empty_mask``) are added with a ``key`` so that decoding the same
    annotation twice counts it once. Counts live in the process that found them: issues found
    inside DataLoader worker processes are not sent back to the main process.

    Args:
        source: the annotation file (named in messages).
        strict: raise :class:`DataError` on the first dropped or repaired annotation instead of
            recording it (filtered ones - crowd, ignored categories - are never errors).
    """

    _reported: set[str] = set()  # reports logged by this process

    def __init__(self, source: str, *, strict: bool = False) -> None:
        self.source = source
        self.strict = strict
        self._issues: list[Issue] = []
        self._seen: set[Hashable] = set()
        self._logged_at_load = False
        self._logged_late = False

    def add(
        self,
        reason: str,
        *,
        image_id: int | None,
        annotation_id: int | None,
        detail: str = "",
        key: Hashable | None = None,
    ) -> bool:
        """Record one issue; returns False if ``key`` was recorded before (nothing is added)."""
        if reason not in REASONS:
            raise ValueError(f"unknown issue reason {reason!r}")  # internal invariant
        if key is not None:
            if key in self._seen:
                return False
            self._seen.add(key)
        issue = Issue(reason, image_id, annotation_id, detail)
        if self.strict and issue.kind != FILTERED:
            raise DataError(
                f"{self.source}: {issue.describe()}. Fix the annotation file, or pass strict=False "
                "to skip or repair such annotations (they are counted in dataset.skips)"
            )
        self._issues.append(issue)
        if self._logged_at_load and not self._logged_late and issue.kind != FILTERED:
            self._logged_late = True
            logger.warning(
                "%s: %s. Later problems found while decoding are counted (`samadapt data summary`; "
                "in Python: dataset.skips) without being logged.",
                self.source,
                issue.describe(),
            )
        return True

    def issues(self, image_ids: set[int] | None = None) -> list[Issue]:
        """Issues, restricted to ``image_ids`` when given (issues with no image are kept only when
        ``image_ids`` is None)."""
        if image_ids is None:
            return list(self._issues)
        return [i for i in self._issues if i.image_id in image_ids]

    def counts(self, image_ids: set[int] | None = None) -> dict[str, int]:
        """{reason: count}, reasons in the order of :data:`REASONS`."""
        c = Counter(i.reason for i in self.issues(image_ids))
        return {r: c[r] for r in REASONS if c[r]}

    def examples(self, n: int = 3, image_ids: set[int] | None = None) -> dict[str, list[Issue]]:
        """The first ``n`` issues of each reason."""
        out: dict[str, list[Issue]] = {}
        for i in self.issues(image_ids):
            lst = out.setdefault(i.reason, [])
            if len(lst) < n:
                lst.append(i)
        return out

    def log_summary(self, n_examples: int = 3) -> None:
        """Log the counts and first examples once (WARNING for dropped/repaired, INFO for filtered)."""
        if self._logged_at_load:
            return
        self._logged_at_load = True
        problems = [i for i in self._issues if i.kind != FILTERED]
        filtered = Counter(i.reason for i in self._issues if i.kind == FILTERED)
        if filtered:
            logger.info(
                "%s: not used as instances: %s", self.source, ", ".join(f"{r}={c}" for r, c in filtered.items())
            )
        if not problems:
            return
        counts = Counter(i.reason for i in problems)
        lines = [f"  {i.describe()}" for i in _first(problems, n_examples)]
        report = (
            f"{self.source}: skipped or repaired: {', '.join(f'{r}={c}' for r, c in counts.items())} "
            f"(`samadapt data summary` counts them by split; in Python: dataset.skips). "
            f"First {len(lines)}:\n" + "\n".join(lines)
        )
        # train and validation splits read from one file (TACO, coco) find the same problems: say it once
        if report not in IssueLog._reported:
            IssueLog._reported.add(report)
            logger.warning("%s", report)


def _first(items: Iterable[Issue], n: int) -> list[Issue]:
    out = []
    for i in items:
        if len(out) == n:
            break
        out.append(i)
    return out
