"""Google Dataflow: the prep job (`python -m mlbatch_beam.prep`) and the direct-model job
(`python -m mlbatch_beam.score`) on DataflowRunner, one Dataflow job per (pipeline, run, task,
attempt), launched and looked up through `mlbatch.hooks.dataflow` (the google provider's DataflowHook,
BeamHook for the launch) and waited for with the google provider's DataflowJobStatusTrigger.
`DataflowBackend` implements `mlbatch.backends.base.Backend`; the request says which job it runs
(`JobRequest.kind`, "prep" or "predict"), and the handle keeps the kind so that `result` knows it
after deferral. (On the local runner the direct-model job is `mlbatch.backends.local.DirectModelBackend`.)
The endpoint job (`backend: endpoint` on `runner: dataflow`) runs the same way through a subclass,
`mlbatch.backends.endpoint_dataflow`.

What this module adds around the providers, and why:
- **Idempotent names** (`job_names`): BeamRunPythonPipelineOperator appends a random suffix to the job
  name, so a retry would launch a second job. Here the name is deterministic and, before launching,
  the jobs list (DataflowHook's REST client, `name=` filter, exact match) says whether that job already
  runs or finished: a retry re-attaches; a failed/cancelled job moves on to the next attempt's name.
- **Data on GCS**: everything the jobs read and write lives under
  `<predict.dataflow.temp_location>/mlbatch/<pipeline>/<run>/<job name>/`. The prep job reads the input
  (a gs:// input in place; a local or s3:// one is copied to `.../input` first, streamed through the
  storage layer) and writes the prepared Parquet files to `.../prepared` and the dead letters to
  `.../rejected`; its `complete` returns both prefixes (`prepared_uri` for the predict job,
  `rejected_uri` for publish). The predict job reads the prepared prefix (or local prepared files copied
  to its `.../input`) and writes to `.../output`, which its `complete` returns as `output_uri`: publish
  counts and commits from there, nothing is downloaded. The model artifact is uploaded once per model
  version unless it already is on GCS. Publish deletes the run's staging prefix after the commit
  (`storage.keep_staged_days`).
- **Cancel while deferred**: the provider's trigger is subclassed with an `on_kill` that cancels the
  job; the task's `on_kill` and a deferral timeout cancel it through the operator (RemoteJobMixin).
- **Status check on completion**: `complete` refuses any event that is not "success" *and* re-reads
  the job: only JOB_STATE_DONE counts.

The launcher process (`mlbatch_beam.score` with DataflowRunner) submits the job and then waits for it
like any Beam program; the BeamHook returns as soon as the launcher logs the job id (the provider's
`is_dataflow_job_id_exist_callback`), and the task defers. As with the provider's operator, the
launcher process itself keeps polling until the job ends (`mlbatch_beam.score` calls
`wait_until_finish`); it is not what the task waits on. Launch credentials are Application Default
Credentials, as with the provider's operator; API calls (list, get, cancel) use `gcp_conn_id`.

Why one module of this length: one module per backend (docs/adding-a-backend.md), so all of Dataflow's
glue is in one place; its Beam flags are already apart in `mlbatch.backends.dataflow_options` and its
API calls in `mlbatch.hooks.dataflow`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

from airflow.providers.google.cloud.triggers.dataflow import DataflowJobStatusTrigger

from mlbatch.backends import cloud_logging
from mlbatch.backends.dataflow_options import (
    DATAFLOW_RUNNER, dataflow_pipeline_args, model_sharing_args, prediction_output_args)
from mlbatch.backends.base import Backend, Handle, JobRequest, JobState, Submission, require_runnable
from mlbatch.backends.failure_reasons import job_messages_reason
from mlbatch.backends.job_names import files_fingerprint, find_attempt, job_name, result_identity, short_hash
from mlbatch.errors import BackendConfigError, RemoteJobError
from mlbatch.hooks.dataflow import FAILED, SUCCEEDED, DataflowJobsHook
from mlbatch.quality.baseline import STATISTICS_FILE, edges_args
from mlbatch.run.paths import RunPaths, run_key
from mlbatch.spec.models import PipelineSpec
from mlbatch.storage.layer import Storage, join, parent, scheme

BACKEND = "dataflow"
MODULES = {"prep": "mlbatch_beam.prep", "predict": "mlbatch_beam.score"}
POLL_SECONDS = 30
MAX_NAME = 63  # Dataflow allows 1024; kept as short as the other backends' names
log = logging.getLogger(__name__)


class DataflowJobTrigger(DataflowJobStatusTrigger):
    """The provider's job-status trigger (success on JOB_STATE_DONE, error on any other terminal
    state) plus `on_kill`: cancel the job when a user kills the deferred task. The provider's
    `serialize` hard-codes its own class path; fixed here."""

    def serialize(self) -> tuple[str, dict[str, Any]]:
        _, kwargs = super().serialize()
        kwargs["expected_statuses"] = sorted(kwargs["expected_statuses"])
        return f"{type(self).__module__}.{type(self).__qualname__}", kwargs

    async def on_kill(self) -> None:
        await asyncio.to_thread(DataflowBackend().cancel, {"job_id": self.job_id, "project": self.project_id,
                                         "region": self.location, "gcp_conn_id": self.gcp_conn_id})


def hook_for(remote: dict) -> DataflowJobsHook:
    return DataflowJobsHook(remote.get("gcp_conn_id", "google_cloud_default"))


def staged_model_uri(spec: PipelineSpec, model: dict) -> str:
    """A model URI the workers can read: the artifact itself when on GCS, else a copy uploaded once
    per model version under temp_location."""
    if model["artifact_uri"].startswith("gs://"):
        return model["artifact_uri"]
    cfg = spec.predict.dataflow
    target = join(cfg.temp_location, "mlbatch", "models", model["name"], f"v{model['version']}")
    store = gcs_storage(spec)
    if store.exists(join(target, "MLmodel")):
        return target
    import tempfile
    from pathlib import Path

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model["artifact_uri"], dst_path=tmp))
        for path in sorted(p for p in local.rglob("*") if p.is_file() and p.name != "MLmodel"):
            store.copy(str(path), join(target, str(path.relative_to(local))))
        store.copy(str(local / "MLmodel"), join(target, "MLmodel"))  # last: marks a complete copy
    return target


def gcs_storage(spec: PipelineSpec) -> Storage:
    """The storage layer with the Dataflow connection for gs:// (staging, temp_location)."""
    return Storage(aws_conn_id=spec.storage.aws_conn_id, gcp_conn_id=spec.predict.dataflow.gcp_conn_id)


