"""Storage errors inside a local Beam job (a child process on the FnApiRunner) name the URI, the bucket
and the connection the step used, as the storage layer's own errors do (mlbatch.storage.job_errors).

The real prep job (`mlbatch_beam.prep`) through `JobProcess`, as BeamPrepOperator and the local backends
run it, reading from or writing to a bucket that does not exist, on the GCS emulator (Beam's GCS client:
`NotFound` on the listing, `InvalidResponse: (404, ...)` on the upload) and on moto S3 (Beam's S3 client:
an empty listing, `S3ClientError` with `NoSuchBucket`), through a connection that is not the default."""

from __future__ import annotations

import json
import uuid

import pytest

from stores import GCS_BUCKET, S3_BUCKET, connect_gcs, connect_s3, ensure_gcs_bucket, ensure_s3_bucket
from test_storage_errors import assert_named, moto_with_auth  # noqa: F401 - module fixture


def named_connection(monkeypatch, default: str, conn_id: str) -> None:
    """`conn_id` as a copy of the default connection the store fixtures made (so the named one is used)."""
    value = json.loads(__import__("os").environ[f"AIRFLOW_CONN_{default.upper()}"])
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(value))


@pytest.fixture(params=["gcs", "s3"])
def lake(request, monkeypatch):
    """(scheme, Storage through a named connection, the connection id) on a store with one CSV input."""
    from mlbatch.storage.layer import Storage

    if request.param == "gcs":
        emulator = request.getfixturevalue("gcs_emulator")
        connect_gcs(emulator, monkeypatch)
        ensure_gcs_bucket(emulator, GCS_BUCKET)
        named_connection(monkeypatch, "google_cloud_default", "gcs_lake")
        return "gs", Storage(gcp_conn_id="gcs_lake"), "gcs_lake"
    moto = request.getfixturevalue("moto_server")
    connect_s3(moto, monkeypatch)
    ensure_s3_bucket(moto, S3_BUCKET)
    named_connection(monkeypatch, "aws_default", "s3_lake")
    return "s3", Storage(aws_conn_id="s3_lake"), "s3_lake"


def run_prep(input_uri: str, work: str, storage, tmp_path):
    """The prep job as BeamPrepOperator runs it, inside the same translation."""
    from mlbatch.run.job_process import JobProcess
    from mlbatch.storage.job_errors import job_storage_errors

    schema = json.dumps({"id_column": "id", "features": [{"name": "x", "type": "int"}]})
    args = ["--input", input_uri, "--input-format", "csv", "--schema-json", schema,
            "--output-dir", f"{work}/prepared", "--output-format", "parquet",
            "--dead-letter-dir", f"{work}/rejected", "--runner=FnApiRunner"]
    env, storage_args = storage.job_env([input_uri, work])
    job = JobProcess("mlbatch_beam.prep", args + storage_args, str(tmp_path / "result.json"), env=env)
    with job_storage_errors(storage, [input_uri], [work]):
        return job.run()


@pytest.mark.parametrize("missing", ["input", "output"])
def test_a_missing_bucket_in_a_beam_job_is_named_with_its_connection(lake, missing, tmp_path):
    from mlbatch.errors import BucketNotFoundError, RemoteJobError

    kind, storage, conn_id = lake
    prefix = uuid.uuid4().hex[:8]
    good = f"{kind}://{GCS_BUCKET if kind == 'gs' else S3_BUCKET}/{prefix}"
    with storage.open(f"{good}/in/a.csv", "wb") as fh:
        fh.write(b"id,x\n1,2\n2,3\n")
    bucket = f"no-such-bucket-{prefix}"
    input_uri = f"{kind}://{bucket}/in/*.csv" if missing == "input" else f"{good}/in/*.csv"
    work = f"{good}/work" if missing == "input" else f"{kind}://{bucket}/work"
    with pytest.raises(BucketNotFoundError) as err:
        run_prep(input_uri, work, storage, tmp_path)
    uri = input_uri if missing == "input" else work
    assert_named(err.value, f"bucket does not exist: {uri}", f"bucket '{bucket}'", f"connection '{conn_id}'",
                 "Create the bucket")
    assert isinstance(err.value.__cause__, RemoteJobError)  # the job's last lines stay in the traceback
    assert "\n" not in str(err.value)  # one line: the task log's last line, the console, the alert


def test_a_job_failure_that_is_not_about_storage_stays_what_it_was(lake, tmp_path):
    """An existing bucket but no matching file: the job's own error, unchanged."""
    from mlbatch.errors import RemoteJobError, StorageError

    kind, storage, _ = lake
    good = f"{kind}://{GCS_BUCKET if kind == 'gs' else S3_BUCKET}/{uuid.uuid4().hex[:8]}"
    with pytest.raises(RemoteJobError) as err:
        run_prep(f"{good}/nothing/*.csv", f"{good}/work", storage, tmp_path)
    assert not isinstance(err.value, StorageError) and "No input files match pattern" in str(err.value)


def s3_connection(monkeypatch, login: str, password: str, endpoint: str) -> str:
    conn = f"s3_job_{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn.upper()}", json.dumps(
        {"conn_type": "aws", "login": login, "password": password,
         "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}}))
    return conn


@pytest.mark.parametrize("case", ["wrong secret", "no grants"])
def test_s3_refusals_in_a_beam_job_name_the_connection(moto_with_auth, monkeypatch, tmp_path, case):
    """Beam's S3 client against moto with authentication: a wrong secret, a key with no grants. (A closed
    port is not tried here: Beam's S3 client retries a refused connection for minutes; the first task's
    endpoint probe names it before any job starts.)"""
    from mlbatch.errors import StorageAccessDeniedError, StorageCredentialsError
    from mlbatch.storage.layer import Storage

    endpoint, key_id, secret, (bare_key, bare_secret) = moto_with_auth
    login, password, expected = {"wrong secret": (key_id, "not-" + secret, StorageCredentialsError),
                                 "no grants": (bare_key, bare_secret, StorageAccessDeniedError)}[case]
    conn = s3_connection(monkeypatch, login, password, endpoint)
    storage = Storage(aws_conn_id=conn)
    with pytest.raises(expected) as err:
        run_prep("s3://guarded/in/*.csv", "s3://guarded/work", storage, tmp_path)
    assert_named(err.value, "bucket 'guarded'", f"connection '{conn}'")
