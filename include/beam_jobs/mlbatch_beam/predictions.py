"""Read cloud batch-prediction output back into [id, prediction columns] tables.

Exactly what the services write when they serve an MLflow model (and what the local backend
mimics), nothing looser:
* Vertex (key field = the id column): ``prediction.results-*`` lines ``{"key", "prediction"}``; a
  line with ``error`` instead, or any line in ``prediction.errors_stats-*``, is a failed instance
  and fails the read (no silent row loss). The REST reference names the files
  ``predictions_NNNN.jsonl`` / ``errors_NNNN.jsonl`` instead; both namings are read.
* SageMaker (``SplitType`` None): ``<input file>.out`` = the container's ``{"predictions": [...]}``
  for that whole file, in row order. Ids come from the prepared input file itself (the request sent
  features only), and the prediction count must equal its row count.
Each row's prediction (a value, a list of class probabilities, or {column: value} for a model that
returns a DataFrame) becomes the spec's published columns through mlbatch_beam.outputs, as in the
direct-model job.

No Beam here (the end of the predict step runs it on the Airflow side: mlbatch.backends.batch_predictions):
files are listed and opened through `store`, anything with `files(glob) -> sorted URIs` and
`open(uri) -> binary file` (predict passes mlbatch.storage.layer.Storage, bound to the pipeline's
connections).
"""
from __future__ import annotations

import fnmatch
import json
import posixpath
from collections.abc import Iterator
from typing import IO, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from mlbatch_beam.jsonl import read_jsonl
from mlbatch_beam.outputs import PredictionOutput

__all__ = ["FLAVORS", "INPUT_FORMAT", "prediction_files", "read_batch_predictions"]

# The files each service writes (and the local backend mimics), and what each reads.
FLAVORS = ("vertex", "sagemaker")
VERTEX_PREFIX = "prediction.results-"
VERTEX_ERRORS = "prediction.errors_stats-"
# What a Vertex job writes, as jobs name their files and as the REST reference names them
# (tests/dataplane/SOURCES.md): results, then the failed instances.
VERTEX_RESULT_GLOBS = (VERTEX_PREFIX + "*", "predictions_*")
VERTEX_ERROR_GLOBS = (VERTEX_ERRORS + "*", "errors_*")
SAGEMAKER_SUFFIX = ".out"
INPUT_FORMAT = {"vertex": "jsonl", "sagemaker": "parquet"}  # prep writes the flavor's input this way


class Store(Protocol):
    def files(self, pattern: str) -> list[str]: ...
    def open(self, uri: str) -> IO[bytes]: ...


def _join(directory: str, pattern: str) -> str:
    return directory.rstrip("/") + "/" + pattern


def prediction_files(store: Store, directory: str, flavor: str) -> list[str]:
    """The flavor's result files in a directory."""
    if flavor not in FLAVORS:
        raise ValueError(f"unknown flavor {flavor!r}; expected one of {FLAVORS}")
    globs = VERTEX_RESULT_GLOBS if flavor == "vertex" else ("*" + SAGEMAKER_SUFFIX,)
    paths = _files(store, directory, globs)
    if not paths:
        raise FileNotFoundError(f"no {flavor} prediction files match {[_join(directory, g) for g in globs]}")
    return paths


def _files(store: Store, directory: str, globs: tuple[str, ...]) -> list[str]:
    """The directory's files whose names match any of `globs`: one listing, however many namings."""
    return [path for path in store.files(directory)
            if any(fnmatch.fnmatchcase(posixpath.basename(path), glob) for glob in globs)]


def _read_text(store: Store, path: str) -> str:
    with store.open(path) as f:
        return f.read().decode()


def _vertex_errors(store: Store, directory: str) -> None:
    for path in _files(store, directory, VERTEX_ERROR_GLOBS):
        lines = [line for line in _read_text(store, path).splitlines() if line.strip()]
        if lines:
            raise ValueError(f"{path}: Vertex reports {len(lines)} failed instances; first: {lines[0][:300]}")


