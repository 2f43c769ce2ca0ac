"""predict: score the prepared input with the pinned model on the spec's backend
(mlbatch.backends.base.Backend; the lifecycle is mlbatch.operators.remote_job's):

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

from mlbatch.errors import NoValidRowsError, PreparedInputMissingError
from mlbatch.operators.base import PipelineStepOperator
from mlbatch.operators.links import RemoteJobConsoleLink
from mlbatch.operators.remote_job import BackendJobMixin
from mlbatch.run.paths import RunPaths
from mlbatch.run.rejections import check_prep
from mlbatch.spec.models import PipelineSpec
from mlbatch.spec.prep_contract import prep_runs_in_predict
from mlbatch.storage.layer import Storage

PREP_TASK_ID = "prep"  # the DAG's prep step (dag_factory): its result says where the prepared input is


class PredictOperator(BackendJobMixin, PipelineStepOperator):
    ui_color = "#f3e8fd"
    uses_work_folder = True  # noted there, so a later publish can sweep it if this run is killed
    operator_extra_links = (RemoteJobConsoleLink(),)
    template_fields = (*PipelineStepOperator.template_fields, "model_version")
    job_kind = "predict"

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._job = None  # the job process of a local backend, whose peak memory the step reports
        self.model_version = "{{ (ti.xcom_pull(task_ids='resolve_model') or {}).get('uri', '') }}"  # the pinned one

    def run(self, context: Any, spec: PipelineSpec, paths: RunPaths) -> dict:
        fused = prep_runs_in_predict(spec)
        prep = None if fused else context["ti"].xcom_pull(task_ids=PREP_TASK_ID)
        if not fused:
            require_prepared_rows(spec, paths, prep)
        if spec.predict.auto_reason:
            self.log.info("predict.backend auto -> %s: %s", spec.predict.backend, spec.predict.auto_reason)
        request = self.job_request(context, spec, paths, prep=prep)
        try:  # a cloud service: submit or re-attach, then defer; a local job runs to its end here
            result = self.run_backend(context, request)
        finally:
            self._job = getattr(self._backend, "job", None)
        if fused:  # prep's verdict on the rejected rows, before anything is published
            check_prep(spec, result, paths.rejected_staging, Storage.for_spec(spec), predicted=True)
        return result


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
