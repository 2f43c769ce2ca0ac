"""wait.timeout_minutes holds where the trigger runs in-process (`airflow dags test` / `dag.test()`),
which ignores the deferral timeout: the deadline travels inside the trigger (DeadlineTrigger)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATE = "2026-11-23"


def never_ready_dag(tmp_path: Path, monkeypatch, on_timeout: str):
    """A pipeline whose marker never comes, as a spec file in the DAG folder's pipelines dir
    (dag.test() runs DAGs the bundle parses)."""
    import yaml
    from airflow.dag_processing.dagbag import DagBag

    spec = yaml.safe_load((REPO / "include" / "pipelines" / "natality_daily.yaml").read_text())
    spec.pop("environments", None)
    name = f"never_ready_{on_timeout}"
    spec.update(name=name, output={**spec["output"], "uri": str(tmp_path / "out" / "ds={{ ds }}")},
                wait={"timeout_minutes": 0.05, "poke_seconds": 0.5, "on_timeout": on_timeout})
    spec["input"].update(uri=str(tmp_path / "in" / "*.parquet"), marker=str(tmp_path / "in" / "_SUCCESS"))
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setenv("MLBATCH_PIPELINES_DIR", str(pipelines))
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags[name]


@pytest.mark.parametrize("on_timeout, run_state, wait_state", [("skip", "success", "skipped"),
                                                              ("fail", "failed", "failed")])
def test_wait_deadline_fires_under_dag_test(tmp_path, monkeypatch, airflow_db, capfd, on_timeout, run_state,
                                           wait_state):
    dag = never_ready_dag(tmp_path, monkeypatch, on_timeout)
    dagrun = dag.test(logical_date=datetime.fromisoformat(DATE).replace(tzinfo=timezone.utc))  # returns: the deadline fired

    assert dagrun.state == run_state
    states = {ti.task_id: ti.state for ti in dagrun.get_task_instances()}
    assert states["wait_for_data"] == wait_state
    assert states["prep"] in ("skipped", "upstream_failed")
    out, err = capfd.readouterr()
    assert "in/_SUCCESS does not exist" in out + err
    waiting = [line for line in (out + err).splitlines() if "Still waiting for" in line]
    assert waiting and "_SUCCESS" in waiting[0] and " left (until " in waiting[0], waiting  # progress, as it waits
    from mlbatch.local.display import WAITING

    assert WAITING.search(waiting[0]), waiting[0]  # what `mlbatch run` prints of it
    assert not (tmp_path / "out").exists()
