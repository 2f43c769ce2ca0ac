"""Cloud emulators over real HTTP on loopback, as pytest fixtures (registered in conftest.py).

- `moto_server`: moto in server mode (S3, SageMaker, CloudWatch Logs, ...); botocore validates every
  request against the real API model before it leaves the client.
- `gcs_emulator`: gcp-storage-emulator, in memory; google-cloud-storage reaches it through
  STORAGE_EMULATOR_HOST.
Each is started once per test session on a free port; tests use their own bucket names.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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

    honour_gcs_preconditions()
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


def honour_gcs_preconditions() -> None:
    """gcp-storage-emulator ignores `ifGenerationMatch`; real GCS refuses a write or delete whose
    precondition fails with 412 `conditionNotMet` (cloud.google.com/storage/docs/request-preconditions,
    listed in tests/dataplane/SOURCES.md). The partition lease relies on exactly that, so the emulator's
    insert and delete handlers are wrapped to check it, one request at a time as GCS does per object."""
    import threading
    from http import HTTPStatus

    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    if getattr(objects, "_mlbatch_preconditions", False):
        return
    lock = threading.Lock()

    def object_name(request) -> str:
        if "object_id" in request.params:
            return request.params["object_id"]
        if "name" in request.query:
            return request.query["name"][0]
        return request.data["meta"].get("name")

    def checked(handler):
        def handle(request, response, storage, *args, **kwargs):
            wanted = request.query.get("ifGenerationMatch")
            if not wanted:
                return handler(request, response, storage, *args, **kwargs)
            with lock:
                try:
                    current = int(storage.get_file_obj(request.params["bucket_name"], object_name(request))
                                  .get("generation") or 0)
                except NotFound:
                    current = 0
                if current != int(wanted[0]) and not (current == 0 and request.method == "DELETE"):  # 404 then
                    response.status = HTTPStatus.PRECONDITION_FAILED
                    response.json({"error": {"code": 412, "message": "At least one of the pre-conditions you "
                                             "specified did not hold.", "errors": [{"reason": "conditionNotMet"}]}})
                    return None
                return handler(request, response, storage, *args, **kwargs)
        return handle

    wrapped = {objects.insert: checked(objects.insert), objects.delete: checked(objects.delete)}
    for _, handlers in server.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler in wrapped:
                handlers[method] = wrapped[handler]
    objects.insert = wrapped[objects.insert]  # the server's fallback route looks it up by name
    objects._mlbatch_preconditions = True
