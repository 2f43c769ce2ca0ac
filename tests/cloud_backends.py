"""Helpers shared by the cloud-backend tests: an Airflow connection to the moto server, the two
SageMaker behaviours moto lacks, and the task-instance surface the operators use.

moto (5.2) creates transform jobs already `Completed` and has no StopTransformJob. To test waiting,
re-attaching and cancelling, `sagemaker_lifecycle` makes new jobs start `InProgress` and adds
StopTransformJob (-> `Stopped`; an ended job is refused with ValidationException, as the service
does) to the in-process moto server. Everything else is moto's own
behaviour behind real HTTP, with botocore validating each request against the real API model.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

ACCOUNT = "123456789012"
# StopTransformJob on a job in these states is refused with ValidationException (the message follows the
# service's answer to StopTrainingJob on an ended job: awslabs/benchmark-ai#928; the transform text is unverified)
ENDED = ("Completed", "Failed", "Stopped")


@pytest.fixture
def aws_conn(moto_server, monkeypatch):
    """Every AWS hook (S3, SageMaker, CloudWatch Logs) reaches the moto server over HTTP."""
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": moto_server.endpoint_url, "region_name": moto_server.region}}))
    monkeypatch.setenv("AWS_DEFAULT_REGION", moto_server.region)
    before = set(moto_transform_jobs(moto_server.region))
    yield moto_server
    jobs = moto_transform_jobs(moto_server.region)  # moto has no DeleteTransformJob: clean up here
    for name in set(jobs) - before:
        del jobs[name]


def moto_transform_jobs(region: str = "us-east-1") -> dict:
    from moto.sagemaker.models import sagemaker_backends

    return sagemaker_backends[ACCOUNT][region].transform_jobs


@pytest.fixture
def sagemaker_lifecycle(monkeypatch):
    """Jobs start InProgress (as on AWS) and can be stopped; tests end a job with `finish(name, s)`."""
    from moto.core.responses import EmptyResult
    from moto.sagemaker.exceptions import ValidationError
    from moto.sagemaker.models import FakeTransformJob
    from moto.sagemaker.responses import SageMakerResponse

    original = FakeTransformJob.__init__

    def in_progress(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.transform_job_status = "InProgress"

    def stop_transform_job(self):
        job = self.sagemaker_backend.transform_jobs[self._get_param("TransformJobName")]
        if job.transform_job_status in ENDED:  # as the service: an ended job cannot be stopped
            raise ValidationError(message="The request was rejected because the transform job is in status "
                                          f"{job.transform_job_status}.")
        job.transform_job_status = "Stopped"
        return EmptyResult()

    monkeypatch.setattr(FakeTransformJob, "__init__", in_progress)
    monkeypatch.setattr(SageMakerResponse, "stop_transform_job", stop_transform_job, raising=False)

    def finish(name: str, status: str, reason: str = "") -> None:
        job = moto_transform_jobs()[name]
        job.transform_job_status, job.failure_reason = status, reason

    return finish


@dataclass
class TaskInstanceXCom:
    """The XCom surface of a task instance (push/pull), for driving one operator outside a DAG run.
    The end-to-end tests use real task instances through dag.test()."""

    upstream: dict[str, Any]
    pushed: dict[str, Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value

    def xcom_pull(self, task_ids: str | None = None, key: str = "return_value", **_: Any) -> Any:
        if key == "return_value" and task_ids in self.upstream:
            return self.upstream[task_ids]
        return self.pushed.get(key)


def task_context(run_id: str, ds: str, model: dict) -> dict:
    ti = TaskInstanceXCom(upstream={"resolve_model": model})
    return {"run_id": run_id, "ds": ds, "ds_nodash": ds.replace("-", ""), "params": {}, "ti": ti,
            "task_instance": ti}


@pytest.fixture
def sagemaker_dataplane(aws_conn, model_containers, monkeypatch):
    """Transform jobs that run: when moto accepts CreateTransformJob, the container of the Model the job
    names starts (tests/dataplane/containers.py: its `ModelDataUrl` unpacked and served by a real MLflow
    scoring server, under the image's start-up rules), and the Batch Transform data-plane emulator
    (tests/dataplane/sagemaker_transform.py) reads the job's S3 input, posts it to that container as the
    job says, writes `<input>.out`, and ends the moto job Completed, or Failed with the reason the
    service would give. Returns the requests it ran, by job name."""
    from moto.sagemaker.models import SageMakerModelBackend

    from dataplane.containers import ContainerFailed
    from dataplane.sagemaker_transform import JobLog, TransformFailed, run_transform

    keep_network_isolation(monkeypatch)
    original = SageMakerModelBackend.create_transform_job
    ran: dict[str, dict] = {}

    def create_and_run(self, transform_job_name, *args, **kwargs):
        job = original(self, transform_job_name, *args, **kwargs)
        request = {"TransformJobName": job.transform_job_name, "ModelName": job.model_name,
                   "BatchStrategy": job.batch_strategy, "MaxPayloadInMB": job.max_payload_in_mb,
                   "TransformInput": job.transform_input, "TransformOutput": job.transform_output,
                   "DataProcessing": job.data_processing}
        ran[transform_job_name] = request
        model = self.describe_model(job.model_name)
        s3 = aws_conn.client("s3")
        try:
            container_url = model_containers.sagemaker(
                {"PrimaryContainer": model.primary_container,
                 "EnableNetworkIsolation": model.enable_network_isolation}, s3)
            run_transform(request, s3, container_url)
            job.transform_job_status, job.failure_reason = "Completed", ""
        except ContainerFailed as exc:  # the service's text; what the container printed is in its log
            job.transform_job_status, job.failure_reason = "Failed", exc.reason
            if exc.log:
                log = JobLog(request)
                log.instance_lines += exc.log.splitlines()
                log.write(s3)
        except TransformFailed as exc:
            job.transform_job_status, job.failure_reason = "Failed", str(exc)
        return job

    monkeypatch.setattr(SageMakerModelBackend, "create_transform_job", create_and_run)
    return ran


def keep_network_isolation(monkeypatch) -> None:
    """moto (5.2) drops CreateModel's EnableNetworkIsolation (its Model always says False): keep it."""
    from moto.sagemaker.responses import SageMakerResponse

    original = SageMakerResponse.create_model

    def create_model(self):
        result = original(self)
        model = self.sagemaker_backend.describe_model(self._get_param("ModelName"))
        model.enable_network_isolation = bool(self._get_param("EnableNetworkIsolation"))
        return result

    monkeypatch.setattr(SageMakerResponse, "create_model", create_model)


def upload_model_archive(s3, bucket: str, key: str, model_uri: str, work) -> str:
    """The MLflow model as the SageMaker backend ships it (`pack_model`: model.tar.gz) at s3://bucket/key."""
    import mlflow

    from mlbatch.backends.sagemaker import pack_model

    work.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(work))
    archive = pack_model(__import__("pathlib").Path(local), work / "model.tar.gz")
    s3.upload_file(str(archive), bucket, key)
    return f"s3://{bucket}/{key}"


