"""Dataflow backend (`predict.dataflow.runner: dataflow`): GCS through the GCS emulator over HTTP; the
Dataflow service has no emulator, so it is faked at its boundaries:

- the REST API behind DataflowHook: the *real* googleapiclient discovery client (static v1b3 document:
  unknown parameters and missing path parameters fail) over a fake HTTP transport that parses request
  bodies as `google.cloud.dataflow_v1beta3` types (unknown fields fail) and answers with jobs
  serialized from those types;
- the async API behind the provider's trigger: a fake JobsV1Beta3AsyncClient taking real GetJobRequests;
- the launcher process BeamHook starts (`python -m mlbatch_beam.score`, `mlbatch_beam.prep` or
  `mlbatch_beam.endpoint_score`, which would call Google):
  `run_beam_command` is replaced by a fake that parses the command line with the job's own parser and
  Beam's PipelineOptions, registers the job the way Dataflow would and logs Beam's "Created job" line.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from cloud_backends import task_context

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "include" / "pipelines" / "natality_daily.yaml"
BUCKET = "example-ml-prod-dataflow"
DS = "2026-11-21"


class FakeDataflowService:
    """Dataflow jobs as the service keeps them (dataflow_v1beta3.Job), served as REST JSON."""

    def __init__(self):
        self.jobs: dict = {}
        self.launches: list[list[str]] = []
        self.cancel_requests: list[str] = []
        self.messages: dict[str, list] = {}  # job id -> dataflow_v1beta3.JobMessage, oldest first

    # --- REST transport used by googleapiclient (http.request) ---
    def request(self, uri, method="GET", body=None, headers=None, **_):
        import httplib2
        from google.cloud.dataflow_v1beta3 import types

        url = urlparse(uri)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        query.pop("alt", None)
        messages = re.fullmatch(r"/v1b3/projects/([^/]+)/locations/([^/]+)/jobs/([^/]+)/messages", url.path)
        if messages and method == "GET":
            request = types.ListJobMessagesRequest(project_id=messages[1], location=messages[2], job_id=messages[3],
                                                   **_snake(query))
            payload = types.ListJobMessagesResponse.to_json(types.ListJobMessagesResponse(
                job_messages=self.messages.get(request.job_id, [])), use_integers_for_enums=False)
            return httplib2.Response({"status": "200", "content-type": "application/json"}), payload.encode()
        m = re.fullmatch(r"/v1b3/projects/([^/]+)/locations/([^/]+)/jobs(?:/([^/]+))?", url.path)
        assert m, uri
        project, location, job_id = m.groups()
        if method == "GET" and job_id is None:
            request = types.ListJobsRequest(project_id=project, location=location, **_snake(query))
            jobs = [j for j in self.jobs.values() if j.project_id == project and j.location == location
                    and (not request.name or j.name == request.name)]
            payload = types.ListJobsResponse.to_json(types.ListJobsResponse(jobs=jobs),
                                                     use_integers_for_enums=False)
        elif method == "GET":
            request = types.GetJobRequest(project_id=project, location=location, job_id=job_id, **_snake(query))
            payload = self._job_json(self.jobs[request.job_id])
        elif method == "PUT":
            update = types.Job.from_json(body)  # unknown fields raise ParseError
            request = types.UpdateJobRequest(project_id=project, location=location, job_id=job_id, job=update)
            if request.job.requested_state == types.JobState.JOB_STATE_CANCELLED:
                self.cancel_requests.append(job_id)
                self.jobs[job_id].current_state = types.JobState.JOB_STATE_CANCELLING
            payload = self._job_json(self.jobs[job_id])
        else:
            raise AssertionError(f"unexpected {method} {uri}")
        return httplib2.Response({"status": "200", "content-type": "application/json"}), payload.encode()

    @staticmethod
    def _job_json(job) -> str:
        from google.cloud.dataflow_v1beta3 import types

        return types.Job.to_json(job, use_integers_for_enums=False)

    # --- the async client behind AsyncDataflowHook (trigger) ---
    def async_client(self):
        service = self

        class FakeJobsAsyncClient:
            async def get_job(self, request):
                from google.cloud.dataflow_v1beta3 import types

                assert type(request) is types.GetJobRequest
                return service.jobs[request.job_id]

        return FakeJobsAsyncClient()

    # --- the launcher process ---
    def launch(self, cmd, log, process_line_callback=None, working_directory=None,
               is_dataflow_job_id_exist_callback=None):
        from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions
        from google.cloud.dataflow_v1beta3 import types
        from google.protobuf import timestamp_pb2
        import importlib

        self.launches.append(cmd)
        assert cmd[1] == "-m" and cmd[2] in ("mlbatch_beam.score", "mlbatch_beam.prep", "mlbatch_beam.endpoint_score")
        args, beam_args = importlib.import_module(cmd[2]).parse_args(cmd[3:])  # the job's own parser accepts every argument
        options = PipelineOptions(beam_args)
        gcp = options.view_as(GoogleCloudOptions)
        assert options.view_as(StandardOptions).runner == "DataflowRunner"
        job = types.Job(id=f"2026-11-21_00_00_{len(self.jobs):02d}-{1000 + len(self.jobs)}", name=gcp.job_name,
                        project_id=gcp.project, location=gcp.region,
                        type_=types.JobType.JOB_TYPE_BATCH, current_state=types.JobState.JOB_STATE_PENDING,
                        create_time=timestamp_pb2.Timestamp(seconds=1_700_000_000 + len(self.jobs)))
        self.jobs[job.id] = job
        self.output_dirs = getattr(self, "output_dirs", {})
        self.output_dirs[job.id] = args.output_dir
        self.dead_letter_dirs = getattr(self, "dead_letter_dirs", {})
        self.dead_letter_dirs[job.id] = getattr(args, "dead_letter_dir", None)
        process_line_callback(f"INFO:apache_beam.runners.dataflow.internal.apiclient:"
                              f"Created job with id: [{job.id}]\n")
        assert is_dataflow_job_id_exist_callback()

    def finish(self, job_id, state_name):
        from google.cloud.dataflow_v1beta3 import types

        self.jobs[job_id].current_state = types.JobState[state_name]


def _snake(query: dict) -> dict:
    return {re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), k): v for k, v in query.items()}


def install(service: FakeDataflowService, monkeypatch) -> None:
    """Point DataflowHook's REST client, the trigger's async client and BeamHook's launcher at `service`."""
    from airflow.providers.apache.beam.hooks import beam as beam_hooks
    from airflow.providers.google.cloud.hooks.dataflow import AsyncDataflowHook, DataflowHook
    from googleapiclient.discovery import build

    monkeypatch.setattr(DataflowHook, "get_conn", lambda self: build(
        "dataflow", "v1b3", http=service, static_discovery=True, cache_discovery=False))

    async def initialize_client(self, client_class):
        return service.async_client()

    monkeypatch.setattr(AsyncDataflowHook, "initialize_client", initialize_client)
    monkeypatch.setattr(beam_hooks, "run_beam_command", service.launch)

    class LauncherPython:  # BeamHook's version probe of the launcher interpreter
        @staticmethod
        def check_output(cmd):
            return b"2.77.0\n"

    monkeypatch.setattr(beam_hooks, "subprocess", LauncherPython)


