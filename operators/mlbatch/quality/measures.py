"""Drift measures between a baseline summary (one run's, or the `pool` of the last N runs') and
today's, and the default thresholds, each with its source (docs/quality.md, "Measures and defaults").

Every measure is None, with a note saying why, when a side has nothing to measure (no rows, all null):
never NaN, never a division by zero. Distributions are of the present (non-null, finite) values; nulls
and non-finite values have their own fraction deltas. Numeric distributions are compared on the
baseline's bins plus the two out-of-range cells, categorical ones on the union of both sides' values
plus `other`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mlbatch_beam.quality.numeric import NumericSummary
from mlbatch_beam.quality import batches
from mlbatch_beam.quality.statistics import Summary

# PSI's proportion for an empty cell, on either side (log(0) otherwise): Evidently's `get_binned_data`
# puts the same 0.0001 in empty cells (src/evidently/calculations/stattests/utils.py).
PSI_EPSILON = 1e-4
# Wasserstein's normaliser floor, Evidently's (src/evidently/calculations/stattests/
# wasserstein_distance_norm.py: `norm = max(np.std(reference_data), 0.001)`).
STD_FLOOR = 1e-3


@dataclass(frozen=True)
class Default:
    warn: float
    block: float
    source: str


# Measure -> default thresholds. A measure at or above `warn` warns, at or above `block` holds the run;
# deltas compare by absolute value; the row count ratio by max(ratio, 1/ratio).
DEFAULTS = {
    "psi": Default(0.1, 0.25, "PSI bands: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 significant "
                   "(Siddiqi, Credit Risk Scorecards, 2006); Evidently's PSI default 0.1"),
    "jensen_shannon": Default(0.1, 0.2, "warn: Evidently's default 0.1 (it uses natural log: its 0.1 is "
                              "0.12 in base 2); block: ours"),
    "wasserstein": Default(0.1, 0.5, "warn: Evidently's default 0.1 (distance / baseline std); block: "
                           "ours, half a baseline standard deviation"),
    "l_infinity": Default(0.1, 0.25, "warn: SageMaker Model Monitor comparison_threshold 0.1 (TFDV's "
                          "infinity_norm has no default; its guide's example is 0.01); block: ours"),
    "null_fraction_delta": Default(0.05, 0.2, "ours (SageMaker's completeness_check compares the non-null "
                                   "fraction with the baseline's)"),
    "non_finite_fraction_delta": Default(0.01, 0.05, "ours"),
    "rejected_fraction_delta": Default(0.01, 0.05, "ours (prep.max_rejected_fraction stays the hard cap)"),
    "row_count_ratio": Default(1.25, 2.0, "ours: 25 % more or fewer rows than the baseline's runs warn, "
                               "half or double block"),
}


@dataclass
class Comparison:
    column: str
    kind: str
    measures: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"column": self.column, "kind": self.kind, "measures": self.measures, "notes": self.notes}


def psi(p: np.ndarray, q: np.ndarray) -> float:
    """Population stability index of two count vectors over the same cells."""
    a, b = (np.where(x > 0, x / x.sum(), PSI_EPSILON) for x in (p, q))
    return float(np.sum((b - a) * np.log(b / a)))


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance, base 2: in [0, 1], 1 for distributions with no common cell."""
    a, b = p / p.sum(), q / q.sum()
    m = (a + b) / 2

    def kl(x):
        ok = x > 0
        return float(np.sum(x[ok] * np.log2(x[ok] / m[ok])))

    return float(np.sqrt(max((kl(a) + kl(b)) / 2, 0.0)))


def wasserstein(x: np.ndarray, wx: np.ndarray, y: np.ndarray, wy: np.ndarray) -> float:
    """First Wasserstein distance of two weighted point sets: the area between their CDFs."""
    points = np.sort(np.concatenate([x, y]))

    def cdf(v: np.ndarray, w: np.ndarray) -> np.ndarray:
        order = np.argsort(v)
        cumulative = np.concatenate([[0.0], np.cumsum(w[order])]) / w.sum()
        return cumulative[np.searchsorted(v[order], points[:-1], side="right")]

    return float(np.sum(np.abs(cdf(x, wx) - cdf(y, wy)) * np.diff(points)))


