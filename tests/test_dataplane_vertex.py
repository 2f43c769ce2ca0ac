"""Vertex AI batch prediction through its data-plane emulator, the GCS emulator and the real MLflow
scoring server: the instance shapes the MLflow container takes, and the natality_vertex example
end to end, checked against the direct-model backend."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cloud_backends import direct_model_predictions
from test_backend_vertex import vertex  # noqa: F401 - the Vertex API fakes + GCS emulator fixture

REPO = Path(__file__).resolve().parents[1]
FEATURES = ["is_male", "mother_age", "plurality", "gestation_weeks"]
BUCKET = "example-ml-prod-staging"


@pytest.fixture
def vertex_dataplane(vertex, model_containers, monkeypatch):
    """Batch prediction jobs that run: when the fake JobService creates a job, the container of the
    job's Model starts (tests/dataplane/containers.py: the model its image was built with, served by a
    real MLflow scoring server), the data-plane emulator (tests/dataplane/vertex_batch.py) scores the
    job's GCS input on it, writes what Vertex writes, and ends the job SUCCEEDED (or FAILED /
    PARTIALLY_SUCCEEDED). The provider's trigger polls through its async hook; here it gets the job
    from the same fake."""
    from airflow.providers.google.cloud.hooks.vertex_ai.batch_prediction_job import (
        BatchPredictionJobAsyncHook)
    from google.cloud.aiplatform_v1.types import JobState

    from dataplane.containers import ContainerFailed
    from dataplane.vertex_batch import HealthCheckFailed, run_batch_prediction

    jobs, models, gcs = vertex
    create = jobs.create_batch_prediction_job

    def create_and_run(*, parent, batch_prediction_job):
        job = create(parent=parent, batch_prediction_job=batch_prediction_job)
        [model] = [m for m in models.models if m.name == job.model]
        try:
            out_dir, ok, failed = run_batch_prediction(job, model, gcs.client("example-ml-prod"),
                                                       model_containers.vertex(model))
        except (ContainerFailed, HealthCheckFailed) as exc:
            job.state, job.error.message = JobState.JOB_STATE_FAILED, str(exc)
            return job
        job.output_info.gcs_output_directory = out_dir
        job.completion_stats.successful_count, job.completion_stats.failed_count = ok, failed
        job.state = (JobState.JOB_STATE_SUCCEEDED if not failed else
                     JobState.JOB_STATE_PARTIALLY_SUCCEEDED if ok else JobState.JOB_STATE_FAILED)
        return job

    async def wait_batch_prediction_job(self, project_id, location, job_id, poll_interval=None):
        return jobs.jobs[job_id if job_id.startswith("projects/") else
                         jobs.batch_prediction_job_path(project_id, location, job_id)]

    monkeypatch.setattr(jobs, "create_batch_prediction_job", create_and_run)
    monkeypatch.setattr(BatchPredictionJobAsyncHook, "wait_batch_prediction_job", wait_batch_prediction_job)
    return jobs, models, gcs


def _job_and_model(lines: list[dict], name: str, gcs_client, **instance_config):
    from google.cloud.aiplatform_v1.types import (BatchPredictionJob, GcsDestination, GcsSource, Model,
                                                  ModelContainerSpec, Port)
    from google.protobuf import timestamp_pb2

    gcs_client.bucket(BUCKET).blob(f"dataplane/{name}/in.jsonl").upload_from_string(
        "".join(json.dumps(line) + "\n" for line in lines))
    job = BatchPredictionJob(
        display_name=name, model="projects/p/locations/l/models/1",
        input_config=BatchPredictionJob.InputConfig(
            instances_format="jsonl", gcs_source=GcsSource(uris=[f"gs://{BUCKET}/dataplane/{name}/in.jsonl"])),
        instance_config=BatchPredictionJob.InstanceConfig(**instance_config),
        output_config=BatchPredictionJob.OutputConfig(
            predictions_format="jsonl",
            gcs_destination=GcsDestination(output_uri_prefix=f"gs://{BUCKET}/dataplane/{name}/out")))
    job.create_time = timestamp_pb2.Timestamp(seconds=1_700_000_000)
    model = Model(display_name="m", container_spec=ModelContainerSpec(
        image_uri="mlflow", predict_route="/invocations", health_route="/ping",
        ports=[Port(container_port=8080)]))
    return job, model


def _read(gcs_client, out_dir: str, prefix: str) -> list[dict]:
    bucket, path = out_dir[len("gs://"):].split("/", 1)
    blobs = sorted(gcs_client.list_blobs(bucket, prefix=f"{path}/{prefix}"), key=lambda b: b.name)
    return [json.loads(line) for b in blobs for line in b.download_as_text().splitlines() if line]


ROWS = [{"id": 10 + i, "is_male": i % 2 == 0, "mother_age": 20.0 + i, "plurality": 1,
         "gestation_weeks": 38.0, "note": "prep kept it"} for i in range(5)]


def test_key_field_and_included_fields_send_exactly_the_features(vertex, scoring_server):
    from dataplane.vertex_batch import run_batch_prediction

    client = vertex[2].client("example-ml-prod")
    job, model = _job_and_model(ROWS, "included", client, instance_type="object", key_field="id",
                                included_fields=FEATURES)
    out_dir, ok, failed = run_batch_prediction(job, model, client, scoring_server.url)
    assert (ok, failed) == (5, 0)
    assert out_dir == f"gs://{BUCKET}/dataplane/included/out/prediction-m-2023-11-14T22:13:20.000Z"
    results = _read(client, out_dir, "prediction.results-00000-of-00001")
    assert [list(r) for r in results] == [["key", "prediction"]] * 5
    assert [r["key"] for r in results] == [10, 11, 12, 13, 14]
    assert _read(client, out_dir, "prediction.errors_stats-") == []


def test_a_value_the_model_refuses_fails_every_instance_of_its_batch(vertex, scoring_server):
    """MLflow's schema check refuses the whole request (400), so Vertex records each instance of the
    batch as failed (key + error) in errors_stats, none as predicted."""
    from dataplane.vertex_batch import run_batch_prediction

    client = vertex[2].client("example-ml-prod")
    job, model = _job_and_model([{**r, "mother_age": "old"} for r in ROWS], "bad", client,
                                instance_type="object", key_field="id")
    out_dir, ok, failed = run_batch_prediction(job, model, client, scoring_server.url)
    assert (ok, failed) == (0, 5)
    errors = _read(client, out_dir, "prediction.errors_stats-")
    assert [e["key"] for e in errors] == [10, 11, 12, 13, 14] and errors[0]["error"]["code"] == 3


def test_array_instances_from_objects_need_included_fields(vertex, scoring_server):
    from dataplane.vertex_batch import run_batch_prediction

    client = vertex[2].client("example-ml-prod")
    job, model = _job_and_model(ROWS, "array", client, instance_type="array", key_field="id")
    with pytest.raises(ValueError, match="needs included_fields"):
        run_batch_prediction(job, model, client, scoring_server.url)


def test_a_container_spec_without_the_images_port_never_gets_healthy(vertex, scoring_server):
    from google.cloud.aiplatform_v1.types import Port

    from dataplane.vertex_batch import HealthCheckFailed, run_batch_prediction

    client = vertex[2].client("example-ml-prod")
    job, model = _job_and_model(ROWS, "port", client, key_field="id")
    model.container_spec.ports = [Port(container_port=5000)]
    with pytest.raises(HealthCheckFailed, match="declares port 5000"):
        run_batch_prediction(job, model, client, scoring_server.url)


E2E_DATE = "2026-11-23"


def test_vertex_example_runs_end_to_end(airflow_db, registered_model, session_dir, vertex_dataplane,
                                        tmp_path):
    """natality_vertex through the fake Vertex API, the emulated data plane and the real MLflow
    server: the published predictions equal the direct-model backend's, for every valid row, by id."""
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq
    from airflow.dag_processing.dagbag import DagBag

    from cloud_backends import pipeline_outputs_moved

    from mlbatch.local.demo.natality import write_partition

    jobs, models, _ = vertex_dataplane
    write_partition(session_dir / "data" / "natality" / f"ds={E2E_DATE}", 3_000, files=2, seed=12,
                    row_group_rows=1_000)
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors
    with pipeline_outputs_moved():  # back on the dev paths, whatever an earlier test left active
        run = bag.dags["natality_vertex"].test(
            logical_date=datetime.fromisoformat(E2E_DATE).replace(tzinfo=timezone.utc))
    assert run.state == "success"

    [job] = jobs.jobs.values()
    assert job.state.name == "JOB_STATE_SUCCEEDED" and job.completion_stats.failed_count == 0
    [model] = models.models
    assert model.container_spec.image_uri.endswith(
        f"/mlflow-{registered_model['name']}:v{registered_model['version']}")
    out = session_dir / "data" / "predictions" / "natality_vertex" / f"ds={E2E_DATE}"
    manifest = json.loads((out / "_SUCCESS").read_text())
    assert manifest["rows_in"] == 3_000 == manifest["rows_scored"] + manifest["rows_rejected"]
    assert job.completion_stats.successful_count == manifest["rows_scored"]
    table = pq.read_table(manifest["files"], partitioning=None).to_pandas()  # the files the commit names
    source = pd.read_parquet(session_dir / "data" / "natality" / f"ds={E2E_DATE}")
    direct = direct_model_predictions(source[source.id.isin(table.id)],
                                      f"models:/{registered_model['name']}/{registered_model['version']}",
                                      FEATURES, tmp_path / "direct")
    assert len(direct) == len(table) == manifest["rows_scored"]
    np.testing.assert_allclose(table.set_index("id").predicted_weight_pounds.sort_index(),
                               direct.sort_index(), rtol=1e-12)