@pytest.fixture
def dataflow(gcs_emulator, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", json.dumps({
        "conn_type": "google_cloud_platform", "extra": {"is_anonymous": True, "project": "example-ml-prod",
                                                        "gcs.endpoint": gcs_emulator.endpoint_url}}))
    client = gcs_emulator.client("example-ml-prod")
    if not client.lookup_bucket(BUCKET):
        client.create_bucket(BUCKET)
    service = FakeDataflowService()
    install(service, monkeypatch)
    return service, gcs_emulator


@pytest.fixture
def spec(tmp_path):
    from mlbatch.spec.loader import load_spec, with_overrides

    return with_overrides(load_spec(SPEC), {
        "output.uri": str(tmp_path / "out" / "ds={{ ds }}"),
        "predict.backend": "dataflow",
        "predict.dataflow": {"runner": "dataflow", "project": "example-ml-prod", "region": "europe-west1",
                             "temp_location": f"gs://{BUCKET}/tmp",
                             "sdk_container_image": "europe-docker.pkg.dev/example-ml-prod/beam/score:1"},
    })


def submit(spec, context):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from airflow.sdk.exceptions import TaskDeferred

    from mlbatch.operators.predict import PredictOperator

    op = PredictOperator(task_id="predict", spec=spec)
    prepared = Path(op.run_paths(context, spec).prepared)
    prepared.mkdir(parents=True, exist_ok=True)
    if not (prepared / "part-00000.parquet").exists():  # written once per run, as prep does
        pq.write_table(pa.table({"id": [1], "is_male": [True], "mother_age": [30.0], "plurality": [1],
                                 "gestation_weeks": [39.0]}), prepared / "part-00000.parquet")
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    return op, deferred.value


