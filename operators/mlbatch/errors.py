"""Every exception the bundle raises on purpose, in one place, and which failures a retry can fix.

`PermanentError` marks what a retry cannot fix (the spec, the model, the data or the run's conf must
change first): a task that raises one fails at once, without waiting for its retries
(`mlbatch.operators.fail_fast`). `retry_verdict` also classifies the errors of the libraries we call
(MLflow, botocore, google-api-core) by their type and code, never by their message. The table of which
error is which: docs/errors.md.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class PermanentError(Exception):
    """Base of the errors a retry cannot fix: the task fails at once, with this error and its message."""


@dataclass(frozen=True)
class SpecProblem:
    where: str  # dotted field path, "" for the whole document
    value: Any
    expected: str


class SpecError(PermanentError, ValueError):
    """A pipeline spec is invalid. The message names the file, the field (and line), the value and
    what was expected, one problem per line."""

    def __init__(self, path: Path, problems: list[SpecProblem], lines: dict[str, int] | None = None):
        self.path, self.problems = path, problems
        lines = lines or {}
        rendered = []
        for p in problems:
            line = _nearest_line(p.where, lines)
            at = f"{path}:{line}" if line else str(path)
            field = p.where or "<document>"
            value = "" if p.value is None else f" = {_short(p.value)}"
            rendered.append(f"{at}: {field}{value}: expected {p.expected}")
        super().__init__("\n".join(rendered))


class BrokenSpecError(PermanentError, ValueError):
    """A run of a broken spec's placeholder DAG (see `mlbatch.spec.broken`): says why it cannot run."""


class TriggerConfError(PermanentError, ValueError):
    """A run's conf holds keys that are not trigger params of its pipeline (`mlbatch.spec.trigger_conf`)."""

    def __init__(self, pipeline: str, unknown: list[str], valid: list[str]):
        self.pipeline, self.unknown, self.valid = pipeline, unknown, valid
        names = ", ".join(unknown)
        allowed = ", ".join(valid) or "none (this pipeline takes no trigger params)"
        super().__init__(f"{pipeline}: the run's conf has {'a key' if len(unknown) == 1 else 'keys'} that "
                         f"{'is not a trigger param' if len(unknown) == 1 else 'are not trigger params'}: "
                         f"{names}. Valid keys: {allowed}. Trigger a new run without "
                         f"{'it' if len(unknown) == 1 else 'them'}.")


class BackendConfigError(PermanentError, ValueError):
    """The spec's backend settings cannot make a valid job request (found when the job is built)."""


class ServingImageError(BackendConfigError):
    """The serving image would have to install the model's requirements at start, and the job's network
    isolation leaves it no package index (mlbatch.backends.serving_image): the container could not start."""


class PreparedInputMissingError(PermanentError, RuntimeError):
    """predict found no prepared input where prep left it: prep must run again (clear it), a retry of
    predict alone would find the same nothing."""


class CountMismatchError(PermanentError, RuntimeError):
    """Rows in != rows scored + rows rejected: refuse to publish rather than lose rows silently. Not
    retried: publish would re-read the same staged files; clear predict to score again."""


class TooManyRejectedError(PermanentError, RuntimeError):
    """The rejected fraction of the input exceeds the spec's `prep.max_rejected_fraction`."""


class NoValidRowsError(TooManyRejectedError):
    """prep found no valid row: there is nothing to predict."""


class ModelNotFoundError(PermanentError, LookupError):
    """The spec's model, alias or version is not in the registry."""


class ModelMismatchError(PermanentError, ValueError):
    """The spec's features do not fit the model's signature."""


class ServedVersionError(PermanentError, RuntimeError):
    """`backend: endpoint`: the endpoint serves another model version than the run pinned, or cannot
    tell which one it serves; found before any row is scored (mlbatch.backends.served_version)."""


class RemoteJobError(RuntimeError):
    """A Beam or batch-prediction job ended in failure. Retried: the job's state alone does not say why
    (preemption, an internal error, a killed worker look the same)."""


