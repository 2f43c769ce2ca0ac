"""Per-column statistics of one run, computed streamed by batch and merged exactly across shards.

A numeric summary (`numeric.NumericSummary`) counts rows, nulls, non-finite values, min/max, mean and
spread (Chan's parallel update), and a histogram over bin edges fixed by the baseline, with the values
below the first and above the last edge counted apart, so a shift out of the baseline's range still
shows. Each bin also keeps the sum of its values: the Wasserstein distance then places a bin's mass at
its mean, not its midpoint. With no baseline (a pipeline's first run) there are no edges yet: the
summary keeps an exactly mergeable quantile sketch instead (`sketch`), and `quantile_edges` makes
`numeric.BINS` equal-mass edges from it for the runs after it, which carry those edges forward.
A categorical (string, bool) summary keeps exact value counts of up to `MAX_VALUES` distinct values
and an `other` count.

A Beam CombineFn wraps this without Beam here: create_accumulator -> `summary(column, kind, edges)`,
add_input -> `add_batch` (a RecordBatch column or a numpy array), merge_accumulators -> `merge`,
extract_output -> `to_json`; `add_columns` is that add_input, shared with the readers of the
batch-prediction services' files (mlbatch.run.batch_predictions), which have no Beam. Shards merge with `merge` (runs unchanged); the last N runs pool into a
baseline with `pool` (runs summed, so row counts compare per run).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np

from mlbatch_beam.quality import StatisticsError
from mlbatch_beam.quality import batches
from mlbatch_beam.quality.numeric import NumericSummary

# Distinct values kept per categorical column: TFDV's rank histogram default
# (tfdv.StatsOptions(num_rank_histogram_buckets=1000)). Merges are exact while the union of the
# shards' values stays within it; beyond it the rarest values (ties: the larger value) fold into `other`.
MAX_VALUES = 1000


@dataclass
class CategoricalSummary:
    column: str
    runs: int = 1
    count: int = 0  # rows, nulls included
    nulls: int = 0
    values: dict[str, int] = field(default_factory=dict)
    other: int = 0
    kind: str = "categorical"

    def add_batch(self, values) -> CategoricalSummary:
        data, nulls = batches.to_numpy(values, self.column, "categorical")
        keys, counts = np.unique(data, return_counts=True)
        batch = CategoricalSummary(self.column, self.runs, data.size + nulls, nulls,
                                   {str(k): int(c) for k, c in zip(keys, counts)})
        return self.merge(batch)

    def merge(self, other: CategoricalSummary, runs: int | None = None) -> CategoricalSummary:
        batches.check_same(self, other)
        values = dict(self.values)
        for key, count in other.values.items():
            values[key] = values.get(key, 0) + count
        kept = dict(sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_VALUES])
        folded = sum(values.values()) - sum(kept.values())
        return CategoricalSummary(self.column, self.runs if runs is None else runs, self.count + other.count,
                                  self.nulls + other.nulls, kept, self.other + other.other + folded)

    def to_json(self) -> dict:
        return {"version": batches.VERSION, **asdict(self)}


Summary = NumericSummary | CategoricalSummary
KINDS = {"numeric": NumericSummary, "categorical": CategoricalSummary}


def summary(column: str, kind: str, edges: list[float] | None = None) -> Summary:
    """An empty summary: `kind` "numeric" (binned on `edges`, the baseline's; None: sketch) or
    "categorical" (strings, bools, any discrete value)."""
    if kind not in KINDS:
        raise StatisticsError(f"column {column!r}: kind {kind!r} is not one of {sorted(KINDS)}")
    if kind == "categorical":
        return CategoricalSummary(column)
    return NumericSummary(column, edges)


def kind_of(arrow_type) -> str:
    """A column's kind from its Arrow type: integers and floats numeric, anything else categorical."""
    import pyarrow as pa

    numeric = (pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)) and not pa.types.is_boolean(
        arrow_type)
    return "numeric" if numeric else "categorical"


def add_columns(summaries: dict[str, Summary], batch, columns: list[str], edges: dict[str, list[float]]) -> dict:
    """`summaries` ({column: summary}) with one RecordBatch's `columns` added: a column seen first gets
    the summary of its Arrow type's kind, binned on its `edges` if any."""
    for name in columns:
        column = batch.column(name)
        if name not in summaries:
            summaries[name] = summary(name, kind_of(column.type), edges.get(name))
        summaries[name] = summaries[name].add_batch(column)
    return summaries


def from_json(doc: dict) -> Summary:
    """The summary `to_json` wrote; a document that is not one names what is wrong."""
    if not isinstance(doc, dict) or doc.get("kind") not in KINDS:
        raise StatisticsError(f"not a column summary (kind must be one of {sorted(KINDS)}): {str(doc)[:200]}")
    cls, where = KINDS[doc["kind"]], doc.get("column", "?")
    if doc.get("version") != batches.VERSION:
        raise StatisticsError(f"column {where!r}: summary version {doc.get('version')!r}, "
                              f"this code reads version {batches.VERSION}")
    names = {f.name for f in fields(cls)}
    missing, extra = names - set(doc), set(doc) - names - {"version"}
    if missing or extra:
        raise StatisticsError(f"column {where!r}: {doc['kind']} summary missing {sorted(missing)}, "
                              f"unknown {sorted(extra)}")
    return cls(**{k: v for k, v in doc.items() if k != "version"})


def pool(summaries: list[Summary]) -> Summary:
    """The baseline of several runs: their merge, with `runs` the number of runs it holds."""
    if not summaries:
        raise StatisticsError("a baseline needs at least one run's summary, got none")
    out = summaries[0]
    for other in summaries[1:]:
        out = out.merge(other, runs=out.runs + other.runs)
    return out