def test_submit_launches_the_score_job_on_dataflow_and_records_it(dataflow, spec, model):
    from mlbatch.backends.dataflow import DataflowJobTrigger

    service, gcs = dataflow
    context = task_context("manual__dataflow_submit", DS, model)
    _, deferred = submit(spec, context)
    [cmd] = service.launches
    [job] = service.jobs.values()

    assert cmd.count("--runner=DataflowRunner") == 1
    assert "--project=example-ml-prod" in cmd and "--region=europe-west1" in cmd
    assert f"--job_name={job.name}" in cmd
    assert re.fullmatch(r"natality-daily-predict-[0-9a-f]{10}-a1", job.name)
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in cmd if "=" in a}
    staging = f"gs://{BUCKET}/tmp/mlbatch/natality_daily/manual__dataflow_submit/{job.name}"
    assert args["--input"] == f"{staging}/input/*.parquet"
    assert args["--output-dir"] == f"{staging}/output"
    assert args["--model-uri"] == f"gs://{BUCKET}/tmp/mlbatch/models/{model['name']}/v{model['version']}"
    uploaded = {b.name for b in gcs.client().list_blobs(BUCKET)}
    assert f"tmp/mlbatch/natality_daily/manual__dataflow_submit/{job.name}/input/part-00000.parquet" in uploaded
    assert f"tmp/mlbatch/models/{model['name']}/v{model['version']}/MLmodel" in uploaded

    remote = context["ti"].pushed["remote_job"]
    assert {k: remote[k] for k in ("backend", "job_id", "job_name", "project", "region")} == {
        "backend": "dataflow", "job_id": job.id, "job_name": job.name, "project": "example-ml-prod",
        "region": "europe-west1"}
    assert remote["console_url"] == (f"https://console.cloud.google.com/dataflow/jobs/europe-west1/{job.id}"
                                     "?project=example-ml-prod")
    assert isinstance(deferred.trigger, DataflowJobTrigger)
    classpath, kwargs = deferred.trigger.serialize()
    assert classpath == "mlbatch.backends.dataflow.DataflowJobTrigger"
    assert kwargs["job_id"] == job.id and kwargs["expected_statuses"] == ["JOB_STATE_DONE"]


def test_retry_reattaches_and_a_failed_job_gets_a_new_attempt(dataflow, spec, model):
    service, _ = dataflow
    run_id = "scheduled__dataflow_retry"
    _, first = submit(spec, task_context(run_id, DS, model))
    service.finish(first.trigger.job_id, "JOB_STATE_RUNNING")
    _, again = submit(spec, task_context(run_id, DS, model))  # worker crash while deferred, retry
    assert again.trigger.job_id == first.trigger.job_id
    assert len(service.launches) == 1 and len(service.jobs) == 1

    service.finish(first.trigger.job_id, "JOB_STATE_FAILED")
    _, third = submit(spec, task_context(run_id, DS, model))
    assert third.trigger.job_id != first.trigger.job_id and len(service.jobs) == 2
    assert service.jobs[third.trigger.job_id].name.endswith("-a2")


def test_kill_while_deferred_and_while_running_cancels_the_job(dataflow, spec, model):
    from mlbatch.backends.dataflow import DataflowJobTrigger

    service, _ = dataflow
    _, deferred = submit(spec, task_context("manual__dataflow_kill", DS, model))
    classpath, kwargs = deferred.trigger.serialize()
    asyncio.run(DataflowJobTrigger(**kwargs).on_kill())
    assert service.cancel_requests == [deferred.trigger.job_id]

    op, second = submit(spec, task_context("manual__dataflow_kill_running", DS, model))
    op.on_kill()
    assert service.cancel_requests[-1] == second.trigger.job_id
    service.finish(second.trigger.job_id, "JOB_STATE_CANCELLED")
    op.on_kill()  # already ended: nothing more is asked of the service
    assert len(service.cancel_requests) == 2


