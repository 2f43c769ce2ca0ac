"""Google Dataflow: the direct-model Beam job (`python -m mlbatch_beam.score`) on DataflowRunner,
one Dataflow job per (pipeline, run, task, attempt), launched through the apache-beam provider's
BeamHook and waited for with the google provider's DataflowJobStatusTrigger.

What this module adds around the providers, and why:
- **Idempotent names** (`job_names`): BeamRunPythonPipelineOperator appends a random suffix to the job
  name, so a retry would launch a second job. Here the name is deterministic and, before launching,
  the jobs list (DataflowHook's REST client, `name=` filter, exact match) says whether that job already
  runs or finished: a retry re-attaches; a failed/cancelled job moves on to the next attempt's name.
- **Data on GCS**: prep and publish work on local staging folders; the job's input (the prepared
  Parquet files), the model artifact (uploaded once per model version unless it already is on GCS) and
  its output live under `<predict.dataflow.temp_location>/mlbatch/`. `complete` downloads the output
  to `paths.output_staging`, where publish expects it.
- **Cancel while deferred**: the provider's trigger is subclassed with an `on_kill` that cancels the
  job; the task's `on_kill` and a deferral timeout cancel it through RemoteJobMixin.
- **Status check on completion**: `complete` refuses any event that is not "success" *and* re-reads
  the job: only JOB_STATE_DONE counts.

The launcher process (`mlbatch_beam.score` with DataflowRunner) submits the job and then waits for it
like any Beam program; the BeamHook returns as soon as the launcher logs the job id (the provider's
`is_dataflow_job_id_exist_callback`), and the task defers. As with the provider's operator, the
launcher process itself keeps polling until the job ends (`mlbatch_beam.score` calls
`wait_until_finish`); it is not what the task waits on. Launch credentials are Application Default
Credentials, as with the provider's operator; API calls (list, get, cancel) use `gcp_conn_id`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from airflow.providers.google.cloud.triggers.dataflow import DataflowJobStatusTrigger

from mlbatch.backends import cloud_logging
from mlbatch.backends.dataflow_options import DATAFLOW_RUNNER, dataflow_pipeline_args, model_sharing_args
from mlbatch.backends.job_names import Verdict, find_attempt, job_name
from mlbatch.backends.object_store import ObjectStore, join
from mlbatch.errors import RemoteJobError
from mlbatch.run_paths import RunPaths, local_path, run_key
from mlbatch.spec import PipelineSpec

BACKEND = "dataflow"
POLL_SECONDS = 30
MAX_NAME = 63  # Dataflow allows 1024; kept as short as the other backends' names
CONSOLE = "https://console.cloud.google.com/dataflow/jobs/{region}/{job_id}?project={project}"
SUCCEEDED = {"JOB_STATE_DONE"}
# Ended without (usable) output, or on its way there: a retry moves on to the next attempt's name.
FAILED = {"JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_CANCELLING", "JOB_STATE_DRAINED",
          "JOB_STATE_DRAINING", "JOB_STATE_UPDATED"}
TERMINAL = SUCCEEDED | {"JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_DRAINED", "JOB_STATE_UPDATED"}


class DataflowJobTrigger(DataflowJobStatusTrigger):
    """The provider's job-status trigger (success on JOB_STATE_DONE, error on any other terminal
    state) plus `on_kill`: cancel the job when a user kills the deferred task. The provider's
    `serialize` hard-codes its own class path; fixed here."""

    def serialize(self) -> tuple[str, dict[str, Any]]:
        _, kwargs = super().serialize()
        kwargs["expected_statuses"] = sorted(kwargs["expected_statuses"])
        return f"{type(self).__module__}.{type(self).__qualname__}", kwargs

    async def on_kill(self) -> None:
        await asyncio.to_thread(cancel, {"job_id": self.job_id, "project": self.project_id,
                                         "region": self.location, "gcp_conn_id": self.gcp_conn_id})


def dataflow_hook(gcp_conn_id: str):
    from airflow.providers.google.cloud.hooks.dataflow import DataflowHook

    # cancel_timeout=None: ask for the cancellation, do not block (signals) waiting for it to finish.
    return DataflowHook(gcp_conn_id=gcp_conn_id, cancel_timeout=None)


def beam_hook():
    from airflow.providers.apache.beam.hooks.beam import BeamHook, BeamRunnerType

    return BeamHook(runner=BeamRunnerType.DataflowRunner)


def _require(spec: PipelineSpec) -> None:
    cfg = spec.predict.dataflow
    missing = [f"predict.dataflow.{f}" for f in ("project", "region", "temp_location") if not getattr(cfg, f)]
    if missing:
        raise ValueError(f"{spec.name}: Dataflow runner 'dataflow' needs {', '.join(missing)}")


def list_jobs(hook, project: str, region: str, name: str) -> list[dict]:
    """Jobs named exactly `name` (the REST `name` filter, checked again here), all pages."""
    jobs_api = hook.get_conn().projects().locations().jobs()
    request = jobs_api.list(projectId=project, location=region, name=name)
    found: list[dict] = []
    while request is not None:
        response = request.execute(num_retries=hook.num_retries)
        found += [j for j in response.get("jobs", []) if j.get("name") == name]
        request = jobs_api.list_next(previous_request=request, previous_response=response)
    return found


def find_job(spec: PipelineSpec, name: str) -> tuple[Verdict, dict | None]:
    """The newest job with this name, and what it means for a (re)try."""
    cfg = spec.predict.dataflow
    jobs = list_jobs(dataflow_hook(cfg.gcp_conn_id), cfg.project, cfg.region, name)
    if not jobs:
        return "absent", None
    job = max(jobs, key=lambda j: j.get("createTime", ""))
    state = job.get("currentState", "JOB_STATE_UNKNOWN")
    if state in SUCCEEDED:
        return "succeeded", job
    return ("failed" if state in FAILED else "active"), job


def staged_model_uri(spec: PipelineSpec, model: dict) -> str:
    """A model URI the workers can read: the artifact itself when on GCS, else a copy uploaded once
    per model version under temp_location."""
    if model["artifact_uri"].startswith("gs://"):
        return model["artifact_uri"]
    cfg = spec.predict.dataflow
    target = join(cfg.temp_location, "mlbatch", "models", model["name"], f"v{model['version']}")
    store = ObjectStore("gs", cfg.gcp_conn_id)
    if store.exists(join(target, "MLmodel")):
        return target
    import tempfile
    from pathlib import Path

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model["artifact_uri"], dst_path=tmp))
        for path in sorted(p for p in local.rglob("*") if p.is_file() and p.name != "MLmodel"):
            store.upload_file(path, join(target, str(path.relative_to(local))))
        store.upload_file(local / "MLmodel", join(target, "MLmodel"))  # last: marks a complete copy
    return target


def launch_variables(spec: PipelineSpec, name: str, *, input_uri: str, model_uri: str, output_uri: str,
                     result_file: str) -> dict:
    """BeamHook `variables` for `python -m mlbatch_beam.score`: the job's own arguments, then the
    DataflowRunner flags of `dataflow_pipeline_args` (BeamHook adds `--runner` itself)."""
    compute = spec.predict.compute
    score_args = ["--input", f"{input_uri}/*.parquet", "--model-uri", model_uri,
                  "--id-column", spec.input.id_column,
                  "--feature-columns", ",".join(f.name for f in spec.input.features),
                  "--output-dir", output_uri, "--output-format", spec.output.format,
                  "--prediction-column", spec.output.prediction_column,
                  "--batch-rows", str(compute.batch_rows), *model_sharing_args(spec),
                  "--result-file", result_file]
    variables: dict[str, Any] = {}
    i = 0
    while i < len(score_args):
        key = score_args[i][2:]
        if i + 1 < len(score_args) and not score_args[i + 1].startswith("--"):
            variables[key], i = score_args[i + 1], i + 2
        else:
            variables[key], i = True, i + 1
    for flag in dataflow_pipeline_args(spec, job_name=name):
        key, has_value, value = flag[2:].partition("=")
        if key == "runner":
            if value != DATAFLOW_RUNNER:
                raise ValueError(f"unexpected runner {value!r}")
            continue
        if key in variables:
            raise ValueError(f"Dataflow flag --{key} clashes with a score argument")
        variables[key] = value if has_value else True
    return variables


def launch(spec: PipelineSpec, name: str, variables: dict, log) -> str | None:
    """Run the launcher through BeamHook until Beam logs the new job's id; returns it (or None)."""
    import sys

    from airflow.providers.google.cloud.hooks.dataflow import (
        process_line_and_extract_dataflow_job_id_callback)

    found: list[str] = []
    beam_hook().start_python_pipeline(
        variables=variables, py_file="mlbatch_beam.score", py_options=["-m"], py_interpreter=sys.executable,
        process_line_callback=process_line_and_extract_dataflow_job_id_callback(found.append),
        is_dataflow_job_id_exist_callback=lambda: bool(found))
    log.info("Launched Dataflow job %s: %s", name, found[0] if found else "(id not seen in the launcher log)")
    return found[0] if found else None


