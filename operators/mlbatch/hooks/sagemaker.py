"""SageMaker Batch Transform through the amazon provider's `SageMakerHook` (connection, region, boto
client), plus: a job's verdict for a (re)try, a Model created once, submitting without waiting, the
MLflow version a job ran, stopping a job that may still be on its way, CloudWatch log tails.
AWS errors are told apart by their code, never their message."""

from __future__ import annotations

import logging
import time

from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

from mlbatch.errors import RemoteJobError
from mlbatch.hooks import verdict

log = logging.getLogger(__name__)
SUCCEEDED = {"Completed"}
ENDING = {"Stopping"}
FAILED = {"Failed", "Stopped"}
LOG_GROUP = "/aws/sagemaker/TransformJobs"
EVENTS_PER_CALL = 10_000  # GetLogEvents' largest `limit`; a response may still hold fewer (1 MB cap)
# SageMaker answers a Describe* of an unknown name with ValidationException (ResourceNotFound on some APIs)
NOT_FOUND_CODES = ("ValidationException", "ResourceNotFound")


def error_code(exc: Exception) -> str | None:
    """The AWS error code of a botocore `ClientError` (matched instead of its message text)."""
    return getattr(exc, "response", {}).get("Error", {}).get("Code")


class TransformJobHook(SageMakerHook):
    def __init__(self, aws_conn_id: str | None = "aws_default", region_name: str | None = None):
        super().__init__(aws_conn_id=aws_conn_id, region_name=region_name)

    def job_verdict(self, name: str) -> tuple[str, dict | None]:
        """(absent | active | ending | succeeded | failed, the job): mlbatch.backends.job_names.Verdict."""
        from botocore.exceptions import ClientError

        try:
            job = self.describe_transform_job(name)
        except ClientError as exc:
            if error_code(exc) in NOT_FOUND_CODES:
                return "absent", None
            raise
        return verdict(job["TransformJobStatus"], succeeded=SUCCEEDED, ending=ENDING, failed=FAILED), job

    def model_exists(self, name: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.describe_model(name)
        except ClientError as exc:
            if error_code(exc) in NOT_FOUND_CODES:
                return False
            raise
        return True

    def create_model_once(self, config: dict) -> None:
        """CreateModel; SageMaker refuses an existing name with the same code as a bad request: if the
        model is there now, another run created it in between (the same version); else the error stands."""
        from botocore.exceptions import ClientError

        try:
            self.create_model(config)
        except ClientError as exc:
            if error_code(exc) != "ValidationException" or not self.model_exists(config["ModelName"]):
                raise

    def submit_transform_job(self, config: dict) -> None:
        """CreateTransformJob without waiting: the task defers on its own trigger."""
        response = self.create_transform_job(config, wait_for_completion=False)
        if response["ResponseMetadata"]["HTTPStatusCode"] != 200:
            raise RemoteJobError(f"CreateTransformJob {config['TransformJobName']} answered {response}")

    def job_model_version(self, job: dict, model_name: str) -> int:
        """The MLflow version the job's SageMaker Model was made from (its `mlbatch-model` tag)."""
        described = self.describe_model(job["ModelName"])
        tags = self.conn.list_tags(ResourceArn=described["ModelArn"])["Tags"]
        value = next((t["Value"] for t in tags if t["Key"] == "mlbatch-model"), None)
        if value is None:
            raise RemoteJobError(f"transform job {job['TransformJobName']} used model {job['ModelName']}, "
                                 "which has no mlbatch-model tag: cannot tell which version produced its rows")
        name, _, version = value.rpartition("/")
        if name != model_name:
            raise RemoteJobError(f"transform job {job['TransformJobName']} ran model {value}, not {model_name}")
        return int(version)

    def stop_job(self, name: str, *, appear_s: float = 10.0) -> None:
        """Stop a transform job; one that already ended is left as it is and its final state logged.

        StopTransformJob on an ended job is a ValidationException, so the answer decides, not a look
        before (the job may end between the two). A kill can come while CreateTransformJob is on its way:
        a job not there yet is looked for by its deterministic name for `appear_s` seconds, so it cannot
        start after the task is gone."""
        from botocore.exceptions import ClientError

        deadline = time.monotonic() + appear_s
        verdict_, _ = self.job_verdict(name)
        while verdict_ == "absent" and time.monotonic() < deadline:
            time.sleep(1.0)
            verdict_, _ = self.job_verdict(name)
        if verdict_ == "absent":
            return
        try:
            self.conn.stop_transform_job(TransformJobName=name)
        except ClientError as exc:
            status = self.describe_transform_job(name)["TransformJobStatus"]
            if error_code(exc) != "ValidationException" or status not in SUCCEEDED | FAILED:
                raise
            log.info("Transform job %s already ended (%s): nothing to stop", name, status)

    def log_tail(self, job_name: str, lines: int) -> list[str]:
        """The last `lines` lines of the job's CloudWatch Logs: every stream of the job (one per instance,
        plus data-log streams), however many pages of streams and events, merged by time."""
        from airflow.providers.amazon.aws.hooks.logs import AwsLogsHook

        logs = AwsLogsHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name).conn
        events = []
        for index, stream in enumerate(_job_streams(logs, job_name)):
            tail = _stream_tail(logs, stream, lines)
            events += [(e["timestamp"], index, seq, stream, e["message"]) for seq, e in enumerate(tail)]
        events.sort()
        return [f"[{s.split('/', 1)[-1]}] {m.rstrip()}" for _, _, _, s, m in events[-lines:]]


def _job_streams(logs, job_name: str) -> list[str]:
    """Names of all the job's streams (`<job name>/<instance>[/data-log]`), every page."""
    pages = logs.get_paginator("describe_log_streams").paginate(logGroupName=LOG_GROUP,
                                                                logStreamNamePrefix=job_name + "/")
    return [s["logStreamName"] for page in pages for s in page["logStreams"]]


def _stream_tail(logs, stream: str, lines: int) -> list[dict]:
    """The stream's last `lines` events, oldest first: pages backwards from the end of the stream until
    enough, or until the service hands back the token it was given (the start of the stream)."""
    events: list[dict] = []
    token = None
    while len(events) < lines:
        page = logs.get_log_events(logGroupName=LOG_GROUP, logStreamName=stream, startFromHead=False,
                                   limit=min(lines - len(events), EVENTS_PER_CALL),
                                   **({"nextToken": token} if token else {}))
        events = page["events"] + events
        if page["nextBackwardToken"] == token:
            break
        token = page["nextBackwardToken"]
    return events[-lines:] if lines > 0 else []
