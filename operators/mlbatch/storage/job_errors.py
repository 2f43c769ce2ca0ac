"""A local Beam job's storage failure, named as the storage layer names its own (mlbatch.storage.translate).

Why: the Beam jobs run as child processes (mlbatch.run.job_process) and reach the stores through Beam's
own filesystems, not ours; their errors reach the task only as the job's last lines, e.g.
`google.cloud.storage.exceptions.InvalidResponse: (404, 'Expected one of', ...)` from an upload to a
missing GCS bucket, or `S3ClientError: ("An error occurred (NoSuchBucket) ...", 404)` from Beam's S3
client. So the job's final exception line is read for what the libraries put there on purpose: the AWS
error code, the HTTP status of Google's storage client, the exception's name; and a job that found no
input file is asked about (does the input's bucket exist?). The error names the job's URI whose bucket
the line names (else the job's first URI on that store) and the connection the step reached it through.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from mlbatch.errors import (BucketNotFoundError, RemoteJobError, StorageAccessDeniedError, StorageCredentialsError,
                            StorageError, StorageUnreachableError)
from mlbatch.storage.layer import Storage, bucket, scheme
from mlbatch.storage.translate import (AWS_BUCKET_CODES, AWS_CREDENTIAL_CODES, AWS_DENIED_CODES, FIX_BUCKET,
                                       FIX_CREDENTIALS, FIX_DENIED, FIX_UNREACHABLE)

_EXCEPTION = re.compile(r"^(?P<name>[A-Za-z_][\w.]*(?:Error|Exception|Exit|Response|Found|Forbidden|Unauthorized)): ")
_AWS_CODE = re.compile(r"An error occurred \((?P<code>[\w.]+)\)")
# google-cloud-storage / google-resumable-media: InvalidResponse: (<status>, 'Expected one of', ...)
_GCS_STATUS = re.compile(r"InvalidResponse: \((?P<status>\d{3}),")
# google-api-core's classes in a Beam listing error: NotFound('GET .../storage/v1/b/<bucket>/o?...')
_GOOGLE_CLASS = re.compile(r"\b(?P<cls>NotFound|Forbidden|Unauthorized)\(['\"](?:GET|POST|PUT|DELETE|PATCH) ")
_UPLOAD = re.compile(r"InvalidResponse: |calling the (?:CreateMultipartUpload|PutObject|UploadPart|"
                     r"CompleteMultipartUpload) operation")
_NO_INPUT = re.compile(r"No input files match pattern '(?P<uri>[^']+)'")
UNREACHABLE = ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionRefusedError", "NewConnectionError",
               "ClientConnectorError", "Could not connect to the endpoint URL", "Failed to establish a new connection")
NO_CREDENTIALS = {"NoCredentialsError": "s3", "PartialCredentialsError": "s3",  # botocore
                  "DefaultCredentialsError": "gs", "RefreshError": "gs"}        # google-auth


@contextmanager
def job_storage_errors(storage: Storage, reads: list[str], writes: list[str]) -> Iterator[None]:
    """Around a job process's run: its failure becomes our StorageError when its last lines say why.
    `reads`, `writes`: the URIs the job reads and the folders it writes."""
    try:
        yield
    except RemoteJobError as failed:
        ours = job_storage_error(str(failed), reads, writes, storage)
        if ours is None:
            raise
        raise ours from failed


def job_storage_error(output: str, reads: list[str], writes: list[str], storage: Storage) -> StorageError | None:
    """Our error for a job that failed with `output` (its last lines) while reading `reads` and writing
    `writes`; None when the output says no storage failure."""
    line = final_exception(output)
    remote = [u for u in reads + writes if scheme(u) in ("s3", "gs")]
    if _UPLOAD.search(line):  # a write that names no bucket (google's InvalidResponse): the job's output
        remote = [u for u in writes if scheme(u) in ("s3", "gs")] or remote
    if not line or not remote:
        return None
    kind, error, fix = _kind(line)
    if kind is None:
        return _no_input(line, remote, storage)
    uri = _named_uri(line, remote, kind)
    endpoint = None
    if error is StorageUnreachableError:
        match = re.search(r"endpoint URL: \"?(?P<url>[^\"\s]+)", line)
        endpoint = match.group("url") if match else None
    return error(uri, storage.conn_id(uri), fix, _cause(line), endpoint=endpoint)


def final_exception(output: str) -> str:
    """The last `<ExceptionName>: <message>` line of a job's output ("" when there is none)."""
    for line in reversed(output.splitlines()):
        if _EXCEPTION.match(line.strip()):
            return line.strip()
    return ""


def _kind(line: str) -> tuple[str | None, type[StorageError], str]:
    """(store kind "s3"/"gs"/"", our error class, what to do), or (None, ...) for none of ours."""
    aws = _AWS_CODE.search(line)
    if aws:
        code = aws.group("code")
        for codes, error, fix in ((AWS_BUCKET_CODES, BucketNotFoundError, FIX_BUCKET),
                                  (AWS_CREDENTIAL_CODES, StorageCredentialsError, FIX_CREDENTIALS),
                                  (AWS_DENIED_CODES, StorageAccessDeniedError, FIX_DENIED)):
            if code in codes:
                return "s3", error, fix
        return None, StorageError, ""
    status = _GCS_STATUS.search(line)
    google = _GOOGLE_CLASS.search(line)
    code = int(status.group("status")) if status else {"NotFound": 404, "Forbidden": 403,
                                                       "Unauthorized": 401}.get(google.group("cls") if google else "")
    # a 404 here is an upload (InvalidResponse) or a listing (NotFound on .../o?): only the bucket can be missing
    found = {404: (BucketNotFoundError, FIX_BUCKET), 403: (StorageAccessDeniedError, FIX_DENIED),
             401: (StorageCredentialsError, FIX_CREDENTIALS)}.get(code or 0)
    if found:
        return "gs", *found
    if any(name in line for name in UNREACHABLE):
        return "", StorageUnreachableError, FIX_UNREACHABLE
    for name, kind in NO_CREDENTIALS.items():
        if name in line:
            return kind, StorageCredentialsError, FIX_CREDENTIALS
    return None, StorageError, ""


def _named_uri(line: str, remote: list[str], kind: str) -> str:
    """The job's URI whose bucket the line names; else its first on the store of that kind."""
    for uri in remote:
        if re.search(rf"(?<![\w.-]){re.escape(bucket(uri))}(?![\w.-])", line):
            return uri
    on_kind = [u for u in remote if scheme(u) == kind] if kind else []
    return (on_kind or remote)[0]


def _no_input(line: str, remote: list[str], storage: Storage) -> StorageError | None:
    """The job found no file for an input pattern: a missing bucket if the store says so (Beam's S3
    listing of a missing bucket answers an empty list)."""
    match = _NO_INPUT.search(line)
    if not match or scheme(match.group("uri")) not in ("s3", "gs"):
        return None
    uri = match.group("uri")
    missing = storage.bucket_absent(uri)  # None: no right to look at the bucket; the job's own error stands
    return BucketNotFoundError(uri, storage.conn_id(uri), FIX_BUCKET, _cause(line)) if missing else None


def _cause(line: str) -> str:
    text = " ".join(line.split())
    return text if len(text) <= 300 else text[:299] + "…"
