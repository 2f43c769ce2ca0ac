"""Vertex AI batch-prediction backend: GCS through the GCS emulator over HTTP; the Vertex and Cloud
Logging APIs have no emulator, so their clients are faked at the boundary -- subclasses of the real
GAPIC clients whose RPC methods receive and return the real proto types (unknown fields fail)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from cloud_backends import task_context

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "include" / "pipelines" / "natality_vertex.yaml"
DS = "2026-11-21"
# CancelBatchPredictionJob on a job in these states answers FAILED_PRECONDITION (the job is not cancellable:
# https://cloud.google.com/vertex-ai/docs/reference/rest/v1/projects.locations.batchPredictionJobs/cancel)
ENDED = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED",
         "JOB_STATE_PARTIALLY_SUCCEEDED")


class FakeJobService:
    """Stands in for JobServiceClient behind BatchPredictionJobHook.get_job_service_client()."""

    def __init__(self):
        from google.cloud.aiplatform_v1.services.job_service import JobServiceClient

        self.paths = JobServiceClient  # the real resource-path helpers
        self.jobs: dict = {}
        self.cancelled: list[str] = []

    def common_location_path(self, project, location):
        return self.paths.common_location_path(project, location)

    def batch_prediction_job_path(self, project, location, job):
        return self.paths.batch_prediction_job_path(project, location, job)

    def create_batch_prediction_job(self, *, parent, batch_prediction_job):
        from google.cloud.aiplatform_v1.types import BatchPredictionJob, JobState
        from google.protobuf import timestamp_pb2

        assert type(batch_prediction_job) is BatchPredictionJob
        job = BatchPredictionJob(batch_prediction_job)
        job.name = f"{parent}/batchPredictionJobs/{1000 + len(self.jobs)}"
        job.state = JobState.JOB_STATE_PENDING
        job.create_time = timestamp_pb2.Timestamp(seconds=1_700_000_000 + len(self.jobs))
        self.jobs[job.name] = job
        return job

    def list_batch_prediction_jobs(self, request, retry=None, timeout=None, metadata=()):
        from google.cloud.aiplatform_v1.types import ListBatchPredictionJobsRequest

        request = ListBatchPredictionJobsRequest(request)  # a dict with an unknown key fails here
        wanted = request.filter.split('display_name="', 1)[1].rstrip('"')
        return [j for j in self.jobs.values() if j.name.startswith(request.parent) and j.display_name == wanted]

    def get_batch_prediction_job(self, request, retry=None, timeout=None, metadata=()):
        from google.cloud.aiplatform_v1.types import GetBatchPredictionJobRequest

        return self.jobs[GetBatchPredictionJobRequest(request).name]

    def cancel_batch_prediction_job(self, *, name):
        from google.api_core.exceptions import FailedPrecondition
        from google.cloud.aiplatform_v1.types import JobState

        if self.jobs[name].state.name in ENDED:  # as the service: an ended job cannot be cancelled
            raise FailedPrecondition(f"BatchPredictionJob {name} is in state {self.jobs[name].state.name} "
                                     "and cannot be cancelled.")
        self.cancelled.append(name)
        self.jobs[name].state = JobState.JOB_STATE_CANCELLING

    def finish(self, name, state_name, output_dir=""):
        from google.cloud.aiplatform_v1.types import JobState

        self.jobs[name].state = JobState[state_name]
        self.jobs[name].output_info.gcs_output_directory = output_dir


class FakeModelService:
    def __init__(self):
        from google.cloud.aiplatform_v1.services.model_service import ModelServiceClient

        self.paths = ModelServiceClient
        self.models: list = []

    def common_location_path(self, project, location):
        return self.paths.common_location_path(project, location)

    def list_models(self, request, retry=None, timeout=None, metadata=()):
        from google.cloud.aiplatform_v1.types import ListModelsRequest

        request = ListModelsRequest(request)
        wanted = request.filter.split('display_name="', 1)[1].rstrip('"')
        return [m for m in self.models if m.display_name == wanted]

    def upload_model(self, request, retry=None, timeout=None, metadata=()):
        from google.cloud.aiplatform_v1.types import UploadModelRequest, UploadModelResponse

        request = UploadModelRequest(request)
        model = type(request.model)(request.model)
        model.name = f"{request.parent}/models/{len(self.models) + 1}"
        self.models.append(model)

        class Done:
            def result(self, timeout=None, polling=None, retry=None):
                return UploadModelResponse(model=model.name)

        return Done()


@pytest.fixture
def vertex(gcs_emulator, monkeypatch):
    from airflow.providers.google.cloud.hooks.vertex_ai.batch_prediction_job import BatchPredictionJobHook
    from airflow.providers.google.cloud.hooks.vertex_ai.model_service import ModelServiceHook

    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", json.dumps({
        "conn_type": "google_cloud_platform", "extra": {"is_anonymous": True, "project": "example-ml-prod",
                                                        "gcs.endpoint": gcs_emulator.endpoint_url}}))
    gcs_emulator.client("example-ml-prod").create_bucket("example-ml-prod-staging") \
        if not gcs_emulator.client("example-ml-prod").lookup_bucket("example-ml-prod-staging") else None
    jobs, models = FakeJobService(), FakeModelService()
    monkeypatch.setattr(BatchPredictionJobHook, "get_job_service_client", lambda self, region=None: jobs)
    monkeypatch.setattr(ModelServiceHook, "get_model_service_client", lambda self, region=None: models)
    return jobs, models, gcs_emulator


@pytest.fixture
def spec(tmp_path):
    from mlbatch.spec.loader import load_spec, with_overrides

    return with_overrides(load_spec(SPEC), {"output.uri": str(tmp_path / "out" / "ds={{ ds }}")})


def submit(spec, context):
    from airflow.sdk.exceptions import TaskDeferred

    from mlbatch.operators.predict import PredictOperator

    op = PredictOperator(task_id="predict", spec=spec)
    prepared = Path(op.run_paths(context, spec).prepared)
    prepared.mkdir(parents=True, exist_ok=True)
    if not (prepared / "part-00000.jsonl").exists():  # written once per run, as prep does
        (prepared / "part-00000.jsonl").write_text(json.dumps({"id": 1, "is_male": True, "mother_age": 30.0,
                                                               "plurality": 1, "gestation_weeks": 39.0}) + "\n")
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    return op, deferred.value


def test_submit_uploads_model_once_and_builds_the_job_from_the_spec(vertex, spec, model):
    from mlbatch.backends.vertex import VertexBatchPredictionTrigger

    jobs, models, gcs = vertex
    context = task_context("manual__vertex_submit", DS, model)
    _, deferred = submit(spec, context)
    [job] = jobs.jobs.values()

    assert job.instance_config.key_field == "id"  # ids come back with their predictions
    assert job.dedicated_resources.machine_spec.machine_type == "n1-standard-4"
    assert (job.dedicated_resources.starting_replica_count, job.dedicated_resources.max_replica_count) == (1, 4)
    assert job.service_account == spec.predict.network.service_account
    assert job.labels["team"] == "ml-platform" and job.labels["mlbatch-pipeline"] == "natality_vertex"
    assert job.model == models.models[0].name
    container = models.models[0].container_spec
    assert container.image_uri == spec.predict.vertex.serving_container_image_uri.format(
        model_name=model["name"], model_version=model["version"])  # the image the version is baked into
    assert [p.container_port for p in container.ports] == [8080]  # where the MLflow image's nginx listens
    assert (container.predict_route, container.health_route) == ("/invocations", "/ping")
    assert list(job.instance_config.included_fields) == [f.name for f in spec.input.features]
    uploaded = [b.name for b in gcs.client().list_blobs("example-ml-prod-staging")
                if "/manual__vertex_submit/" in b.name or b.name.endswith("/MLmodel")]  # this run's (any order)
    assert any(n.endswith("/input/part-00000.jsonl") for n in uploaded)
    assert any(n.endswith(f"v{model['version']}/MLmodel") for n in uploaded)
    assert list(job.input_config.gcs_source.uris) == [
        f"gs://example-ml-prod-staging/{n}" for n in uploaded if n.endswith("part-00000.jsonl")]

    assert isinstance(deferred.trigger, VertexBatchPredictionTrigger)
    classpath, kwargs = deferred.trigger.serialize()
    assert classpath == "mlbatch.backends.vertex.VertexBatchPredictionTrigger"
    assert kwargs["job_id"] == job.name
    assert context["ti"].pushed["remote_job"]["console_url"].startswith(
        "https://console.cloud.google.com/vertex-ai/locations/europe-west4/batch-predictions/")


def test_retry_reattaches_and_a_failed_job_gets_a_new_attempt(vertex, spec, model):
    jobs, models, _ = vertex
    run_id = "scheduled__vertex_retry"
    _, first = submit(spec, task_context(run_id, DS, model))
    _, again = submit(spec, task_context(run_id, DS, model))  # worker crash, retry
    assert again.trigger.job_id == first.trigger.job_id and len(jobs.jobs) == 1
    assert len(models.models) == 1

    jobs.finish(first.trigger.job_id, "JOB_STATE_FAILED")
    _, third = submit(spec, task_context(run_id, DS, model))
    assert third.trigger.job_id != first.trigger.job_id and len(jobs.jobs) == 2
    assert jobs.jobs[third.trigger.job_id].display_name.endswith("-a2")


def test_kill_while_deferred_and_while_running_cancels_the_job(vertex, spec, model):
    from mlbatch.backends.vertex import VertexBatchPredictionTrigger

    jobs, _, _ = vertex
    _, deferred = submit(spec, task_context("manual__vertex_kill", DS, model))
    asyncio.run(VertexBatchPredictionTrigger(**deferred.trigger.serialize()[1]).on_kill())
    assert jobs.cancelled == [deferred.trigger.job_id]

    op, second = submit(spec, task_context("manual__vertex_kill_running", DS, model))
    op.on_kill()
    assert jobs.cancelled[-1] == second.trigger.job_id


def test_execute_complete_checks_the_event_and_the_job_state(vertex, spec, model):
    from mlbatch.errors import RemoteJobError
    from mlbatch.operators.predict import PredictOperator

    jobs, _, _ = vertex
    context = task_context("manual__vertex_complete", DS, model)
    _, deferred = submit(spec, context)
    op = PredictOperator(task_id="predict", spec=spec)
    with pytest.raises(RemoteJobError, match="did not succeed: 'Batch Prediction Job .* JOB_STATE_FAILED'"):
        op.execute_complete(context, {"status": "error", "message": "Batch Prediction Job x completed with "
                                                                    "status JOB_STATE_FAILED"})
    jobs.finish(deferred.trigger.job_id, "JOB_STATE_CANCELLED")
    with pytest.raises(RemoteJobError, match="is JOB_STATE_CANCELLED"):
        op.execute_complete(context, {"status": "success", "job": {}})


def test_log_tail_asks_cloud_logging_for_the_jobs_entries(monkeypatch):
    from google.cloud.logging_v2.services.logging_service_v2.pagers import ListLogEntriesPager
    from google.cloud.logging_v2.types import ListLogEntriesRequest, ListLogEntriesResponse, LogEntry
    from google.logging.type.log_severity_pb2 import ERROR

    from mlbatch.backends import cloud_logging
    from mlbatch.remote_logs import remote_log_tail

    seen = []

    class FakeLogging:
        def list_log_entries(self, *, request):
            assert type(request) is ListLogEntriesRequest
            seen.append(request)
            entries = [LogEntry(text_payload=f"line {i}", severity=ERROR) for i in (9, 8, 7)]
            return ListLogEntriesPager(method=None, request=request,
                                       response=ListLogEntriesResponse(entries=entries))

    monkeypatch.setattr(cloud_logging, "logging_client", lambda conn_id: FakeLogging())
    tail = remote_log_tail({"backend": "vertex", "project": "p", "region": "r",
                            "job_id": "projects/p/locations/r/batchPredictionJobs/123"}, lines=2)
    assert tail == ["ERROR line 8", "ERROR line 9"]  # newest two, oldest first
    assert seen[0].resource_names == ["projects/p"] and 'job_id="123"' in seen[0].filter
    assert seen[0].order_by == "timestamp desc"


@pytest.mark.parametrize("ended", ["JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"])
def test_cancelling_an_ended_job_is_refused_by_the_service_and_a_logged_no_op_for_us(vertex, spec, model, caplog,
                                                                                    ended):
    """CancelBatchPredictionJob on an ended job answers FAILED_PRECONDITION (the fake as the service); a
    kill that comes after the job ended leaves it as it is and logs its final state."""
    import logging

    from google.api_core.exceptions import FailedPrecondition

    from mlbatch.backends.vertex import VertexBackend

    jobs, _, _ = vertex
    _, deferred = submit(spec, task_context(f"manual__cancel_{ended.lower()}", DS, model))
    jobs.finish(deferred.trigger.job_id, ended)
    with pytest.raises(FailedPrecondition, match="cannot be cancelled"):
        jobs.cancel_batch_prediction_job(name=deferred.trigger.job_id)
    handle = {"job_id": deferred.trigger.job_id, "project": deferred.trigger.project_id,
              "region": deferred.trigger.location, "gcp_conn_id": "google_cloud_default"}
    with caplog.at_level(logging.INFO):
        VertexBackend().cancel(handle)
    assert f"already ended ({ended}): nothing to cancel" in caplog.text
    assert jobs.jobs[deferred.trigger.job_id].state.name == ended and jobs.cancelled == []
