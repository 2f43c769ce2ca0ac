"""SageMaker Batch Transform: the pinned MLflow model as a SageMaker Model, the prepared Parquet in S3,
one transform job per (pipeline, run, attempt), submitted through `mlbatch.hooks.sagemaker` (the
provider's SageMakerHook plus our calls) and waited for by the provider's trigger.

What this module adds around the provider, and why:
- **Idempotent names** (`job_names`): the provider's `check_if_job_exists` would submit a *second*,
  timestamp-suffixed job on a retry; here a retry re-attaches to the job already running or finished.
- **Model synced once**: named from model name + version + a hash of every setting that changes its
  behaviour or security (image, role, VPC, network isolation, KMS key, environment) and created only
  if missing (the provider's `check_if_model_exists` would create a timestamp-suffixed copy on every
  run; a name of version alone would silently keep an old image or role).
- **Honest reruns**: the job name carries a hash of the model version, the prepared input's contents
  and the spec's predict settings, so a cleared run with another version or input runs a new job;
  a job that is still Stopping is waited out before the next attempt; `complete` reports the model
  version of the job's own SageMaker Model, not the one it assumes.
- **Cancel while deferred**: the provider's SageMakerTrigger is swapped for `SageMakerTransformTrigger`,
  whose `on_kill` stops the job when a user marks the deferred task failed/success or clears it.
- **Status check on completion**: `complete` refuses any event that is not "success" *and* re-reads the
  job status (a provider bug once reported a failed deferred transform job as a success).
`SageMakerBackend` implements `mlbatch.backends.base.Backend` (names, attempts, requests, the job's
state and result); the hook owns the API calls; the operator records the handle and defers.
Imports of boto/providers happen inside functions or in this module, which only task processes and the
triggerer import (never the DAG processor).

Why one module of this length: one module per backend (docs/adding-a-backend.md), so all of SageMaker's
glue is in one place; its API calls are already in `mlbatch.hooks.sagemaker`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import tarfile
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from airflow.providers.amazon.aws.triggers.sagemaker import SageMakerTrigger

from mlbatch.backends.base import WAIT_AGAIN, Backend, Handle, JobRequest, JobState, Submission, require_runnable
from mlbatch.backends.failure_reasons import container_reason
from mlbatch.backends.job_names import files_fingerprint, find_attempt, fit, job_name, result_identity, short_hash
from mlbatch.backends.serving_image import check_start, image_for
from mlbatch.errors import BackendConfigError, RemoteJobError
from mlbatch.hooks.sagemaker import FAILED, SUCCEEDED, TransformJobHook
from mlbatch.run.paths import RunPaths, run_key
from mlbatch.spec.models import PipelineSpec
from mlbatch.storage.layer import Storage, join

BACKEND = "sagemaker"
POLL_SECONDS = 30
IMAGE_FIELD = "predict.sagemaker.image_uri"
FAILURE_LOG_LINES = 200  # the end of the job's log, where the agent wrote the refused request's answer
log = logging.getLogger(__name__)


class SageMakerTransformTrigger(SageMakerTrigger):
    """The provider's transform-job trigger plus `on_kill`: stop the job when a user kills the
    deferred task (mark failed/success, clear). Not on triggerer restarts: Airflow calls `on_kill`
    only for user actions (airflow.triggers.base.BaseTrigger.on_kill)."""

    async def on_kill(self) -> None:
        hook = TransformJobHook(self.aws_conn_id, self.region_name)
        await asyncio.to_thread(hook.stop_job, self.job_name)


def hook_for(remote: dict) -> TransformJobHook:
    return TransformJobHook(remote.get("aws_conn_id", "aws_default"), remote.get("region"))


def model_name(model: dict, behaviour: dict) -> str:
    """One SageMaker Model per MLflow model version and behaviour: `mlb-<model>-v<version>-<hash>`, at
    most 63 characters; the hash covers every CreateModel setting (`model_behaviour`)."""
    base = re.sub(r"[^a-zA-Z0-9]+", "-", model["name"]).strip("-")
    suffix = f"-v{model['version']}-{short_hash(behaviour, length=8)}"
    return fit(f"mlb-{base}", 63 - len(suffix)) + suffix


def staging_uri(spec: PipelineSpec, run_id: str) -> str:
    return join(spec.predict.sagemaker.s3_staging_uri, spec.name, run_key(run_id))


def tags(spec: PipelineSpec, run_id: str) -> list[dict]:
    values = {**spec.predict.labels, "mlbatch-pipeline": spec.name, "mlbatch-run-id": run_id[:256]}
    return [{"Key": k, "Value": str(v)} for k, v in sorted(values.items())]


def model_artifact_uri(spec: PipelineSpec, model: dict) -> str:
    return join(spec.predict.sagemaker.s3_staging_uri, "models", model["name"], f"v{model['version']}",
                "model.tar.gz")


def model_config(spec: PipelineSpec, model: dict, model_data_url: str | None = None) -> dict:
    """CreateModel request: MLflow's SageMaker serving contract (pyfunc flavor), the spec's network."""
    behaviour = model_behaviour(spec, model, model_data_url or model_artifact_uri(spec, model))
    # the jobs' KMS key is part of the name too: a changed key never re-uses a model made under the old
    name = model_name(model, {**behaviour, "kms_key": spec.predict.network.kms_key})
    return {"ModelName": name, **behaviour,
            "Tags": [{"Key": "mlbatch-model", "Value": f"{model['name']}/{model['version']}"}]}


def model_behaviour(spec: PipelineSpec, model: dict, model_data_url: str) -> dict:
    """Every CreateModel setting that changes what the model does or may reach (all but name and tags)."""
    net = spec.predict.network
    config: dict[str, Any] = {
        "ExecutionRoleArn": spec.predict.sagemaker.role_arn,
        "PrimaryContainer": {
            "Image": image_for(spec.predict.sagemaker.image_uri, model, IMAGE_FIELD, spec.name),
            "ModelDataUrl": model_data_url,
            "Environment": {"MLFLOW_DEPLOYMENT_FLAVOR_NAME": "python_function",
                            "SERVING_ENVIRONMENT": "SageMaker"},
        },
    }
    if net.subnetwork or net.security_group_ids:
        if not (net.subnetwork and net.security_group_ids):
            raise BackendConfigError(f"{spec.name}: on sagemaker a VPC needs both network.subnetwork and "
                                     "network.security_group_ids")
        config["VpcConfig"] = {"Subnets": [s.strip() for s in net.subnetwork.split(",")],
                               "SecurityGroupIds": list(net.security_group_ids)}
    if not net.public_ips:
        config["EnableNetworkIsolation"] = True
    return config


# The request format, chosen from what the MLflow serving container accepts (text/csv, application/json,
# Parquet; tests/test_dataplane_sagemaker.py shows the others failing): each prepared Parquet file,
# features only, is ONE request (`SplitType` None), so the container always gets a whole, self-describing table.
# CSV with `SplitType` Line would send header-less mini-batches, which MLflow's CSV parser refuses
# (it reads the first line as the header); JSON Lines is refused outright (415).
CONTENT_TYPE = "application/vnd.apache.parquet"
ACCEPT = "application/json"  # the container answers {"predictions": [...]}, written as <file>.out


def transform_config(spec: PipelineSpec, name: str, model: dict, input_uri: str, output_uri: str,
                     run_id: str) -> dict:
    """CreateTransformJob request from `compute:`/`network:`: one whole Parquet file per request,
    the container's answer per file in `<file>.out`, ids joined back by row order (publish checks
    the count per file; Parquet has no JoinSource)."""
    compute, net, cfg = spec.predict.compute, spec.predict.network, spec.predict.sagemaker
    if compute.accelerator_count and not (compute.machine_type or "").startswith(("ml.g", "ml.p")):
        raise BackendConfigError(f"{spec.name}: on sagemaker, accelerators come with the instance type; "
                                 f"compute.machine_type {compute.machine_type!r} is not a GPU type (ml.g*/ml.p*)")
    config: dict[str, Any] = {
        "TransformJobName": name,
        "ModelName": model["sagemaker_model"],
        "MaxPayloadInMB": cfg.max_payload_mb,
        # No BatchStrategy: the API enables it only with SplitType Line/RecordIO/TFRecord.
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
            "ContentType": CONTENT_TYPE,
            "SplitType": "None",
        },
        "TransformOutput": {"S3OutputPath": output_uri, "Accept": ACCEPT, "AssembleWith": "None"},
        "TransformResources": {"InstanceType": compute.machine_type or "ml.m5.large",
                               "InstanceCount": compute.max_workers},
        "Tags": tags(spec, run_id),
    }
    if cfg.max_concurrent_transforms:
        if cfg.max_concurrent_transforms * cfg.max_payload_mb > 100:
            raise BackendConfigError(f"{spec.name}: predict.sagemaker.max_concurrent_transforms x max_payload_mb = "
                                     f"{cfg.max_concurrent_transforms * cfg.max_payload_mb} MB; SageMaker allows "
                                     "at most 100 MB (CreateTransformJob MaxPayloadInMB)")
        config["MaxConcurrentTransforms"] = cfg.max_concurrent_transforms
    if net.kms_key:
        config["TransformOutput"]["KmsKeyId"] = net.kms_key
        config["TransformResources"]["VolumeKmsKeyId"] = net.kms_key
    return config


def write_request_files(spec: PipelineSpec, storage: Storage, prepared: str, target: str) -> list[str]:
    """The job's input: each prepared Parquet file with the model's features only (the ids stay in the
    prepared file, joined back by order), each within `MaxPayloadInMB` and `max_rows_per_request` (so
    that the container answers within its 60 s) or a clear error before anything is submitted. Any store."""
    import io

    import pyarrow.parquet as pq

    features = [f.name for f in spec.input.features]
    limit = spec.predict.sagemaker.max_payload_mb * 1024 * 1024
    files = storage.files(join(prepared, "*.parquet"))
    if not files:
        raise FileNotFoundError(f"{spec.name}: no prepared Parquet files in {prepared}")
    written = []
    for path in files:
        with storage.open(path) as fh:
            sink = io.BytesIO()
            # ParquetFile: read_table on a file object can abort the process at exit (apache/arrow#50482)
            table = pq.ParquetFile(fh).read(columns=features)
            name = path.rpartition("/")[2]
            _within_rows_per_request(spec, name, table.num_rows)  # before encoding a request it refuses
            pq.write_table(table, sink)
        if sink.tell() > limit:
            raise BackendConfigError(f"{spec.name}: {name} is {sink.tell()} bytes as a request, over "
                                     f"predict.sagemaker.max_payload_mb ({spec.predict.sagemaker.max_payload_mb} MB); "
                                     "lower prep.batch_rows so that each prepared file fits one request")
        storage.write_bytes(join(target, name), sink.getvalue())
        written.append(join(target, name))
    return written


def _within_rows_per_request(spec: PipelineSpec, name: str, rows: int) -> None:
    budget = spec.predict.sagemaker.max_rows_per_request
    if rows > budget:
        raise BackendConfigError(
            f"{spec.name}: {name} holds {rows} rows, over predict.sagemaker.max_rows_per_request ({budget}): "
            "each prepared file is one request, which the MLflow container must answer within 60 s; prep "
            "writes files of at most that many rows, so re-run prep (or raise the budget if the model scores "
            f"{budget} rows well within 60 s on {spec.predict.compute.machine_type or 'ml.m5.large'})")


def pack_model(model_dir: Path, archive: Path) -> Path:
    """`model.tar.gz` as SageMaker unpacks it into the container's /opt/ml/model, where the MLflow
    image's entry point opens /opt/ml/model/MLmodel: the model's files at the archive's top level."""
    with tarfile.open(archive, "w:gz") as tar:
        for item in sorted(model_dir.iterdir()):
            tar.add(item, arcname=item.name)
    return archive