def launch_variables(spec: PipelineSpec, name: str, *, input_uri: str, model_uri: str, output_uri: str,
                     result_file: str, statistics_args: list[str] = ()) -> dict:
    """BeamHook `variables` for `python -m mlbatch_beam.score`: the job's own arguments, then the
    DataflowRunner flags of `dataflow_pipeline_args` (BeamHook adds `--runner` itself)."""
    compute = spec.predict.compute
    score_args = ["--input", f"{input_uri}/*.parquet", "--model-uri", model_uri,
                  "--id-column", spec.input.id_column,
                  "--feature-columns", ",".join(f.name for f in spec.input.features),
                  "--output-dir", output_uri, "--output-format", spec.output.format,
                  *prediction_output_args(spec),
                  "--batch-rows", str(compute.batch_rows), *model_sharing_args(spec),
                  "--result-file", result_file, *statistics_args]
    return beam_variables(spec, name, score_args, model_workers=True)


def prep_launch_variables(spec: PipelineSpec, name: str, *, input_pattern: str, prepared_uri: str,
                          rejected_uri: str, result_file: str, model: dict | None = None) -> dict:
    """BeamHook `variables` for `python -m mlbatch_beam.prep` (same flags as the local prep job, with
    gs:// folders), then the DataflowRunner flags, without the model workers' GPUs. `model` (the pinned
    one) gives the signature's column types prep writes."""
    from mlbatch.spec.prep_contract import prepared_format, schema_json

    prep_args = ["--input", input_pattern, "--input-format", spec.input.format,
                 "--schema-json", schema_json(spec, model), "--output-dir", prepared_uri,
                 "--output-format", prepared_format(spec), "--dead-letter-dir", rejected_uri,
                 "--batch-rows", str(spec.prep.batch_rows), "--result-file", result_file]
    return beam_variables(spec, name, prep_args, model_workers=False)


