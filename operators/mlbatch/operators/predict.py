"""predict: score the prepared input with the pinned model on the spec's backend.

- `local`: the batch-prediction contract (JSON Lines in, Vertex/SageMaker-shaped JSON Lines out)
  computed on this machine, so the cloud backends' publish path is exercised locally.
- `dataflow`: the direct-model Beam job (model loaded inside the workers through RunInference),
  on the local FnApiRunner unless `predict.dataflow.runner` is `dataflow`. On the local runner it
  reads the raw input and validates it in the same pass (mlbatch_beam.validate_and_score: prep's
  rules, dead letters and verdict), so no prepared copy is written and read back.
- `sagemaker`, `vertex`: managed batch jobs through the official providers (mlbatch.backends.*):
  submitted or re-attached idempotently, deferred while they run, stopped when the task is killed.
- `dataflow` with `predict.dataflow.runner: dataflow`: the same direct-model Beam job on Google Dataflow.
"""

from __future__ import annotations

from typing import Any

from mlbatch.backends.dataflow_options import local_job, model_sharing_args, prediction_output_args
from mlbatch.errors import NoValidRowsError, PreparedInputMissingError
from mlbatch.run.job_process import JobProcess, stop_leftover_job
from mlbatch.operators.links import RemoteJobConsoleLink
from mlbatch.operators.base import PipelineStepOperator
from mlbatch.operators.remote_job import RemoteJobMixin
from mlbatch.operators.prep import beam_runner_args
from mlbatch.spec.prep_contract import prep_runs_in_predict, schema_json
from mlbatch.run.rejections import check_prep
from mlbatch.run.paths import RunPaths
from mlbatch.spec.models import PipelineSpec
from mlbatch.storage.layer import Storage


class PredictOperator(RemoteJobMixin, PipelineStepOperator):
    ui_color = "#f3e8fd"
    uses_work_folder = True  # noted there, so a later publish can sweep it if this run is killed
    operator_extra_links = (RemoteJobConsoleLink(),)
    template_fields = (*PipelineStepOperator.template_fields, "model_version")

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._job: JobProcess | None = None
        self.model_version = "{{ (ti.xcom_pull(task_ids='resolve_model') or {}).get('uri', '') }}"  # the pinned one

    def run(self, context: Any, spec: PipelineSpec, paths: RunPaths) -> dict:
        model = context["ti"].xcom_pull(task_ids="resolve_model")
        fused = prep_runs_in_predict(spec)
        if not fused:
            require_prepared_rows(spec, paths, context["ti"].xcom_pull(task_ids="prep"))
        backend = spec.predict.backend
        if spec.predict.auto_reason:
            self.log.info("predict.backend auto -> %s: %s", backend, spec.predict.auto_reason)
        if backend == "local":
            out, module, args = paths.raw_predictions, "mlbatch_beam.local_predict", [
                "--input", f"{paths.prepared}/*",
                "--flavor", spec.predict.local.flavor,
                "--chunk-rows", str(spec.predict.compute.batch_rows),
            ]
        elif fused:
            out, module, args = paths.output_staging, "mlbatch_beam.validate_and_score", [
                "--input", paths.input_pattern,
                "--input-format", spec.input.format,
                "--schema-json", schema_json(spec),
                "--dead-letter-dir", paths.rejected_staging,
                "--output-format", spec.output.format,
                *prediction_output_args(spec),
                "--batch-rows", str(spec.predict.compute.batch_rows),
                *model_sharing_args(spec),
                *beam_runner_args(spec),
            ]
        else:  # a cloud service: submit or re-attach, then defer (see mlbatch.operators.remote_job)
            return self.run_remote(backend, context, spec, paths, model)
        stop_leftover_job(paths.result_file("predict"))  # an earlier try's job must not write on
        storage = Storage.for_spec(spec)
        for folder in (out, paths.rejected_staging) if fused else (out,):  # a retry starts clean
            storage.rm(folder)
        common = [
            "--model-uri", model["artifact_uri"],
            "--id-column", spec.input.id_column,
            "--feature-columns", ",".join(f.name for f in spec.input.features),
            "--output-dir", out,
        ]
        env, storage_args = storage.job_env([paths.input_pattern, paths.work, model["artifact_uri"]])
        leading = []
        if fused:
            module, leading = local_job(spec, module)
        self._job = JobProcess(module, leading + common + args + storage_args, paths.result_file("predict"),
                               env=env)
        result = self._job.run()
        self.log.info("predict (%s, model v%s): %s", backend, model["version"], result)
        if fused:  # prep's verdict on the rejected rows, before anything is published
            check_prep(spec, result, paths.rejected_staging, storage, predicted=True)
        return {**result, "backend": backend, "model_version": model["version"]}

    def on_kill(self) -> None:
        if self._job:
            self._job.kill()
        super().on_kill()  # stops the remote job, if one was started


def require_prepared_rows(spec: PipelineSpec, paths: RunPaths, prep: dict | None) -> None:
    """Never score an empty or missing prepared set: say so, and where prep's verdict is."""
    prep = prep or {}
    if prep.get("rows_valid") == 0 or prep.get("prepared_files") == 0:
        raise NoValidRowsError(f"{spec.name}: prep left no valid row to predict (its result: {prep}); "
                               f"see the prep task's log and {paths.rejected_staging}")
    if prep.get("prepared_uri"):  # prep ran on Dataflow: its files are on GCS
        return
    if not Storage.for_spec(spec).files(paths.prepared):
        raise PreparedInputMissingError(f"{spec.name}: the prepared input {paths.prepared} is missing or "
                                        "empty; clear the prep task of this run to prepare it again")
