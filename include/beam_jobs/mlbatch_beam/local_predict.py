"""The ``local`` prediction backend: cloud batch prediction, run in-process.

It reads the prepared files a cloud job would read and writes exactly the files the service writes
when it serves the MLflow model (mlflow.pyfunc.scoring_server answers ``{"predictions": [...]}``),
so the reader (mlbatch_beam.predictions, at the end of predict) cannot tell the backends apart and
tests exercise the real contract:

* ``vertex`` (JSON Lines in, ``instance_config.key_field`` = the id column):
  ``prediction.results-NNNNN-of-MMMMM`` per input file, lines ``{"key": <id>, "prediction": <value>}``
  (with a key field Vertex writes the key instead of the instance), and an empty
  ``prediction.errors_stats-00000-of-00001``.
* ``sagemaker`` (Parquet in, ``SplitType`` None: one request per file, features only):
  ``<input file name>.out`` holding the container's answer, ``{"predictions": [...]}``, in row order.

Each request goes through the scoring server's own request handling in this process
(`mlflow.pyfunc.scoring_server.invocations`: the same parsing of a Parquet body or JSON `instances`, the
same `PyFuncModel.predict` with MLflow's schema enforcement, the same JSON answer), so a file the
containers would refuse fails here too, with the server's reason (`ContainerRefused`), and local
passing means the containers pass.

No Beam pipeline: a plain loop over files and bounded chunks of rows.
"""
from __future__ import annotations

import argparse
import gc
import io
import json
import posixpath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
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


def _plain(predictions) -> list:
    """JSON-able as the scoring server makes it (mlflow.utils.proto_json_utils._get_jsonable_obj):
    an array -> (nested) lists, a DataFrame -> {column: value} records, a Series -> 1-column records."""
    import pandas as pd

    if isinstance(predictions, pd.Series):
        predictions = predictions.to_frame()
    if isinstance(predictions, pd.DataFrame):
        return predictions.to_dict(orient="records")
    return predictions.tolist() if hasattr(predictions, "tolist") else list(predictions)


PARQUET = "application/vnd.apache.parquet"  # what the SageMaker backend sends (backends/sagemaker.py)


class ContainerRefused(ValueError):
    """The scoring server would not answer 200 to this request: its status and reason."""


class ScoringServer:
    """The MLflow scoring server's request handling, in this process, on one loaded model."""

    def __init__(self, pyfunc):
        self.pyfunc = pyfunc
        self.schema = pyfunc.metadata.get_input_schema()

    def invoke(self, body: bytes, content_type: str, where: str) -> list:
        """The server's `predictions` for one request body, or ContainerRefused with its answer."""
        return json.loads(self.answer(body, content_type, where))["predictions"]

    def answer(self, body: bytes, content_type: str, where: str) -> str:
        """The server's answer body (`{"predictions": [...]}`) to one request, or ContainerRefused."""
        from mlflow.exceptions import MlflowException
        from mlflow.pyfunc.scoring_server import invocations

        try:
            answer = invocations(body, content_type, self.pyfunc, self.schema)
        except MlflowException as exc:  # the server answers these with their HTTP status (400 mostly)
            raise ContainerRefused(f"{where}: the scoring server would answer {exc.get_http_status_code()}: "
                                   f"{_reason(exc.message)}") from None
        if answer.status != 200:
            raise ContainerRefused(f"{where}: the scoring server would answer {answer.status}: {answer.response}")
        return answer.response

    def invoke_instances(self, batch: pa.RecordBatch, feature_columns: list[str], where: str) -> list:
        """What `invoke(instances_request(batch), "application/json")` answers, parsed column by column.

        The server turns `instances` into columns value by value (proto_json_utils.parse_instances_data:
        `convert_data_type` = np.array([value], column numpy type)[0] per value, then np.array per column);
        for plain typed columns np.array(values, type) is the same conversion on the whole column (nulls
        included: float NaN, bool False, string 'None', an int fails), about 10x faster. Other signatures
        take the server's own path."""
        from mlflow.types.schema import DataType

        columns = self.schema.input_dict() if self.schema is not None and self.schema.has_input_names() else {}
        if not columns or not all(isinstance(c.type, DataType) for c in columns.values()):
            return self.invoke(instances_request(batch, feature_columns), "application/json", where)
        data = {}
        for name in feature_columns:
            values = batch.column(name).to_pylist()
            spec = columns.get(name)
            try:
                data[name] = np.array(values) if spec is None else np.array(values, spec.type.to_numpy())
            except Exception as exc:  # the server's MlflowInvalidInputException: 400
                raise ContainerRefused(f"{where}: the scoring server would answer 400: Invalid input. {exc}") from None
        return self._predict(data, where)

    def _predict(self, data, where: str) -> list:
        """PyFuncModel.predict (schema enforcement first) and the server's JSON answer, or its refusal."""
        from mlflow.exceptions import MlflowException
        from mlflow.pyfunc.scoring_server import predictions_to_json

        try:
            raw = self.pyfunc.predict(data)
        except MlflowException as exc:
            raise ContainerRefused(f"{where}: the scoring server would answer {exc.get_http_status_code()}: "
                                   f"{_reason(exc.message)}") from None
        except Exception as exc:  # the server answers 400, "Encountered an unexpected error ..."
            raise ContainerRefused(f"{where}: the scoring server would answer 400: the model failed: "
                                   f"{type(exc).__name__}: {exc}") from None
        answer = io.StringIO()
        predictions_to_json(raw, answer)
        return json.loads(answer.getvalue())["predictions"]