def sync_model(hook: TransformJobHook, spec: PipelineSpec, model: dict) -> str:
    """Create the SageMaker Model of this MLflow version unless it exists: artifact as model.tar.gz.
    Refused (ServingImageError) before anything is uploaded when its container could not start."""
    config = model_config(spec, model)
    name = config["ModelName"]
    if hook.model_exists(name):
        return name
    import mlflow

    artifact_uri = model_artifact_uri(spec, model)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model["artifact_uri"], dst_path=tmp))
        check_start(spec.name, spec.predict.sagemaker.image_uri, model, local,
                    bool(config.get("EnableNetworkIsolation")), IMAGE_FIELD)
        archive = pack_model(local, Path(tmp) / "model.tar.gz")
        s3_storage(spec).copy(str(archive), artifact_uri)
    hook.create_model_once(config)
    return name


def console_url(name: str, region: str, partition: str = "aws") -> str:
    """The provider's transform-job console link (SageMakerTransformJobLink), formatted here so that the
    handle carries it (alerts, the step's "Remote job console" link)."""
    from airflow.providers.amazon.aws.links.sagemaker import SageMakerTransformJobLink

    return SageMakerTransformJobLink().format_link(
        aws_domain=SageMakerTransformJobLink.get_aws_domain(partition) or "aws.amazon.com",
        region_name=region, job_name=quote(name, safe=""))