def console_url(job_id: str, project: str, region: str) -> str:
    return CONSOLE.format(region=region, job_id=job_id, project=project)


def start(operator, context: Any, spec: PipelineSpec, paths: RunPaths, model: dict) -> dict:
    _require(spec)
    cfg = spec.predict.dataflow
    run_id = context["run_id"]
    attempt = find_attempt(lambda n: job_name(spec.name, run_id, operator.task_id, n, max_len=MAX_NAME),
                           lambda name: find_job(spec, name))
    staging = join(cfg.temp_location, "mlbatch", spec.name, run_key(run_id), attempt.name)
    job = attempt.job
    if attempt.verdict == "absent":
        store = ObjectStore("gs", cfg.gcp_conn_id)
        store.upload_dir(local_path(paths.prepared), join(staging, "input"), pattern="*.parquet")
        variables = launch_variables(spec, attempt.name, input_uri=join(staging, "input"),
                                     model_uri=staged_model_uri(spec, model),
                                     output_uri=join(staging, "output"),
                                     result_file=str(local_path(paths.result_file(operator.task_id))))
        job_id = launch(spec, attempt.name, variables, operator.log)
        if job_id is None:  # the launcher ended without logging an id: ask the service by name
            verdict, job = find_job(spec, attempt.name)
            if job is None:
                raise RemoteJobError(f"{spec.name}: the Dataflow launcher for {attempt.name} ended without "
                                     "submitting a job; see the task log")
        else:
            job = {"id": job_id, "name": attempt.name}
    remote = {"backend": BACKEND, "job_id": job["id"], "job_name": attempt.name, "project": cfg.project,
              "region": cfg.region, "gcp_conn_id": cfg.gcp_conn_id, "attempt": attempt.number,
              "output_uri": join(staging, "output"),
              "console_url": console_url(job["id"], cfg.project, cfg.region)}
    operator.remote_job_started(context, remote)
    if attempt.verdict == "succeeded":
        operator.log.info("Dataflow job %s already succeeded: re-using its output", job["id"])
        return complete(operator, context, spec, paths, model, {"status": "success"})
    if attempt.verdict == "active":
        operator.log.info("Re-attaching to running Dataflow job %s (%s)", job["id"], job.get("currentState"))
    operator.defer(trigger=trigger(remote), method_name="execute_complete",
                   timeout=operator.execution_timeout)