def test_trigger_reports_the_jobs_end_from_the_service(dataflow, spec, model):
    from mlbatch.backends.dataflow import DataflowJobTrigger

    service, _ = dataflow
    _, deferred = submit(spec, task_context("manual__dataflow_trigger", DS, model))

    async def first_event():
        trigger = DataflowJobTrigger(**deferred.trigger.serialize()[1])
        return (await anext(trigger.run())).payload

    service.finish(deferred.trigger.job_id, "JOB_STATE_CANCELLED")
    assert asyncio.run(first_event())["status"] == "error"
    service.finish(deferred.trigger.job_id, "JOB_STATE_DONE")
    assert asyncio.run(first_event())["status"] == "success"


def test_execute_complete_checks_the_event_and_the_job_state_then_fetches_the_output(dataflow, spec, model):
    from mlbatch.errors import RemoteJobError
    from mlbatch.operators.predict import PredictOperator

    service, gcs = dataflow
    context = task_context("manual__dataflow_complete", DS, model)
    _, deferred = submit(spec, context)
    job_id = deferred.trigger.job_id
    op = PredictOperator(task_id="predict", spec=spec)
    with pytest.raises(RemoteJobError, match="did not succeed: .*terminal state: JOB_STATE_FAILED"):
        op.execute_complete(context, {"status": "error", "message": f"Job with id '{job_id}' is already in "
                                                                   "terminal state: JOB_STATE_FAILED"})
    service.finish(job_id, "JOB_STATE_FAILED")
    with pytest.raises(RemoteJobError, match="is JOB_STATE_FAILED"):
        op.execute_complete(context, {"status": "success", "message": "reached an expected state"})

    service.finish(job_id, "JOB_STATE_DONE")
    out_prefix = service.output_dirs[job_id].removeprefix(f"gs://{BUCKET}/")
    gcs.client().bucket(BUCKET).blob(f"{out_prefix}/predictions-00000-of-00001.parquet").upload_from_string(b"x")
    result = op.execute_complete(context, {"status": "success"})
    assert result["job_id"] == job_id and result["output_files"] == 1
    assert result["output_uri"] == service.output_dirs[job_id]  # publish reads it there: nothing downloaded
    assert not Path(op.run_paths(context, spec).output_staging).exists()


def test_a_failed_job_raises_with_the_workers_exception_from_the_job_messages(dataflow, spec, model):
    """The job's messages (ListJobMessages) hold the worker's traceback and the service's summary; the
    error leads with the exception line, as the console's job log would show it."""
    from google.cloud.dataflow_v1beta3 import types

    from mlbatch.errors import RemoteJobError
    from mlbatch.operators.predict import PredictOperator

    service, _ = dataflow
    context = task_context("manual__dataflow_reason", DS, model)
    _, deferred = submit(spec, context)
    job_id = deferred.trigger.job_id
    service.finish(job_id, "JOB_STATE_FAILED")
    error = types.JobMessageImportance.JOB_MESSAGE_ERROR
    service.messages[job_id] = [
        types.JobMessage(id="1", message_importance=types.JobMessageImportance.JOB_MESSAGE_BASIC,
                         message_text="Worker pool started."),
        types.JobMessage(id="2", message_importance=error, message_text=(
            "Traceback (most recent call last):\n  File \"apache_beam/runners/common.py\", line 1501\n"
            "KeyError: \"the input has no column 'gestation_weeks'\" [while running 'Score/RunInference']")),
        types.JobMessage(id="3", message_importance=error, message_text=(
            "Workflow failed. Causes: S03:Score/RunInference failed., The job failed because a work item has "
            "failed 4 times.")),
    ]
    with pytest.raises(RemoteJobError) as failed:
        PredictOperator(task_id="predict", spec=spec).execute_complete(
            context, {"status": "error", "message": f"Job with id '{job_id}' is already in terminal state: "
                                                    "JOB_STATE_FAILED"})
    assert str(failed.value).startswith("natality_daily: KeyError: \"the input has no column 'gestation_weeks'\" "
                                        "[while running 'Score/RunInference'] — Dataflow job ")


def test_log_tail_asks_cloud_logging_for_the_jobs_steps(monkeypatch):
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
    tail = remote_log_tail({"backend": "dataflow", "project": "p", "region": "r",
                            "job_id": "2026-11-21_00_00_00-123"}, lines=2)
    assert tail == ["ERROR line 8", "ERROR line 9"]
    assert seen[0].resource_names == ["projects/p"]
    assert seen[0].filter == 'resource.type="dataflow_step" AND resource.labels.job_id="2026-11-21_00_00_00-123"'


# --- prep on Dataflow (predict.backend dataflow, runner dataflow) ---

