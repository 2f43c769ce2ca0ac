"""prep: the Beam job that reads the input, validates rows against the feature schema, sends bad rows
to a dead-letter folder with their reason, and writes the prepared input in the predict backend's
format (Parquet for the direct-model job and SageMaker, JSON Lines for Vertex).

It runs on the local FnApiRunner (a child process), except with `predict.backend: dataflow` and
`predict.dataflow.runner: dataflow`: then it is a Google Dataflow job like predict's (submitted or
re-attached, deferred, cancelled on kill; see mlbatch.backends.dataflow and
mlbatch.operators.remote_job), which leaves the prepared
Parquet files on GCS for the predict job and brings the dead letters back to `rejected_staging`.

With `predict.backend: dataflow` on the local runner it runs nothing: predict's direct-model job
validates, writes the dead letters and scores in one pass (mlbatch.spec.prep_contract.prep_runs_in_predict)."""

from __future__ import annotations

from typing import Any

from mlbatch.backends.dataflow_options import local_job, local_runner_args
from mlbatch.run.job_process import JobProcess, stop_leftover_job
from mlbatch.operators.links import RemoteJobConsoleLink
from mlbatch.operators.base import PipelineStepOperator, effective_spec
from mlbatch.operators.remote_job import RESOLVE_MODEL_TASK_ID, BackendJobMixin
from mlbatch.quality.baseline import edges_args
from mlbatch.spec.prep_contract import prep_runs_in_predict, prepared_file_rows, prepared_format, schema_json
from mlbatch.run.rejections import check_prep
from mlbatch.run.paths import RunPaths
from mlbatch.spec.models import PipelineSpec
from mlbatch.storage.job_errors import job_storage_errors
from mlbatch.storage.layer import Storage

beam_runner_args = local_runner_args  # the local FnApiRunner's flags; kept under this name for callers


def runs_on_dataflow(spec: PipelineSpec) -> bool:
    return spec.predict.backend == "dataflow" and spec.predict.dataflow.runner == "dataflow"


class BeamPrepOperator(BackendJobMixin, PipelineStepOperator):
    ui_color = "#fce8e6"
    uses_work_folder = True  # noted there, so a later publish can sweep it if this run is killed
    operator_extra_links = (RemoteJobConsoleLink(),)
    job_kind = "prep"  # which job the backend (Dataflow) runs for this step

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._job: JobProcess | None = None

    def run(self, context: Any, spec: PipelineSpec, paths: RunPaths) -> dict:
        if prep_runs_in_predict(spec):
            self.log.info("prep runs inside predict: the direct-model job validates, writes dead letters "
                          "to %s and scores in one pass (mlbatch_beam.validate_and_score)", paths.rejected_staging)
            return {"runs_in": "predict"}
        stop_leftover_job(paths.result_file("prep"))  # an earlier try's job must not write on
        storage = Storage.for_spec(spec)
        for folder in (paths.prepared, paths.rejected_staging):  # a retry starts clean
            storage.rm(folder)
        storage.make_dirs(paths.work)
        if runs_on_dataflow(spec):  # submit or re-attach, then defer (see mlbatch.operators.remote_job)
            result = self.run_backend(context, self.job_request(context, spec, paths))  # returns if already done
            check_prep(spec, result, paths.rejected_staging, storage)
            return result
        model = context["ti"].xcom_pull(task_ids=RESOLVE_MODEL_TASK_ID)
        args = [
            "--input", paths.input_pattern,
            "--input-format", spec.input.format,
            "--schema-json", schema_json(spec, model),
            "--output-dir", paths.prepared,
            "--output-format", prepared_format(spec),
            "--dead-letter-dir", paths.rejected_staging,
            "--batch-rows", str(prepared_file_rows(spec)),
            *beam_runner_args(spec),
            *edges_args(storage, spec, paths, (model or {}).get("version")),  # the quality gate's features
        ]
        env, storage_args = storage.job_env([paths.input_pattern, paths.work])
        module, leading = local_job(spec, "mlbatch_beam.prep")
        self._job = JobProcess(module, leading + args + storage_args, paths.result_file("prep"), env=env)
        with job_storage_errors(storage, [paths.input_pattern], [paths.work]):
            result = self._job.run()
        self.log.info("prep: %s", result)
        check_prep(spec, result, paths.rejected_staging, storage)
        return result

    def execute_complete(self, context: Any, event: dict | None = None) -> Any:
        """Back from a Dataflow prep job: the same verdict on its rejected rows as a local run."""
        result = super().execute_complete(context, event)
        spec = effective_spec(self.spec, context["params"])
        check_prep(spec, result, self.run_paths(context, spec).rejected_staging, Storage.for_spec(spec))
        return result

    def on_kill(self) -> None:
        if self._job:
            self._job.kill()
        super().on_kill()  # stops the Dataflow job, if one was started
