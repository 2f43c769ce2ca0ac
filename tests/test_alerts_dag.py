"""Failure alerts from real task failures: pipelines and a leaky task run through `dag.test()`, Slack
played by the local fake Web API server (tests/fake_slack.py)."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from fake_slack import VALID_TOKEN, FakeSlack

REPO = Path(__file__).resolve().parents[1]
FAILING = REPO / "include" / "examples" / "failing" / "natality_missing_model.yaml"
DATE = "2026-11-20"
DB_PASSWORD = "pg-Secret-4711-warehouse"
LEAKED_TOKEN = "xoxb-1234567890-leakedTokenValue42"


@pytest.fixture
def fake_slack(monkeypatch, tmp_path):
    with FakeSlack() as fake:
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_API_DEFAULT", json.dumps(
            {"conn_type": "slack", "password": VALID_TOKEN, "extra": {"base_url": fake.api_url}}))
        monkeypatch.setenv("MLBATCH_ALERTS_DIR", str(tmp_path / "alerts"))
        yield fake


@pytest.fixture
def failing_pipeline(session_dir, monkeypatch, tmp_path):
    """The failing example spec, alone in a pipelines dir, with its input partition in place."""
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    shutil.copy(FAILING, pipelines)
    monkeypatch.setenv("MLBATCH_PIPELINES_DIR", str(pipelines))
    from mlbatch.local.demo.natality import write_partition

    folder = session_dir / "data" / "natality" / f"ds={DATE}"
    if not (folder / "_SUCCESS").exists():
        write_partition(folder, 2_000, files=1, seed=3, row_group_rows=1_000)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags["natality_missing_model"]


def run(dag):
    return dag.test(logical_date=datetime.fromisoformat(DATE).replace(tzinfo=timezone.utc))


def failed_ti(dagrun, task_id: str):
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.query(TaskInstance).filter_by(dag_id=dagrun.dag_id, run_id=dagrun.run_id,
                                                     task_id=task_id).one()


def test_failed_task_posts_exactly_one_alert_with_its_log(airflow_db, fake_slack, failing_pipeline):
    from mlbatch.retry_button import RETRY_ACTION_ID, decode_retry_value

    dagrun = run(failing_pipeline)
    assert dagrun.state == "failed"
    [post] = fake_slack.api_calls("chat.postMessage")  # downstream tasks are upstream_failed: no alerts
    message = fake_slack.messages[0]
    assert message["channel"] == "#ml-alerts"
    text = json.dumps(message["blocks"])
    assert "natality_missing_model.resolve_model failed (try 1 of 1)" in text
    assert "<!here>" in text
    assert "natality_weight_never_registered" in text  # the MLflow error, in the error block and log tail
    assert "Task log, last lines (memory, in-process run)" in text
    assert "Pinned" not in text and "Task failed with exception" in text

    buttons = next(b for b in message["blocks"] if b["type"] == "actions")["elements"]
    retry = next(b for b in buttons if b.get("action_id") == RETRY_ACTION_ID)
    target = decode_retry_value(retry["value"])
    assert (target.dag_id, target.run_id, target.task_id, target.map_index) == (
        "natality_missing_model", dagrun.run_id, "resolve_model", -1)
    logs = next(b for b in buttons if b.get("action_id") == "mlbatch_open_logs")
    assert logs["url"].endswith("/dags/natality_missing_model/runs/" + dagrun.run_id.replace(":", "%3A")
                                .replace("+", "%2B") + "/tasks/resolve_model?try_number=1")

    [(file_id, attached)] = fake_slack.files.items()  # the full log, in the alert's thread
    assert attached["thread_ts"] == message["ts"] and attached["channel_id"] == "C0MLALERTS"
    assert "natality_weight_never_registered" in attached["content"]
    # Posted by the failure itself, before dag.test() returned: the log it carries already holds the
    # task runner's failure line. How soon after it is bench/alert_latency.py's figure, not a test's.
    assert "Task failed with exception" in attached["content"]


LEAKY_DAG = '''
import logging
from datetime import datetime
from airflow.sdk import DAG, BaseHook, BaseOperator
from mlbatch.alerts.notifier import PipelineAlertNotifier
from mlbatch.alerts.task_log import start_log_tap


class LeakyOperator(BaseOperator):
    def execute(self, context):
        conn = BaseHook.get_connection("warehouse_db")
        self.log.info("connecting to %s with password %s", conn.host, conn.password)
        self.log.info("slack says hi with token {token}")
        logging.getLogger("mlbatch.run.job_process").info("[job] worker %s finished", "w-1")
        raise RuntimeError(f"login failed for postgres://etl:{{conn.password}}@{{conn.host}}/dw "
                           f"(debug token {token})")


with DAG("leaky_pipeline", schedule=None, start_date=datetime(2026, 1, 1)):
    LeakyOperator(task_id="load", retries=0, on_execute_callback=[start_log_tap],
                  on_failure_callback=[PipelineAlertNotifier(pipeline="leaky_pipeline", channel="#alerts")])
'''.format(token=LEAKED_TOKEN)


def test_secrets_in_the_log_never_reach_slack(airflow_db, fake_slack, monkeypatch, tmp_path):
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "leaky.py").write_text(LEAKY_DAG)
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE_DB", json.dumps(
        {"conn_type": "postgres", "host": "db.internal", "login": "etl", "password": DB_PASSWORD}))
    from airflow.dag_processing.dagbag import DagBag

    from airflow.dag_processing.dagbag import sync_bag_to_db

    bag = DagBag(dag_folder=str(dags))
    assert bag.import_errors == {}
    from airflow.dag_processing.bundles.manager import DagBundlesManager

    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(bag, "dags-folder", None)  # dag.test() needs it serialized; it is not in the dags folder
    dagrun = bag.dags["leaky_pipeline"].test(logical_date=datetime(2026, 11, 20, tzinfo=timezone.utc))
    assert dagrun.state == "failed"

    assert len(fake_slack.messages) == 1 and len(fake_slack.files) == 1
    everything = json.dumps([c.args for c in fake_slack.calls]) + json.dumps(
        [f["content"] for f in fake_slack.files.values()])
    assert "connecting to db.internal with password ***" in everything  # the log excerpt did arrive
    [attached] = fake_slack.files.values()
    assert attached["content"].count("[job] worker w-1 finished") == 1  # stdlib loggers too, once
    assert "RuntimeError" in everything and "login failed for postgres://etl:***@db.internal/dw" in everything
    assert DB_PASSWORD not in everything
    assert LEAKED_TOKEN not in everything and "leakedTokenValue42" not in everything
    assert VALID_TOKEN not in everything  # the alert's own token is not echoed either


def test_slack_hanging_neither_fails_nor_stalls_the_task(airflow_db, fake_slack, failing_pipeline, monkeypatch):
    from mlbatch.alerts.outbox import Outbox

    fake_slack.hold()  # Slack takes every request and answers none until the test ends
    monkeypatch.setenv("MLBATCH_ALERT_BUDGET_SECONDS", "2")
    dagrun = run(failing_pipeline)  # returns while Slack still holds the alert: the task did not wait for it
    assert fake_slack.held >= 1, "the alert never reached Slack"
    assert dagrun.state == "failed"
    assert failed_ti(dagrun, "resolve_model").state == "failed"  # failed by its own error, nothing else
    [pending] = Outbox().entries("pending")
    assert pending.last_error and ("budget" in pending.last_error or "timed out" in pending.last_error)
    assert "natality_weight_never_registered" in json.dumps(pending.payload)


def test_under_a_supervisor_the_alert_quotes_the_try_log_file(airflow_db, fake_slack, monkeypatch, tmp_path):
    """The production path: the task runs in a child process under Airflow's supervisor (as with the
    Local/Celery executors), which writes the try's log file; the failure callback, in the child, reads
    that file. dag.test() schedules; only its in-process runner is swapped for the real supervisor."""
    from types import SimpleNamespace

    import airflow.sdk.execution_time.supervisor as supervisor
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.sdk.api.datamodels._generated import BundleInfo

    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "leaky.py").write_text(LEAKY_DAG)
    logs = tmp_path / "logs"
    monkeypatch.setenv("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(logs))
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE_DB", json.dumps(
        {"conn_type": "postgres", "host": "db.internal", "login": "etl", "password": DB_PASSWORD}))
    bag = DagBag(dag_folder=str(dags))
    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(bag, "dags-folder", None)
    dag = bag.dags["leaky_pipeline"]

    rel_path = os.path.relpath(dags / "leaky.py", REPO / "dags")  # the child parses it from the bundle

    def under_supervisor(ti, task, client=None):
        log_path = f"dag_id={ti.dag_id}/run_id={ti.run_id}/task_id={ti.task_id}/attempt={ti.try_number}.log"
        supervisor.supervise_task(ti=ti, bundle_info=BundleInfo(name="dags-folder"), dag_rel_path=rel_path,
                                  token="", client=supervisor.InProcessTestSupervisor._api_client(task.dag),
                                  log_path=log_path)
        state = failed_ti(SimpleNamespace(dag_id=ti.dag_id, run_id=ti.run_id), ti.task_id).state
        return SimpleNamespace(ti=SimpleNamespace(state=state, task=task), state=state, msg=None, error=None)

    monkeypatch.setattr(supervisor, "run_task_in_process", under_supervisor)
    dagrun = dag.test(logical_date=datetime(2026, 11, 21, tzinfo=timezone.utc))
    assert dagrun.state == "failed"

    [message] = fake_slack.messages
    text = json.dumps(message["blocks"], ensure_ascii=False)
    assert "Task log, last lines (…/task_id=load/attempt=1.log)" in text  # read from the supervisor's file
    assert "connecting to db.internal with password ***" in text and "RuntimeError: login failed" in text
    [attached] = fake_slack.files.values()
    assert "Task failed with exception" in attached["content"]
    everything = json.dumps(message) + attached["content"]
    assert DB_PASSWORD not in everything and "leakedTokenValue42" not in everything
