"""Storage, connection and service errors name the URI, the bucket, the connection and what to do.

On the stores the bundle really talks to: moto S3 (the session server; a second moto server with
authentication switched on for wrong and unknown keys), the GCS emulator, and a closed localhost port
for an endpoint that does not answer. Each case checks the error the storage layer raises, the Slack
alert built from it, and (one slow case) the console of `mlbatch run`. Also the one connection rule:
steps inherit the `storage:` connections, and `mlbatch validate --connections` refuses what the
environment cannot provide.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from emulators import free_port
from stores import connect_gcs, connect_s3, ensure_gcs_bucket, ensure_s3_bucket

REPO = Path(__file__).resolve().parents[1]
MLBATCH = str(Path(sys.executable).parent / "mlbatch")
DATE = "2026-11-20"


def spec_of(**blocks):
    """A small valid spec (local input) with `blocks` merged in."""
    from mlbatch.spec.models import PipelineSpec

    base = {"name": "errs", "model": {"name": "m", "alias": "champion"},
            "input": {"uri": "/tmp/in/*.csv", "format": "csv", "id_column": "id",
                      "features": [{"name": "x", "type": "int"}]},
            "output": {"uri": "/tmp/out/ds={{ ds }}"}}
    for key, value in blocks.items():
        base[key] = {**base.get(key, {}), **value}
    return PipelineSpec.model_validate(base)


def alert_text(exc: BaseException) -> str:
    """The Slack alert of a task that failed with `exc`, as text (built as tests/test_alerts.py does)."""
    from mlbatch.alerts.message import Alert, as_text, blocks

    alert = Alert(kind="failure", pipeline="errs", dag_id="errs", task_id="publish", run_id="manual__x",
                  try_number=1, max_tries=2, error_type=type(exc).__name__, error_message=str(exc))
    return as_text(blocks(alert), alert.fallback_text()) + "\n" + alert.fallback_text()


def assert_named(exc: BaseException, *names: str) -> None:
    """`names` are in the error's message and in its Slack alert; only an unreachable endpoint is retried."""
    from mlbatch.errors import StorageUnreachableError, retry_verdict

    for text in (str(exc), alert_text(exc)):
        for name in names:
            assert name in text, (name, text)
    assert retry_verdict(exc).retry == isinstance(exc, StorageUnreachableError), retry_verdict(exc)