def _table(ids: pa.Array, predictions, output: PredictionOutput, id_column: str) -> pa.Table:
    """[id, published columns]; a plain value per row is kept as read (its type untouched)."""
    if not isinstance(predictions, (pa.Array, pa.ChunkedArray)):
        predictions = pa.array(predictions)
    plain = not (pa.types.is_list(predictions.type) or pa.types.is_struct(predictions.type))
    if output.kind in ("value", "label") and plain:
        return pa.Table.from_arrays([ids, predictions], names=[id_column, output.column])
    columns = output.columns_of(predictions, len(ids))
    return pa.Table.from_arrays([ids, *(pa.array(v) for v in columns.values())], names=[id_column, *columns])


def _jsonl_batches(store: Store, path: str, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    with store.open(path) as f:
        try:
            yield from read_jsonl(f, chunk_rows)
        except (pa.ArrowException, ValueError) as exc:
            raise ValueError(f"cannot read {path} as jsonl: {exc}") from exc


def _read_vertex(store: Store, directory: str, id_column: str, output: PredictionOutput,
                 chunk_rows: int) -> Iterator[pa.Table]:
    _vertex_errors(store, directory)
    for path in prediction_files(store, directory, "vertex"):
        for batch in _jsonl_batches(store, path, chunk_rows):
            names = batch.schema.names
            if "error" in names:
                raise ValueError(f"{path}: Vertex wrote failed instances (lines with 'error')")
            missing = [f for f in ("key", "prediction") if f not in names]
            if missing:
                raise ValueError(f"{path}: prediction lines lack {missing} (was the Vertex job run with "
                                 "instance_config.key_field = the id column?)")
            yield _table(batch.column("key"), batch.column("prediction"), output, id_column)


def _read_sagemaker(store: Store, directory: str, input_dir: str, id_column: str,
                    output: PredictionOutput) -> Iterator[pa.Table]:
    outputs = prediction_files(store, directory, "sagemaker")
    inputs = store.files(_join(input_dir, "*.parquet"))
    expected = {posixpath.basename(p) + SAGEMAKER_SUFFIX: p for p in inputs}
    got = {posixpath.basename(p): p for p in outputs}
    if set(got) != set(expected):
        raise ValueError(f"{directory}: SageMaker outputs {sorted(got)} do not match the inputs "
                         f"{sorted(expected)} of {input_dir}")
    for name, out_path in sorted(got.items()):
        try:
            predictions = json.loads(_read_text(store, out_path))["predictions"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{out_path}: not the model server's {{\"predictions\": [...]}} answer: {exc}")
        with store.open(expected[name]) as f:
            # ParquetFile, not read_table: read_table on a Python file object pre-buffers on Arrow's IO
            # threads, which can abort or hang the process at exit (apache/arrow#33975, #50482)
            ids = pq.ParquetFile(f).read(columns=[id_column]).column(id_column)
        if len(predictions) != len(ids):
            raise ValueError(f"{out_path}: {len(predictions)} predictions for the {len(ids)} rows of "
                             f"{expected[name]}")
        yield _table(ids, predictions, output, id_column)


def read_batch_predictions(store: Store, directory: str, flavor: str, id_column: str = "id",
                           prediction_column: str = "prediction", chunk_rows: int = 65536,
                           input_dir: str | None = None,
                           output: PredictionOutput | None = None) -> Iterator[pa.Table]:
    """Yield tables [id_column, prediction columns] from either service's output.

    :param input_dir: the prepared input the job read (SageMaker only: the ids come from it).
    :param output: which columns the predictions become; default one `prediction_column`.
    """
    output = output or PredictionOutput(column=prediction_column)
    if flavor == "vertex":
        return _read_vertex(store, directory, id_column, output, chunk_rows)
    if flavor == "sagemaker":
        if input_dir is None:
            raise ValueError("SageMaker predictions are joined to their ids by order: input_dir is needed")
        return _read_sagemaker(store, directory, input_dir, id_column, output)
    raise ValueError(f"unknown flavor {flavor!r}; expected one of {FLAVORS}")
