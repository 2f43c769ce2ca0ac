"""One place that turns the storage libraries' errors into ours, each naming the URI, its bucket, the
Airflow connection and what to do (mlbatch.errors: BucketNotFoundError, StorageAccessDeniedError,
StorageCredentialsError, StorageUnreachableError).

botocore, s3fs, gcsfs and google-cloud-storage each say the same thing their own way: s3fs turns
`NoSuchBucket` into a bare `FileNotFoundError` (the ClientError stays its `__cause__`), gcsfs answers a
missing bucket with `FileNotFoundError(<request path>)`, google-cloud-storage with `NotFound`. So the
whole exception chain is read, by type and by the service's error code, never by message text. A
`FileNotFoundError` on GCS is a missing bucket only when a look at the bucket says so (`bucket_missing`);
otherwise it stays what it was (a missing object or folder, which callers handle).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from mlbatch.errors import (BucketNotFoundError, StorageAccessDeniedError, StorageCredentialsError, StorageError,
                            StorageUnreachableError)

AWS_BUCKET_CODES = frozenset({"NoSuchBucket"})
AWS_DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "AllAccessDisabled", "Forbidden", "403"})
AWS_CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId",
                                  "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "AuthorizationHeaderMalformed"})

FIX_BUCKET = "Create the bucket, or correct the URI in the spec"
FIX_DENIED = "Grant the connection's identity access to this bucket, or use a connection that has it"
FIX_CREDENTIALS = ("Check the connection's key and secret (or its key file / service account); for S3 the key id "
                   "must exist and the secret must match it")
FIX_UNREACHABLE = ("Check the endpoint in the connection (extra `endpoint_url` for S3, `STORAGE_EMULATOR_HOST` "
                   "or extra `gcs.endpoint` for GCS) and that the service is up and reachable from the worker")


def chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from or during, once each."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def translated(exc: BaseException, uri: str, conn_id: str | None, *, listing: bool = False,
               bucket_missing: Callable[[], bool | None] | None = None) -> StorageError | None:
    """Our error for `exc` raised while reaching `uri`, or None when it is none of ours to name.

    `listing`: a 404 of this request can only mean a missing bucket (a listing, an object write).
    `bucket_missing`: asks the store, for a `FileNotFoundError` whose cause does not say."""
    if isinstance(exc, StorageError):
        return None
    for link in chain(exc):
        found = _classified(link, uri, conn_id, listing)
        if found is not None:
            return found
    if isinstance(exc, FileNotFoundError) and bucket_missing is not None and bucket_missing():
        return BucketNotFoundError(uri, conn_id, FIX_BUCKET, _cause(exc))
    return None


@contextmanager
def storage_errors(uri: str, conn_id: str | None, *, listing: bool = False,
                   bucket_missing: Callable[[], bool | None] | None = None) -> Iterator[None]:
    """Raise our error (from the original) for what `translated` names; anything else unchanged."""
    try:
        yield
    except Exception as exc:
        ours = translated(exc, uri, conn_id, listing=listing, bucket_missing=bucket_missing)
        if ours is None:
            raise
        raise ours from exc


def _classified(exc: BaseException, uri: str, conn_id: str | None, listing: bool) -> StorageError | None:
    cause = _cause(exc)
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is not None:
        if isinstance(exc, botocore.ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in AWS_BUCKET_CODES:
                return BucketNotFoundError(uri, conn_id, FIX_BUCKET, cause)
            if code in AWS_CREDENTIAL_CODES:
                return StorageCredentialsError(uri, conn_id, FIX_CREDENTIALS, cause)
            if code in AWS_DENIED_CODES:
                return StorageAccessDeniedError(uri, conn_id, FIX_DENIED, cause)
            return None
        if isinstance(exc, (botocore.NoCredentialsError, botocore.PartialCredentialsError)):
            return StorageCredentialsError(uri, conn_id, "Give the connection a key and secret (login/password), "
                                           "or run where AWS credentials are configured", cause)
        if isinstance(exc, (botocore.EndpointConnectionError, botocore.ConnectTimeoutError)):
            return StorageUnreachableError(uri, conn_id, FIX_UNREACHABLE, cause, endpoint=getattr(exc, "kwargs", {}).get("endpoint_url"))
    gcsfs = sys.modules.get("gcsfs.retry")
    if gcsfs is not None:
        found = _gcsfs(gcsfs, exc, uri, conn_id, listing, cause)
        if found is not None:
            return found
    google = sys.modules.get("google.api_core.exceptions")
    if google is not None and isinstance(exc, google.GoogleAPICallError):
        if isinstance(exc, google.NotFound) and listing:
            return BucketNotFoundError(uri, conn_id, FIX_BUCKET, cause)
        if isinstance(exc, (google.Forbidden, google.PermissionDenied)):
            return StorageAccessDeniedError(uri, conn_id, FIX_DENIED, cause)
        if isinstance(exc, (google.Unauthorized, google.Unauthenticated)):
            return StorageCredentialsError(uri, conn_id, FIX_CREDENTIALS, cause)
        return None
    auth = sys.modules.get("google.auth.exceptions")
    if auth is not None and isinstance(exc, (auth.DefaultCredentialsError, auth.RefreshError)):
        return StorageCredentialsError(uri, conn_id, FIX_CREDENTIALS, cause)
    if isinstance(exc, (ConnectionRefusedError, TimeoutError)) or type(exc).__name__ in (
            "ClientConnectorError", "ClientConnectorDNSError", "NewConnectionError", "gaierror"):
        return StorageUnreachableError(uri, conn_id, FIX_UNREACHABLE, cause)
    return None


def _gcsfs(gcsfs, exc: BaseException, uri: str, conn_id: str | None, listing: bool, cause: str) -> StorageError | None:
    """gcsfs's own answers (`gcsfs.retry.validate_response`): `HttpError` with the HTTP code, and a
    plain `OSError("Forbidden: <path>...")` for 403, its only way of saying it (no code, no subclass)."""
    if isinstance(exc, gcsfs.HttpError):
        if exc.code == 401:
            return StorageCredentialsError(uri, conn_id, FIX_CREDENTIALS, cause)
        if exc.code == 403:
            return StorageAccessDeniedError(uri, conn_id, FIX_DENIED, cause)
        if exc.code == 404 and listing:
            return BucketNotFoundError(uri, conn_id, FIX_BUCKET, cause)
    if type(exc) is OSError and str(exc).startswith("Forbidden: "):
        return StorageAccessDeniedError(uri, conn_id, FIX_DENIED, cause)
    return None


def _cause(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"
