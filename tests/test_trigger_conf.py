"""A run's conf may hold only trigger params: one rule (`mlbatch.spec.trigger_conf.check_conf_keys`) for REST,
the UI, Slack and `mlbatch run`.

Airflow itself accepts any extra key: its REST API creates the run (checked here through Airflow's own
FastAPI app), and the run would silently ignore the key. So the run fails at its first task, at try 1,
naming the unknown keys and the valid ones -- shown on the REST-created run's first task (run by
Airflow's in-process task runner, as `dag.test` runs tasks) and with `dag.test` on the shipped DAG.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from fake_slack import VALID_TOKEN, FakeSlack

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "include" / "pipelines"
DATE = "2026-11-20"
VALID = "Valid keys: model_alias, backend, date."


def test_the_rule_names_the_unknown_keys_and_lists_the_valid_ones():
    from mlbatch.errors import PermanentError, TriggerConfError
    from mlbatch.spec.trigger_conf import check_conf_keys, unknown_keys

    check_conf_keys("p", ["model_alias", "backend", "date"], {"backend": "local", "date": None})
    check_conf_keys("p", ["backend"], {})
    with pytest.raises(TriggerConfError) as err:
        check_conf_keys("natality_daily", ["model_alias", "backend", "date"], {"bogus_key": 1, "backend": "local"})
    assert str(err.value) == ("natality_daily: the run's conf has a key that is not a trigger param: bogus_key. "
                              f"{VALID} Trigger a new run without it.")
    assert err.value.unknown == ["bogus_key"] and isinstance(err.value, PermanentError)
    with pytest.raises(TriggerConfError, match="keys that are not trigger params: a, b. Valid keys: none"):
        check_conf_keys("p", [], {"b": 1, "a": 2})
    assert unknown_keys(["x"], ["x", "y"]) == ["y"]


def test_slack_and_mlbatch_run_refuse_the_keys_the_rule_refuses():
    """The three front doors agree on which keys are not trigger params."""
    from mlbatch.local.run import RunError, trigger_conf
    from mlbatch.slack_commands.commands import CommandError
    from mlbatch.slack_commands.params import run_conf
    from mlbatch.spec.loader import load_spec
    from mlbatch.spec.trigger_conf import unknown_keys

    spec = load_spec(PIPELINES / "natality_daily.yaml")
    params = {key: {"schema": {"type": "string"}, "value": None} for key in spec.trigger_params}
    for key in ("bogus_key", "backend", "model_alias", "Backend"):
        value = "local" if key == "backend" else "champion"
        refused = bool(unknown_keys(spec.trigger_params, [key]))
        try:
            run_conf(spec.name, params, {key: value})
            slack_refused = False
        except CommandError:
            slack_refused = True
        try:
            trigger_conf(spec, [f"{key}={value}"])
            cli_refused = False
        except RunError:
            cli_refused = True
        assert slack_refused == cli_refused == refused, key


# --- runs -------------------------------------------------------------------------------------------

@pytest.fixture
def fake_slack(monkeypatch, tmp_path):
    with FakeSlack() as fake:
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_API_DEFAULT", json.dumps(
            {"conn_type": "slack", "password": VALID_TOKEN, "extra": {"base_url": fake.api_url}}))
        monkeypatch.setenv("MLBATCH_ALERTS_DIR", str(tmp_path / "alerts"))
        yield fake


@pytest.fixture
def natality_dag(airflow_db, session_dir, monkeypatch):
    """natality_daily as shipped, parsed from dags/ and written to the metadata DB as the dag-processor
    would (bundle `dags-folder`); its input is there, so only the conf check can stop the run."""
    from mlbatch.local.demo.natality import write_partition

    folder = session_dir / "data" / "natality" / f"ds={DATE}"
    if not (folder / "_SUCCESS").exists():
        write_partition(folder, 2_000, files=1, seed=3, row_group_rows=1_000)
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    monkeypatch.setenv("MLBATCH_PIPELINES_DIR", str(PIPELINES))
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(bag, "dags-folder", None)
    return bag.dags["natality_daily"]


def ti_of(dag_id: str, run_id: str, task_id: str):
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id).one()
        session.expunge(ti)
        return ti


def assert_refused_at_the_first_task(dag_id: str, run_id: str, fake_slack) -> None:
    first = ti_of(dag_id, run_id, "wait_for_data")
    assert (first.state, first.try_number) == ("failed", 1)  # not retried (retries: 1 in the spec)
    [message] = fake_slack.messages
    text = json.dumps(message["blocks"])
    assert "wait_for_data failed" in text and "TriggerConfError" in text and "bogus_key" in text
    assert VALID in text


def test_rest_trigger_with_an_unknown_key_fails_at_its_first_task(natality_dag, fake_slack, monkeypatch):
    """Airflow's REST API (its own FastAPI app, on the test database) creates the run; the scheduler's
    part -- handing the first task to a task runner -- is played by Airflow's in-process runner."""
    from fastapi.testclient import TestClient

    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "True")
    from airflow.api_fastapi.app import create_app, purge_cached_app

    purge_cached_app()
    with TestClient(create_app("core")) as api:
        path = "/api/v2/dags/natality_daily/dagRuns"
        invalid = api.post(path, json={"logical_date": None, "conf": {"backend": "gpu"}})
        assert invalid.status_code == 400, invalid.text  # values Airflow checks itself ...
        created = api.post(path, json={"logical_date": None, "conf": {"bogus_key": 1}})  # no date: none to collide
        assert created.status_code == 200, created.text  # ... keys it does not
        run = created.json()
        assert run["conf"] == {"bogus_key": 1}
    purge_cached_app()

    from airflow.sdk.definitions.dag import _run_task
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState

    with create_session() as session:  # what the scheduler does to a task it hands to an executor
        ti = ti_of("natality_daily", run["dag_run_id"], "wait_for_data")
        ti.try_number, ti.state = ti.try_number + 1, TaskInstanceState.SCHEDULED
        session.merge(ti)
    _run_task(ti=ti_of("natality_daily", run["dag_run_id"], "wait_for_data"),
              task=natality_dag.get_task("wait_for_data"))
    assert_refused_at_the_first_task("natality_daily", run["dag_run_id"], fake_slack)


