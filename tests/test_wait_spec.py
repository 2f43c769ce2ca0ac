"""The `wait:` block of a spec, pipeline assets and asset schedules (no Airflow run needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "include" / "pipelines" / "natality_daily.yaml"


def write_spec(tmp_path: Path, name: str, **changes) -> Path:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["name"] = name
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def load(tmp_path: Path, name: str = "p", **changes):
    from mlbatch.spec.loader import load_spec

    return load_spec(write_spec(tmp_path, name, **changes))


def test_example_waits_for_its_marker_with_a_size_check():
    from mlbatch.spec.loader import load_spec

    spec = load_spec(EXAMPLE)
    assert spec.wait.kind == "object" and spec.wait.targets == []  # default target: input.marker
    assert spec.input.marker.endswith("ds={{ ds }}/_SUCCESS")
    assert (spec.wait.timeout_minutes, spec.wait.poke_seconds, spec.wait.on_timeout) == (30, 10, "fail")
    assert spec.wait.checks.min_bytes == 1024


@pytest.mark.parametrize("wait, message", [
    ({"kind": "upstream_task"}, "kind 'upstream_task' needs 'wait.dag_id'"),
    ({"kind": "bigquery_partition", "table": "only.two"}, "expected project.dataset.table"),
    ({"kind": "object", "dag_id": "x"}, "'wait.dag_id' belongs to kind 'upstream_task', not 'object'"),
    ({"on_timeout": "retry"}, "wait.on_timeout = 'retry': expected one of 'fail' or 'skip'"),
    ({"kind": "sftp"}, "wait.kind = 'sftp': expected one of"),
    ({"poke_second": 3}, "wait.poke_second"),
    ({"checks": {"min_rows": 0}}, "wait.checks.min_rows = 0"),
])
def test_wrong_wait_blocks_say_what_and_where(tmp_path, wait, message):
    from mlbatch.errors import SpecError

    with pytest.raises(SpecError) as err:
        load(tmp_path, wait=wait)
    assert message in str(err.value)
    assert f"{tmp_path}/p.yaml:" in str(err.value)


def test_old_task_wait_fields_point_to_their_new_place(tmp_path):
    from mlbatch.errors import SpecError

    with pytest.raises(SpecError, match=r"'tasks.wait_timeout_minutes' moved to 'wait.timeout_minutes'"):
        load(tmp_path, tasks={"wait_timeout_minutes": 5})


def test_asset_schedule_excludes_a_clock_and_row_checks_work_on_object_stores(tmp_path):
    from mlbatch.errors import SpecError

    with pytest.raises(SpecError, match="the upstream assets are the schedule"):
        load(tmp_path, wait={"kind": "upstream_asset", "assets": ["natality_daily"]})
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["input"]["uri"] = "gs://bucket/natality/ds={{ ds }}/*.parquet"
    assert load(tmp_path, input=doc["input"], wait={"checks": {"min_rows": 10}}).wait.checks.min_rows == 10


def test_every_pipeline_publishes_its_predictions_as_an_asset(tmp_path):
    from airflow.sdk import Asset

    from mlbatch.run.assets import dataset_uri
    from mlbatch.dag_factory import build_dag

    spec = load(tmp_path)
    [asset] = build_dag(spec).get_task("publish").outlets
    assert isinstance(asset, Asset)
    assert asset.name == "mlbatch/p/predictions"
    assert asset.uri == "file://" + spec.output.uri.split("/ds=")[0]
    assert dataset_uri("gs://b/preds/{{ ds_nodash }}/") == "gs://b/preds"
    assert dataset_uri("s3://b/preds/daily") == "s3://b/preds/daily"


def test_a_pipeline_scheduled_on_another_pipelines_predictions(tmp_path):
    from airflow.sdk import Asset
    from airflow.sdk.definitions.asset import AssetAny, AssetNameRef

    from mlbatch.dag_factory import build_dags

    write_spec(tmp_path, "upstream")
    write_spec(tmp_path, "downstream", schedule=None,
               wait={"kind": "upstream_asset", "assets": ["upstream", "elsewhere", "s3://lake/events"],
                     "assets_mode": "any"})
    dags = build_dags(tmp_path)
    assert sorted(dags) == ["downstream", "upstream"]
    condition = dags["downstream"].timetable.asset_condition
    assert isinstance(condition, AssetAny)
    upstream, elsewhere, lake = condition.objects
    assert upstream == dags["upstream"].get_task("publish").outlets[0]  # concrete: events reach the run
    assert elsewhere == AssetNameRef("mlbatch/elsewhere/predictions")  # not loaded here: by name
    assert lake == Asset(uri="s3://lake/events", name="s3://lake/events")


def test_asset_triggered_runs_take_the_data_date_of_the_newest_event():
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace

    from airflow.sdk.api.datamodels._generated import AssetReferenceAssetEventDagRun
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    from mlbatch.run.assets import fill_data_date

    now = datetime(2026, 11, 21, 3, tzinfo=timezone.utc)

    def event(ds: str, minutes: int):
        return AssetEventDagRunReferenceResult(
            asset=AssetReferenceAssetEventDagRun(name="mlbatch/up/predictions", uri="file:///p", extra={}),
            extra={"ds": ds}, source_task_id="publish", source_dag_id="up", source_run_id="r",
            source_map_index=-1, source_aliases=[], timestamp=now - timedelta(minutes=minutes))

    context = {"triggering_asset_events": TriggeringAssetEventsAccessor.build(
        [event("2026-11-19", 30), event("2026-11-20", 5)])}
    assert fill_data_date(context) == "2026-11-20" and context["ds_nodash"] == "20261120"

    no_events = {"triggering_asset_events": TriggeringAssetEventsAccessor.build([]),
                 "dag_run": SimpleNamespace(run_after=now)}
    assert fill_data_date(no_events) == "2026-11-21"
    scheduled = {"ds": "2026-11-01"}
    assert fill_data_date(scheduled) == "2026-11-01"