def no_aws_environment(monkeypatch) -> None:
    """No AWS credentials outside Airflow connections: boto3's own chain finds nothing."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def closed_port() -> int:
    port = free_port()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    return port


# --- the one connection rule ------------------------------------------------------------------------

def test_steps_inherit_the_storage_connections_unless_they_name_their_own():
    from mlbatch.spec.connections import needed_connections

    spec = spec_of(storage={"gcp_conn_id": "gcs_lake", "aws_conn_id": "s3_lake"},
                   input={"uri": "gs://lake/in/ds={{ ds }}/*.csv", "marker": "gs://lake/in/ds={{ ds }}/_SUCCESS"},
                   output={"uri": "s3://out/p/ds={{ ds }}"})
    assert (spec.wait.gcp_conn_id, spec.wait.aws_conn_id) == ("gcs_lake", "s3_lake")
    assert spec.predict.dataflow.gcp_conn_id == spec.predict.vertex.gcp_conn_id == "gcs_lake"
    assert spec.predict.sagemaker.aws_conn_id == "s3_lake"
    needs = {n.purpose: (n.conn_id, n.field) for n in needed_connections(spec)}
    assert needs == {"wait.targets": ("gcs_lake", "storage.gcp_conn_id"), "input.uri": ("gcs_lake", "storage.gcp_conn_id"),
                     "input.marker": ("gcs_lake", "storage.gcp_conn_id"), "output.uri": ("s3_lake", "storage.aws_conn_id")}

    own = spec_of(storage={"gcp_conn_id": "gcs_lake"}, wait={"gcp_conn_id": "gcs_landing"},
                  input={"uri": "gs://lake/in/*.csv"})
    assert own.wait.gcp_conn_id == "gcs_landing" and own.predict.dataflow.gcp_conn_id == "gcs_lake"
    wait_need = next(n for n in needed_connections(own) if n.purpose == "wait.targets")
    assert (wait_need.conn_id, wait_need.field, wait_need.explicit) == ("gcs_landing", "wait.gcp_conn_id", True)
    assert spec_of().wait.gcp_conn_id == "google_cloud_default"  # nothing named: the built-in defaults


def test_a_missing_connection_is_named_with_its_field_and_uri(monkeypatch):
    from mlbatch.errors import ConnectionNotFoundError
    from mlbatch.run.preflight import connection_problems

    no_aws_environment(monkeypatch)
    monkeypatch.delenv("AIRFLOW_CONN_AWS_DEFAULT", raising=False)
    spec = spec_of(wait={"gcp_conn_id": "gcs_typo"}, input={"uri": "gs://lake/in/*.csv"},
                   output={"uri": "s3://out/p/ds={{ ds }}"})
    problems = connection_problems(spec)
    assert [type(p) for p in problems] == [ConnectionNotFoundError] * 3
    typo, default_gcp, default_aws = problems
    assert_named(typo, "'gcs_typo'", "wait.gcp_conn_id", "gs://lake/in/*.csv", "AIRFLOW_CONN_GCS_TYPO")
    assert_named(default_gcp, "'google_cloud_default'", "storage.gcp_conn_id")
    assert_named(default_aws, "'aws_default'", "storage.aws_conn_id", "s3://out/p/ds={{ ds }}",
                 "no AWS credentials are in the environment")


def test_validate_connections_refuses_what_the_environment_cannot_provide(tmp_path, moto_server):
    spec = yaml.safe_load((REPO / "include" / "pipelines" / "natality_daily.yaml").read_text())
    spec.pop("environments", None)
    spec["output"] = {**spec["output"], "uri": "s3://predictions/natality/ds={{ ds }}"}
    spec["input"].update(uri=str(tmp_path / "*.parquet"), marker=None)
    path = tmp_path / "natality_daily.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AIRFLOW_HOME": str(tmp_path / "airflow"),
           "AWS_EC2_METADATA_DISABLED": "true", "MLBATCH_ENV": "dev"}

    def validate(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([MLBATCH, "validate", str(path), *args], env={**env, **extra}, capture_output=True,
                              text=True, timeout=120)

    plain = validate()
    assert plain.returncode == 0, plain.stderr  # without --connections only the spec itself is checked
    started = time.perf_counter()
    missing = validate("--connections")
    assert missing.returncode == 1 and "ConnectionNotFoundError" in missing.stderr, missing.stderr
    assert "output.uri s3://predictions/natality/ds={{ ds }} needs the AWS connection 'aws_default' " \
           "(storage.aws_conn_id)" in missing.stderr
    dead = json.dumps({"conn_type": "aws", "login": "k", "password": "s",
                       "extra": {"endpoint_url": f"http://127.0.0.1:{closed_port()}"}})
    unreachable = validate("--connections", AIRFLOW_CONN_AWS_DEFAULT=dead)
    assert unreachable.returncode == 1 and "StorageUnreachableError" in unreachable.stderr, unreachable.stderr
    assert "connection 'aws_default'" in unreachable.stderr and "endpoint http://127.0.0.1:" in unreachable.stderr
    good = json.dumps({"conn_type": "aws", "login": "testing", "password": "testing",
                       "extra": {"endpoint_url": moto_server.endpoint_url}})
    ok = validate("--connections", AIRFLOW_CONN_AWS_DEFAULT=good)
    assert ok.returncode == 0 and ok.stdout.startswith("ok  "), ok.stderr
    assert time.perf_counter() - started < 60


# --- missing bucket ---------------------------------------------------------------------------------

@pytest.mark.parametrize("store", ["s3", "gs"])
def test_a_missing_bucket_is_named_by_every_operation(store, request, monkeypatch):
    from mlbatch.errors import BucketNotFoundError
    from mlbatch.sensors.objects import find
    from mlbatch.storage.layer import Storage, write_table

    if store == "s3":
        connect_s3(request.getfixturevalue("moto_server"), monkeypatch)
        conn = "aws_default"
    else:
        connect_gcs(request.getfixturevalue("gcs_emulator"), monkeypatch)
        conn = "google_cloud_default"
    bucket = f"missing-{uuid.uuid4().hex[:8]}"
    uri = f"{store}://{bucket}/predictions/ds={DATE}"
    storage = Storage()
    import pyarrow as pa

    for operation in (lambda: storage.write_bytes(f"{uri}/_SUCCESS", b"{}"),
                      lambda: storage.files(f"{uri}/*.parquet"), lambda: storage.files(uri),
                      lambda: storage.read_json(f"{uri}/_SUCCESS"),
                      lambda: write_table(storage, pa.table({"x": [1]}), f"{uri}/part-0.parquet", "parquet"),
                      lambda: find(f"{uri}/_SUCCESS", aws_conn_id=conn, gcp_conn_id=conn)):
        with pytest.raises(BucketNotFoundError) as caught:
            operation()
        assert caught.value.bucket == bucket and caught.value.conn_id == conn
        assert_named(caught.value, f"bucket {bucket!r}", f"connection {conn!r}", uri, "Create the bucket")
    assert storage.read_json(_existing(request, store) + "/nothing/_SUCCESS") is None


@pytest.mark.parametrize("store", ["s3", "gs"])
def test_the_partition_pointers_name_a_missing_bucket(store, request, monkeypatch):
    """publish's compare-and-swap writes (lease, _manifest, _SUCCESS) go through the same translation."""
    from mlbatch.errors import BucketNotFoundError
    from mlbatch.storage.conditional import PreconditionFailed, read_versioned, write_if
    from mlbatch.storage.layer import Storage

    if store == "s3":
        connect_s3(request.getfixturevalue("moto_server"), monkeypatch)
    else:
        connect_gcs(request.getfixturevalue("gcs_emulator"), monkeypatch)
    uri = f"{store}://gone-{uuid.uuid4().hex[:8]}/predictions/ds={DATE}/_lease"
    with pytest.raises(BucketNotFoundError) as caught:
        write_if(Storage(), uri, b"{}", None)
    assert_named(caught.value, uri, "Create the bucket")
    there = _existing(request, store) + f"/cas-{uuid.uuid4().hex[:8]}/_lease"
    version = write_if(Storage(), there, b"1", None)
    with pytest.raises(PreconditionFailed):  # a lost race is still what it was, not a storage error
        write_if(Storage(), there, b"2", None)
    assert read_versioned(Storage(), there) == (b"1", version)