class ContainerRefusedError(PermanentError, RemoteJobError):
    """A job failed because the model container refused its requests with an HTTP 4xx from /invocations
    (schema enforcement, input it cannot read; not a timeout or throttling): the same files get the same
    answer, so it is not retried. Carried by the failure reason (mlbatch.backends.failure_reasons.Reason),
    never read from the message. Still a `RemoteJobError` for callers that catch one."""


class PartitionBusyError(RuntimeError):
    """Another run holds the output partition's lease and did not let go in time (mlbatch.run.lease)."""


class PartitionLeaseLostError(RuntimeError):
    """This run's partition lease expired and another writer took over, or a pointer changed under it:
    nothing of this run was committed."""


class WaitFailedError(RuntimeError):
    """Waiting for the input ended without it: the trigger reported an error, or the upstream task or
    DAG run it waited for failed or was skipped. Retried: the upstream may be re-run meanwhile."""


class StatisticsError(PermanentError, ValueError):
    """Column statistics that cannot be read, merged or compared (`mlbatch.quality`; the jobs raise
    `mlbatch_beam.quality.StatisticsError`, which the gate re-raises as this one): values of the
    wrong kind for the summary, summaries of different columns, kinds or bin edges, a stored summary
    that is not one. The message names the column and both sides."""


class GateRejectedError(PermanentError, RuntimeError):
    """The quality gate's decision was Reject (in Slack, the Airflow UI, the REST API, or the spec's
    `quality.on_timeout` when nobody answered): nothing is published. The message says who and why."""


class ConnectionNotFoundError(PermanentError, LookupError):
    """A spec needs an Airflow connection that does not exist (and the environment cannot stand in
    for it): the message names the connection id, the spec field naming it and the URI it is for."""


class StorageError(RuntimeError):
    """A store refused a request or could not be reached (`mlbatch.storage.translate`). The message
    names the URI, its bucket, the Airflow connection it went through, and what to do."""

    what = "storage request failed"

    def __init__(self, uri: str, conn_id: str | None, fix: str, cause: str = "", *, endpoint: str | None = None):
        self.uri, self.conn_id, self.fix, self.cause, self.endpoint = uri, conn_id, fix, cause, endpoint
        self.bucket = _bucket(uri)
        where = [f"bucket {self.bucket!r}"] if self.bucket else []
        where += [f"connection {conn_id!r}"] if conn_id else []
        where += [f"endpoint {endpoint}"] if endpoint else []
        text = f"{self.what}: {uri}" + (f" ({', '.join(where)})" if where else "") + f". {fix}"
        super().__init__(text + (f" [{cause}]" if cause else ""))


class BucketNotFoundError(StorageError, PermanentError):
    """The bucket of a URI does not exist. Not retried: someone must create it or fix the spec."""

    what = "bucket does not exist"


class StorageAccessDeniedError(StorageError, PermanentError):
    """The connection's identity may not do this request (HTTP 403). Not retried: grant access first."""

    what = "access denied"


class StorageCredentialsError(StorageError, PermanentError):
    """The connection's credentials are missing, unknown or wrong (S3 InvalidAccessKeyId,
    SignatureDoesNotMatch; no credentials found). Not retried: fix the connection first."""

    what = "credentials rejected"


class StorageUnreachableError(StorageError):
    """The store's endpoint does not answer (connection refused, unknown host, timeout). Retried as
    `tasks.retries` say: a network outage may pass; a wrong endpoint in the connection will not."""

    what = "storage endpoint unreachable"


def _bucket(uri: str) -> str:
    head, sep, rest = uri.partition("://")
    return rest.split("/", 1)[0] if sep and head in ("gs", "s3") else ""


# --- which failures a retry can fix --------------------------------------------------------------

