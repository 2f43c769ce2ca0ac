"""The summary of one numeric column (see `statistics` for why it is built this way)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from mlbatch_beam.quality import StatisticsError
from mlbatch_beam.quality import batches, sketch

# 20 equal-mass bins (5 % of the baseline each): fine enough that a shift of a third of a standard
# deviation moves PSI past 0.1, coarse enough that no bin holds so little baseline mass that PSI's
# log ratio is dominated by noise (PSI practice uses 10-20 quantile bins).
BINS = 20


@dataclass
class NumericSummary:
    column: str
    edges: list[float] | None = None
    runs: int = 1
    count: int = 0  # rows, nulls included
    nulls: int = 0
    non_finite: int = 0
    min: float | None = None
    max: float | None = None
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean
    counts: list[int] = field(default_factory=list)
    sums: list[float] = field(default_factory=list)
    below: int = 0
    above: int = 0
    below_sum: float = 0.0
    above_sum: float = 0.0
    sketch: dict[str, int] | None = None
    kind: str = "numeric"

    def __post_init__(self):
        if self.edges is None:
            self.sketch = {} if self.sketch is None else self.sketch
        else:
            e = np.asarray(self.edges, dtype=np.float64)
            if e.size < 2 or not np.all(np.isfinite(e)) or not np.all(np.diff(e) > 0):
                raise StatisticsError(f"column {self.column!r}: bin edges must be at least two finite, "
                                      f"strictly increasing numbers, got {self.edges}")
            self.edges = e.tolist()
            self.counts = self.counts or [0] * (e.size - 1)
            self.sums = self.sums or [0.0] * (e.size - 1)

    @property
    def finite(self) -> int:
        return self.count - self.nulls - self.non_finite

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.finite)) if self.finite else 0.0

    def add_batch(self, values) -> NumericSummary:
        data, nulls = batches.to_numpy(values, self.column, "numeric")
        ok = np.isfinite(data)
        v = data[ok]
        other = NumericSummary(self.column, self.edges, self.runs, data.size + nulls, nulls, int((~ok).sum()))
        if v.size:
            other.min, other.max, other.mean = float(v.min()), float(v.max()), float(v.mean())
            other.m2 = float(np.square(v - other.mean).sum())
            if self.edges is None:
                other.sketch = sketch.bucket_counts(v)
            else:
                other._bin(v)
        return self.merge(other)

    def _bin(self, v: np.ndarray, w: np.ndarray | None = None) -> None:
        edges, n = np.asarray(self.edges), len(self.edges) - 1
        w = np.ones(v.size, dtype=np.int64) if w is None else w
        low, high = v < edges[0], v > edges[-1]
        inside = ~low & ~high
        index = np.minimum(np.searchsorted(edges, v[inside], side="right") - 1, n - 1)
        self.counts = np.bincount(index, weights=w[inside], minlength=n).astype(np.int64).tolist()
        self.sums = np.bincount(index, weights=(v * w)[inside], minlength=n).tolist()
        self.below, self.above = int(w[low].sum()), int(w[high].sum())
        self.below_sum, self.above_sum = float((v * w)[low].sum()), float((v * w)[high].sum())

    def merge(self, other: NumericSummary, runs: int | None = None) -> NumericSummary:
        batches.check_same(self, other)
        if self.edges != other.edges:
            raise StatisticsError(f"column {self.column!r}: cannot merge summaries binned on different "
                                  f"edges ({self.edges} and {other.edges})")
        n_a, n_b = self.finite, other.finite
        n = n_a + n_b
        delta = other.mean - self.mean
        out = NumericSummary(self.column, self.edges, self.runs if runs is None else runs,
                             self.count + other.count, self.nulls + other.nulls,
                             self.non_finite + other.non_finite,
                             batches.pick(min, self.min, other.min), batches.pick(max, self.max, other.max),
                             self.mean + delta * n_b / n if n else 0.0,
                             self.m2 + other.m2 + delta * delta * n_a * n_b / n if n else 0.0)
        if self.edges is None:
            out.sketch = sketch.add(dict(self.sketch), other.sketch)
        else:
            out.counts = [a + b for a, b in zip(self.counts, other.counts)]
            out.sums = [a + b for a, b in zip(self.sums, other.sums)]
            out.below, out.above = self.below + other.below, self.above + other.above
            out.below_sum, out.above_sum = self.below_sum + other.below_sum, self.above_sum + other.above_sum
        return out

    def quantile_edges(self, bins: int = BINS) -> list[float] | None:
        """The edges the runs after this one bin on: this summary's own, else `bins` equal-mass
        bins from the sketch, each edge on a sketch bucket's upper bound (duplicates dropped: a column
        with few distinct values gets fewer bins)."""
        if self.edges is not None:
            return self.edges
        if not self.finite:
            return None
        inner = sketch.quantiles(self.sketch, np.linspace(0, 1, bins + 1)[1:-1], bounds=True)
        edges = np.unique(np.clip(np.concatenate([[self.min], inner, [self.max]]), self.min, self.max))
        return edges.tolist() if edges.size > 1 else [self.min - 0.5, self.min + 0.5]

    def binned(self, edges: list[float]) -> tuple[np.ndarray, np.ndarray]:
        """(counts, positions) over [below, bin 1..n, above]: each cell's mass and where it sits (its
        values' mean; the cell's middle when empty). A sketch-only summary is re-binned, to 0.1 %."""
        if self.edges is None:
            values, counts = sketch.points(self.sketch)
            source = NumericSummary(self.column, edges)
            source._bin(np.clip(values, self.min, self.max) if counts.size else values, counts)
        elif self.edges == list(edges):
            source = self
        else:
            raise StatisticsError(f"column {self.column!r}: summary binned on {self.edges}, "
                                  f"compared on {list(edges)}")
        mass = np.array([source.below, *source.counts, source.above], dtype=np.float64)
        total = np.array([source.below_sum, *source.sums, source.above_sum])
        e = np.asarray(edges, dtype=np.float64)
        middle = np.concatenate([[e[0]], (e[:-1] + e[1:]) / 2, [e[-1]]])
        return mass, np.where(mass > 0, total / np.where(mass > 0, mass, 1), middle)

    def to_json(self) -> dict:
        return {"version": batches.VERSION, **asdict(self)}