@pytest.fixture
def prep_spec(spec, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlbatch.spec.loader import with_overrides

    folder = tmp_path / "in" / f"ds={DS}"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"id": [1, 2], "is_male": [True, False], "mother_age": [30.0, 99.0],
                             "plurality": [1, 1], "gestation_weeks": [39.0, 40.0]}), folder / "part-0.parquet")
    return with_overrides(spec, {"input.uri": str(tmp_path / "in" / "ds={{ ds }}" / "*.parquet")})


def submit_prep(spec, context):
    from mlbatch.operators.prep import BeamPrepOperator

    return deferred_by(BeamPrepOperator(task_id="prep", spec=spec), context)


def deferred_by(op, context):
    """Execute a step that submits a job and defers: the operator and its TaskDeferred."""
    from airflow.sdk.exceptions import TaskDeferred

    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    return op, deferred.value


def test_prep_runs_on_dataflow_and_predict_reads_its_prepared_files(dataflow, prep_spec, model):
    from mlbatch.backends.dataflow import DataflowJobTrigger
    from mlbatch.operators.prep import BeamPrepOperator
    from mlbatch.spec.prep_contract import schema_json

    service, gcs = dataflow
    run_id = "manual__dataflow_prep"
    context = task_context(run_id, DS, model)
    op, deferred = submit_prep(prep_spec, context)
    [cmd] = service.launches
    [job] = service.jobs.values()
    assert cmd[1:3] == ["-m", "mlbatch_beam.prep"]
    assert cmd.count("--runner=DataflowRunner") == 1
    assert "--project=example-ml-prod" in cmd and "--region=europe-west1" in cmd
    assert f"--job_name={job.name}" in cmd
    assert re.fullmatch(r"natality-daily-prep-[0-9a-f]{10}-a1", job.name)
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in cmd if "=" in a}
    staging = f"gs://{BUCKET}/tmp/mlbatch/natality_daily/{run_id}/{job.name}"
    assert json.loads(args["--schema-json"]) == json.loads(schema_json(prep_spec))
    assert args["--input"] == f"{staging}/input/*.parquet"
    assert args["--input-format"] == "parquet" and args["--output-format"] == "parquet"
    assert args["--output-dir"] == f"{staging}/prepared"
    assert args["--dead-letter-dir"] == f"{staging}/rejected"
    assert not any("worker_accelerator" in a for a in cmd)
    uploaded = {b.name for b in gcs.client().list_blobs(BUCKET)}
    assert f"tmp/mlbatch/natality_daily/{run_id}/{job.name}/input/part-0.parquet" in uploaded
    remote = context["ti"].pushed["remote_job"]
    assert remote["kind"] == "prep" and remote["job_id"] == job.id
    assert isinstance(deferred.trigger, DataflowJobTrigger) and deferred.trigger.job_id == job.id

    # the job ends: dead letters come home to rejected_staging, prepared files stay on GCS
    service.finish(job.id, "JOB_STATE_DONE")
    bucket = gcs.client().bucket(BUCKET)
    prefix = f"tmp/mlbatch/natality_daily/{run_id}/{job.name}"
    bucket.blob(f"{prefix}/prepared/part-abc.parquet").upload_from_string(b"x")
    bucket.blob(f"{prefix}/rejected/rejected-0.jsonl").upload_from_string(
        b'{"id": 2, "reason": "mother_age 99.0 > 60"}\n')
    result = BeamPrepOperator(task_id="prep", spec=prep_spec).execute_complete(context, {"status": "success"})
    assert result["prepared_uri"] == f"{staging}/prepared" and result["prepared_files"] == 1
    assert result["rows_rejected"] == 1 and result["rejected_uri"] == f"{staging}/rejected"
    assert not Path(op.run_paths(context, prep_spec).rejected_staging).exists()  # stays on GCS for publish

    # predict (its own, distinct job) reads the prepared prefix and uploads nothing
    predict_context = task_context(run_id, DS, model)
    predict_context["ti"].upstream["prep"] = result
    _, predicted = submit(prep_spec, predict_context)
    predict_cmd = service.launches[-1]
    predict_job = service.jobs[predicted.trigger.job_id]
    assert predict_cmd[1:3] == ["-m", "mlbatch_beam.score"] and predict_job.name != job.name
    assert f"--input={staging}/prepared/*.parquet" in predict_cmd
    assert not [b for b in gcs.client().list_blobs(BUCKET, prefix=f"tmp/mlbatch/natality_daily/{run_id}/"
                                                   f"{predict_job.name}/input/")]


