"""The three stores the bundle writes to, as one parametrized fixture: a local folder, a bucket on the
GCS emulator and a bucket on the moto S3 server, reached through Airflow connections (the storage
layer's own path), each with a fresh prefix per test."""

from __future__ import annotations

import json
import uuid

import pytest

GCS_BUCKET = "mlbatch-store-tests"
S3_BUCKET = "mlbatch-store-tests"


def connect_gcs(gcs_emulator, monkeypatch, project: str = "test-project") -> None:
    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", json.dumps({
        "conn_type": "google_cloud_platform",
        "extra": {"is_anonymous": True, "project": project, "gcs.endpoint": gcs_emulator.endpoint_url}}))


def connect_s3(moto_server, monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": moto_server.endpoint_url, "region_name": moto_server.region}}))
    monkeypatch.setenv("AWS_DEFAULT_REGION", moto_server.region)


def ensure_gcs_bucket(gcs_emulator, name: str) -> None:
    client = gcs_emulator.client()
    if not client.lookup_bucket(name):
        client.create_bucket(name)


def ensure_s3_bucket(moto_server, name: str) -> None:
    s3 = moto_server.client("s3")
    if name not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=name)


@pytest.fixture(params=["local", "gcs", "s3"])
def store_root(request, tmp_path, monkeypatch) -> str:
    """A fresh, empty root URI on the parametrized store."""
    if request.param == "local":
        return str(tmp_path / "store")
    prefix = uuid.uuid4().hex[:8]
    if request.param == "gcs":
        emulator = request.getfixturevalue("gcs_emulator")
        connect_gcs(emulator, monkeypatch)
        ensure_gcs_bucket(emulator, GCS_BUCKET)
        return f"gs://{GCS_BUCKET}/{prefix}"
    moto = request.getfixturevalue("moto_server")
    connect_s3(moto, monkeypatch)
    ensure_s3_bucket(moto, S3_BUCKET)
    return f"s3://{S3_BUCKET}/{prefix}"