def trigger(remote: dict) -> DataflowJobTrigger:
    return DataflowJobTrigger(job_id=remote["job_id"], expected_statuses={"JOB_STATE_DONE"},
                              project_id=remote["project"], location=remote["region"],
                              gcp_conn_id=remote["gcp_conn_id"], poll_sleep=POLL_SECONDS)


def get_job(remote: dict) -> dict:
    return dataflow_hook(remote.get("gcp_conn_id", "google_cloud_default")).get_job(
        job_id=remote["job_id"], project_id=remote["project"], location=remote["region"])


def complete(operator, context: Any, spec: PipelineSpec, paths: RunPaths, model: dict,
             event: dict | None) -> dict:
    """Check the event *and* the job's own state, then download its output to output_staging."""
    import shutil

    remote = operator.remote_job(context)
    if not event or event.get("status") != "success":
        raise RemoteJobError(f"{spec.name}: Dataflow job {remote['job_id']} did not succeed: "
                             f"{(event or {}).get('message', event)!r}; see {remote['console_url']}")
    job = get_job(remote)
    state = job.get("currentState", "JOB_STATE_UNKNOWN")
    if state not in SUCCEEDED:
        raise RemoteJobError(f"{spec.name}: the trigger reported success but Dataflow job {remote['job_id']} "
                             f"is {state}; see {remote['console_url']}")
    out = local_path(paths.output_staging)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    files = ObjectStore("gs", remote["gcp_conn_id"]).download_dir(remote["output_uri"], out)
    if not files:
        raise RemoteJobError(f"{spec.name}: Dataflow job {remote['job_id']} succeeded but wrote nothing "
                             f"under {remote['output_uri']}")
    return {"backend": BACKEND, "model_version": model["version"], "job_id": remote["job_id"],
            "output_files": len(files)}


def cancel(remote: dict) -> None:
    """Ask Dataflow to cancel the job; the hook skips jobs that already ended."""
    dataflow_hook(remote.get("gcp_conn_id", "google_cloud_default")).cancel_job(
        job_id=remote["job_id"], project_id=remote["project"], location=remote["region"])


def log_filter(remote: dict) -> str:
    """Dataflow workers and the service log as `dataflow_step` resources labelled with the job id."""
    return f'resource.type="dataflow_step" AND resource.labels.job_id="{remote["job_id"]}"'


def log_tail(remote_job: dict, lines: int) -> list[str]:
    return cloud_logging.tail(remote_job["project"], log_filter(remote_job), lines,
                              remote_job.get("gcp_conn_id", "google_cloud_default"))