def job_identity(spec: PipelineSpec, paths: RunPaths, model: dict) -> str:
    """What determines the job's result (see job_names): model version, prepared input, settings."""
    storage = s3_storage(spec)  # the storage write_request_files reads the prepared files with
    prepared = files_fingerprint(storage, storage.files(paths.prepared))
    return result_identity(model, prepared, spec.predict.model_dump(exclude={"labels"}, mode="json"))


class SageMakerBackend(Backend):
    """Batch Transform jobs (see the module docstring). Handle: job_name, region, aws_conn_id, attempt,
    output_uri, console_url."""

    name = BACKEND
    job_label = "SageMaker transform job"

    def submit(self, request: JobRequest) -> Submission:
        """Submit the transform job, or find this run's job (a retry re-attaches); never waits."""
        spec, paths, model = request.spec, request.paths, request.model
        require_runnable(spec, BACKEND)
        cfg = spec.predict.sagemaker
        hook = TransformJobHook(cfg.aws_conn_id, cfg.region)
        identity = job_identity(spec, paths, model)
        attempt = find_attempt(lambda n: job_name(spec.name, request.run_id, request.task_id, n,
                                                  identity=identity), hook.job_verdict)
        region = cfg.region or hook.conn_region_name
        output_uri = join(staging_uri(spec, request.run_id), attempt.name, "output")
        handle = {"backend": BACKEND, "job_name": attempt.name, "region": region,
                  "aws_conn_id": cfg.aws_conn_id, "attempt": attempt.number, "output_uri": output_uri,
                  "console_url": console_url(attempt.name, region, hook.conn_partition)}
        if attempt.verdict == "succeeded":
            log.info("Transform job %s already completed: re-using its output", attempt.name)
            return Submission(handle, "succeeded")
        if attempt.verdict == "active":
            log.info("Re-attaching to running transform job %s (%s)", attempt.name, handle["console_url"])
            return Submission(handle, "running")
        model_ref = sync_model(hook, spec, model)
        input_uri = join(staging_uri(spec, request.run_id), attempt.name, "input")
        write_request_files(spec, s3_storage(spec), paths.prepared, input_uri)
        config = transform_config(spec, attempt.name, {**model, "sagemaker_model": model_ref},
                                  input_uri + "/", output_uri, request.run_id)
        hook.submit_transform_job(config)
        log.info("Created SageMaker transform job %s (%s)", attempt.name, handle["console_url"])
        return Submission(handle, "submitted")

    def trigger(self, handle: Handle) -> SageMakerTransformTrigger:
        return SageMakerTransformTrigger(job_name=handle["job_name"], job_type="Transform",
                                         waiter_delay=POLL_SECONDS, waiter_max_attempts=100_000,
                                         aws_conn_id=handle["aws_conn_id"], region_name=handle["region"])

    def describe(self, handle: Handle) -> JobState:
        job = hook_for(handle).describe_transform_job(handle["job_name"])
        status = job["TransformJobStatus"]
        phase = "succeeded" if status in SUCCEEDED else "failed" if status in FAILED else "running"
        return JobState(phase, f"{status}: {job.get('FailureReason', '')}", job)

    def complete(self, request: JobRequest, handle: Handle, event: dict | None) -> dict | None:
        """As the default, except that a trigger that gave up (timeout, crash) while the job runs on
        means waiting again, never failing or abandoning a healthy job."""
        if not (isinstance(event, dict) and event.get("status") == "success"):
            verdict, _ = hook_for(handle).job_verdict(handle["job_name"])
            if verdict == "active":
                log.warning("Trigger of %s reported %s while the job runs on: waiting again",
                            handle["job_name"], event)
                return WAIT_AGAIN
        return super().complete(request, handle, event)

    def result(self, request: JobRequest, handle: Handle, state: JobState) -> dict:
        """The job's `.out` answers joined to the prepared files' ids and staged for publish, with the
        predictions' statistics taken in that read (`batch_predictions`). The model version is the one
        of the job's own SageMaker Model, not the one assumed."""
        from mlbatch.backends.batch_predictions import stage_batch_predictions

        files = s3_storage(request.spec).files(handle["output_uri"])
        if not files:
            raise RemoteJobError(f"{request.spec.name}: transform job {handle['job_name']} completed but wrote "
                                 f"nothing under {handle['output_uri']}")
        version = hook_for(handle).job_model_version(state.job, request.model["name"])
        return {"backend": BACKEND, "model_version": version, "job_name": handle["job_name"],
                "raw_predictions_uri": handle["output_uri"], "output_files": len(files),
                **stage_batch_predictions(request.spec, request.paths, handle["output_uri"], version)}

    def cancel(self, handle: Handle) -> None:
        hook_for(handle).stop_job(handle["job_name"])

    def log_tail(self, handle: Handle, lines: int) -> list[str]:
        return hook_for(handle).log_tail(handle["job_name"], lines)

    def failure_reason(self, handle: Handle) -> str:
        """The container's answer to the refused request, from the job's CloudWatch data-log stream: the
        job's FailureReason only says "ClientError: See job logs for more information"."""
        return container_reason(hook_for(handle).log_tail(handle["job_name"], FAILURE_LOG_LINES))


def s3_storage(spec: PipelineSpec) -> Storage:
    """The storage layer with the SageMaker connection for s3:// staging."""
    return Storage(aws_conn_id=spec.predict.sagemaker.aws_conn_id, gcp_conn_id=spec.storage.gcp_conn_id)

