"""End to end: the example pipeline through `dag.test()` on small real data, both local backends."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

import pyarrow.parquet as pq
import pytest

DATE = "2026-11-20"
ROWS = 6_000


@pytest.fixture(scope="module")
def partition(session_dir: Path) -> dict:
    from mlbatch.local.demo.natality import make_frame, write_partition

    folder = write_partition(session_dir / "data" / "natality" / f"ds={DATE}", ROWS, files=2, seed=7,
                             row_group_rows=1_000)
    # The same rows the generator wrote, to know how many are invalid on purpose.
    frames = [make_frame(3_000, seed=7 + i, id_offset=i * 3_000) for i in range(2)]
    bad = sum(int((f.gestation_weeks.isna() | (f.mother_age > 60) | (f.plurality < 1)).sum()) for f in frames)
    return {"folder": folder, "rows": ROWS, "bad": bad}


@pytest.fixture(scope="module")
def dag(airflow_db, registered_model):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[1] / "dags"))
    assert bag.import_errors == {}
    return bag.dags["natality_daily"]


def run(dag, conf: dict):
    from datetime import datetime, timezone

    return dag.test(logical_date=datetime.fromisoformat(DATE).replace(tzinfo=timezone.utc), run_conf=conf)


def output_dir(session_dir: Path) -> Path:
    return session_dir / "data" / "predictions" / "natality_daily" / f"ds={DATE}"


def read_output(folder: Path):
    """As docs/storage.md tells readers: exactly the files the commit record names."""
    files = json.loads((folder / "_SUCCESS").read_text())["files"]
    return pq.read_table(files, partitioning=None).to_pandas() if files else None


@pytest.mark.parametrize("backend", ["dataflow", "local"])
def test_pipeline_scores_every_valid_row_and_records_the_run(dag, partition, session_dir, backend,
                                                             registered_model):
    import mlflow

    dagrun = run(dag, {"backend": backend})
    assert dagrun.state == "success", f"{backend}: {dagrun.state}"

    out = output_dir(session_dir)
    manifest = json.loads((out / "_SUCCESS").read_text())
    expected_valid = partition["rows"] - partition["bad"]
    assert manifest["rows_in"] == partition["rows"]
    assert manifest["rows_rejected"] == partition["bad"] > 0
    assert manifest["rows_scored"] == expected_valid
    assert manifest["model"] == f"models:/natality_weight/{registered_model['version']}"

    table = read_output(out)
    assert list(table.columns) == ["id", "predicted_weight_pounds"]
    assert len(table) == expected_valid and table.id.is_unique
    assert table.predicted_weight_pounds.between(0, 15).all()

    reasons = [json.loads(line)["reason"] for f in manifest["dead_letter"]["files"] for line in open(f)]
    assert len(reasons) == partition["bad"]
    assert any("above max 60" in r for r in reasons)

    runs = mlflow.search_runs(experiment_names=["mlbatch/natality_daily"],
                              filter_string=f"tags.backend = '{backend}'", output_format="list")
    latest = max(runs, key=lambda r: r.info.start_time)
    m = latest.data.metrics
    assert m["rows_in"] == partition["rows"] and m["rows_rejected"] == partition["bad"]
    for step in ("prep", "predict", "publish"):  # the direct model: prep's work runs in predict's job
        assert m[f"{step}.wall_s"] > 0 or (step, backend) == ("prep", "dataflow")
        assert m[f"{step}.peak_rss_mb"] > 0 and f"{step}.cpu_s" in m
    steps = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in dagrun.get_task_instances()}
    if backend == "dataflow":  # one pass: read, validate, dead letters, score (mlbatch_beam.validate_and_score)
        assert steps["prep"] == {"runs_in": "predict"}
        assert (steps["predict"]["rows_in"], steps["predict"]["rows_rejected"], steps["predict"]["rows_scored"]) == (
            partition["rows"], partition["bad"], expected_valid)
    else:
        assert steps["prep"]["rows_valid"] == expected_valid
    assert latest.data.params["model_version"] == str(registered_model["version"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(latest.info.run_id)}
    assert {"prediction_histogram.svg", "run_summary.json"} <= artifacts
    svg = ElementTree.parse(mlflow.artifacts.download_artifacts(run_id=latest.info.run_id,
                                                                artifact_path="prediction_histogram.svg"))
    bars = [e for e in svg.iter("{http://www.w3.org/2000/svg}rect") if e.get("class") == "bar"]
    assert len(bars) == 40 and sum(int(b[0].text.split(": ")[1].split()[0].replace(",", "")) for b in bars) == expected_valid

    # The UI's "Rendered Template" view: what the predict task used, rendered for this run.
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.utils.session import create_session

    with create_session() as session:
        [predict] = [ti for ti in dagrun.get_task_instances(session=session) if ti.task_id == "predict"]
        fields = RenderedTaskInstanceFields.get_templated_fields(predict, session=session)
    assert fields["input_uri"] == f"{partition['folder']}/*.parquet"
    assert fields["output_uri"] == str(out) and fields["input_marker"] == f"{partition['folder']}/_SUCCESS"
    assert fields["work_folder"].startswith(f"{out.parent}/_work/natality_daily/")
    assert fields["model_version"] == f"models:/natality_weight/{registered_model['version']}"


def test_rerun_of_the_same_date_replaces_its_partition(dag, partition, session_dir):
    out = output_dir(session_dir)
    assert run(dag, {"backend": "local"}).state == "success"
    (out / "stray-from-an-old-run.parquet").write_bytes(b"not parquet")
    first_run = json.loads((out / "_SUCCESS").read_text())["run_id"]
    killed = out.parent / "_work" / "natality_daily" / "manual__killed_and_deleted"  # as a killed prep leaves it
    (killed / "prepared").mkdir(parents=True)
    (killed / "prepared" / "part-0.parquet").write_bytes(b"half written")
    (killed / "_run.json").write_text(json.dumps({"dag_id": "natality_daily", "run_id": "manual__killed_and_deleted",
                                                  "noted": 0}))

    assert run(dag, {"backend": "dataflow"}).state == "success"
    assert not killed.exists(), "the next publish sweeps the folder of a run Airflow no longer has"
    assert not (out / "stray-from-an-old-run.parquet").exists()
    assert len(read_output(out)) == partition["rows"] - partition["bad"]
    assert json.loads((out / "_SUCCESS").read_text())["run_id"] != first_run  # the newer run owns it
    attempts = [p.name for p in (out / "_attempts").iterdir()]
    assert attempts == [json.loads((out / "_SUCCESS").read_text())["attempt"]], attempts  # the old one collected
    assert not (out.parent / "_work" / "natality_daily").exists() or not [
        p for p in (out.parent / "_work" / "natality_daily").iterdir() if not p.name.startswith("_")]


def test_invalid_trigger_params_are_refused(dag):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError):
        run(dag, {"backend": "gpu"})


def test_two_local_workers_score_every_row_as_file_shards(airflow_db, registered_model, partition, session_dir,
                                                          tmp_path, monkeypatch):
    """`compute.local_workers: 2` through the DAG: predict's one-pass job (validate and score) runs as two
    jobs over the two input files (mlbatch_beam.shards), and every valid row is published once."""
    from airflow.dag_processing.dagbag import DagBag

    repo = Path(__file__).resolve().parents[1]
    text = (repo / "include" / "pipelines" / "natality_daily.yaml").read_text()
    two = (text.replace("name: natality_daily", "name: natality_daily_w2")
               .replace("predictions/natality_daily/", "predictions/natality_daily_w2/")
               .replace("local_workers: 1", "local_workers: 2"))
    assert two.count("natality_daily_w2") == 2 and "local_workers: 2" in two
    (tmp_path / "natality_daily_w2.yaml").write_text(two)
    monkeypatch.setenv("MLBATCH_PIPELINES_DIR", str(tmp_path))
    bag = DagBag(dag_folder=str(repo / "dags"))
    assert bag.import_errors == {}
    dagrun = run(bag.dags["natality_daily_w2"], {"backend": "dataflow"})
    assert dagrun.state == "success"

    out = session_dir / "data" / "predictions" / "natality_daily_w2" / f"ds={DATE}"
    manifest = json.loads((out / "_SUCCESS").read_text())
    assert (manifest["rows_in"], manifest["rows_rejected"]) == (partition["rows"], partition["bad"])
    table = read_output(out)
    assert len(table) == partition["rows"] - partition["bad"] and table.id.is_unique
    steps = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in dagrun.get_task_instances()}
    assert steps["predict"]["shards"] == 2
    assert (steps["predict"]["rows_in"], steps["predict"]["rows_rejected"]) == (partition["rows"], partition["bad"])
    assert steps["predict"]["model_loads"] == 2  # one model copy per shard