def l_infinity(p: np.ndarray, q: np.ndarray) -> float:
    """TFDV's L-infinity distance: the largest difference of one value's share between the two sides."""
    return float(np.max(np.abs(p / p.sum() - q / q.sum())))


def compare(baseline: Summary, today: Summary) -> Comparison:
    """Every measure of `today` against `baseline` (same column, same kind)."""
    batches.check_same(baseline, today)
    out = Comparison(today.column, today.kind)
    _fractions(baseline, today, out)
    if isinstance(today, NumericSummary):
        _numeric(baseline, today, out)
    else:
        _categorical(baseline, today, out)
    return out


def _fractions(b: Summary, t: Summary, out: Comparison) -> None:
    per_run = b.count / b.runs
    out.measures["row_count_ratio"] = t.count / per_run if per_run else None
    if not per_run:
        out.notes.append("the baseline has no rows: no row count ratio, no fractions")
    if not t.count:
        out.notes.append("today has no rows")
    both = bool(b.count and t.count)
    out.measures["null_fraction_delta"] = t.nulls / t.count - b.nulls / b.count if both else None
    if isinstance(t, NumericSummary):
        out.measures["non_finite_fraction_delta"] = (
            t.non_finite / t.count - b.non_finite / b.count if both else None)


def _distributions(out: Comparison, names: tuple, p: np.ndarray, q: np.ndarray) -> bool:
    empty = [side for side, x in zip(("baseline", "today"), (p, q)) if not x.sum()]
    if empty:
        out.notes.append(f"no present values in {' and '.join(empty)}: no distribution measures")
        out.measures.update(dict.fromkeys(names))
    return not empty


def _numeric(b: NumericSummary, t: NumericSummary, out: Comparison) -> None:
    names = ("psi", "jensen_shannon", "wasserstein")
    edges = b.quantile_edges()
    if edges is None:
        _distributions(out, names, np.zeros(1), np.zeros(1))
        return
    (p, px), (q, qx) = b.binned(edges), t.binned(edges)
    if not _distributions(out, names, p, q):
        return
    norm = max(b.std, STD_FLOOR)
    out.measures.update(psi=psi(p, q), jensen_shannon=jensen_shannon(p, q),
                        wasserstein=wasserstein(px, p, qx, q) / norm)
    if b.edges is None:
        out.notes.append("baseline has no bins yet (first run): binned on its sketch's quantiles, to 0.1 %")


def _categorical(b, t, out: Comparison) -> None:
    keys = sorted(set(b.values) | set(t.values))
    p = np.array([b.values.get(k, 0) for k in keys] + [b.other], dtype=np.float64)
    q = np.array([t.values.get(k, 0) for k in keys] + [t.other], dtype=np.float64)
    if _distributions(out, ("psi", "jensen_shannon", "l_infinity"), p, q):
        out.measures.update(psi=psi(p, q), jensen_shannon=jensen_shannon(p, q), l_infinity=l_infinity(p, q))
    new = sorted(set(t.values) - set(b.values))
    if new:
        out.notes.append(f"values not in the baseline: {new[:10]}{' ...' if len(new) > 10 else ''}")


def rejected_fraction_delta(baseline_rejected: int, baseline_rows: int, rejected: int,
                            rows: int) -> float | None:
    """Today's rejected fraction minus the baseline's (rows read, rejections from prep): None without rows."""
    if not baseline_rows or not rows:
        return None
    return rejected / rows - baseline_rejected / baseline_rows


def verdict(measure: str, value: float | None, defaults: dict[str, Default] = DEFAULTS) -> str:
    """"pass", "warn" or "block" for one measure's value (None passes: nothing to measure)."""
    if value is None:
        return "pass"
    size = max(value, 1 / value) if measure == "row_count_ratio" and value > 0 else (
        float("inf") if measure == "row_count_ratio" else abs(value))
    limits = defaults[measure]
    return "block" if size >= limits.block else "warn" if size >= limits.warn else "pass"