def test_prep_retry_reattaches_a_failed_job_gets_a_new_attempt_and_kill_cancels(dataflow, prep_spec, model):
    from mlbatch.backends.dataflow import DataflowJobTrigger

    service, _ = dataflow
    run_id = "scheduled__dataflow_prep_retry"
    _, first = submit_prep(prep_spec, task_context(run_id, DS, model))
    service.finish(first.trigger.job_id, "JOB_STATE_RUNNING")
    _, again = submit_prep(prep_spec, task_context(run_id, DS, model))
    assert again.trigger.job_id == first.trigger.job_id
    assert len(service.launches) == 1 and len(service.jobs) == 1

    service.finish(first.trigger.job_id, "JOB_STATE_FAILED")
    op, third = submit_prep(prep_spec, task_context(run_id, DS, model))
    assert third.trigger.job_id != first.trigger.job_id and len(service.jobs) == 2
    assert service.jobs[third.trigger.job_id].name.endswith("-a2")

    asyncio.run(DataflowJobTrigger(**third.trigger.serialize()[1]).on_kill())  # killed while deferred
    assert service.cancel_requests == [third.trigger.job_id]
    service.finish(third.trigger.job_id, "JOB_STATE_RUNNING")
    op.on_kill()  # killed while running on the worker
    assert service.cancel_requests == [third.trigger.job_id] * 2


def test_prep_execute_complete_refuses_a_failed_event_or_job(dataflow, prep_spec, model):
    from mlbatch.errors import RemoteJobError
    from mlbatch.operators.prep import BeamPrepOperator

    service, _ = dataflow
    context = task_context("manual__dataflow_prep_complete", DS, model)
    _, deferred = submit_prep(prep_spec, context)
    op = BeamPrepOperator(task_id="prep", spec=prep_spec)
    with pytest.raises(RemoteJobError, match="did not succeed"):
        op.execute_complete(context, {"status": "error", "message": "JOB_STATE_FAILED"})
    service.finish(deferred.trigger.job_id, "JOB_STATE_FAILED")
    with pytest.raises(RemoteJobError, match="is JOB_STATE_FAILED"):
        op.execute_complete(context, {"status": "success"})


def test_prep_stays_local_unless_predict_runs_on_dataflow(spec):
    from mlbatch.operators.prep import runs_on_dataflow
    from mlbatch.spec.loader import with_overrides

    assert runs_on_dataflow(spec)
    assert not runs_on_dataflow(with_overrides(spec, {"predict.dataflow.runner": "local"}))
    assert not runs_on_dataflow(with_overrides(spec, {"predict.backend": "local"}))


def test_prep_workers_get_no_gpus(spec):
    from mlbatch.backends.dataflow import launch_variables, prep_launch_variables
    from mlbatch.spec.loader import with_overrides

    gpu = with_overrides(spec, {"predict.compute.accelerator_type": "nvidia-tesla-t4",
                                "predict.compute.accelerator_count": 1})
    common = {"result_file": "/tmp/r.json"}
    predict = launch_variables(gpu, "p-predict-a1", input_uri="gs://b/i", model_uri="gs://b/m",
                               output_uri="gs://b/o", **common)
    prep = prep_launch_variables(gpu, "p-prep-a1", input_pattern="gs://b/in/*.parquet",
                                 prepared_uri="gs://b/p", rejected_uri="gs://b/r", **common)
    assert "worker_accelerator" in predict.get("dataflow_service_options", "")
    assert "worker_accelerator" not in prep.get("dataflow_service_options", "")
    assert prep["job_name"] == "p-prep-a1" and prep["project"] == "example-ml-prod"


# --- backend endpoint on runner dataflow: the endpoint job launched the same way ----------------------------

