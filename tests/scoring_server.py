"""The real MLflow pyfunc scoring server on the registered test model, as a session fixture.

It is what the MLflow serving image runs behind nginx on SageMaker and Vertex (`mlflow models serve`
starts the same uvicorn app, `mlflow.pyfunc.scoring_server.app`): /ping, /health, /invocations.
`--env-manager local` serves from this venv (no network); the venv's bin/ goes on PATH because the
command shells out to `uvicorn`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from emulators import free_port


@dataclass(frozen=True)
class ScoringServer:
    url: str  # http://127.0.0.1:PORT
    model_uri: str

    def invocations(self, body: bytes, content_type: str):
        import requests

        return requests.post(f"{self.url}/invocations", data=body, headers={"Content-Type": content_type},
                             timeout=120)


def wait_for_ping(url: str, process: subprocess.Popen, deadline_s: float = 120) -> None:
    import requests

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited with {process.returncode} before answering /ping")
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"the scoring server at {url} did not answer /ping within {deadline_s}s")


@contextmanager
def serve_model(model_uri: str, log_path: Path, env: dict | None = None):
    """`mlflow models serve -m <model_uri> --env-manager local` on 127.0.0.1, until the block ends."""
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {**(env or os.environ), "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_ping(url, process)
        yield ScoringServer(url=url, model_uri=model_uri)
    finally:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
        log.close()


@pytest.fixture(scope="session")
def scoring_server(registered_model, session_dir):
    """`mlflow models serve -m models:/<name>/<version> --env-manager local` on 127.0.0.1."""
    model_uri = f"models:/{registered_model['name']}/{registered_model['version']}"
    with serve_model(model_uri, session_dir / "scoring-server.log") as server:
        yield server
