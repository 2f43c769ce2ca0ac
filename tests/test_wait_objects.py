"""Waiting for objects and markers: local paths, S3 (moto server over HTTP), GCS (emulator over HTTP).

The provider triggers run for real (their async `run()` against the emulators): they stay silent while
the object is missing and fire once it is written. Completeness checks and the wait step's decisions
(defer, proceed, fail or skip at the deadline) are tested on real files.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def s3(moto_server, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_WAIT_S3", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": moto_server.endpoint_url, "region_name": moto_server.region}}))
    client = moto_server.client("s3")
    bucket = f"wait-{os.getpid()}-{time.monotonic_ns()}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


@pytest.fixture
def gcs(gcs_emulator, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_WAIT_GCS", json.dumps({
        "conn_type": "google_cloud_platform", "extra": {"project": "test-project", "is_anonymous": True}}))
    client = gcs_emulator.client()
    bucket = client.create_bucket(f"wait-{os.getpid()}-{time.monotonic_ns()}")
    return bucket


async def first_event(trigger, *, write, quiet_seconds: float = 1.5, timeout: float = 20):
    """Run `trigger` until it fires: it must stay silent for `quiet_seconds`, then `write()` the data."""
    events = trigger.run()
    pending = asyncio.ensure_future(events.__anext__())
    done, _ = await asyncio.wait({pending}, timeout=quiet_seconds)
    assert not done, f"{type(trigger).__name__} fired before the data existed: {pending.result()}"
    await asyncio.to_thread(write)
    event = await asyncio.wait_for(pending, timeout)
    await events.aclose()
    return event.payload


def test_s3_marker_and_glob_found_and_waited_for(s3):
    from mlbatch.sensors.objects import find, trigger_for

    client, bucket = s3
    marker = f"s3://{bucket}/natality/ds=2026-11-20/_SUCCESS"
    assert find(marker, aws_conn_id="wait_s3") == []
    trigger = trigger_for(marker, poke_seconds=0.2, aws_conn_id="wait_s3")
    assert trigger.serialize()[0] == "airflow.providers.amazon.aws.triggers.s3.S3KeyTrigger"

    def write():
        client.put_object(Bucket=bucket, Key="natality/ds=2026-11-20/part-0.parquet", Body=b"x" * 2048)
        client.put_object(Bucket=bucket, Key="natality/ds=2026-11-20/_SUCCESS", Body=b"")

    assert asyncio.run(first_event(trigger, write=write))["status"] == "success"
    [found] = find(marker, aws_conn_id="wait_s3")
    assert (found.uri, found.size) == (marker, 0)
    files = find(f"s3://{bucket}/natality/ds=2026-11-20/*.parquet", aws_conn_id="wait_s3")
    assert [(f.name, f.size) for f in files] == [("part-0.parquet", 2048)]
    assert find(f"s3://{bucket}/natality/ds=2026-11-2?/part-*", aws_conn_id="wait_s3") == files


def test_gcs_marker_and_glob_found_and_waited_for(gcs):
    from mlbatch.sensors.objects import find, trigger_for

    bucket = gcs
    pattern = f"gs://{bucket.name}/natality/ds=2026-11-20/*.parquet"
    assert find(pattern, gcp_conn_id="wait_gcs") == []
    trigger = trigger_for(pattern, poke_seconds=0.2, gcp_conn_id="wait_gcs")
    assert trigger.serialize()[0] == "airflow.providers.google.cloud.triggers.gcs.GCSBlobTrigger"

    def write():
        bucket.blob("natality/ds=2026-11-20/part-0.parquet").upload_from_string(b"y" * 4096)

    assert asyncio.run(first_event(trigger, write=write))["status"] == "success"
    [found] = find(pattern, gcp_conn_id="wait_gcs")
    assert (found.name, found.size) == ("part-0.parquet", 4096)
    assert abs(found.updated - datetime.now(timezone.utc)) < timedelta(minutes=5)
    exact = f"gs://{bucket.name}/natality/ds=2026-11-20/part-0.parquet"
    assert [f.uri for f in find(exact, gcp_conn_id="wait_gcs")] == [exact]
    assert find(exact + ".crc", gcp_conn_id="wait_gcs") == []


def test_local_glob_waited_for_with_the_file_trigger(tmp_path):
    from mlbatch.sensors.objects import find, trigger_for

    pattern = str(tmp_path / "ds=2026-11-20" / "*.csv")
    trigger = trigger_for(pattern, poke_seconds=0.2)

    def write():
        (tmp_path / "ds=2026-11-20").mkdir()
        (tmp_path / "ds=2026-11-20" / "a.csv").write_text("id\n1\n")

    assert asyncio.run(first_event(trigger, write=write)) is True
    assert [f.name for f in find("file://" + pattern)] == ["a.csv"]


def test_bad_targets_are_refused_with_the_uri():
    from mlbatch.sensors.objects import parse_target

    with pytest.raises(ValueError, match="'ftp://host/x': expected a local path"):
        parse_target("ftp://host/x")
    with pytest.raises(ValueError, match="'s3://bucket-only'"):
        parse_target("s3://bucket-only")


def test_completeness_checks_name_what_is_missing(tmp_path):
    from mlbatch.local.demo.natality import write_partition
    from mlbatch.sensors.completeness import incomplete_reasons
    from mlbatch.spec.loader import load_spec, with_overrides

    spec = load_spec(REPO / "include" / "pipelines" / "natality_daily.yaml")
    folder = write_partition(tmp_path / "ds=2026-11-20", 500, files=2, seed=1, row_group_rows=100)
    pattern = str(folder / "*.parquet")
    size = sum(p.stat().st_size for p in folder.glob("*.parquet"))

    ok = with_overrides(spec, {"wait.checks": {"min_rows": 500, "min_bytes": size, "max_age_minutes": 5}})
    assert incomplete_reasons(ok, pattern) == []

    strict = with_overrides(spec, {"wait.checks": {"min_rows": 501, "min_bytes": size + 1,
                                                   "max_age_minutes": 5}})
    later = datetime.now(timezone.utc) + timedelta(minutes=10)
    reasons = incomplete_reasons(strict, pattern, now=later)
    assert reasons[0] == f"{size} bytes in 2 files < min_bytes {size + 1}"
    assert "min old > max_age_minutes 5" in reasons[1] and "part-" in reasons[1]
    assert reasons[2] == "500 rows in 2 files < min_rows 501"
    assert incomplete_reasons(ok, str(tmp_path / "nothing" / "*.parquet")) == [
        f"no input files match {tmp_path}/nothing/*.parquet"]