def beam_variables(spec: PipelineSpec, name: str, job_args: list[str], *, model_workers: bool) -> dict:
    """BeamHook `variables`: a job's own arguments (`--flag value` or `--flag`), then the DataflowRunner
    flags of `dataflow_pipeline_args` (BeamHook adds `--runner` itself)."""
    variables: dict[str, Any] = {}
    i = 0
    while i < len(job_args):
        key = job_args[i][2:]
        if i + 1 < len(job_args) and not job_args[i + 1].startswith("--"):
            variables[key], i = job_args[i + 1], i + 2
        else:
            variables[key], i = True, i + 1
    for flag in dataflow_pipeline_args(spec, job_name=name, model_workers=model_workers):
        key, has_value, value = flag[2:].partition("=")
        if key == "runner":
            if value != DATAFLOW_RUNNER:
                raise ValueError(f"unexpected runner {value!r}")
            continue
        if key in variables:
            raise ValueError(f"Dataflow flag --{key} clashes with an argument of the job")
        variables[key] = value if has_value else True
    return variables


def console_url(job_id: str, project: str, region: str) -> str:
    """The provider's Dataflow job console link (DataflowJobLink), formatted here so that the handle
    carries it (alerts, the step's "Remote job console" link)."""
    from airflow.providers.google.cloud.links.dataflow import DataflowJobLink

    return DataflowJobLink()._format_link(region=region, job_id=job_id, project_id=project)


def _glob_root(pattern: str) -> str:
    """'gs://b/ds=1/*.parquet' -> 'gs://b/ds=1': the folder before the first wildcard."""
    cut = min((pattern.index(c) for c in "*?[" if c in pattern), default=len(pattern))
    return pattern[:cut].rpartition("/")[0]


def staged_input(spec: PipelineSpec, paths: RunPaths, staging: str) -> str:
    """The prep job's input pattern on GCS: a gs:// input as it is; a local or s3:// one copied
    (streamed, file by file) under the job's staging prefix first."""
    pattern = paths.input_pattern
    if scheme(pattern) == "gs":
        return pattern
    store = gcs_storage(spec)
    files = store.files(pattern)
    if not files:
        raise FileNotFoundError(f"{spec.name}: no input files match {pattern}")
    root = _glob_root(pattern)
    root = store.fs(root)[1] if scheme(root) == "file" else root
    for uri in files:
        store.copy(uri, join(staging, "input", uri[len(root.rstrip("/")):]))
    return join(staging, "input", pattern[len(_glob_root(pattern).rstrip("/")):])


def job_identity(request: JobRequest) -> str:
    """What determines the job's result (see job_names): for prep the input files (names, sizes and
    modification times or etags, any store) and the schema; for predict the model version, the
    prepared files (their contents, or the prep job that wrote them on GCS) and the predict settings."""
    spec, paths = request.spec, request.paths
    settings = spec.predict.model_dump(exclude={"labels"}, mode="json")
    storage = gcs_storage(spec)
    if request.kind == "prep":
        column_types = (request.model or {}).get("input_types")  # what prep writes: the model's types
        return result_identity({}, input_listing(storage, paths.input_pattern),
                               [settings, spec.input.model_dump(mode="json"), spec.prep.model_dump(mode="json")]
                               + ([column_types] if column_types else []))
    if prepared_on_gcs(request.prep):
        fingerprint = short_hash(request.prep.get("job_id"), request.prep.get("prepared_uri"))
    else:
        fingerprint = files_fingerprint(storage, storage.files(paths.prepared))
    return result_identity(request.model, fingerprint, [settings, spec.output.model_dump(mode="json")])


def input_listing(storage: Storage, pattern: str) -> str:
    """A hash of the input files' names, sizes and modification times or etags (any store)."""
    listing = []
    for uri in storage.files(pattern):
        fs, path = storage.fs(uri)
        info = fs.info(path)
        stamp = next((info[k] for k in ("mtime", "ETag", "etag", "updated", "LastModified") if info.get(k)), None)
        listing.append((uri, info.get("size"), str(stamp)))
    return short_hash(listing)


