"""Confidence intervals for evaluation results: a bootstrap over images and training seeds, and
Student-t intervals over seeds.

A model's mean IoU (precision, F1, ...) is the mean over instances (docs/metrics.md). Its
uncertainty has two sources: which images happen to be in the evaluation set, and which training
seed was drawn. :func:`bootstrap_interval` resamples both (a two-level bootstrap): each of
``n_boot`` rounds draws the evaluation images with replacement (an image's instances stay
together) and the seeds with replacement, and recomputes the statistic: the mean over the drawn
seeds of the instance mean over the drawn images. The interval is the percentile interval of those
rounds. With a ``reference`` (zero-shot) the statistic is the *gain* over it, computed on the same
drawn images in every round (a paired bootstrap), so the interval of the gain is narrower than the
two intervals side by side.

Statistics too costly to recompute per round (COCO mask AP) get :func:`t_interval`, the Student-t
interval of the per-seed values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import ConfigError
from .evaluate import EvalRecords

__all__ = ["Interval", "bootstrap_interval", "t_interval", "t_quantile"]


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval [low, high] (same units as ``mean``)."""

    mean: float
    low: float
    high: float
    level: float = 0.95
    method: str = ""

    @property
    def half_width(self) -> float:
        """Half the interval's width (the "±" value)."""
        return (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        """True when the interval lies entirely above or below 0 (a gain distinguishable from none)."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "level": self.level, "method": self.method}


def _per_image(
    records: EvalRecords, image_ids: np.ndarray, metric: str, category: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """(sums, counts), each (n_images,): the sum of ``metric`` over each image's instances (of
    ``category`` only, if given) and their number, in the order of ``image_ids``."""
    values = np.asarray(getattr(records, metric), dtype=np.float64)
    ids = np.asarray(records.image_ids)
    keep = np.ones(len(values), dtype=bool) if category is None else np.asarray(records.category_ids) == category
    pos = {int(i): k for k, i in enumerate(image_ids)}
    try:
        where = np.array([pos[int(i)] for i in ids[keep]], dtype=np.int64)
    except KeyError as e:
        raise ConfigError(f"records hold image id {e.args[0]} that is not among the evaluation images") from None
    sums = np.bincount(where, weights=values[keep], minlength=len(image_ids))
    counts = np.bincount(where, minlength=len(image_ids)).astype(np.float64)
    return sums, counts


def _as_runs(records: EvalRecords | Sequence[EvalRecords]) -> list[EvalRecords]:
    runs = [records] if isinstance(records, EvalRecords) else list(records)
    if not runs:
        raise ConfigError("no records given: pass one EvalRecords per training seed")
    return runs


def bootstrap_interval(
    records: EvalRecords | Sequence[EvalRecords],
    metric: str = "iou",
    *,
    reference: EvalRecords | Sequence[EvalRecords] | None = None,
    category: int | None = None,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Mean of ``metric`` over instances, averaged over seeds, with a bootstrap interval over
    images and seeds (see the module docstring).

    Args:
        records: one :class:`EvalRecords` per training seed, all on the same images with the same
            prompts (a single one: no seed resampling).
        metric: a per-instance array of the records: ``iou``, ``precision``, ``recall``, ``f1``.
        reference: records of the model to subtract (zero-shot; one or one per seed), on the same
            images: the estimate and interval are then of the gain.
        category: only the instances of this category id.
        n_boot: bootstrap rounds.
        level: confidence level of the percentile interval.
        seed: seed of the resampling.

    Returns:
        :class:`Interval` (fractions, like the metrics).
    """
    if not 0 < level < 1:
        raise ConfigError(f"level must be strictly between 0 and 1, got {level!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ConfigError(f"n_boot must be a positive integer, got {n_boot!r}")
    runs = _as_runs(records)
    image_ids = np.array([im["id"] for im in runs[0].images], dtype=np.int64)
    if not len(image_ids):
        raise ConfigError("the records hold no images")
    groups = [runs] + ([_as_runs(reference)] if reference is not None else [])
    per = [[_per_image(r, image_ids, metric, category) for r in g] for g in groups]
    if per[0][0][1].sum() == 0:
        nan = float("nan")
        return Interval(nan, nan, nan, level, "no instances")
    rng = np.random.default_rng(seed)
    n = len(image_ids)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)  # (B, n_images)

    def estimate(parts, w):
        """Mean over (resampled) seeds of the weighted instance mean; w (B, n) or (n,)."""
        seeds = rng.integers(0, len(parts), size=(w.shape[0], len(parts))) if w.ndim == 2 else None
        values = np.stack([(w @ s) / np.maximum(w @ c, 1e-12) for s, c in parts], axis=-1)  # (B, seeds) / (seeds,)
        if seeds is None:
            return values.mean(-1)
        return np.take_along_axis(values, seeds, axis=1).mean(1)

    ones = np.ones(n)
    point = estimate(per[0], ones)
    boot = estimate(per[0], weights)
    # rounds where a resample holds no instance of the category are left out of the interval
    valid = (weights @ per[0][0][1]) > 0
    if reference is not None:
        point = point - estimate(per[1], ones)
        boot = boot - estimate(per[1], weights)
        valid &= (weights @ per[1][0][1]) > 0
    boot = boot[valid]
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    what = (
        f"bootstrap over {n} images"
        + (f" and {len(runs)} seeds" if len(runs) > 1 else "")
        + (", paired with the reference" if reference is not None else "")
        + f", {n_boot} rounds"
    )
    return Interval(float(point), float(lo), float(hi), level, what)


# ---------------------------------------------------------------------------- over seeds
def _t_cdf(x: float, df: int) -> float:
    """Student-t CDF for x >= 0 by Simpson's rule on the density (accurate to ~1e-10 here)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    steps = 2000
    h = x / steps
    xs = np.linspace(0.0, x, steps + 1)
    f = c * (1 + xs**2 / df) ** (-(df + 1) / 2)
    return 0.5 + h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (p >= 0.5) of Student's t with ``df`` degrees of freedom (t_quantile(0.975,
    2) = 4.303), by bisection on :func:`_t_cdf`."""
    if not 0.5 <= p < 1 or df < 1:
        raise ConfigError(f"t_quantile needs 0.5 <= p < 1 and df >= 1, got p={p!r}, df={df!r}")
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean of per-seed values with the Student-t interval mean ± t * sd / sqrt(n) (NaN bounds for
    a single value: one seed says nothing about the spread)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if not len(v):
        nan = float("nan")
        return Interval(nan, nan, nan, level, "no values")
    mean = float(v.mean())
    if len(v) < 2:
        return Interval(mean, float("nan"), float("nan"), level, "one seed: no interval")
    half = t_quantile((1 + level) / 2, len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return Interval(mean, mean - half, mean + half, level, f"Student t over {len(v)} seeds")
