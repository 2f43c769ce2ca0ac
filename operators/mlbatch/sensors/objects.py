"""Files and objects the `object` wait kind looks for: local paths, file://, s3:// and gs:// URIs, each
a plain name or a glob (`*`, `?`, `[...]`).

Two halves with one meaning: `find()` lists the matches now (in the worker, through the providers' sync
hooks), `trigger_for()` is the provider trigger that waits for the first match in the triggerer
(FileTrigger, S3KeyTrigger, GCSBlobTrigger). Glob semantics are each store's own: local `glob`,
S3 `fnmatch` over the key (what S3KeyTrigger uses), GCS `matchGlob` (what GCSBlobTrigger uses).
Provider modules are imported inside the functions: this module is reachable from DAG parsing.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from typing import Any

_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Target:
    scheme: str  # "file", "s3" or "gs"
    bucket: str  # "" for local paths
    key: str     # the local path, or the object key / key glob

    @property
    def is_glob(self) -> bool:
        return any(c in self.key for c in _GLOB_CHARS)

    @property
    def uri(self) -> str:
        return self.key if self.scheme == "file" else f"{self.scheme}://{self.bucket}/{self.key}"

    @property
    def listing_prefix(self) -> str:
        """The key up to the first glob character: what a store can filter on server side."""
        cut = min((self.key.index(c) for c in _GLOB_CHARS if c in self.key), default=len(self.key))
        return self.key[:cut]


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    updated: datetime  # aware, UTC

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]


def parse_target(uri: str) -> Target:
    if uri.startswith("file://"):
        return Target("file", "", uri[len("file://"):])
    if "://" not in uri:
        return Target("file", "", uri)
    scheme, _, rest = uri.partition("://")  # not urlparse: `?` is a glob character here, not a query
    bucket, _, key = rest.partition("/")
    if scheme not in ("s3", "gs") or not bucket or not key.strip("/"):
        raise ValueError(f"wait target {uri!r}: expected a local path, file://, s3://bucket/key or "
                         "gs://bucket/key (globs allowed in the key)")
    return Target(scheme, bucket, key.lstrip("/"))


def find(uri: str, *, aws_conn_id: str = "aws_default",
         gcp_conn_id: str = "google_cloud_default") -> list[ObjectInfo]:
    """Every file or object matching `uri` now, sorted by URI."""
    from mlbatch.storage.translate import storage_errors

    target = parse_target(uri)
    if target.scheme == "file":
        found = _find_local(target)
    elif target.scheme == "s3":
        with storage_errors(uri, aws_conn_id, listing=True):  # a missing bucket, wrong key...: named
            found = _find_s3(target, aws_conn_id)
    else:
        with storage_errors(uri, gcp_conn_id, listing=True):
            found = _find_gcs(target, gcp_conn_id)
    return sorted(found, key=lambda o: o.uri)


def trigger_for(uri: str, *, poke_seconds: float, aws_conn_id: str = "aws_default",
                gcp_conn_id: str = "google_cloud_default") -> Any:
    """The provider trigger that fires once `uri` (a name or a glob) has a match."""
    target = parse_target(uri)
    if target.scheme == "file":
        from airflow.providers.standard.triggers.file import FileTrigger

        return FileTrigger(filepath=target.key, poke_interval=poke_seconds)
    if target.scheme == "s3":
        from airflow.providers.amazon.aws.triggers.s3 import S3KeyTrigger

        return S3KeyTrigger(bucket_name=target.bucket, bucket_key=target.key, wildcard_match=target.is_glob,
                            aws_conn_id=aws_conn_id, poke_interval=poke_seconds)
    from airflow.providers.google.cloud.triggers.gcs import GCSBlobTrigger

    return GCSBlobTrigger(bucket=target.bucket, object_name=target.key, use_glob=target.is_glob,
                          poke_interval=poke_seconds, google_cloud_conn_id=gcp_conn_id, hook_params={})


def _find_local(target: Target) -> list[ObjectInfo]:
    found = []
    for path in glob.glob(target.key):
        stat = os.stat(path)
        found.append(ObjectInfo(path, stat.st_size if os.path.isfile(path) else 0,
                                datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc)))
    return found


def _find_s3(target: Target, conn_id: str) -> list[ObjectInfo]:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    client = S3Hook(aws_conn_id=conn_id).get_conn()
    found = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=target.bucket,
                                                                 Prefix=target.listing_prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if (fnmatchcase(key, target.key) if target.is_glob else key == target.key):
                found.append(ObjectInfo(f"s3://{target.bucket}/{key}", obj["Size"], obj["LastModified"]))
    return found


def _find_gcs(target: Target, conn_id: str) -> list[ObjectInfo]:
    from airflow.providers.google.cloud.hooks.gcs import GCSHook

    client = GCSHook(gcp_conn_id=conn_id).get_conn()
    if target.is_glob:
        blobs = client.list_blobs(target.bucket, match_glob=target.key)
    else:
        blobs = [b for b in client.list_blobs(target.bucket, prefix=target.key) if b.name == target.key]
    return [ObjectInfo(f"gs://{target.bucket}/{b.name}", int(b.size or 0), b.updated) for b in blobs]
