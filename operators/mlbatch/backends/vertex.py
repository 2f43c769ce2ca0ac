"""Vertex AI batch prediction: the pinned MLflow model uploaded once as a Vertex Model (serving image
from the spec), the prepared JSON Lines in GCS, one BatchPredictionJob per (pipeline, run, attempt).

Why the job is created through a hook (mlbatch.hooks.vertex, on the provider's BatchPredictionJobHook)
and not the provider's CreateBatchPredictionJobOperator: that operator goes through the aiplatform SDK,
which cannot set `instance_config.key_field`; without it the row id would be sent to the model as a
feature and the predictions could not be joined back to their ids. So the request is built here as the
real `google.cloud.aiplatform_v1.types.BatchPredictionJob` (unknown fields fail) and sent through the
hook's job service client; waiting uses the provider's
CreateBatchPredictionJobTrigger (subclassed to cancel the job on kill), the console link is the
provider's `VertexAIBatchPredictionJobLink`. `VertexBackend` implements `mlbatch.backends.base.Backend`.

Idempotency: Vertex generates job ids, so the deterministic name is the job's display name, looked up
with a `display_name="..."` list filter before submitting.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from airflow.providers.google.cloud.triggers.vertex_ai import CreateBatchPredictionJobTrigger

from mlbatch.backends import cloud_logging
from mlbatch.backends.base import Backend, Handle, JobRequest, JobState, Submission, require_runnable
from mlbatch.backends.failure_reasons import errors_file_reason
from mlbatch.backends.job_names import files_fingerprint, find_attempt, fit, job_name, result_identity, short_hash
from mlbatch.backends.serving_image import image_for
from mlbatch.errors import RemoteJobError
from mlbatch.hooks.vertex import FAILED, SUCCEEDED, VertexBatchHook, job_id_of
from mlbatch.run.paths import RunPaths, run_key
from mlbatch.spec.accelerators import vertex_name
from mlbatch.spec.models import PipelineSpec
from mlbatch.storage.layer import Storage, join

BACKEND = "vertex"
POLL_SECONDS = 30
ERRORS_FILES = ("prediction.errors_stats-", "errors_")  # as jobs name them, as the REST reference does
log = logging.getLogger(__name__)


class VertexBatchPredictionTrigger(CreateBatchPredictionJobTrigger):
    """The provider's batch-prediction trigger plus `on_kill`: cancel the job when a user kills the
    deferred task. (The provider hard-codes its own module in `trigger_class_path`; fixed here.)"""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.trigger_class_path = f"{type(self).__module__}.{type(self).__qualname__}"

    async def on_kill(self) -> None:
        await asyncio.to_thread(VertexBackend().cancel, {"job_id": self.job_id, "project": self.project_id,
                                                         "region": self.location, "gcp_conn_id": self.conn_id})


def labels(spec: PipelineSpec, run_id: str) -> dict[str, str]:
    import re

    clean = lambda v: re.sub(r"[^a-z0-9_-]+", "-", str(v).lower())[:63]  # noqa: E731 - label charset
    return {**{clean(k): clean(v) for k, v in spec.predict.labels.items()},
            "mlbatch-pipeline": clean(spec.name), "mlbatch-run": clean(run_key(run_id))}


def model_display_name(model: dict, spec: PipelineSpec) -> str:
    """`mlb-<model>-v<version>-<hash>`: the hash covers every setting that changes the uploaded Model's
    behaviour or security (image, routes, environment, KMS key), so a changed one uploads a new Model."""
    cfg = spec.predict.vertex
    behaviour = short_hash(cfg.serving_container_image_uri, cfg.predict_route, cfg.health_route,
                           "python_function", spec.predict.network.kms_key, length=8)
    suffix = f"-v{model['version']}-{behaviour}"
    return fit(f"mlb-{model['name']}", 128 - len(suffix)) + suffix


# The MLflow serving image (`mlflow models build-docker`): nginx on 8080 in front of the pyfunc scoring
# server, /ping for health, /invocations taking {"instances": [...]} and answering {"predictions": [...]}.
MLFLOW_IMAGE_PORT = 8080


def serving_image(spec: PipelineSpec, model: dict) -> str:
    """The serving image of this model version. The MLflow image serves the model baked into it at
    /opt/ml/model (it does not read Vertex's AIP_STORAGE_URI), so the image is per model version:
    `{model_name}` and `{model_version}` in `predict.vertex.serving_container_image_uri` are filled in,
    e.g. `.../mlflow-{model_name}:v{model_version}` built by
    `mlflow models build-docker -m models:/<name>/<version>`."""
    return image_for(spec.predict.vertex.serving_container_image_uri, model,
                     "predict.vertex.serving_container_image_uri", spec.name)


def model_request(spec: PipelineSpec, model: dict, artifact_uri: str):
    """UploadModel: the container spec the MLflow image needs (its port, routes and flavor)."""
    from google.cloud.aiplatform_v1.types import EncryptionSpec, EnvVar, Model, ModelContainerSpec, Port

    cfg = spec.predict.vertex
    return Model(
        display_name=model_display_name(model, spec),
        artifact_uri=artifact_uri,
        container_spec=ModelContainerSpec(
            image_uri=serving_image(spec, model), predict_route=cfg.predict_route,
            health_route=cfg.health_route, ports=[Port(container_port=MLFLOW_IMAGE_PORT)],
            env=[EnvVar(name="MLFLOW_DEPLOYMENT_FLAVOR_NAME", value="python_function")]),
        labels={"mlbatch-model": fit(re.sub(r"[^a-z0-9_-]+", "-", model_display_name(model, spec).lower()), 63)},
        encryption_spec=EncryptionSpec(kms_key_name=spec.predict.network.kms_key)
        if spec.predict.network.kms_key else None,
    )


def job_request(spec: PipelineSpec, name: str, model_resource: str, input_uris: list[str],
                output_prefix: str, run_id: str):
    """The BatchPredictionJob: `compute:` -> dedicated resources, `network:` -> service account and
    CMEK. Instances are JSON objects of exactly the model's features (`included_fields`, which also
    drops anything else prep kept); `key_field` = the id column, which Vertex keeps out of the instance
    and writes back as `key` beside each prediction."""
    from google.cloud.aiplatform_v1.types import (
        AcceleratorType, BatchDedicatedResources, BatchPredictionJob, EncryptionSpec, GcsDestination,
        GcsSource, MachineSpec, ManualBatchTuningParameters)

    compute, net = spec.predict.compute, spec.predict.network
    machine = MachineSpec(machine_type=compute.machine_type or "n1-standard-4")
    if compute.accelerator_count:
        machine.accelerator_type = AcceleratorType[vertex_name(compute.accelerator_type)]
        machine.accelerator_count = compute.accelerator_count
    return BatchPredictionJob(
        display_name=name,
        model=model_resource,
        input_config=BatchPredictionJob.InputConfig(instances_format="jsonl",
                                                    gcs_source=GcsSource(uris=input_uris)),
        instance_config=BatchPredictionJob.InstanceConfig(
            instance_type="object", key_field=spec.input.id_column,
            included_fields=[f.name for f in spec.input.features]),
        output_config=BatchPredictionJob.OutputConfig(
            predictions_format="jsonl", gcs_destination=GcsDestination(output_uri_prefix=output_prefix)),
        dedicated_resources=BatchDedicatedResources(machine_spec=machine,
                                                    starting_replica_count=compute.min_workers,
                                                    max_replica_count=compute.max_workers),
        manual_batch_tuning_parameters=ManualBatchTuningParameters(batch_size=min(compute.batch_rows, 1000)),
        service_account=net.service_account or "",
        labels=labels(spec, run_id),
        encryption_spec=EncryptionSpec(kms_key_name=net.kms_key) if net.kms_key else None,
    )


def sync_model(hook: VertexBatchHook, spec: PipelineSpec, model: dict) -> str:
    """The Vertex Model resource of this MLflow version, uploaded once (found by display name)."""
    cfg = spec.predict.vertex
    display = model_display_name(model, spec)
    existing = hook.find_model(cfg.project, cfg.region, display)
    if existing:
        return existing
    import tempfile
    from pathlib import Path

    import mlflow

    artifact_uri = join(cfg.gcs_staging_uri, "models", model["name"], f"v{model['version']}")
    store = gcs_storage(spec)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model["artifact_uri"], dst_path=tmp))
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            store.copy(str(path), join(artifact_uri, str(path.relative_to(local))))
    return hook.upload_model(cfg.project, cfg.region, model_request(spec, model, artifact_uri))


def console_url(job_resource: str, project: str, region: str) -> str:
    """The provider's batch-prediction console link (VertexAIBatchPredictionJobLink), formatted here so
    that the handle carries it (alerts, the step's "Remote job console" link)."""
    from airflow.providers.google.cloud.links.vertex_ai import VertexAIBatchPredictionJobLink

    return VertexAIBatchPredictionJobLink()._format_link(
        region=region, batch_prediction_job_id=job_id_of(job_resource), project_id=project)


class VertexBackend(Backend):
    """Batch prediction jobs (see the module docstring). Handle: job_id (the job's resource name),
    job_name (its display name), project, region, gcp_conn_id, attempt, console_url."""

    name = BACKEND
    job_label = "Vertex batch prediction job"

    def submit(self, request: JobRequest) -> Submission:
        spec, paths, model = request.spec, request.paths, request.model
        require_runnable(spec, BACKEND)
        cfg = spec.predict.vertex
        hook = VertexBatchHook(cfg.gcp_conn_id)
        prepared = gcs_storage(spec)  # the storage the prepared files are copied with
        identity = result_identity(model, files_fingerprint(prepared, prepared.files(paths.prepared)),
                                   spec.predict.model_dump(exclude={"labels"}, mode="json"))
        attempt = find_attempt(lambda n: job_name(spec.name, request.run_id, request.task_id, n,
                                                  identity=identity, max_len=128),
                               lambda name: hook.job_verdict(cfg.project, cfg.region, name))
        staging = join(cfg.gcs_staging_uri, spec.name, run_key(request.run_id), attempt.name)
        job = attempt.job
        if attempt.verdict == "absent":
            model_resource = sync_model(hook, spec, model)
            inputs = prepared.copy_tree(paths.prepared, join(staging, "input"))
            if not inputs:
                raise FileNotFoundError(f"{spec.name}: no prepared files under {paths.prepared}")
            job = hook.create_job(cfg.project, cfg.region, job_request(
                spec, attempt.name, model_resource, inputs, join(staging, "output"), request.run_id))
            log.info("Created Vertex batch prediction job %s (%s)", job.name, attempt.name)
        handle = {"backend": BACKEND, "job_id": job.name, "job_name": attempt.name, "project": cfg.project,
                  "region": cfg.region, "gcp_conn_id": cfg.gcp_conn_id, "attempt": attempt.number,
                  "console_url": console_url(job.name, cfg.project, cfg.region)}
        if attempt.verdict == "succeeded":
            log.info("Vertex job %s already succeeded: re-using its output", job.name)
            return Submission(handle, "succeeded")
        if attempt.verdict == "active":
            log.info("Re-attaching to running Vertex job %s", job.name)
            return Submission(handle, "running")
        return Submission(handle, "submitted")

    def trigger(self, handle: Handle) -> VertexBatchPredictionTrigger:
        return VertexBatchPredictionTrigger(conn_id=handle["gcp_conn_id"], project_id=handle["project"],
                                            location=handle["region"], job_id=handle["job_id"],
                                            poll_interval=POLL_SECONDS)

    def describe(self, handle: Handle) -> JobState:
        job = hook_for(handle).job(handle["project"], handle["region"], handle["job_id"])
        state = job.state.name
        phase = "succeeded" if state in SUCCEEDED else "failed" if state in FAILED else "running"
        return JobState(phase, f"{state} ({job.error.message})", job)

    def result(self, request: JobRequest, handle: Handle, state: JobState) -> dict:
        """The job's result lines (keyed by id) staged for publish, with the predictions' statistics
        taken in that read (`batch_predictions`)."""
        from mlbatch.backends.batch_predictions import stage_batch_predictions

        job = state.job
        output = job.output_info.gcs_output_directory
        files = gcs_storage(request.spec).files(output)
        if not files:
            raise RemoteJobError(f"{request.spec.name}: Vertex job {job.name} succeeded but wrote nothing "
                                 f"under {output}")
        return {"backend": BACKEND, "model_version": request.model["version"], "job_id": job.name,
                "raw_predictions_uri": output, "output_files": len(files),
                **stage_batch_predictions(request.spec, request.paths, output, request.model["version"])}

    def cancel(self, handle: Handle) -> None:
        hook_for(handle).cancel_job(handle["project"], handle["region"], handle["job_id"])

    def log_tail(self, handle: Handle, lines: int) -> list[str]:
        return cloud_logging.tail(handle["project"], log_filter(handle), lines,
                                  handle.get("gcp_conn_id", "google_cloud_default"))

    def failure_reason(self, handle: Handle) -> str:
        """From the errors files the job wrote beside its results (failed instances, each with the
        container's answer): the job's own error says only that the job failed."""
        job = hook_for(handle).job(handle["project"], handle["region"], handle["job_id"])
        output = job.output_info.gcs_output_directory
        if not output:
            return ""
        store = Storage(gcp_conn_id=handle.get("gcp_conn_id", "google_cloud_default"))
        lines = []
        for path in store.files(output):
            if path.rpartition("/")[2].startswith(ERRORS_FILES):
                with store.open(path) as fh:
                    lines += fh.read().decode(errors="replace").splitlines()
        return errors_file_reason(lines)


def gcs_storage(spec: PipelineSpec) -> Storage:
    """The storage layer with the Vertex connection for gs:// staging."""
    return Storage(aws_conn_id=spec.storage.aws_conn_id, gcp_conn_id=spec.predict.vertex.gcp_conn_id)


def hook_for(remote: dict) -> VertexBatchHook:
    return VertexBatchHook(remote.get("gcp_conn_id", "google_cloud_default"))


def log_filter(remote: dict) -> str:
    """Vertex batch prediction workers log as `ml_job` resources labelled with the numeric job id."""
    return (f'resource.type="ml_job" AND resource.labels.job_id="{job_id_of(remote["job_id"])}"')