def _existing(request, store: str) -> str:
    """A bucket that exists: a missing object in it is no error (None), unlike a missing bucket."""
    if store == "s3":
        ensure_s3_bucket(request.getfixturevalue("moto_server"), "mlbatch-store-tests")
        return "s3://mlbatch-store-tests"
    ensure_gcs_bucket(request.getfixturevalue("gcs_emulator"), "mlbatch-store-tests")
    return "gs://mlbatch-store-tests"


def test_the_first_task_check_names_a_missing_output_bucket(moto_server, monkeypatch):
    from mlbatch.errors import BucketNotFoundError, ConnectionNotFoundError
    from mlbatch.run.preflight import require_reachable

    connect_s3(moto_server, monkeypatch)
    with pytest.raises(ConnectionNotFoundError) as caught:  # a step's own connection that is not there
        require_reachable(spec_of(wait={"aws_conn_id": "s3_typo"}, input={"uri": "s3://lake/in/*.csv"}), {})
    assert_named(caught.value, "'s3_typo'", "wait.aws_conn_id", "s3://lake/in/*.csv")
    spec = spec_of(output={"uri": "s3://no-such-output/p/ds={{ ds }}"})
    with pytest.raises(BucketNotFoundError) as caught:
        require_reachable(spec, {"output.uri": [f"s3://no-such-output/p/ds={DATE}"]})
    assert_named(caught.value, "s3://no-such-output/p/ds=2026-11-20", "'no-such-output'", "'aws_default'")
    ensure_s3_bucket(moto_server, "such-output")
    require_reachable(spec_of(output={"uri": "s3://such-output/p/ds={{ ds }}"}),
                      {"output.uri": [f"s3://such-output/p/ds={DATE}"]})  # there: no error


# --- credentials missing or wrong --------------------------------------------------------------------

@pytest.fixture(scope="module")
def moto_with_auth():
    """A moto server that checks keys and signatures (INITIAL_NO_AUTH_ACTION_COUNT: the first 3
    requests, which create the user, its key and its policy, go unchecked), with one bucket."""
    import boto3

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "moto with auth did not start"
                time.sleep(0.2)
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="pipeline")
        key = iam.create_access_key(UserName="pipeline")["AccessKey"]
        iam.put_user_policy(UserName="pipeline", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        s3.create_bucket(Bucket="guarded")
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        iam.create_user(UserName="no-grants")  # a known key with no policy: every S3 request is denied
        bare = iam.create_access_key(UserName="no-grants")["AccessKey"]
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"], (bare["AccessKeyId"], bare["SecretAccessKey"])
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.parametrize("case", ["wrong secret", "unknown key"])
def test_wrong_credentials_name_the_connection_and_the_uri(moto_with_auth, monkeypatch, case):
    from mlbatch.errors import StorageCredentialsError
    from mlbatch.storage.layer import Storage

    endpoint, key_id, secret, _ = moto_with_auth
    login, password = (key_id, "not-" + secret) if case == "wrong secret" else ("AKIANOSUCHKEY0000000", secret)
    conn = f"s3_{case.replace(' ', '_')}_{uuid.uuid4().hex[:6]}"  # its own id: ObjectStoragePath caches per id
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn.upper()}", json.dumps(
        {"conn_type": "aws", "login": login, "password": password, "extra": {"endpoint_url": endpoint}}))
    storage = Storage(aws_conn_id=conn)
    uri = "s3://guarded/in/ds=2026-11-20/*.csv"
    with pytest.raises(StorageCredentialsError) as caught:
        storage.files(uri)
    code = "SignatureDoesNotMatch" if case == "wrong secret" else "InvalidAccessKeyId"
    assert_named(caught.value, uri, "bucket 'guarded'", f"connection {conn!r}", code, "Check the connection's key")
    good = f"s3_good_{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{good.upper()}", json.dumps(
        {"conn_type": "aws", "login": key_id, "password": secret, "extra": {"endpoint_url": endpoint}}))
    assert Storage(aws_conn_id=good).files(uri) == []  # the right key: an empty listing, no error


