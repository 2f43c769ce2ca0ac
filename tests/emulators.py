"""Cloud emulators over real HTTP on loopback, as pytest fixtures (registered in conftest.py).

- `moto_server`: moto in server mode (S3, SageMaker, CloudWatch Logs, ...); botocore validates every
  request against the real API model before it leaves the client.
- `gcs_emulator`: gcp-storage-emulator, in memory; google-cloud-storage reaches it through
  STORAGE_EMULATOR_HOST.
Each is started once per test session on a free port; tests use their own bucket names.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mlbatch.local.demo.emulators import free_port  # noqa: F401  (tests import it from here)


@dataclass(frozen=True)
class MotoServer:
    endpoint_url: str
    region: str = "us-east-1"

    def client(self, service: str):
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=self.region,
                            aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture(scope="session")
def moto_server():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield MotoServer(endpoint_url=f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@dataclass(frozen=True)
class GcsEmulator:
    endpoint_url: str

    def client(self, project: str = "test-project"):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project=project, credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.endpoint_url})


@pytest.fixture(scope="session")
def gcs_emulator():
    import os

    from gcp_storage_emulator.server import create_server

    from mlbatch.local.demo.emulators import honour_gcs_preconditions

    honour_gcs_preconditions()  # as `make demo-cloud` does: the emulator ignores ifGenerationMatch
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    try:
        yield GcsEmulator(endpoint_url=f"http://127.0.0.1:{port}")
    finally:
        server.stop()
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
