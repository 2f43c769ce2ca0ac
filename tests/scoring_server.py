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
    pid: int = 0  # the `mlflow models serve` process (its uvicorn workers are its descendants)

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
def serve_model(model_uri: str, log_path: Path, env: dict | None = None, workers: int = 1):
    """`mlflow models serve -m <model_uri> --env-manager local -w <workers>` on 127.0.0.1, until the block
    ends (the bench's live endpoint runs one worker per core)."""
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {**(env or os.environ), "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_ping(url, process)
        yield ScoringServer(url=url, model_uri=model_uri, pid=process.pid)
    finally:
        stop(process)
        log.close()


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (it started its own session), SIGKILL after 20 s."""
    os.killpg(process.pid, 15)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)


@pytest.fixture(scope="session")
def scoring_server(registered_model, session_dir):
    """`mlflow models serve -m models:/<name>/<version> --env-manager local` on 127.0.0.1."""
    model_uri = f"models:/{registered_model['name']}/{registered_model['version']}"
    with serve_model(model_uri, session_dir / "scoring-server.log") as server:
        yield server


# The serving images the tests build (tests/dataplane/containers.py): the natality examples' images.
SAGEMAKER_GENERIC_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/mlflow-pyfunc:3.17.2"
SAGEMAKER_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/mlflow-{model_name}:v{model_version}"
VERTEX_IMAGE = "europe-docker.pkg.dev/example-ml-prod/serving/mlflow-{model_name}:v{model_version}"


@pytest.fixture(scope="session")
def model_containers(registered_model, session_dir):
    """The containers the SageMaker and Vertex data-plane emulators send to: one real scoring server per
    served model, for the session. Images: the generic SageMaker image (`mlflow sagemaker
    build-and-push-container`) and the per-version images (`mlflow models build-docker -m`) of the
    registered test model that natality_sagemaker.yaml and natality_vertex.yaml name."""
    from dataplane.containers import ImageRegistry, ModelContainers

    images = ImageRegistry(session_dir / "containers")
    images.generic(SAGEMAKER_GENERIC_IMAGE)
    for template in (SAGEMAKER_IMAGE, VERTEX_IMAGE):
        build_per_version_image(images, template, registered_model["name"], registered_model["version"])
    containers = ModelContainers(session_dir / "containers", images)
    try:
        yield containers
    finally:
        containers.close()


def build_per_version_image(images, template: str, name: str, version) -> str:
    uri = template.format(model_name=name, model_version=version)
    images.per_version(uri, f"models:/{name}/{version}")
    return uri