def _reason(message: str) -> str:
    """The server's message without the request's DataFrame dump ("Failed to predict data '...'")."""
    return message.rpartition("Error: ")[2] if "Error: " in message else message


def parquet_request(table: pa.Table) -> bytes:
    """The body SageMaker posts: a prepared file's features as one Parquet table
    (mlbatch.backends.sagemaker.write_request_files)."""
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def instances_request(batch: pa.RecordBatch, feature_columns: list[str]) -> bytes:
    """The body Vertex posts: {"instances": [{feature: value}, ...]} (instance_type object)."""
    return json.dumps({"instances": batch.select(feature_columns).to_pylist()}).encode()


def _sagemaker_file(server: ScoringServer, path: str, feature_columns: list[str], out) -> int:
    """One request per file (SplitType None), its answer written as-is."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        table = pq.ParquetFile(fh).read(columns=feature_columns)
    out.write(server.answer(parquet_request(table), PARQUET, path).encode())  # written as the container answers
    return table.num_rows


def _vertex_file(server: ScoringServer, path: str, id_column: str, feature_columns: list[str],
                 chunk_rows: int, out, progress) -> int:
    rows = 0
    for batch in read_file_batches(path, INPUT_FORMAT["vertex"], chunk_rows):
        predictions = server.invoke_instances(batch, feature_columns, path)
        out.write(vertex_result_lines(batch.column(id_column), predictions))
        rows += batch.num_rows
        progress.add(batch.num_rows)
    return rows


def predict_files(input_pattern: str, model_uri: str, id_column: str, feature_columns: list[str],
                  output_dir: str, flavor: str = "vertex", chunk_rows: int = 65536) -> dict:
    """Score every matching prepared file as the flavor's container would; one output file per input."""
    if flavor not in FLAVORS:
        raise ValueError(f"unknown flavor {flavor!r}; expected one of {FLAVORS}")
    paths = match_paths(input_pattern)
    server = ScoringServer(MLflowPyfuncModelHandler(model_uri, id_column, feature_columns).load_model().pyfunc)
    rows = 0
    progress = ProgressReporter("scored")
    for index, path in enumerate(paths):
        target = FileSystems.join(output_dir, output_name(flavor, path, index, len(paths)))
        with FileSystems.create(target, compression_type=CompressionTypes.UNCOMPRESSED) as out:
            if flavor == "vertex":
                rows += _vertex_file(server, path, id_column, feature_columns, chunk_rows, out, progress)
            else:
                done = _sagemaker_file(server, path, feature_columns, out)
                rows += done
                progress.add(done)
    progress.flush()
    if flavor == "vertex" and not output_dir.startswith("s3://"):
        # Beam's S3 filesystem cannot write an empty object (a multipart upload of zero parts, which S3
        # refuses with MalformedXML: apache_beam/io/aws/s3io.py S3Uploader.finish); Vertex itself writes
        # to GCS only, and the reader (predictions.py) takes a missing errors file as no errors.
        write_bytes(FileSystems.join(output_dir, f"{VERTEX_ERRORS}00000-of-00001"), b"")
    return {"rows_in": rows, "rows_scored": rows}


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
