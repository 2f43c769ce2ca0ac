"""The ``local`` prediction backend: cloud batch prediction, run in-process.

It reads the prepared files a cloud job would read and writes exactly the files the service writes
when it serves the MLflow model (mlflow.pyfunc.scoring_server answers ``{"predictions": [...]}``),
so publish cannot tell the backends apart and tests exercise the real contract:

* ``vertex`` (JSON Lines in, ``instance_config.key_field`` = the id column):
  ``prediction.results-NNNNN-of-MMMMM`` per input file, lines ``{"key": <id>, "prediction": <value>}``
  (with a key field Vertex writes the key instead of the instance), and an empty
  ``prediction.errors_stats-00000-of-00001``.
* ``sagemaker`` (Parquet in, ``SplitType`` None: one request per file, features only):
  ``<input file name>.out`` holding the container's answer, ``{"predictions": [...]}``, in row order.

No Beam pipeline: a plain loop over files and bounded chunks of rows.
"""
from __future__ import annotations

import argparse
import gc
import json
import posixpath

import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from mlbatch_beam.arrow_io import match_paths, read_file_batches, write_bytes
from mlbatch_beam.options import pipeline_options
from mlbatch_beam.model_handler import MLflowPyfuncModelHandler
from mlbatch_beam.predictions import FLAVORS, INPUT_FORMAT, SAGEMAKER_SUFFIX, VERTEX_ERRORS, VERTEX_PREFIX
from mlbatch_beam.progress import ProgressReporter


def output_name(flavor: str, input_path: str, index: int, total: int) -> str:
    if flavor == "vertex":
        return f"{VERTEX_PREFIX}{index:05d}-of-{total:05d}"
    return posixpath.basename(input_path) + SAGEMAKER_SUFFIX


def vertex_result_lines(keys: pa.Array, predictions) -> bytes:
    """Vertex's result lines with a key field: ``{"key": ..., "prediction": ...}``."""
    return "".join(json.dumps({"key": k, "prediction": p}) + "\n"
                   for k, p in zip(keys.to_pylist(), _plain(predictions))).encode()


def sagemaker_response(predictions) -> bytes:
    """The MLflow scoring server's answer for one request, which Batch Transform writes as-is."""
    return json.dumps({"predictions": _plain(predictions)}).encode()


def _plain(predictions) -> list:
    """JSON-able as the scoring server makes it (mlflow.utils.proto_json_utils._get_jsonable_obj):
    an array -> (nested) lists, a DataFrame -> {column: value} records, a Series -> 1-column records."""
    import pandas as pd

    if isinstance(predictions, pd.Series):
        predictions = predictions.to_frame()
    if isinstance(predictions, pd.DataFrame):
        return predictions.to_dict(orient="records")
    return predictions.tolist() if hasattr(predictions, "tolist") else list(predictions)


def predict_files(input_pattern: str, model_uri: str, id_column: str, feature_columns: list[str],
                  output_dir: str, flavor: str = "vertex", chunk_rows: int = 65536) -> dict:
    """Score every matching prepared file; one output file per input file."""
    if flavor not in FLAVORS:
        raise ValueError(f"unknown flavor {flavor!r}; expected one of {FLAVORS}")
    paths = match_paths(input_pattern)
    model = MLflowPyfuncModelHandler(model_uri, id_column, feature_columns).load_model()
    rows_in = rows_scored = 0
    progress = ProgressReporter("scored")
    for index, path in enumerate(paths):
        target = FileSystems.join(output_dir, output_name(flavor, path, index, len(paths)))
        predictions = []
        with FileSystems.create(target, compression_type=CompressionTypes.UNCOMPRESSED) as out:
            for batch in read_file_batches(path, INPUT_FORMAT[flavor], chunk_rows):
                rows_in += batch.num_rows
                scored = model.predict_raw(batch.select(feature_columns).to_pandas())
                if flavor == "vertex":
                    out.write(vertex_result_lines(batch.column(id_column), scored))
                else:  # one request per file: the answer is written once, at the end
                    predictions += _plain(scored)
                rows_scored += batch.num_rows
                progress.add(batch.num_rows)
            if flavor == "sagemaker":
                out.write(sagemaker_response(predictions))
    progress.flush()
    if flavor == "vertex":
        write_bytes(FileSystems.join(output_dir, f"{VERTEX_ERRORS}00000-of-00001"), b"")
    return {"rows_in": rows_in, "rows_scored": rows_scored}


def parse_args(argv=None, known_only=False):
    """The job's arguments; with `known_only`, also the rest (Beam filesystem flags such as
    --s3_endpoint_url, which the storage layer passes for s3:// folders)."""
    parser = argparse.ArgumentParser(prog="python -m mlbatch_beam.local_predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="pattern of prepared files (see INPUT_FORMAT)")
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--id-column", required=True)
    parser.add_argument("--feature-columns", required=True, help="comma-separated, in model order")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--flavor", default="vertex", choices=FLAVORS)
    parser.add_argument("--chunk-rows", type=int, default=65536)
    parser.add_argument("--result-file", required=True)
    return parser.parse_known_args(argv) if known_only else parser.parse_args(argv)


def run(argv=None) -> dict:
    args, filesystem_flags = parse_args(argv, known_only=True)
    pipeline_options(filesystem_flags)  # sets up Beam's filesystems (S3 endpoint, region) for this process
    features = [c.strip() for c in args.feature_columns.split(",") if c.strip()]
    result = predict_files(args.input, args.model_uri, args.id_column, features,
                           args.output_dir, args.flavor, args.chunk_rows)
    write_bytes(args.result_file, (json.dumps(result, indent=2) + "\n").encode())
    return result


if __name__ == "__main__":
    gc.freeze()  # as in mlbatch_beam.score: spare the collector the imports' objects
    print(json.dumps(run()), flush=True)
    gc.freeze()