def test_access_denied_names_the_connection_and_the_uri(moto_with_auth, monkeypatch):
    from mlbatch.errors import StorageAccessDeniedError
    from mlbatch.storage.layer import Storage

    endpoint, _, _, (bare_key, bare_secret) = moto_with_auth
    conn = f"s3_no_grants_{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn.upper()}", json.dumps(
        {"conn_type": "aws", "login": bare_key, "password": bare_secret, "extra": {"endpoint_url": endpoint}}))
    with pytest.raises(StorageAccessDeniedError) as caught:
        Storage(aws_conn_id=conn).write_bytes("s3://guarded/out/_SUCCESS", b"{}")
    assert_named(caught.value, "s3://guarded/out/_SUCCESS", "bucket 'guarded'", f"connection {conn!r}",
                 "AccessDenied", "Grant the connection's identity access")


@pytest.mark.parametrize("status, named", [(403, "StorageAccessDeniedError"), (401, "StorageCredentialsError")])
def test_gcsfs_refusals_are_named(status, named):
    """The GCS emulator checks no credentials: gcsfs's own response check (`validate_response`, what
    every gcsfs request goes through) raises what a real 401/403 from GCS gives, and that is named."""
    from gcsfs.retry import validate_response

    from mlbatch.storage.translate import translated

    body = json.dumps({"error": {"code": status, "message": "caller does not have storage.objects.list access"}})
    with pytest.raises(Exception) as raised:
        validate_response(status, body.encode(), "b/{}/o", ["lake"])
    ours = translated(raised.value, "gs://lake/in/*.csv", "gcs_lake")
    assert type(ours).__name__ == named
    assert_named(ours, "gs://lake/in/*.csv", "bucket 'lake'", "connection 'gcs_lake'")


# --- endpoint unreachable ----------------------------------------------------------------------------

@pytest.mark.parametrize("store", ["s3", "gs"])
def test_an_unreachable_endpoint_fails_in_seconds_naming_it(store, monkeypatch):
    from mlbatch.errors import StorageUnreachableError
    from mlbatch.run.preflight import require_reachable

    endpoint = f"http://127.0.0.1:{closed_port()}"
    conn = f"dead_{store}_{uuid.uuid4().hex[:6]}"
    extra = {"endpoint_url": endpoint} if store == "s3" else {"is_anonymous": True, "gcs.endpoint": endpoint}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn.upper()}", json.dumps(
        {"conn_type": "aws" if store == "s3" else "google_cloud_platform", "login": "k", "password": "s",
         "extra": extra}))
    spec = spec_of(storage={f"{'aws' if store == 's3' else 'gcp'}_conn_id": conn},
                   output={"uri": f"{store}://lake/out/ds={{{{ ds }}}}"})
    started = time.perf_counter()
    with pytest.raises(StorageUnreachableError) as caught:
        require_reachable(spec, {"output.uri": [f"{store}://lake/out/ds={DATE}"]})
    assert time.perf_counter() - started < 10
    assert_named(caught.value, f"endpoint {endpoint}", f"connection {conn!r}", f"{store}://lake/out/ds={{{{ ds }}}}",
                 "Check the endpoint")


def test_an_unreachable_endpoint_mid_run_is_named_by_the_storage_layer(monkeypatch):
    from mlbatch.errors import StorageUnreachableError
    from mlbatch.storage.layer import Storage

    endpoint = f"http://127.0.0.1:{closed_port()}"
    conn = f"dead_s3_{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn.upper()}", json.dumps(
        {"conn_type": "aws", "login": "k", "password": "s", "extra": {"endpoint_url": endpoint}}))
    with pytest.raises(StorageUnreachableError) as caught:
        Storage(aws_conn_id=conn).write_bytes("s3://lake/out/_SUCCESS", b"{}")
    assert_named(caught.value, "s3://lake/out/_SUCCESS", "bucket 'lake'", f"connection {conn!r}", str(endpoint))