@pytest.fixture
def vertex_endpoint(monkeypatch):
    """The Vertex control plane behind the served-version check (tests/test_backend_endpoint's fakes on
    real protos): endpoint 123 in project p serving the model's deployed model `d1`."""
    from airflow.providers.google.cloud.hooks.vertex_ai.endpoint_service import EndpointServiceHook
    from airflow.providers.google.cloud.hooks.vertex_ai.model_service import ModelServiceHook
    from google.cloud.aiplatform_v1.types import DeployedModel, Endpoint, Model
    from test_backend_endpoint import FakeEndpointService, FakeModelService

    base = "projects/p/locations/europe-west4"
    endpoints, models = {}, {}
    monkeypatch.setattr(EndpointServiceHook, "get_endpoint_service_client",
                        lambda self, region=None: FakeEndpointService(endpoints))
    monkeypatch.setattr(ModelServiceHook, "get_model_service_client",
                        lambda self, region=None: FakeModelService(models))

    def deploy(display: str) -> None:
        models[f"{base}/models/500"] = Model(name=f"{base}/models/500", display_name=display)
        endpoints[f"{base}/endpoints/123"] = Endpoint(name=f"{base}/endpoints/123", deployed_models=[
            DeployedModel(id="d1", model=f"{base}/models/500@1")])

    return deploy


@pytest.fixture
def endpoint_spec(prep_spec):
    from mlbatch.spec.loader import with_overrides

    return with_overrides(prep_spec, {
        "predict.backend": "endpoint",
        "predict.endpoint": {"kind": "vertex", "endpoint_id": "123", "project": "p", "region": "europe-west4",
                             "max_rows_per_request": 500},
        "predict.dataflow.sdk_container_image": None,  # the workers install the job package and its requirements
        "trigger_params.backend.enum": ["dataflow", "endpoint"],
    })


def submit_endpoint(spec, context):
    from mlbatch.operators.predict import PredictOperator

    return deferred_by(PredictOperator(task_id="predict", spec=spec), context)


