"""Column statistics computed by a Beam job in its scoring pass: no second read of the data.

`ColumnStatistics` is a CombineFn over RecordBatches (create_accumulator / add_input /
merge_accumulators / extract_output -> `statistics.summary` / `add_batch` / `merge` / `to_json`, one
summary per column). `RunStatistics` branches it off the feature batches and the scored batches and
writes one `statistics.json` ({"version", "features": {column: summary}, "predictions": {...}}), the
document the gate reads (mlbatch.quality.gate). Numeric columns bin on the baseline's edges
(`--statistics-edges`, a JSON file {column: [edges]} the predict step writes); a column with no edges
keeps a quantile sketch (the first run). A column's kind follows its Arrow type: integers and floats
are numeric, everything else (strings, bools) categorical.
"""
from __future__ import annotations

import json

import apache_beam as beam
import pyarrow as pa

from mlbatch_beam.arrow_io import write_bytes
from mlbatch_beam.quality import StatisticsError, batches
from mlbatch_beam.quality.statistics import add_columns, kind_of

__all__ = ["ColumnStatistics", "RunStatistics", "document_bytes", "kind_of", "read_edges"]

DOCUMENT_VERSION = batches.VERSION


class ColumnStatistics(beam.CombineFn):
    """RecordBatches -> {column: summary JSON} over `columns` (None: every column but `skip`)."""

    def __init__(self, columns: list[str] | None, edges: dict[str, list[float]], skip: tuple[str, ...] = ()):
        self._columns, self._edges, self._skip = columns, edges, set(skip)

    def create_accumulator(self) -> dict:
        return {}

    def add_input(self, accumulator: dict, batch: pa.RecordBatch) -> dict:
        names = self._columns if self._columns is not None else [
            n for n in batch.schema.names if n not in self._skip]
        return add_columns(accumulator, batch, names, self._edges)

    def merge_accumulators(self, accumulators) -> dict:
        out: dict = {}
        for accumulator in accumulators:
            for name, summary in accumulator.items():
                out[name] = out[name].merge(summary) if name in out else summary
        return out

    def extract_output(self, accumulator: dict) -> dict:
        return {name: summary.to_json() for name, summary in sorted(accumulator.items())}


class RunStatistics(beam.PTransform):
    """(feature batches, scored batches) -> `path` holding both sides' statistics as one JSON; given
    (feature batches,) alone (the prep job: a batch-prediction service scores later), the features'."""

    def __init__(self, path: str, features: list[str], id_column: str, edges: dict[str, list[float]]):
        super().__init__()
        self._path, self._features, self._id, self._edges = path, features, id_column, edges

    def expand(self, pcolls):
        features, scored = pcolls[0], pcolls[1] if len(pcolls) > 1 else None
        sides = (
            features | "FeatureStatistics" >> beam.CombineGlobally(ColumnStatistics(self._features, self._edges))
            | "TagFeatures" >> beam.Map(lambda doc: ("features", doc)),
        )
        if scored is not None:
            sides += (scored | "PredictionStatistics" >> beam.CombineGlobally(
                ColumnStatistics(None, self._edges, skip=(self._id,)))
                | "TagPredictions" >> beam.Map(lambda doc: ("predictions", doc)),)
        path = self._path
        return (sides | "BothSides" >> beam.Flatten()
                | "OneDocument" >> beam.combiners.ToDict()
                | "WriteStatistics" >> beam.Map(lambda doc: write_bytes(path, document_bytes(doc))))


def document_bytes(sides: dict) -> bytes:
    doc = {"version": DOCUMENT_VERSION, "features": sides.get("features", {}),
           "predictions": sides.get("predictions", {})}
    return (json.dumps(doc, sort_keys=True) + "\n").encode()


def read_edges(uri: str | None) -> dict[str, list[float]]:
    """The baseline's bin edges per numeric column, from the JSON file the predict step wrote (none:
    every numeric column keeps a sketch)."""
    if not uri:
        return {}
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(uri) as fh:
        edges = json.loads(fh.read())
    if not isinstance(edges, dict) or not all(isinstance(v, list) for v in edges.values()):
        raise StatisticsError(f"{uri}: bin edges must be a JSON object {{column: [edges]}}, "
                                         f"got {str(edges)[:200]}")
    return edges


def add_statistics_arguments(parser) -> None:
    parser.add_argument("--statistics-file", default=None,
                        help="write the run's column statistics (statistics.json) here; none: not computed")
    parser.add_argument("--statistics-edges", default=None,
                        help="JSON file {column: [bin edges]} of the baseline (mlbatch.quality.baseline)")
