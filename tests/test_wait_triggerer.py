"""wait_for_data under a real Airflow: scheduler (LocalExecutor), API server and triggerer processes on a
fresh PostgreSQL database.

Shows the sensor deferring (task `deferred`, its trigger held by the triggerer, no task running), the
data arriving, the run resuming to success; the pipeline's asset event starting a downstream pipeline
scheduled on it, with the upstream's data date; and a wait that times out failing (no retry) or
skipping the run, as each spec says.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from emulators import free_port

REPO = Path(__file__).resolve().parents[1]
DATE = "2026-11-20"
PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"
FEATURES = [
    {"name": "is_male", "type": "bool"},
    {"name": "mother_age", "type": "float", "min": 10, "max": 60},
    {"name": "plurality", "type": "int", "min": 1, "max": 5},
    {"name": "gestation_weeks", "type": "float", "min": 18, "max": 46},
]


def pipeline(name: str, data: Path, **extra) -> dict:
    spec = {
        "name": name,
        "schedule": None,
        "start_date": "2026-11-01",
        "model": {"name": "natality_weight", "alias": "champion"},
        "input": {"uri": f"{data}/natality/ds={{{{ ds }}}}/*.parquet",
                  "marker": f"{data}/natality/ds={{{{ ds }}}}/_SUCCESS",
                  "format": "parquet", "id_column": "id", "features": FEATURES},
        "predict": {"backend": "local"},
        "output": {"uri": f"{data}/predictions/{name}/ds={{{{ ds }}}}"},
        "tasks": {"retries": 1, "retry_delay_minutes": 0.05},
        "wait": {"poke_seconds": 1, "timeout_minutes": 10},  # generous: a loaded CI machine is slow
    }
    for key, value in extra.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


MIN_BYTES, MIN_ROWS = 4_000, 100
USER, PASSWORD = "tester", secrets.token_hex(8)


def on_object_store(name: str, root: str, data: Path) -> dict:
    """Input and marker in a bucket (moto S3 or the GCS emulator): MIN_BYTES and MIN_ROWS of data at least."""
    return pipeline(name, data, input={"uri": f"{root}/natality/ds={{{{ ds }}}}/*.parquet",
                                       "marker": f"{root}/natality/ds={{{{ ds }}}}/_SUCCESS"},
                    wait={"checks": {"min_bytes": MIN_BYTES, "min_rows": MIN_ROWS}, "timeout_minutes": 30,
                          "poke_seconds": 3},
                    # Airflow 3.3.2 can fail a task resumed from a trigger that fired within a second of the
                    # deferral (a stale executor event: apache/airflow#72716); 3 s pokes and a second retry
                    # keep that scheduler race out of what this test checks.
                    tasks={"retries": 2})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, registered_model, moto_server, gcs_emulator):
    import sqlalchemy as sa

    home = tmp_path_factory.mktemp("cluster")
    data, specs = home / "data", home / "pipelines"
    specs.mkdir()
    never = str(data / "never" / "_SUCCESS")
    bucket = f"mlbatch-wait-{os.getpid()}-{secrets.token_hex(3)}"
    moto_server.client("s3").create_bucket(Bucket=bucket)
    gcs_emulator.client().create_bucket(bucket)
    for spec in [
        pipeline("chain_upstream", data),
        pipeline("chain_downstream", data, wait={"kind": "upstream_asset", "assets": ["chain_upstream"]}),
        # its deadline must outlast the upstream's four tasks, minutes on a loaded 2-core machine
        pipeline("after_upstream_task", data,
                 wait={"kind": "upstream_task", "dag_id": "chain_upstream", "task_ids": ["publish"],
                       "timeout_minutes": 10}),
        pipeline("wait_then_skip", data, wait={"targets": [never], "timeout_minutes": 0.1, "on_timeout": "skip"}),
        pipeline("wait_then_fail", data, wait={"targets": [never], "timeout_minutes": 0.1, "on_timeout": "fail"}),
        *(on_object_store(f"wait_{scheme}", f"{scheme}://{bucket}", data) for scheme in ("s3", "gs")),
    ]:
        (specs / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))

    (home / "passwords.json").write_text(json.dumps({USER: PASSWORD}))
    database = f"mlbatch_sensors_{os.getpid()}_{secrets.token_hex(3)}"
    admin = sa.create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update({
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{PG}/{database}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(16),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "2",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
        "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
        "MLBATCH_PIPELINES_DIR": str(specs),
        "MLBATCH_DATA_ROOT": str(data),
        "NO_PROXY": "*",
        # The emulators run in this pytest process; workers and the triggerer reach them over HTTP.
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({
            "conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"endpoint_url": moto_server.endpoint_url, "region_name": moto_server.region}}),
        "AWS_DEFAULT_REGION": moto_server.region,
        "STORAGE_EMULATOR_HOST": gcs_emulator.endpoint_url,
        "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT": json.dumps({
            "conn_type": "google_cloud_platform", "extra": {"project": "test-project", "is_anonymous": True}}),
    })
    airflow = [sys.executable, "-m", "airflow"]
    logs = home / "process-logs"
    logs.mkdir()
    procs = []
    try:
        for step in (["db", "migrate"], ["dags", "reserialize"]):
            subprocess.run(airflow + step, env=env, check=True, capture_output=True, timeout=180)
        for name in ("api-server", "scheduler", "triggerer"):
            out = (logs / f"{name}.log").open("w")
            procs.append(subprocess.Popen(airflow + [name], env=env, stdout=out, stderr=subprocess.STDOUT))
        api_up(port, procs)  # task processes report through the API server: it must listen first
        api = f"http://127.0.0.1:{port}"
        # The object-store runs start now, so that their start and deferral overlap the first test.
        start_runs(api, "wait_s3", "wait_gs")
        engine = sa.create_engine(f"{PG}/{database}")
        yield {"env": env, "api": api, "db": engine, "data": data, "home": home, "logs": logs, "bucket": bucket,
               "s3": moto_server.client("s3"), "gcs": gcs_emulator.client().bucket(bucket)}
        engine.dispose()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


def api_up(port: int, procs: list, timeout: float = 180) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), "an Airflow process exited at start-up"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the API server did not listen on port {port} within {timeout} s")


def start_runs(api: str, *dag_ids: str) -> None:
    """Trigger a run of each DAG for DATE through the REST API (no CLI process to start: seconds each)."""
    import httpx

    token = httpx.post(f"{api}/auth/token", json={"username": USER, "password": PASSWORD}, timeout=60)
    token.raise_for_status()
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    for dag_id in dag_ids:
        made = httpx.post(f"{api}/api/v2/dags/{dag_id}/dagRuns", headers=headers, timeout=60,
                          json={"logical_date": f"{DATE}T00:00:00+00:00"})
        assert made.status_code == 200, made.text


def trigger(cluster, *dag_ids: str) -> None:
    start_runs(cluster["api"], *dag_ids)


def rows(cluster, sql: str, **params) -> list:
    import sqlalchemy as sa

    with cluster["db"].connect() as conn:
        return conn.execute(sa.text(sql), params).all()


def wait_until(what: str, check, cluster, timeout: float = 420.0):  # a shared CI machine can be slow
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    tails = {p.name: p.read_text()[-3000:] for p in cluster["logs"].glob("*.log")}
    raise AssertionError(f"timed out waiting for {what}; states: "
                         f"{rows(cluster, 'SELECT dag_id, task_id, state FROM task_instance')}\n{tails}")


def ti_state(cluster, dag_id: str, task_id: str) -> str | None:
    found = rows(cluster, "SELECT state FROM task_instance WHERE dag_id = :d AND task_id = :t", d=dag_id, t=task_id)
    return found[0][0] if found else None


def task_log(cluster, dag_id: str, task_id: str) -> str:
    return "\n".join(p.read_text() for p in (cluster["home"] / "airflow" / "logs").rglob("*.log")
                     if f"dag_id={dag_id}" in str(p) and f"task_id={task_id}" in str(p))


def test_sensor_defers_in_the_triggerer_resumes_on_data_and_chains_by_asset(cluster):
    from mlbatch.local.demo.natality import write_partition

    trigger(cluster, "chain_upstream", "after_upstream_task", "wait_then_skip", "wait_then_fail")

    # Deferred: the trigger is in the triggerer, and no task holds a worker slot while it waits.
    wait_until("chain_upstream wait_for_data deferred",
               lambda: ti_state(cluster, "chain_upstream", "wait_for_data") == "deferred", cluster)
    [(classpath, kwargs, triggerer_id)] = wait_until("the trigger picked up by the triggerer", lambda: rows(
        cluster, "SELECT t.classpath, t.kwargs, t.triggerer_id FROM trigger t JOIN task_instance ti "
                 "ON ti.trigger_id = t.id WHERE ti.dag_id = 'chain_upstream' AND t.triggerer_id IS NOT NULL"),
        cluster)
    assert classpath == "mlbatch.triggers.deadline.DeadlineTrigger"  # the wait's deadline, around:
    assert "airflow.providers.standard.triggers.file.FileTrigger" in json.dumps(kwargs)
    assert f"ds={DATE}/_SUCCESS" in json.dumps(kwargs)
    wait_until("the upstream-task wait deferred to a WorkflowTrigger", lambda: rows(
        cluster, "SELECT 1 FROM trigger t JOIN task_instance ti ON ti.trigger_id = t.id WHERE ti.dag_id = "
                 "'after_upstream_task' AND CAST(t.kwargs AS TEXT) LIKE '%external_task.WorkflowTrigger%'"),
        cluster)
    for _ in range(6):
        running = rows(cluster, "SELECT task_id FROM task_instance WHERE state = 'running' "
                                "AND dag_id IN ('chain_upstream', 'after_upstream_task')")
        assert running == [], running  # the waiting runs hold no worker slot
        assert ti_state(cluster, "chain_upstream", "wait_for_data") == "deferred"
        time.sleep(0.5)

    # The data arrives (marker written last, as producers do): the run resumes and publishes.
    write_partition(cluster["data"] / "natality" / f"ds={DATE}", 300, files=1, seed=3, row_group_rows=100)
    wait_until("chain_upstream published", lambda: ti_state(cluster, "chain_upstream", "publish") == "success",
               cluster)
    assert "Input is there and complete" in task_log(cluster, "chain_upstream", "wait_for_data")

    # A pipeline waiting for the upstream's publish task of the same logical date goes on now.
    wait_until("after_upstream_task wait done",
               lambda: ti_state(cluster, "after_upstream_task", "wait_for_data") == "success", cluster)
    assert "tasks publish of DAG chain_upstream succeeded for logical date 2026-11-20" in task_log(
        cluster, "after_upstream_task", "wait_for_data")

    # Its asset event starts the downstream pipeline, which takes the upstream's data date.
    [(extra,)] = rows(cluster, "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
                               "WHERE a.name = 'mlbatch/chain_upstream/predictions'")
    assert extra["ds"] == DATE and extra["rows_scored"] + extra["rows_rejected"] == 300
    [(run_type,)] = wait_until("chain_downstream run", lambda: rows(
        cluster, "SELECT run_type FROM dag_run WHERE dag_id = 'chain_downstream'"), cluster)
    assert run_type == "asset_triggered"
    # prep reads the input partition of the event's date (the run itself has no logical date).
    wait_until("chain_downstream prep", lambda: ti_state(cluster, "chain_downstream", "prep") == "success",
               cluster)
    log = task_log(cluster, "chain_downstream", "wait_for_data")
    assert "Triggered by asset mlbatch/chain_upstream/predictions from chain_upstream/manual__" in log
    assert f"'ds': '{DATE}'" in log

    # Timeouts: skip the run, or fail without a retry, each with the reason.
    wait_until("wait_then_skip run done", lambda: rows(
        cluster, "SELECT 1 FROM dag_run WHERE dag_id = 'wait_then_skip' AND state = 'success'"), cluster)
    assert ti_state(cluster, "wait_then_skip", "wait_for_data") == "skipped"
    assert ti_state(cluster, "wait_then_skip", "prep") == "skipped"
    assert "never/_SUCCESS does not exist" in task_log(cluster, "wait_then_skip", "wait_for_data")

    wait_until("wait_then_fail run failed", lambda: rows(
        cluster, "SELECT 1 FROM dag_run WHERE dag_id = 'wait_then_fail' AND state = 'failed'"), cluster)
    [(state, tries)] = rows(cluster, "SELECT state, try_number FROM task_instance "
                                     "WHERE dag_id = 'wait_then_fail' AND task_id = 'wait_for_data'")
    assert (state, tries) == ("failed", 1)
    log = task_log(cluster, "wait_then_fail", "wait_for_data")
    assert "wait.on_timeout = fail" in log and "never/_SUCCESS does not exist" in log


def test_sensor_waits_for_s3_and_gcs_markers_in_the_triggerer_and_checks_completeness(cluster, tmp_path):
    """The marker lands after the task deferred; a partition below wait.checks (min_bytes, min_rows: rows
    counted from the Parquet footers in the bucket) keeps the run waiting (the checks run in the resumed
    task), the rest of the data lets it go on."""
    from mlbatch.local.demo.natality import write_partition

    bucket, prefix = cluster["bucket"], f"natality/ds={DATE}"
    # wait_s3 and wait_gs were triggered when the cluster started (see `cluster`).

    def held_trigger(dag_id: str):
        return rows(cluster, "SELECT t.classpath, t.kwargs FROM trigger t JOIN task_instance ti ON ti.trigger_id "
                             "= t.id WHERE ti.dag_id = :d AND ti.state = 'deferred' AND t.triggerer_id IS NOT NULL",
                    d=dag_id)

    expected = {"wait_s3": ("airflow.providers.amazon.aws.triggers.s3.S3KeyTrigger", f"{prefix}/_SUCCESS"),
                "wait_gs": ("airflow.providers.google.cloud.triggers.gcs.GCSBlobTrigger", f"{prefix}/_SUCCESS")}
    for dag_id, (classpath, key) in expected.items():
        [(held, kwargs)] = wait_until(f"{dag_id}: the marker's trigger held by the triggerer",
                                      lambda: held_trigger(dag_id), cluster)
        assert held == "mlbatch.triggers.deadline.DeadlineTrigger"  # the wait's deadline, around:
        assert classpath in json.dumps(kwargs) and key in json.dumps(kwargs) and bucket in json.dumps(kwargs)

    # A producer writes too little data and the marker: the triggers fire, the checks keep the runs waiting.
    small = (write_partition(tmp_path / "small", 4, files=1) / "part-00000.parquet").read_bytes()
    rest = (write_partition(tmp_path / "rest", 150, files=1, seed=5) / "part-00000.parquet").read_bytes()
    assert len(small) < MIN_BYTES <= len(small) + len(rest)
    cluster["s3"].put_object(Bucket=bucket, Key=f"{prefix}/part-00000.parquet", Body=small)
    cluster["s3"].put_object(Bucket=bucket, Key=f"{prefix}/_SUCCESS", Body=b"")
    cluster["gcs"].blob(f"{prefix}/part-00000.parquet").upload_from_string(small)
    cluster["gcs"].blob(f"{prefix}/_SUCCESS").upload_from_string(b"")
    for dag_id in expected:
        wait_until(f"{dag_id}: the completeness checks ran and failed", lambda: (
            f"Input not complete yet: {len(small)} bytes in 1 files < min_bytes {MIN_BYTES}; "
            f"4 rows in 1 files < min_rows {MIN_ROWS}") in task_log(cluster, dag_id, "wait_for_data"), cluster)
        assert ti_state(cluster, dag_id, "wait_for_data") != "success"  # still waiting (deferred, by time)

    # The rest of the partition arrives: the next poke finds it complete and the runs go on.
    cluster["s3"].put_object(Bucket=bucket, Key=f"{prefix}/part-00001.parquet", Body=rest)
    cluster["gcs"].blob(f"{prefix}/part-00001.parquet").upload_from_string(rest)
    for dag_id, scheme in (("wait_s3", "s3"), ("wait_gs", "gs")):
        wait_until(f"{dag_id} wait_for_data done",
                   lambda: ti_state(cluster, dag_id, "wait_for_data") == "success", cluster)
        log = task_log(cluster, dag_id, "wait_for_data")
        marker = f"{scheme}://{bucket}/{prefix}/_SUCCESS"
        assert f"Arrived: {marker}" in log  # resumed by the marker trigger's event
        assert f"Input is there and complete: {marker}" in log
