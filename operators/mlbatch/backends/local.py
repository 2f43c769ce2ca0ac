"""Jobs that run on this machine, as a child process of the task (`mlbatch.run.job_process`):

- `LocalBackend` (`predict.backend: local`): the batch-prediction contract (JSON Lines in,
  Vertex/SageMaker-shaped JSON Lines out) computed locally by `mlbatch_beam.local_predict`, so the
  cloud backends' publish path is exercised on this machine; each request goes through the MLflow
  scoring server's own handling (schema enforcement included), so local passing means the containers pass.
- `DirectModelBackend` (`predict.backend: dataflow` on the local runner): the direct-model Beam job
  on the FnApiRunner; it reads the raw input and validates it in the same pass
  (`mlbatch_beam.validate_and_score`: prep's rules and dead letters), so no prepared copy is written.

`submit` runs the job to its end (there is nothing to wait for in a trigger), `cancel` stops it from
another thread (the task's `on_kill`), and the handle is not recorded: there is no remote job to link
to or to re-attach to; a retry stops an earlier try's job (`stop_leftover_job`) and starts afresh.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from mlbatch.backends.base import Backend, Handle, JobRequest, JobState, Submission, with_reason
from mlbatch.backends.dataflow_options import (
    local_job, local_runner_args, model_sharing_args, prediction_output_args)
from mlbatch.backends.failure_reasons import job_output_reason
from mlbatch.errors import RemoteJobError
from mlbatch.quality.baseline import edges_args
from mlbatch.run.job_process import JobProcess, stop_leftover_job
from mlbatch.spec.prep_contract import schema_json
from mlbatch.storage.job_errors import job_storage_errors
from mlbatch.storage.layer import Storage

log = logging.getLogger(__name__)


class LocalJobBackend(Backend):
    """A job in a child process: subclasses say which module, where it writes and its arguments."""

    remote = False
    job_label = "local job"
    module: ClassVar[str]

    def __init__(self) -> None:
        self._job: JobProcess | None = None
        self._result: dict | None = None

    @property
    def job(self) -> JobProcess | None:
        """This try's job process (the step reports its peak memory)."""
        return self._job

    def output_folders(self, request: JobRequest) -> list[str]:
        """The folders the job writes; emptied first, so a retry starts clean."""
        raise NotImplementedError

    def job_args(self, request: JobRequest) -> tuple[str, list[str], list[str]]:
        """The module to run, the arguments before the common ones (`local_job`'s) and after them."""
        raise NotImplementedError

    def model_args(self, request: JobRequest) -> list[str]:
        """The job's model: the pinned version's artifacts (a job that loads the model)."""
        return ["--model-uri", request.model["artifact_uri"]]

    def job_secrets(self, request: JobRequest) -> dict[str, str]:
        """Environment variables beyond the storage layer's (secrets never go on the command line)."""
        return {}

    def submit(self, request: JobRequest) -> Submission:
        spec, paths, model = request.spec, request.paths, request.model
        result_file = paths.result_file(request.task_id)
        stop_leftover_job(result_file)  # an earlier try's job must not write on
        storage = Storage.for_spec(spec)
        folders = self.output_folders(request)
        for folder in folders:
            storage.rm(folder)
        common = [
            *self.model_args(request),
            "--id-column", spec.input.id_column,
            "--feature-columns", ",".join(f.name for f in spec.input.features),
            "--output-dir", folders[0],
        ]
        env, storage_args = storage.job_env([paths.input_pattern, paths.work, model["artifact_uri"]])
        env.update(self.job_secrets(request))
        module, leading, args = self.job_args(request)
        self._job = JobProcess(module, leading + common + args + storage_args, result_file, env=env)
        try:
            with job_storage_errors(storage, [paths.input_pattern, paths.work, model["artifact_uri"]], folders):
                self._result = self._job.run()
        except RemoteJobError as failed:  # the scoring server's reason first, not after the job's last lines
            reason = job_output_reason(str(failed))
            raise (with_reason(spec.name, reason, str(failed)) if reason else failed) from None
        log.info("%s (%s, model v%s): %s", request.task_id, spec.predict.backend, model["version"], self._result)
        return Submission({"backend": spec.predict.backend, "result_file": result_file}, "succeeded")

    def describe(self, handle: Handle) -> JobState:
        return JobState("succeeded" if self._result is not None else "failed", "finished")

    def result(self, request: JobRequest, handle: Handle, state: JobState) -> dict:
        return {**(self._result or {}), "backend": request.spec.predict.backend,
                "model_version": request.model["version"]}

    def cancel(self, handle: Handle) -> None:
        if self._job:
            self._job.kill()


class LocalBackend(LocalJobBackend):
    name = "local"

    def result(self, request: JobRequest, handle: Handle, state: JobState) -> dict:
        """The job's files joined to their ids and staged, with the predictions' statistics taken in that
        read, as for the cloud services (`batch_predictions`)."""
        from mlbatch.backends.batch_predictions import stage_batch_predictions

        raw = request.paths.raw_predictions  # where the job wrote them (`output_folders`)
        return {**super().result(request, handle, state), "raw_predictions_uri": raw,
                **stage_batch_predictions(request.spec, request.paths, raw, request.model["version"])}

    def output_folders(self, request: JobRequest) -> list[str]:
        return [request.paths.raw_predictions]

    def job_args(self, request: JobRequest) -> tuple[str, list[str], list[str]]:
        spec = request.spec
        return "mlbatch_beam.local_predict", [], [
            "--input", f"{request.paths.prepared}/*",
            "--flavor", spec.predict.local.flavor,
            "--chunk-rows", str(spec.predict.compute.batch_rows),
        ]


class DirectModelBackend(LocalJobBackend):
    """`dataflow` on the local runner: validation, dead letters and scoring in one Beam job."""

    name = "dataflow"

    def output_folders(self, request: JobRequest) -> list[str]:
        return [request.paths.output_staging, request.paths.rejected_staging]

    def job_args(self, request: JobRequest) -> tuple[str, list[str], list[str]]:
        spec, paths = request.spec, request.paths
        module, leading = local_job(spec, "mlbatch_beam.validate_and_score")
        return module, leading, [
            "--input", paths.input_pattern,
            "--input-format", spec.input.format,
            "--schema-json", schema_json(spec, request.model),
            "--dead-letter-dir", paths.rejected_staging,
            "--output-format", spec.output.format,
            *prediction_output_args(spec),
            "--batch-rows", str(spec.predict.compute.batch_rows),
            *model_sharing_args(spec),
            *local_runner_args(spec),
            *edges_args(Storage.for_spec(spec), spec, paths, request.model["version"]),  # the quality gate's
        ]
