"""`predict.backend: endpoint` with `predict.dataflow.runner: dataflow`: the endpoint job
(`mlbatch_beam.endpoint_score`) as a Google Dataflow job, launched, named, re-attached, cancelled,
linked and tailed exactly as the direct-model job (`mlbatch.backends.dataflow.DataflowBackend`, whose
path this reuses: only the Beam program, its arguments and what the job's result depends on differ).

Like the local endpoint job, it reads the raw input and validates it in the same pass (prep runs inside
it: mlbatch.spec.prep_contract.prep_runs_in_predict), so its input is the run's input (a gs:// one in
place, else copied under the job's staging prefix) and it writes both the predictions (`.../output`)
and the dead letters (`.../rejected`, prep's and the endpoint's); publish reads both from there.

No secret travels in the pipeline options, which the Dataflow console shows (mlbatch.spec.runnable
refuses the specs that would need one): a vertex endpoint is called with the workers' service account
(Application Default Credentials in the job), an mlflow endpoint either without auth or with
`authorization_secret`, a Secret Manager version the workers read themselves; a sagemaker endpoint
(AWS credentials) is refused. The served version is checked here, in the task, before the launch; the
handle keeps what was found, so the check of what answered (`check_answered`) works after deferral.
"""

from __future__ import annotations

import dataclasses
import json
import logging

from mlbatch.backends.base import Handle, JobRequest, JobState, Submission, require_runnable
from mlbatch.backends.dataflow import (
    DataflowBackend, beam_variables, gcs_storage, input_listing, staged_input)
from mlbatch.backends.dataflow_options import prediction_output_args
from mlbatch.backends.endpoint import BACKEND as SPEC_BACKEND, MODULE, endpoint_json, mlflow_authorization
from mlbatch.backends.job_names import result_identity
from mlbatch.quality.baseline import edges_args
from mlbatch.spec.prep_contract import schema_json
from mlbatch.storage.layer import Storage, join, parent

BACKEND = "endpoint-dataflow"  # the handle's `backend`: execute_complete, cancel and alerts load this class
RESULT_FILE = "result.json"
log = logging.getLogger(__name__)


class EndpointDataflowBackend(DataflowBackend):
    """The endpoint job on Dataflow (see the module docstring). Handle: DataflowBackend's, plus
    `rejected_uri` and `served` (the version the endpoint served before scoring, and how it was learnt)."""

    name = BACKEND
    job_label = "Dataflow endpoint scoring job"
    output_may_be_empty = True  # every row may be a dead letter (an endpoint down): publish's counts decide

    def submit(self, request: JobRequest) -> Submission:
        from mlbatch.backends.served_version import check_served_version

        spec = request.spec
        require_runnable(spec, SPEC_BACKEND)
        if request.kind != "predict":
            raise ValueError(f"{spec.name}: {request.kind} runs inside the endpoint job")
        cfg = spec.predict.endpoint
        auth = mlflow_authorization(cfg) if cfg.kind == "mlflow" else None  # the probe's, never the job's
        served = check_served_version(spec, request.model, auth, Storage.for_spec(spec),
                                      request.paths.input_pattern)
        submission = super().submit(request)
        staging = parent(submission.handle["output_uri"])
        submission.handle.update(rejected_uri=join(staging, "rejected"),
                                 served={**dataclasses.asdict(served), "answers": list(served.answers)})
        return submission

    def identity(self, request: JobRequest) -> str:
        """The model version, the input files (the job reads them itself) and the settings."""
        spec = request.spec
        settings = spec.predict.model_dump(exclude={"labels"}, mode="json")
        return result_identity(request.model, input_listing(gcs_storage(spec), request.paths.input_pattern),
                               [settings, spec.input.model_dump(mode="json"), spec.output.model_dump(mode="json")])

    def _launch_args(self, request: JobRequest, name: str, staging: str) -> tuple[str, dict]:
        """`python -m mlbatch_beam.endpoint_score` with the local job's arguments, gs:// folders, and the
        endpoint's `--endpoint-json` (where it is, how to batch, a secret's name at most)."""
        spec, paths = request.spec, request.paths
        statistics = edges_args(gcs_storage(spec), spec, dataclasses.replace(paths, work=staging),
                                request.model["version"])  # the quality gate's, beside the job's output
        job_args = [
            "--input", staged_input(spec, paths, staging),
            "--input-format", spec.input.format,
            "--schema-json", schema_json(spec, request.model),
            "--id-column", spec.input.id_column,
            "--feature-columns", ",".join(f.name for f in spec.input.features),
            "--output-dir", join(staging, "output"),
            "--output-format", spec.output.format,
            *prediction_output_args(spec),
            "--dead-letter-dir", join(staging, "rejected"),
            "--batch-rows", str(spec.predict.compute.batch_rows),
            "--endpoint-json", endpoint_json(spec.predict.endpoint),
            "--result-file", join(staging, RESULT_FILE),  # on GCS: the workers write what answered beside it
            *statistics,
        ]
        return MODULE, beam_variables(spec, name, job_args, model_workers=False)

    def result(self, request: JobRequest, handle: Handle, state: JobState) -> dict:
        """DataflowBackend's, with the dead letters' prefix and the version the endpoint served, once
        what answered (when the job says) is known to be what was checked."""
        from mlbatch.backends.served_version import Served, check_answered

        result = super().result(request, handle, state)
        served = Served(**{**handle["served"], "answers": tuple(handle["served"]["answers"])})
        check_answered(request.spec, served, answered(gcs_storage(request.spec), parent(handle["output_uri"])))
        return {**result, "backend": SPEC_BACKEND, "runner": "dataflow", "rejected_uri": handle["rejected_uri"],
                "endpoint_kind": request.spec.predict.endpoint.kind, "model_version": served.version,
                "served_version": served.how}


def answered(store: Storage, staging: str):
    """What the endpoint said served the rows: the job's result file (`endpoint_model`), written by
    the launcher when it saw the job end; else the workers' own record beside it, which the launcher
    reads and removes (mlbatch_beam.endpoint_score). None when neither is there (the launcher ended
    early, or MLflow, which never says)."""
    result_file = join(staging, RESULT_FILE)
    document = store.read_json(result_file)
    if document is not None:
        return document.get("endpoint_model")
    found = sorted({s for uri in store.files(result_file + ".served-*") for s in store.read_json(uri)})
    if not found:
        log.info("No record of what answered under %s: the served version was checked before scoring only", staging)
        return None
    parsed = [_maybe_json(s) for s in found]
    return parsed[0] if len(parsed) == 1 else parsed


def _maybe_json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text