# AWS error codes (ClientError.response["Error"]["Code"]) that say the request itself is wrong.
AWS_PERMANENT_CODES = frozenset({
    "ValidationException", "ValidationError", "InvalidParameterValue", "InvalidParameterCombination",
    "MissingParameter", "AccessDenied", "AccessDeniedException", "UnauthorizedOperation",
    "UnrecognizedClientException", "InvalidClientTokenId", "InvalidSignatureException",
    "ResourceNotFound", "ResourceNotFoundException", "NoSuchBucket", "NoSuchKey",
})
# ... and those that say "later": throttling and the service's own trouble (also any HTTP 5xx).
AWS_TRANSIENT_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "RequestLimitExceeded", "SlowDown", "ServiceUnavailable", "ServiceUnavailableException",
    "InternalError", "InternalFailure", "InternalServerError", "InternalServerException",
    "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete", "ResourceLimitExceeded",
})
# google-api-core classes (HTTP/gRPC status) of a request that cannot succeed as sent.
GOOGLE_PERMANENT = ("BadRequest", "InvalidArgument", "FailedPrecondition", "OutOfRange", "Unauthorized",
                    "Unauthenticated", "Forbidden", "PermissionDenied", "NotFound", "MethodNotImplemented")
# MLflow's HTTP statuses (MlflowException.get_http_status_code) of a request that cannot succeed.
MLFLOW_PERMANENT_STATUS = frozenset({400, 401, 403, 404})


@dataclass(frozen=True)
class RetryVerdict:
    retry: bool
    reason: str


def retry_verdict(exc: BaseException) -> RetryVerdict:
    """Can a retry fix `exc`? By type and by the service's own code, never by message text.

    Our `PermanentError`s: no. MLflow 400/401/403/404, AWS validation/access/not-found codes, google
    InvalidArgument/FailedPrecondition/PermissionDenied/NotFound (and their HTTP twins): no. Everything
    else (network errors, HTTP 5xx, throttling, preempted or failed remote jobs, timeouts, bugs): yes,
    as Airflow's `retries` say. A library error is only looked up when its library is already imported
    (it cannot have been raised otherwise), so classifying costs no import."""
    if isinstance(exc, PermanentError):
        return RetryVerdict(False, f"{type(exc).__name__}: a retry cannot fix it")
    airflow = sys.modules.get("airflow.sdk.exceptions")
    if airflow is not None and isinstance(exc, airflow.AirflowSensorTimeout):  # Airflow fails it at once anyway
        return RetryVerdict(False, "AirflowSensorTimeout: the wait's deadline passed (Airflow never retries it)")
    mlflow = sys.modules.get("mlflow.exceptions")
    if mlflow is not None and isinstance(exc, mlflow.MlflowException):
        status = exc.get_http_status_code()
        if status in MLFLOW_PERMANENT_STATUS:
            return RetryVerdict(False, f"MLflow answered {exc.error_code} (HTTP {status})")
        return RetryVerdict(True, f"MLflow answered {exc.error_code} (HTTP {status}): may pass on retry")
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is not None and isinstance(exc, botocore.ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code in AWS_TRANSIENT_CODES or status >= 500:
            return RetryVerdict(True, f"AWS answered {code} (HTTP {status}): may pass on retry")
        if code in AWS_PERMANENT_CODES:
            return RetryVerdict(False, f"AWS answered {code} (HTTP {status})")
        return RetryVerdict(True, f"AWS answered {code} (HTTP {status})")
    google = sys.modules.get("google.api_core.exceptions")
    if google is not None and isinstance(exc, google.GoogleAPICallError):
        permanent = tuple(getattr(google, name) for name in GOOGLE_PERMANENT if hasattr(google, name))
        if isinstance(exc, permanent):
            return RetryVerdict(False, f"Google API answered {type(exc).__name__} (HTTP {exc.code})")
        return RetryVerdict(True, f"Google API answered {type(exc).__name__} (HTTP {exc.code}): may pass on retry")
    return RetryVerdict(True, f"{type(exc).__name__}: may pass on retry")


def _nearest_line(where: str, lines: dict[str, int]) -> int | None:
    parts = where.split(".") if where else []
    while parts:
        key = ".".join(parts)
        if key in lines:
            return lines[key]
        parts.pop()
    return None


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
