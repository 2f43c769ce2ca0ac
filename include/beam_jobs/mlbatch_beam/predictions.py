"""Read cloud batch-prediction output back into [id, prediction] tables.

Vertex AI and SageMaker each write their own JSON Lines shape; the publish
step only wants ids joined to predictions, so this normalises both (and
the local backend, which mimics them) into the same two columns.
"""
from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from mlbatch_beam.arrow_io import read_file_batches, write_table
from mlbatch_beam.local_predict import FLAVORS, SAGEMAKER_COLUMN, SAGEMAKER_SUFFIX, VERTEX_PREFIX

__all__ = ["prediction_files", "read_batch_predictions", "write_table"]


def prediction_files(directory: str, flavor: str) -> list[str]:
    """The flavor's result files in a directory (Vertex error files are skipped)."""
    if flavor not in FLAVORS:
        raise ValueError(f"unknown flavor {flavor!r}; expected one of {FLAVORS}")
    pattern = VERTEX_PREFIX + "*" if flavor == "vertex" else "*" + SAGEMAKER_SUFFIX
    pattern = FileSystems.join(directory.rstrip("/"), pattern)
    matched = FileSystems.match([pattern])[0].metadata_list
    paths = sorted(m.path for m in matched)
    if not paths:
        raise FileNotFoundError(f"no {flavor} prediction files match {pattern!r}")
    return paths


def read_batch_predictions(directory: str, flavor: str, id_column: str = "id",
                           prediction_column: str = "prediction",
                           chunk_rows: int = 65536) -> Iterator[pa.Table]:
    """Yield tables [id_column, prediction_column], chunk by chunk, from either shape."""
    if flavor == "vertex":
        id_field, prediction_field = "key", "prediction"
    else:
        id_field, prediction_field = id_column, SAGEMAKER_COLUMN
    for path in prediction_files(directory, flavor):
        for batch in read_file_batches(path, "jsonl", chunk_rows):
            missing = [f for f in (id_field, prediction_field) if f not in batch.schema.names]
            if missing:
                hint = " (was the Vertex job run with keyField = the id column?)" if flavor == "vertex" else ""
                raise ValueError(f"{path}: prediction lines lack {missing}{hint}")
            yield pa.Table.from_arrays(
                [batch.column(id_field), batch.column(prediction_field)],
                names=[id_column, prediction_column])
