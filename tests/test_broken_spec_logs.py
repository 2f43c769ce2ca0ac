"""A broken spec shows in its placeholder DAG and in the dag-processor's log, never in the task logs of
other pipelines (docs/errors.md, "Broken specs and the logs").

A worker re-parses the DAG file to run one task, under Airflow's parsing context (the task's DAG id);
`build_dags` then builds that DAG alone and logs no other spec's error. Shown with the real parts: a
task of natality_daily run by Airflow's supervisor in a child process (which parses the file and writes
the try's log file), and `airflow dag-processor --num-runs 1` parsing the same folder.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "include" / "pipelines"
DATE = "2026-11-20"
BROKEN = "natality_broken"


@pytest.fixture
def pipelines(tmp_path) -> Path:
    """natality_daily and a broken spec (backend `gpu`) side by side."""
    folder = tmp_path / "pipelines"
    folder.mkdir()
    shutil.copy(PIPELINES / "natality_daily.yaml", folder)
    doc = yaml.safe_load((PIPELINES / "natality_daily.yaml").read_text())
    doc["name"], doc["predict"]["backend"] = BROKEN, "gpu"
    (folder / f"{BROKEN}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder


class Recorder:
    """Stands in for `mlbatch.dag_factory.log` (pytest's caplog does not see loggers that Airflow's
    logging configuration took over)."""

    def __init__(self):
        self.errors: list[str] = []

    def error(self, message, *args):
        self.errors.append(message % args)


def test_under_a_parsing_context_only_the_wanted_dag_is_built_and_no_broken_spec_logged(pipelines, monkeypatch):
    from mlbatch import dag_factory
    from mlbatch.spec.broken import BROKEN_TAG

    log = Recorder()
    monkeypatch.setattr(dag_factory, "log", log)
    monkeypatch.delenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", raising=False)
    assert sorted(dag_factory.build_dags(pipelines)) == [BROKEN, "natality_daily"]  # the dag-processor: all
    [error] = log.errors  # ... and the broken spec's error in its log
    assert BROKEN in error and "predict.backend = 'gpu'" in error

    log.errors.clear()
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "natality_daily")  # what a task runner sets
    assert list(dag_factory.build_dags(pipelines)) == ["natality_daily"]
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", BROKEN)  # a run of the placeholder still works
    [placeholder] = dag_factory.build_dags(pipelines).values()
    assert BROKEN_TAG in placeholder.tags
    monkeypatch.setenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", "some_other_file_dag")  # not ours: all, as before
    assert sorted(dag_factory.build_dags(pipelines)) == [BROKEN, "natality_daily"]
    assert log.errors == []  # none of the task-process parses logged the broken spec


def test_a_good_pipelines_task_log_has_no_line_about_a_broken_spec(airflow_db, pipelines, session_dir, tmp_path,
                                                                   monkeypatch):
    """natality_daily's first task under Airflow's supervisor (as the Local and Celery executors run it):
    the child process parses dags/mlbatch_pipelines.py with the broken spec next to natality_daily."""
    from types import SimpleNamespace

    import airflow.sdk.execution_time.supervisor as supervisor
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db
    from airflow.models.taskinstance import TaskInstance
    from airflow.sdk.api.datamodels._generated import BundleInfo
    from airflow.utils.session import create_session

    from mlbatch.local.demo.natality import write_partition

    folder = session_dir / "data" / "natality" / f"ds={DATE}"
    if not (folder / "_SUCCESS").exists():
        write_partition(folder, 2_000, files=1, seed=3, row_group_rows=1_000)
    logs = tmp_path / "logs"
    monkeypatch.setenv("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(logs))
    monkeypatch.setenv("MLBATCH_PIPELINES_DIR", str(pipelines))  # the child process inherits it
    monkeypatch.delenv("AIRFLOW_CONN_SLACK_API_DEFAULT", raising=False)
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {} and BROKEN in bag.dags
    DagBundlesManager().sync_bundles_to_db()
    sync_bag_to_db(bag, "dags-folder", None)
    dag = bag.dags["natality_daily"]
    tried: list[str] = []

    def under_supervisor(ti, task, client=None):
        log_path = f"dag_id={ti.dag_id}/run_id={ti.run_id}/task_id={ti.task_id}/attempt={ti.try_number}.log"
        tried.append(log_path)
        supervisor.supervise_task(ti=ti, bundle_info=BundleInfo(name="dags-folder"),
                                  dag_rel_path="mlbatch_pipelines.py", token="",
                                  client=supervisor.InProcessTestSupervisor._api_client(task.dag), log_path=log_path)
        with create_session() as session:
            state = session.query(TaskInstance).filter_by(dag_id=ti.dag_id, run_id=ti.run_id,
                                                          task_id=ti.task_id).one().state
        return SimpleNamespace(ti=SimpleNamespace(state=state, task=task), state=state, msg=None, error=None)

    monkeypatch.setattr(supervisor, "run_task_in_process", under_supervisor)
    dagrun = dag.test(logical_date=datetime.fromisoformat(DATE).replace(tzinfo=timezone.utc),
                      run_conf={"backend": "local"}, mark_success_pattern="resolve_model|prep|predict|publish|record")
    assert dagrun.state == "success"
    [log_path] = tried  # wait_for_data, in a child process; the rest marked successful
    lines = [json.loads(line) for line in (logs / log_path).read_text().splitlines() if line.strip()]
    events = [str(line.get("event", "")) for line in lines]
    assert any("Worker startup parse complete" in e for e in events), events  # it did parse the DAG file
    assert any("Input is there and complete" in e for e in events), events
    about_broken = [line for line in lines if BROKEN in json.dumps(line) or "cannot be loaded" in json.dumps(line)]
    assert about_broken == []


def test_the_dag_processor_logs_the_broken_spec_and_shows_it_in_the_placeholder(pipelines, tmp_path):
    """`airflow dag-processor --num-runs 1` on its own Airflow home: its log for the DAG file has the
    error, and the placeholder DAG's description says why it cannot run."""
    home = tmp_path / "airflow"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "_AIRFLOW_PARSING_CONTEXT"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "MLBATCH_PIPELINES_DIR": str(pipelines),
    })
    airflow = [sys.executable, "-m", "airflow"]
    subprocess.run(airflow + ["db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    subprocess.run(airflow + ["dag-processor", "--num-runs", "1"], env=env, check=True, capture_output=True,
                   timeout=300)

    [file_log] = (home / "logs" / "dag_processor").glob("*/dags-folder/mlbatch_pipelines.py.log")
    errors = [json.loads(line) for line in file_log.read_text().splitlines() if BROKEN in line]
    assert [e["level"] for e in errors] == ["error"]
    assert "predict.backend = 'gpu'" in errors[0]["event"] and errors[0]["logger"] == "mlbatch.dag_factory"

    with sqlite3.connect(home / "airflow.db") as db:
        dags = dict(db.execute("SELECT dag_id, description FROM dag"))
    assert set(dags) == {BROKEN, "natality_daily"}
    assert dags[BROKEN].startswith("BROKEN SPEC, cannot run:") and "predict.backend = 'gpu'" in dags[BROKEN]
