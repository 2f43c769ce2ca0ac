"""The two storage emulators of `make demo-cloud` in one child process: gcp-storage-emulator (GCS, in
memory) and moto's server (S3), each on a free loopback port.

`python -m mlbatch.local.demo.emulators` prints one line `ready gcs=<url> s3=<url>` once both answer and
serves until stdin closes or it is terminated; `running()` starts it, waits for that line and stops it.
One gap of gcp-storage-emulator is closed here, in this process: it ignores `ifGenerationMatch`, which
the partition lease needs (see `honour_gcs_preconditions`). Nothing else about either emulator changes.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

READY = "ready"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def honour_gcs_preconditions() -> None:
    """gcp-storage-emulator ignores `ifGenerationMatch`; real GCS refuses a write, delete or read whose
    precondition fails with 412 `conditionNotMet` (cloud.google.com/storage/docs/request-preconditions,
    listed in tests/dataplane/SOURCES.md). The partition lease relies on exactly that, so the emulator's
    insert, delete and download handlers are wrapped to check it, one request at a time as GCS does per
    object."""
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    if getattr(objects, "_mlbatch_preconditions", False):
        return
    lock = threading.Lock()
    wrapped = {handler: _checked(handler, lock)
               for handler in (objects.insert, objects.delete, objects.download, objects.get)}
    for _, handlers in server.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler in wrapped:
                handlers[method] = wrapped[handler]
    objects.insert = wrapped[objects.insert]  # the server's fallback route looks it up by name
    objects._mlbatch_preconditions = True


def _object_name(request) -> str:
    if "object_id" in request.params:
        return request.params["object_id"]
    if "name" in request.query:
        return request.query["name"][0]
    return request.data["meta"].get("name")


def _checked(handler, lock: threading.Lock):
    """`handler` answering 412 when the request's ifGenerationMatch differs from the object's generation
    (0: no object; a DELETE or read of a missing object is left to the handler's own 404)."""
    from http import HTTPStatus

    from gcp_storage_emulator.exceptions import NotFound

    def handle(request, response, storage, *args, **kwargs):
        wanted = request.query.get("ifGenerationMatch")
        if not wanted:
            return handler(request, response, storage, *args, **kwargs)
        with lock:
            try:
                current = int(storage.get_file_obj(request.params["bucket_name"], _object_name(request))
                              .get("generation") or 0)
            except NotFound:
                current = 0
            if current != int(wanted[0]) and not (current == 0 and request.method in ("DELETE", "GET")):
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "At least one of the pre-conditions you "
                                         "specified did not hold.", "errors": [{"reason": "conditionNotMet"}]}})
                return None
            return handler(request, response, storage, *args, **kwargs)
    return handle


@dataclass(frozen=True)
class Endpoints:
    gcs: str
    s3: str


def serve() -> None:
    """Start both emulators, announce them on stdout, serve until stdin closes."""
    from gcp_storage_emulator.server import create_server
    from moto.server import ThreadedMotoServer

    honour_gcs_preconditions()
    gcs_port, s3_port = free_port(), free_port()
    gcs = create_server("127.0.0.1", gcs_port, in_memory=True)
    gcs.start()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    moto.start()
    print(f"{READY} gcs=http://127.0.0.1:{gcs_port} s3=http://127.0.0.1:{s3_port}", flush=True)
    try:
        sys.stdin.read()  # the parent closes our stdin (or exits) to stop us
    finally:
        moto.stop()
        gcs.stop()


@contextmanager
def running(log_path) -> Iterator[Endpoints]:
    """Both emulators in a child process for the duration of the block; its output goes to `log_path`."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mlbatch.local.demo.emulators"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            line = proc.stdout.readline().split()
            if not line or line[0] != READY:
                raise RuntimeError(f"the storage emulators did not start (exit {proc.poll()}); see {log_path}")
            urls = dict(part.split("=", 1) for part in line[1:])
            yield Endpoints(gcs=urls["gcs"], s3=urls["s3"])
        finally:
            proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    serve()