def prepared_on_gcs(prep: dict | None) -> str | None:
    """The gs:// prefix of this run's prepared files, when the prep step (its result: `prep`) ran on
    Dataflow."""
    uri = prep.get("prepared_uri") if isinstance(prep, dict) else None
    return uri if isinstance(uri, str) and uri.startswith("gs://") else None


class DataflowBackend(Backend):
    """Dataflow jobs, prep or predict (see the module docstring). Handle: kind, job_id, job_name,
    project, region, gcp_conn_id, attempt, console_url, and the job's output prefixes (`output_uri`
    for predict; `prepared_uri` and `rejected_uri` for prep). A subclass runs another Beam program
    the same way (mlbatch.backends.endpoint_dataflow): it says which (`_launch_args`) and what its
    result depends on (`identity`)."""

    name = BACKEND
    job_label = "Dataflow job"
    output_may_be_empty = False  # a model job that wrote nothing failed, whatever its state says

    def submit(self, request: JobRequest) -> Submission:
        spec, paths, kind = request.spec, request.paths, request.kind
        require_runnable(spec, BACKEND)
        if kind not in MODULES:
            raise ValueError(f"{request.task_id}: unknown Dataflow job kind {kind!r}")
        cfg = spec.predict.dataflow
        hook = DataflowJobsHook(cfg.gcp_conn_id)
        identity = self.identity(request)
        attempt = find_attempt(lambda n: job_name(spec.name, request.run_id, request.task_id, n,
                                                  identity=identity, max_len=MAX_NAME),
                               lambda name: hook.job_verdict(cfg.project, cfg.region, name))
        staging = join(cfg.temp_location, "mlbatch", spec.name, run_key(request.run_id), attempt.name)
        job = attempt.job
        if attempt.verdict == "absent":
            job = self._launch(request, hook, attempt.name, staging)
        handle = {"backend": self.name, "kind": kind, "job_id": job["id"], "job_name": attempt.name,
                  "project": cfg.project, "region": cfg.region, "gcp_conn_id": cfg.gcp_conn_id,
                  "attempt": attempt.number, "console_url": console_url(job["id"], cfg.project, cfg.region)}
        if kind == "prep":
            handle.update(prepared_uri=join(staging, "prepared"), rejected_uri=join(staging, "rejected"))
        else:
            handle["output_uri"] = join(staging, "output")
        if attempt.verdict == "succeeded":
            log.info("Dataflow job %s already succeeded: re-using its output", job["id"])
            return Submission(handle, "succeeded")
        if attempt.verdict == "active":
            log.info("Re-attaching to running Dataflow job %s (%s)", job["id"], job.get("currentState"))
            return Submission(handle, "running")
        return Submission(handle, "submitted")

    def identity(self, request: JobRequest) -> str:
        """What determines the job's result (`job_identity`), hashed into its name."""
        return job_identity(request)

    def _launch(self, request: JobRequest, hook: DataflowJobsHook, name: str, staging: str) -> dict:
        """Launch the job's Beam program on DataflowRunner; the job as far as it is known."""
        spec, cfg = request.spec, request.spec.predict.dataflow
        module, variables = self._launch_args(request, name, staging)
        job_id = hook.launch(module, variables)
        log.info("Launched Dataflow job %s: %s", name, job_id or "(id not seen in the launcher log)")
        if job_id is not None:
            return {"id": job_id, "name": name}
        _, job = hook.job_verdict(cfg.project, cfg.region, name)  # no id logged: ask the service by name
        if job is None:
            raise RemoteJobError(f"{spec.name}: the Dataflow launcher for {name} ended without "
                                 "submitting a job; see the task log")
        return job

    def _launch_args(self, request: JobRequest, name: str, staging: str) -> tuple[str, dict]:
        """The Beam program (`python -m <module>`) and BeamHook's variables for this request's job."""
        spec, paths = request.spec, request.paths
        result_file = paths.result_file(request.task_id)
        if request.kind == "prep":
            variables = prep_launch_variables(spec, name, input_pattern=staged_input(spec, paths, staging),
                                              prepared_uri=join(staging, "prepared"),
                                              rejected_uri=join(staging, "rejected"), result_file=result_file,
                                              model=request.model)
        else:
            input_uri = prepared_on_gcs(request.prep)
            if input_uri is None:  # prep ran on this machine: upload its output
                input_uri = join(staging, "input")
                if not gcs_storage(spec).copy_tree(paths.prepared, input_uri):
                    raise FileNotFoundError(f"{spec.name}: no prepared files under {paths.prepared}")
            else:
                log.info("Reading the prepared input of the Dataflow prep job: %s", input_uri)
            statistics = edges_args(gcs_storage(spec), spec, dataclasses.replace(paths, work=staging),
                                    request.model["version"])  # the quality gate's, beside the job's output
            variables = launch_variables(spec, name, input_uri=input_uri,
                                         model_uri=staged_model_uri(spec, request.model),
                                         output_uri=join(staging, "output"), result_file=result_file,
                                         statistics_args=statistics)
        return MODULES[request.kind], variables

    def trigger(self, handle: Handle) -> DataflowJobTrigger:
        return DataflowJobTrigger(job_id=handle["job_id"], expected_statuses={"JOB_STATE_DONE"},
                                  project_id=handle["project"], location=handle["region"],
                                  gcp_conn_id=handle["gcp_conn_id"], poll_sleep=POLL_SECONDS)

    def describe(self, handle: Handle) -> JobState:
        job = hook_for(handle).get_job(job_id=handle["job_id"], project_id=handle["project"],
                                       location=handle["region"])
        state = job.get("currentState", "JOB_STATE_UNKNOWN")
        phase = "succeeded" if state in SUCCEEDED else "failed" if state in FAILED else "running"
        return JobState(phase, state, job)

    def result(self, request: JobRequest, handle: Handle, state: JobState) -> dict:
        """The output stays where the job wrote it: publish reads and commits it from there."""
        if handle.get("kind", "predict") == "prep":
            return _prep_result(request.spec, handle)
        files = gcs_storage(request.spec).files(handle["output_uri"])
        if not files and not self.output_may_be_empty:
            raise RemoteJobError(f"{request.spec.name}: Dataflow job {handle['job_id']} succeeded but wrote "
                                 f"nothing under {handle['output_uri']}")
        statistics = join(parent(handle["output_uri"]), STATISTICS_FILE) if request.spec.quality else None
        return {"backend": BACKEND, "model_version": request.model["version"], "job_id": handle["job_id"],
                "output_uri": handle["output_uri"], "output_files": len(files),
                **({"statistics_uri": statistics} if statistics else {})}

    def cancel(self, handle: Handle) -> None:
        """Ask Dataflow to cancel the job; the hook skips jobs that already ended."""
        hook_for(handle).cancel_job(job_id=handle["job_id"], project_id=handle["project"],
                                    location=handle["region"])

    def log_tail(self, handle: Handle, lines: int) -> list[str]:
        return cloud_logging.tail(handle["project"], log_filter(handle), lines,
                                  handle.get("gcp_conn_id", "google_cloud_default"))

    def failure_reason(self, handle: Handle) -> str:
        """From the job's messages (what the console's job log shows): a worker's exception, or the
        service's "Workflow failed. Causes: ..."; the job's state alone says only JOB_STATE_FAILED."""
        messages = hook_for(handle).fetch_job_messages_by_id(job_id=handle["job_id"], project_id=handle["project"],
                                                             location=handle["region"])
        return job_messages_reason(messages)


def _prep_result(spec: PipelineSpec, remote: dict) -> dict:
    """The prepared files stay on GCS for the predict job (`prepared_uri` in this step's XCom), the
    dead letters for publish (`rejected_uri`), which counts and commits them from there."""
    from mlbatch.run.row_counts import count_rows

    store = gcs_storage(spec)
    rows_rejected, rejected_files = count_rows(remote["rejected_uri"], "jsonl", store)
    prepared = [uri for uri in store.files(remote["prepared_uri"]) if uri.endswith(".parquet")]
    return {"backend": BACKEND, "job_id": remote["job_id"], "prepared_uri": remote["prepared_uri"],
            "prepared_files": len(prepared), "rows_rejected": rows_rejected,
            "rejected_files": rejected_files, "rejected_uri": remote["rejected_uri"]}


def log_filter(remote: dict) -> str:
    """Dataflow workers and the service log as `dataflow_step` resources labelled with the job id."""
    return f'resource.type="dataflow_step" AND resource.labels.job_id="{remote["job_id"]}"'
