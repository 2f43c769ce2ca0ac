"""Compare-and-swap on one object, with each store's own mechanism: what makes one writer per partition
possible where there is no atomic rename and no lock server.

- gs://  generation preconditions (`ifGenerationMatch`; 0 means "must not exist"), through the google
  provider's GCSHook client on the pipeline's connection;
- s3://  conditional PutObject/DeleteObject (`If-None-Match: *`, `If-Match: <ETag>`), through the amazon
  provider's S3Hook client;
- local  an exclusive `flock` on a lock file beside the object while its version (inode and mtime: every
  write replaces the file) is compared and the new content renamed into place.

A version is whatever the store returns (`None`: the object does not exist); callers only hand back what
`read_versioned` or `write_if` gave them. A failed precondition raises `PreconditionFailed`; a missing
bucket, refused access, wrong credentials or a dead endpoint the storage layer's errors (`Storage.errors`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
from typing import Any

from mlbatch.storage.layer import Storage, scheme

Version = Any


class PreconditionFailed(Exception):
    """The object changed (or appeared, or went) since the version the caller holds."""


def _named_errors(write: bool = False):
    """The store's errors named as the storage layer names them; on a write a 404 means the bucket."""
    def wrap(fn):
        @functools.wraps(fn)
        def named(storage: Storage, uri: str, *args: Any) -> Any:
            with storage.errors(uri, listing=write):
                return fn(storage, uri, *args)
        return named
    return wrap


@_named_errors()
def read_versioned(storage: Storage, uri: str) -> tuple[bytes | None, Version]:
    """(content, version) of one object; (None, None) when it does not exist."""
    kind = scheme(uri)
    if kind == "gs":
        return _gcs_read(_gcs_bucket(storage, uri), _key(uri))
    if kind == "s3":
        client, bucket, key = _s3(storage, uri)
        try:
            found = client.get_object(Bucket=bucket, Key=key)
        except client.exceptions.NoSuchKey:
            return None, None
        return found["Body"].read(), found["ETag"]
    path = _local(uri)
    with _locked(path):
        return _local_read(path)


@_named_errors(write=True)
def write_if(storage: Storage, uri: str, data: bytes, version: Version) -> Version:
    """Write `data` only if the object is still at `version` (absent when None); returns the new version."""
    kind = scheme(uri)
    if kind == "gs":
        from google.api_core.exceptions import PreconditionFailed as GcsPrecondition

        blob = _gcs_bucket(storage, uri).blob(_key(uri))
        try:
            blob.upload_from_string(data, if_generation_match=version or 0)
        except GcsPrecondition as error:
            raise PreconditionFailed(f"{uri} changed since generation {version}") from error
        return blob.generation
    if kind == "s3":
        client, bucket, key = _s3(storage, uri)
        condition = {"IfMatch": version} if version else {"IfNoneMatch": "*"}
        try:
            return client.put_object(Bucket=bucket, Key=key, Body=data, **condition)["ETag"]
        except client.exceptions.ClientError as error:
            if _s3_conflict(error) or _s3_missing(error):  # If-Match on a deleted key: 404 NoSuchKey
                raise PreconditionFailed(f"{uri} changed since ETag {version}") from error
            raise
    path = _local(uri)
    with _locked(path):
        if _local_read(path)[1] != version:
            raise PreconditionFailed(f"{path} changed since version {version}")
        storage.write_bytes(path, data)
        return _local_read(path)[1]


@_named_errors()
def delete_if(storage: Storage, uri: str, version: Version) -> None:
    """Delete the object only if it is still at `version`; gone already is fine."""
    kind = scheme(uri)
    if kind == "gs":
        from google.api_core.exceptions import NotFound
        from google.api_core.exceptions import PreconditionFailed as GcsPrecondition

        try:
            _gcs_bucket(storage, uri).blob(_key(uri)).delete(if_generation_match=version)
        except NotFound:
            pass
        except GcsPrecondition as error:
            raise PreconditionFailed(f"{uri} changed since generation {version}") from error
        return
    if kind == "s3":
        client, bucket, key = _s3(storage, uri)
        try:
            client.delete_object(Bucket=bucket, Key=key, IfMatch=version)
        except client.exceptions.ClientError as error:
            if _s3_conflict(error):
                raise PreconditionFailed(f"{uri} changed since ETag {version}") from error
            if not _s3_missing(error):
                raise
        return
    path = _local(uri)
    with _locked(path):
        current = _local_read(path)[1]
        if current is None:
            return
        if current != version:
            raise PreconditionFailed(f"{path} changed since version {version}")
        os.remove(path)


# --- stores --------------------------------------------------------------------------------------

def _key(uri: str) -> str:
    return uri.split("://", 1)[1].split("/", 1)[1]


def _gcs_bucket(storage: Storage, uri: str):
    return _client("gs", storage.gcp_conn_id, _conn_env(storage.gcp_conn_id)).bucket(uri.split("://", 1)[1].split("/", 1)[0])


def _gcs_read(bucket, key: str, tries: int = 5) -> tuple[bytes | None, Version]:
    """The object and the generation it was read at. The look-up and the download are two requests;
    if the object is deleted or replaced in between (a holder releasing or renewing its lease), the
    download of that generation fails (404 for a generation gone, 412 for its precondition) and the
    reader looks again: content and version always belong together, and absent means absent."""
    from google.api_core.exceptions import NotFound, PreconditionFailed as GenerationMoved

    for _ in range(tries):
        blob = bucket.get_blob(key)
        if blob is None:
            return None, None
        generation = blob.generation  # the download resets it from its response headers
        try:
            return blob.download_as_bytes(if_generation_match=generation), generation
        except (NotFound, GenerationMoved):
            continue
    raise PreconditionFailed(f"gs://{bucket.name}/{key} changed on each of {tries} reads")


def _s3(storage: Storage, uri: str):
    bucket, key = uri.split("://", 1)[1].split("/", 1)
    return _client("s3", storage.aws_conn_id, _conn_env(storage.aws_conn_id)), bucket, key


def _conn_env(conn_id: str) -> str | None:
    """A connection given in the environment is part of the cache key, so a changed one is honoured."""
    return os.environ.get(f"AIRFLOW_CONN_{conn_id.upper()}")


@functools.lru_cache(maxsize=8)
def _client(kind: str, conn_id: str, _env: str | None):
    """One provider client per connection and process (building one costs a connection lookup and a
    botocore/google-auth session: ~1 s on a busy machine, and a commit makes a dozen calls)."""
    if kind == "gs":
        from airflow.providers.google.cloud.hooks.gcs import GCSHook

        return GCSHook(gcp_conn_id=conn_id).get_conn()
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=conn_id).get_conn()


def _s3_conflict(error: Any) -> bool:
    """412 PreconditionFailed, or 409 ConditionalRequestConflict (a concurrent conditional write)."""
    return error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict")


def _s3_missing(error: Any) -> bool:
    return error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404")


def _local(uri: str) -> str:
    return os.path.abspath(uri.removeprefix("file://"))


def _local_read(path: str) -> tuple[bytes | None, Version]:
    try:
        with open(path, "rb") as fh:
            stat = os.fstat(fh.fileno())
            return fh.read(), f"{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_size}"
    except FileNotFoundError:
        return None, None


@contextlib.contextmanager
def _locked(path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