def test_dag_test_with_an_unknown_key_fails_at_its_first_task(natality_dag, fake_slack):
    dagrun = natality_dag.test(logical_date=datetime.fromisoformat(DATE).replace(tzinfo=timezone.utc),
                               run_conf={"bogus_key": 1, "backend": "local"})
    assert dagrun.state == "failed"
    assert_refused_at_the_first_task("natality_daily", dagrun.run_id, fake_slack)
    assert ti_of("natality_daily", dagrun.run_id, "resolve_model").state == "upstream_failed"


def test_a_storage_connection_override_reaches_every_step_that_did_not_name_its_own():
    """A trigger param (form, `mlbatch run --set`, Slack) bound to `storage.gcp_conn_id` or
    `storage.aws_conn_id` moves every step that inherited it (the one connection rule,
    `mlbatch.spec.connections`); a step's own connection from the spec file stays."""
    from mlbatch.local.run import trigger_conf
    from mlbatch.operators.base import effective_spec
    from mlbatch.spec.connections import needed_connections
    from mlbatch.spec.models import PipelineSpec

    spec = PipelineSpec.model_validate({
        "name": "conns", "model": {"name": "m", "alias": "champion"},
        "storage": {"gcp_conn_id": "gcs_lake", "aws_conn_id": "s3_lake"},
        "wait": {"aws_conn_id": "s3_landing"},
        "input": {"uri": "gs://lake/in/ds={{ ds }}/*.csv", "format": "csv", "id_column": "id",
                  "features": [{"name": "x", "type": "int"}]},
        "output": {"uri": "s3://out/p/ds={{ ds }}"},
        "trigger_params": {"gcp": {"field": "storage.gcp_conn_id"}, "aws": {"field": "storage.aws_conn_id"}}})
    assert effective_spec(spec, {}) is spec
    moved = effective_spec(spec, {"gcp": "gcs_other", "aws": "s3_other"})
    assert (moved.storage.gcp_conn_id, moved.storage.aws_conn_id) == ("gcs_other", "s3_other")
    assert moved.wait.gcp_conn_id == moved.predict.dataflow.gcp_conn_id == moved.predict.vertex.gcp_conn_id \
        == "gcs_other"
    assert moved.predict.sagemaker.aws_conn_id == "s3_other"
    assert moved.wait.aws_conn_id == "s3_landing"  # named in the spec file: stays
    needs = {n.purpose: (n.conn_id, n.field) for n in needed_connections(moved)}
    assert needs["wait.targets"] == needs["input.uri"] == ("gcs_other", "storage.gcp_conn_id")
    assert needs["output.uri"] == ("s3_other", "storage.aws_conn_id")

    again = effective_spec(moved, {"gcp": "gcs_third"})  # still inherited after one override
    assert again.wait.gcp_conn_id == again.predict.vertex.gcp_conn_id == "gcs_third"
    assert again.wait.aws_conn_id == "s3_landing" and again.predict.sagemaker.aws_conn_id == "s3_other"
    assert trigger_conf(spec, ["gcp=gcs_other"]) == {"gcp": "gcs_other"}  # mlbatch run --set: same rule
