"""The quality gate's statistics through the whole DAG (issue 25): a spec with a `quality:` block runs
wait -> resolve_model -> prep -> predict -> quality_gate -> publish -> record on two days; each
committed run keeps its statistics beside its attempt (named in `_SUCCESS`) and in its MLflow run, and
the second day's job bins on the edges the first day's statistics fixed; on the direct-model backend
and on `local` (whose predictions' statistics are taken at the end of predict)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml


@pytest.mark.parametrize("backend", ["dataflow", "local"])
def test_a_gated_pipeline_keeps_statistics_with_each_committed_run(airflow_db, registered_model, session_dir, tmp_path,
                                                                  monkeypatch, backend):
    """The whole DAG with a quality: block: predict writes statistics (`local`: prep the features', the
    end of predict the predictions', as it reads the service's files), the gate evaluates them, publish
    keeps them with the committed attempt (_SUCCESS names them) and record logs them to the MLflow run.
    The predictions' statistics equal those computed directly on the committed files."""
    import mlflow
    import pyarrow.parquet as pq
    from mlbatch.dag_factory import build_dags
    from mlbatch.local.demo.natality import write_partition
    from mlbatch_beam.quality.combine import kind_of
    from mlbatch_beam.quality.statistics import summary

    name = "natality_gated" if backend == "dataflow" else f"natality_gated_{backend}"
    spec = yaml.safe_load(Path("include/pipelines/natality_daily.yaml").read_text())
    spec.update(name=name, quality={"min_rows": 100})
    spec["predict"]["backend"] = backend
    spec.pop("environments", None)
    spec["output"]["uri"] = spec["output"]["uri"].replace("natality_daily", name)
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setenv("MLBATCH_PIPELINES_DIR", str(tmp_path))  # dag.test parses the DAG folder again
    dag = build_dags(str(tmp_path))[name]
    records = []
    for i, ds in enumerate(["2026-11-25", "2026-11-26"]):
        write_partition(session_dir / "data" / "natality" / f"ds={ds}", 2000, files=1, seed=30 + i)
        run = dag.test(logical_date=datetime.fromisoformat(ds).replace(tzinfo=timezone.utc))
        states = {ti.task_id: ti.state for ti in run.get_task_instances()}
        assert run.state == "success" and states.get("publish") == "success", states
        out = session_dir / "data" / "predictions" / name / f"ds={ds}"
        records.append(json.loads((out / "_SUCCESS").read_text()))
    for record in records:
        assert record["statistics"].endswith("/_statistics.json") and Path(record["statistics"]).exists()
        assert record["statistics"] not in record["files"]
        doc = json.loads(Path(record["statistics"]).read_text())
        assert set(doc["features"]) == {"is_male", "mother_age", "plurality", "gestation_weeks"}
        stored = doc["predictions"]["predicted_weight_pounds"]
        assert stored["count"] == record["rows_scored"]
        committed = pq.read_table(record["files"], partitioning=None).column("predicted_weight_pounds")
        expected = summary("predicted_weight_pounds", kind_of(committed.type), stored["edges"]).add_batch(
            committed).to_json()
        exact = ("count", "nulls", "non_finite", "counts", "below", "above", "min", "max", "sketch", "edges")
        assert {k: stored[k] for k in exact} == {k: expected[k] for k in exact}
        assert stored["mean"] == pytest.approx(expected["mean"], rel=1e-9)
    assert records[0]["quality"] == "pass" and records[1]["quality"] == "pass"
    second = json.loads(Path(records[1]["statistics"]).read_text())
    assert second["features"]["mother_age"]["edges"]  # binned on the first run's edges
    assert second["predictions"]["predicted_weight_pounds"]["edges"]
    client = mlflow.MlflowClient()
    run = client.search_runs([client.get_experiment_by_name(f"mlbatch/{name}").experiment_id],
                             order_by=["attributes.start_time DESC"])[0]
    assert "quality/statistics.json" in [a.path for a in client.list_artifacts(run.info.run_id, "quality")]
    assert "quality.mother_age.mean" in run.data.metrics