def direct_model_predictions(rows, model_uri: str, features: list[str], work) -> "pd.Series":  # noqa: F821
    """The direct-model backend's predictions (mlbatch_beam.score on the local FnApiRunner) for these
    rows, by id: what the batch-prediction backends must reproduce."""
    import pyarrow.parquet as pq

    from mlbatch_beam import score

    work.mkdir(parents=True, exist_ok=True)
    rows[["id", *features]].to_parquet(work / "rows.parquet", index=False)
    score.run(["--input", str(work / "rows.parquet"), "--model-uri", model_uri, "--id-column", "id",
               "--feature-columns", ",".join(features), "--output-dir", str(work / "scored"),
               "--output-format", "parquet", "--prediction-column", "prediction",
               "--result-file", str(work / "result.json"), "--runner=FnApiRunner"])
    scored = pq.read_table(sorted((work / "scored").glob("*.parquet"))).to_pandas()
    return scored.set_index("id")["prediction"]


@contextmanager
def pipeline_outputs_moved():
    """Around a `dag.test` whose pipelines publish somewhere else than the other tests' (dev paths ->
    gs:// or s3://): forget which URI each pipeline asset was active with, before and after. In the
    session's shared Airflow DB, `dag.test` writes every DAG of the file and Airflow refuses an outlet
    whose name is still active with another URI; on a live deployment the scheduler's asset orphanage
    retires the old URI once the DAG is re-parsed, but `dag.test` runs no scheduler."""
    retire_pipeline_assets()
    try:
        yield
    finally:
        retire_pipeline_assets()


def retire_pipeline_assets() -> None:
    from airflow.models.asset import AssetActive
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        session.execute(delete(AssetActive).where(AssetActive.name.startswith("mlbatch/")))