# --- sensor timeout ---------------------------------------------------------------------------------

def test_a_wait_timeout_names_what_was_awaited_and_through_which_connection(gcs_emulator, monkeypatch):
    from airflow.sdk.exceptions import AirflowSensorTimeout

    from mlbatch.operators.wait_for_data import WaitForInputOperator
    from mlbatch.triggers.deadline import TIMEOUT

    connect_gcs(gcs_emulator, monkeypatch)
    ensure_gcs_bucket(gcs_emulator, "landing")
    spec = spec_of(input={"uri": "gs://landing/in/ds={{ ds }}/*.csv", "marker": "gs://landing/in/ds={{ ds }}/_SUCCESS"},
                   wait={"timeout_minutes": 0.05})
    operator = WaitForInputOperator(task_id="wait_for_data", spec=spec)
    context = {"params": {}, "run_id": "manual__2026-11-20", "ds": DATE, "ds_nodash": DATE.replace("-", "")}
    with pytest.raises(AirflowSensorTimeout) as caught:
        operator.execute_complete(context, event={"status": TIMEOUT}, deadline="", waiting_for="marker")
    assert_named(caught.value, f"gs://landing/in/ds={DATE}/_SUCCESS does not exist",
                 "connection 'google_cloud_default'", "storage.gcp_conn_id", "wait.timeout_minutes",
                 "Check that the producer wrote it")


# --- the console of `mlbatch run` (one slow test) ------------------------------------------------------

def test_mlbatch_run_console_names_a_missing_output_bucket(tmp_path, moto_server):
    """A new user's run whose output bucket does not exist: the first task fails at once, and the
    console, the task log and the alert's text name the bucket, the URI and the connection."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "part-0.csv").write_text("id,x\n1,2\n")
    (tmp_path / "in" / "_SUCCESS").write_text("")
    spec = {"name": "bucket_gone", "model": {"name": "m", "alias": "champion"},
            "input": {"uri": str(tmp_path / "in" / "*.csv"), "marker": str(tmp_path / "in" / "_SUCCESS"),
                      "format": "csv", "id_column": "id", "features": [{"name": "x", "type": "int"}]},
            "output": {"uri": "s3://gone-bucket/predictions/ds={{ ds }}"}, "tasks": {"retries": 0}}
    path = tmp_path / "bucket_gone.yaml"
    path.write_text(yaml.safe_dump(spec))
    conn = json.dumps({"conn_type": "aws", "login": "testing", "password": "testing",
                       "extra": {"endpoint_url": moto_server.endpoint_url, "region_name": moto_server.region}})
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AIRFLOW_CONN_AWS_DEFAULT": conn,
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    ran = subprocess.run([MLBATCH, "run", str(path), "--date", DATE, "--home", str(tmp_path / ".demo")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=500)
    assert ran.returncode == 1, ran.stdout[-3000:] + ran.stderr[-3000:]
    console = ran.stdout.splitlines()
    at = next(i for i, line in enumerate(console) if line.strip().startswith("wait_for_data") and "failed" in line)
    named = ("BucketNotFoundError: bucket does not exist: s3://gone-bucket/predictions/ds=2026-11-20 "
             "(bucket 'gone-bucket', connection 'aws_default'). Create the bucket")
    assert any(named in line for line in console[at:at + 8]), ran.stdout[-3000:]  # under the task's line
    log = (tmp_path / ".demo" / "logs" / f"bucket_gone-{DATE}.log").read_text()
    assert named in log
    no_connection = subprocess.run([MLBATCH, "run", str(path), "--date", DATE, "--home", str(tmp_path / ".demo")],
                                   cwd=tmp_path, env={**env, "AIRFLOW_CONN_AWS_DEFAULT": "",
                                                      "AWS_EC2_METADATA_DISABLED": "true"},
                                   capture_output=True, text=True, timeout=300)
    assert no_connection.returncode == 2, no_connection.stdout[-2000:] + no_connection.stderr[-2000:]
    assert "mlbatch run: ConnectionNotFoundError: output.uri s3://gone-bucket/predictions/ds={{ ds }} needs the " \
           "AWS connection 'aws_default' (storage.aws_conn_id)" in no_connection.stderr  # before Airflow starts
    last = [line for line in log.splitlines() if "Failing at try 1" in line]  # the task's last words
    assert last and "not retried: BucketNotFoundError" in last[-1] and named.split(": ", 1)[1] in last[-1], last
