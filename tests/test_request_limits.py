"""Limits of a whole-file request to the MLflow container (SageMaker, `SplitType` None): prep sizes the
files by `predict.sagemaker.max_rows_per_request`, a file over it is refused before submitting, and a
request the model server does not answer within its timeout fails the job as the service would.

Measured on this 2-core machine (busy with other work), `mlflow models serve -w 1` on the natality test
model, Parquet requests: 10k rows 0.10 s, 100k rows 0.37 s, 500k rows 1.5 s (~330k rows/s), i.e. the
default budget (65,536 rows) answers in ~0.2 s, far inside the 60 s limit."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pandas as pd
import pytest
from cloud_backends import aws_conn  # noqa: F401 - the moto server (S3, CloudWatch Logs)

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "include" / "pipelines" / "natality_sagemaker.yaml"
FEATURES = ["is_male", "mother_age", "plurality", "gestation_weeks"]


def sagemaker_spec(**overrides):
    from mlbatch.spec.loader import load_spec, with_overrides

    return with_overrides(load_spec(SPEC), overrides)


def natality(rows: int) -> pd.DataFrame:
    return pd.DataFrame({"id": range(rows), "is_male": [True] * rows, "mother_age": [30.0] * rows,
                         "plurality": [1] * rows, "gestation_weeks": [39.0] * rows})


def test_prep_writes_sagemaker_files_of_at_most_the_row_budget(tmp_path):
    """The real prep job, told what the prep step tells it: 2,500 rows -> files of at most 1,000."""
    import pyarrow.parquet as pq

    from mlbatch_beam import prep

    from mlbatch.spec.prep_contract import prepared_file_rows, schema_json

    spec = sagemaker_spec(**{"predict.sagemaker.max_rows_per_request": 1_000})
    assert spec.prep.batch_rows > 1_000 and prepared_file_rows(spec) == 1_000
    on_vertex = spec.model_copy(update={"predict": spec.predict.model_copy(update={"backend": "vertex"})})
    assert prepared_file_rows(on_vertex) == spec.prep.batch_rows  # Vertex sends batches of instances
    (tmp_path / "in").mkdir()
    natality(2_500).to_parquet(tmp_path / "in" / "part-0.parquet", index=False)
    prep.run(["--input", f"{tmp_path}/in/*.parquet", "--input-format", "parquet", "--schema-json", schema_json(spec),
              "--output-dir", str(tmp_path / "prepared"), "--output-format", "parquet",
              "--dead-letter-dir", str(tmp_path / "rejected"), "--batch-rows", str(prepared_file_rows(spec)),
              "--result-file", str(tmp_path / "prep.json"), "--runner=FnApiRunner"])
    rows = sorted(pq.ParquetFile(p).metadata.num_rows for p in (tmp_path / "prepared").glob("*.parquet"))
    assert sum(rows) == 2_500 and max(rows) <= 1_000, rows


def test_a_prepared_file_over_the_row_budget_is_refused_before_submitting(tmp_path):
    from mlbatch.backends.sagemaker import write_request_files
    from mlbatch.errors import BackendConfigError
    from mlbatch.storage.layer import Storage

    spec = sagemaker_spec(**{"predict.sagemaker.max_rows_per_request": 10})
    (tmp_path / "prepared").mkdir()
    natality(20).to_parquet(tmp_path / "prepared" / "part-00000.parquet", index=False)
    with pytest.raises(BackendConfigError, match=r"part-00000.parquet holds 20 rows, over "
                                                 r"predict.sagemaker.max_rows_per_request \(10\)"):
        write_request_files(spec, Storage(), str(tmp_path / "prepared"), str(tmp_path / "request"))
    assert not (tmp_path / "request").exists()  # nothing staged for a job


def test_a_request_over_the_model_servers_timeout_fails_the_job_as_the_service_would(aws_conn, registered_model,
                                                                                   tmp_path):
    """The real scoring server with a 1 s request timeout (60 s in the image) and a request that takes
    longer: it answers 504, the job fails with "See job logs", and the reason read back from the job's
    data-log says it was the timeout."""
    from dataplane.sagemaker_transform import ContainerRefused, run_transform
    from scoring_server import serve_model

    from mlbatch.backends.failure_reasons import TIMEOUT_BODY, container_reason
    from mlbatch.hooks.sagemaker import TransformJobHook

    s3 = aws_conn.client("s3")
    s3.create_bucket(Bucket="request-limits")
    big = io.BytesIO()
    natality(2_000_000)[FEATURES].to_parquet(big, index=False)  # ~6 s of scoring here
    s3.put_object(Bucket="request-limits", Key="in/part-00000.parquet", Body=big.getvalue())
    job = {"TransformJobName": "request-over-timeout", "MaxPayloadInMB": 6,
           "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                              "S3Uri": "s3://request-limits/in/"}},
                              "ContentType": "application/vnd.apache.parquet", "SplitType": "None"},
           "TransformOutput": {"S3OutputPath": "s3://request-limits/out", "Accept": "application/json"}}
    env = {**os.environ, "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": "1"}
    model_uri = f"models:/{registered_model['name']}/{registered_model['version']}"
    with serve_model(model_uri, tmp_path / "server.log", env=env) as server:
        started = time.monotonic()
        with pytest.raises(ContainerRefused) as refused:
            run_transform(job, s3, server.url)
        assert time.monotonic() - started < 5  # answered at the limit, not when scoring ended
    assert refused.value.status == 504 and refused.value.body == TIMEOUT_BODY
    assert str(refused.value) == "ClientError: See job logs for more information"
    tail = TransformJobHook("aws_default", aws_conn.region).log_tail("request-over-timeout", 50)
    assert container_reason(tail) == f"the model server's request timeout: {TIMEOUT_BODY} (504)"