def test_the_endpoint_job_is_launched_on_dataflow_like_the_direct_model_job(dataflow, vertex_endpoint,
                                                                           endpoint_spec, model):
    from mlbatch.backends.base import backend_for
    from mlbatch.backends.dataflow import DataflowJobTrigger
    from mlbatch.spec.prep_contract import schema_json

    service, gcs = dataflow
    vertex_endpoint(f"mlb-{model['name']}-v{model['version']}-0a1b2c3d")
    assert backend_for(endpoint_spec).remote
    run_id = "manual__endpoint_on_dataflow"
    context = task_context(run_id, DS, model)
    _, deferred = submit_endpoint(endpoint_spec, context)
    [cmd] = service.launches
    [job] = service.jobs.values()
    assert cmd[1:3] == ["-m", "mlbatch_beam.endpoint_score"]
    assert cmd.count("--runner=DataflowRunner") == 1 and f"--job_name={job.name}" in cmd
    assert re.fullmatch(r"natality-daily-predict-[0-9a-f]{10}-a1", job.name)
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in cmd if "=" in a}
    staging = f"gs://{BUCKET}/tmp/mlbatch/natality_daily/{run_id}/{job.name}"
    assert args["--input"] == f"{staging}/input/*.parquet"  # the raw input: the job validates it itself
    assert json.loads(args["--schema-json"]) == json.loads(schema_json(endpoint_spec, model))
    assert args["--output-dir"] == f"{staging}/output" and args["--dead-letter-dir"] == f"{staging}/rejected"
    assert args["--result-file"] == f"{staging}/result.json"
    assert "--model-uri" not in args  # the endpoint holds the model
    assert json.loads(args["--endpoint-json"]) == {
        "kind": "vertex", "endpoint_id": "123", "project": "p", "region": "europe-west4", "max_rows_per_request": 500,
        "max_bytes_per_request": 1_572_864, "max_in_flight": 4, "timeout_s": 60.0, "max_retries": 5}
    assert not any("token" in a.lower() or "authorization" in a.lower() for a in cmd)  # no secret travels
    uploaded = {b.name for b in gcs.client().list_blobs(BUCKET)}
    assert f"tmp/mlbatch/natality_daily/{run_id}/{job.name}/input/part-0.parquet" in uploaded

    # the workers install the job package and what it imports (requests; Secret Manager for mlflow's header)
    setup = Path(args["--setup_file"])
    assert setup == REPO / "include" / "beam_jobs" / "setup.py"
    pinned = {line.split("==")[0] for line in (setup.parent / "worker-requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    assert {"requests", "google-cloud-secret-manager"} <= pinned

    remote = context["ti"].pushed["remote_job"]
    assert {k: remote[k] for k in ("backend", "job_id", "job_name", "rejected_uri", "output_uri")} == {
        "backend": "endpoint-dataflow", "job_id": job.id, "job_name": job.name,
        "rejected_uri": f"{staging}/rejected", "output_uri": f"{staging}/output"}
    assert remote["served"]["version"] == model["version"] and remote["served"]["answers"] == ["d1"]
    assert remote["console_url"].endswith(f"/dataflow/jobs/europe-west1/{job.id}?project=example-ml-prod")
    assert isinstance(deferred.trigger, DataflowJobTrigger) and deferred.trigger.job_id == job.id


def test_an_endpoint_job_on_dataflow_reattaches_on_retry_and_is_cancelled_on_kill(dataflow, vertex_endpoint,
                                                                                  endpoint_spec, model):
    service, _ = dataflow
    vertex_endpoint(f"mlb-{model['name']}-v{model['version']}-0a1b2c3d")
    run_id = "scheduled__endpoint_on_dataflow_retry"
    _, first = submit_endpoint(endpoint_spec, task_context(run_id, DS, model))
    service.finish(first.trigger.job_id, "JOB_STATE_RUNNING")
    op, again = submit_endpoint(endpoint_spec, task_context(run_id, DS, model))
    assert again.trigger.job_id == first.trigger.job_id and len(service.launches) == 1

    op.on_kill()  # the task killed while the job runs: the job is cancelled, not left running
    assert service.cancel_requests == [first.trigger.job_id]
    service.finish(first.trigger.job_id, "JOB_STATE_CANCELLED")
    _, third = submit_endpoint(endpoint_spec, task_context(run_id, DS, model))
    assert third.trigger.job_id != first.trigger.job_id
    assert service.jobs[third.trigger.job_id].name.endswith("-a2")


def test_an_endpoint_served_another_version_launches_nothing(dataflow, vertex_endpoint, endpoint_spec, model):
    from mlbatch.errors import ServedVersionError

    service, _ = dataflow
    vertex_endpoint(f"mlb-{model['name']}-v{model['version'] + 1}-0a1b2c3d")
    with pytest.raises(ServedVersionError, match=rf"serves {model['name']} v{model['version'] + 1}"):
        submit_endpoint(endpoint_spec, task_context("manual__endpoint_other_version", DS, model))
    assert not service.launches


def test_an_endpoint_job_on_dataflow_completes_with_its_dead_letters_and_what_answered(dataflow, vertex_endpoint,
                                                                                      endpoint_spec, model):
    from mlbatch.backends.base import load_backend
    from mlbatch.errors import ServedVersionError
    from mlbatch.operators.predict import PredictOperator

    service, gcs = dataflow
    vertex_endpoint(f"mlb-{model['name']}-v{model['version']}-0a1b2c3d")
    run_id = "manual__endpoint_on_dataflow_complete"
    context = task_context(run_id, DS, model)
    _, deferred = submit_endpoint(endpoint_spec, context)
    job_id = deferred.trigger.job_id
    remote = context["ti"].pushed["remote_job"]
    assert type(load_backend(remote["backend"])).__name__ == "EndpointDataflowBackend"  # after deferral
    service.finish(job_id, "JOB_STATE_DONE")
    bucket = gcs.client().bucket(BUCKET)
    prefix = service.output_dirs[job_id].removeprefix(f"gs://{BUCKET}/").removesuffix("/output")
    bucket.blob(f"{prefix}/output/predictions-00000-of-00001.parquet").upload_from_string(b"x")
    # the workers' record of what answered, which the launcher had not read yet when the task resumed
    bucket.blob(f"{prefix}/result.json.served-0a1b.json").upload_from_string(json.dumps(
        [json.dumps({"deployedModelId": "d1", "model": "projects/p/locations/europe-west4/models/500"})]))
    op = PredictOperator(task_id="predict", spec=endpoint_spec)
    result = op.execute_complete(context, {"status": "success"})
    assert result["backend"] == "endpoint" and result["runner"] == "dataflow" and result["job_id"] == job_id
    assert result["output_uri"] == service.output_dirs[job_id]
    assert result["rejected_uri"] == service.dead_letter_dirs[job_id]  # publish reads the dead letters there
    assert result["model_version"] == model["version"] and "deployed model d1" in result["served_version"]

    # the launcher's result file, once written, is what says; an answer from another deployed model fails
    bucket.blob(f"{prefix}/result.json").upload_from_string(json.dumps({"endpoint_model": {"deployedModelId": "d9"}}))
    with pytest.raises(ServedVersionError, match="answered from d9, not among what served"):
        op.execute_complete(context, {"status": "success"})
