"""The ``local`` prediction backend: cloud batch prediction, run in-process.

Reads the same prepared JSON Lines a cloud service would and writes
output in the same shape, so the publish step cannot tell the backends
apart and tests exercise the real contract:

* ``vertex``: files ``prediction.results-00000-of-0000N``, lines
  ``{"instance": {<features>}, "key": <id>, "prediction": <value>}``
  (Vertex AI batch prediction with ``keyField`` = the id column).
* ``sagemaker``: one ``<input file name>.out`` per input file, lines are
  the input object plus ``"SageMakerOutput": <value>`` (Batch Transform
  with ``JoinSource=Input``).

No Beam pipeline: a plain loop over files and bounded chunks of rows.
"""
from __future__ import annotations

import argparse
import gc
import json
import posixpath

import pandas as pd
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from mlbatch_beam.arrow_io import match_paths, read_file_batches, table_to_jsonl, write_bytes
from mlbatch_beam.model_handler import MLflowPyfuncModelHandler

FLAVORS = ("vertex", "sagemaker")
VERTEX_PREFIX = "prediction.results-"
SAGEMAKER_SUFFIX = ".out"
SAGEMAKER_COLUMN = "SageMakerOutput"


def output_name(flavor: str, input_path: str, index: int, total: int) -> str:
    if flavor == "vertex":
        return f"{VERTEX_PREFIX}{index:05d}-of-{total:05d}"
    return posixpath.basename(input_path) + SAGEMAKER_SUFFIX


def _lines(table: pa.Table) -> pd.Series:
    return pd.Series(table_to_jsonl(table).decode().splitlines(), dtype=object)


def encode_predictions(batch: pa.RecordBatch, predictions, flavor: str,
                       id_column: str, feature_columns: list[str]) -> bytes:
    """JSON Lines for one chunk, in the flavor's output shape."""
    if flavor == "sagemaker":
        table = pa.Table.from_batches([batch]).append_column(SAGEMAKER_COLUMN, pa.array(predictions))
        return table_to_jsonl(table)
    instances = _lines(pa.Table.from_batches([batch.select(feature_columns)]))
    key_and_prediction = _lines(pa.table({
        "key": batch.column(id_column), "prediction": pa.array(predictions)}))
    lines = '{"instance":' + instances + "," + key_and_prediction.str[1:]
    return ("\n".join(lines) + "\n").encode()


def predict_files(input_pattern: str, model_uri: str, id_column: str, feature_columns: list[str],
                  output_dir: str, flavor: str = "vertex", chunk_rows: int = 65536) -> dict:
    """Score every matching JSON Lines file; one output file per input file."""
    if flavor not in FLAVORS:
        raise ValueError(f"unknown flavor {flavor!r}; expected one of {FLAVORS}")
    paths = match_paths(input_pattern)
    model = MLflowPyfuncModelHandler(model_uri, id_column, feature_columns).load_model()
    rows_in = rows_scored = 0
    for index, path in enumerate(paths):
        target = FileSystems.join(output_dir, output_name(flavor, path, index, len(paths)))
        with FileSystems.create(target, compression_type=CompressionTypes.UNCOMPRESSED) as out:
            for batch in read_file_batches(path, "jsonl", chunk_rows):
                rows_in += batch.num_rows
                features = batch.select(feature_columns).to_pandas()
                predictions = model.predict(features)
                out.write(encode_predictions(batch, predictions, flavor, id_column, feature_columns))
                rows_scored += batch.num_rows
    return {"rows_in": rows_in, "rows_scored": rows_scored}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mlbatch_beam.local_predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="pattern of prepared JSON Lines files")
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--id-column", required=True)
    parser.add_argument("--feature-columns", required=True, help="comma-separated, in model order")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--flavor", default="vertex", choices=FLAVORS)
    parser.add_argument("--chunk-rows", type=int, default=65536)
    parser.add_argument("--result-file", required=True)
    return parser.parse_args(argv)


def run(argv=None) -> dict:
    args = parse_args(argv)
    features = [c.strip() for c in args.feature_columns.split(",") if c.strip()]
    result = predict_files(args.input, args.model_uri, args.id_column, features,
                           args.output_dir, args.flavor, args.chunk_rows)
    write_bytes(args.result_file, (json.dumps(result, indent=2) + "\n").encode())
    return result


if __name__ == "__main__":
    gc.freeze()  # as in mlbatch_beam.score: spare the collector the imports' objects
    print(json.dumps(run()), flush=True)
    gc.freeze()
