"""The serving container a SageMaker or Vertex job runs: which model it serves, whether it starts, and a
real MLflow scoring server (`mlflow models serve --env-manager local`) standing in for it.

What the container serves (tests/dataplane/SOURCES.md, "Serving containers"):
- SageMaker downloads the Model's `ModelDataUrl` (a tar.gz), unpacks it into /opt/ml/model and runs the
  image with `serve`; the MLflow image's entry point (mlflow/models/container/__init__.py `_serve`)
  loads /opt/ml/model/MLmodel and serves it with the pyfunc scoring server.
- On Vertex the MLflow image built by `mlflow models build-docker -m <model>` serves the model copied
  into it at build time (/opt/ml/model); Vertex's copy of `artifact_uri` (AIP_STORAGE_URI) is not read.

Start-up, as the image's Dockerfile sets it (mlflow/models/docker_utils.py, mlflow/sagemaker/cli.py):
the `mlflow sagemaker build-and-push-container` image has MLFLOW_DISABLE_ENV_CREATION=False and pip-installs
the model's requirements into a new virtualenv when it starts (needs a package index: fails under
`EnableNetworkIsolation`); a `build-docker -m` image installed them at build and installs nothing.
The images a test session "builds" are the explicit registry `ImageRegistry`.
One scoring server per served model (archive URL + ETag + environment, or image) for the session.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tarfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CONTAINER_MODEL_DIR = "/opt/ml/model"


class ContainerFailed(Exception):
    """The container never served: `reason` is what the service reports, `log` what the container printed."""

    def __init__(self, reason: str, log: str = ""):
        super().__init__(f"{reason} {log}".strip())
        self.reason, self.log = reason, log


@dataclass(frozen=True)
class ServingImage:
    uri: str
    installs_at_start: bool  # MLFLOW_DISABLE_ENV_CREATION=False: pip install of the model's requirements at start
    requirements: frozenset[str] = frozenset()  # installed when the image was built
    model_dir: Path | None = None  # the model copied to /opt/ml/model at build time


def requirements(model_dir: Path) -> list[str]:
    """The model's pip requirements (requirements.txt, as MLflow logged them)."""
    path = model_dir / "requirements.txt"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "-"))]


def distribution(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


@dataclass
class ImageRegistry:
    """The serving images a test session builds, by URI; a job naming any other image cannot pull it."""

    root: Path
    images: dict[str, ServingImage] = field(default_factory=dict)

    def generic(self, uri: str) -> ServingImage:
        """`mlflow sagemaker build-and-push-container`: no model inside, environment installed at start."""
        self.images[uri] = ServingImage(uri, installs_at_start=True)
        return self.images[uri]

    def per_version(self, uri: str, model_uri: str) -> ServingImage:
        """`mlflow models build-docker -m <model_uri>`: the model and its requirements built in."""
        import mlflow

        target = self.root / "images" / hashlib.sha256(uri.encode()).hexdigest()[:16]
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(target)))
        self.images[uri] = ServingImage(uri, installs_at_start=False,
                                        requirements=frozenset(requirements(model_dir)), model_dir=model_dir)
        return self.images[uri]

    def pull(self, uri: str) -> ServingImage:
        if uri not in self.images:
            raise ContainerFailed(f"ClientError: Requested image {uri} not found.")
        return self.images[uri]


# What each service reports when the container exits before it answers its health check.
SAGEMAKER_START_FAILED = "AlgorithmError: See job logs for more information"
VERTEX_START_FAILED = ("Model server never became ready. Please validate that your model file or container "
                       "configuration are valid.")


def start_failure(image: ServingImage, model_dir: Path | None, network_isolated: bool) -> str | None:
    """What the image's entry point (`_serve`) would print before exiting, or None if it serves."""
    from mlflow.models import Model

    try:
        Model.load(os.path.join(model_dir or "/nonexistent", "MLmodel"))
    except Exception as exc:  # what `_serve` raises: the MLmodel it opens is not there
        shown = str(exc).replace(str(model_dir or "/nonexistent"), CONTAINER_MODEL_DIR)
        return f"{type(exc).__name__}: {shown}"
    needed = requirements(model_dir)
    if image.installs_at_start and network_isolated and needed:
        return (f"ERROR: Could not find a version that satisfies the requirement {needed[0]} (from versions: "
                f"none)\nERROR: No matching distribution found for {needed[0]}\n"
                "Exception: Failed to create model environment.")
    if not image.installs_at_start:
        built = {distribution(r) for r in image.requirements}
        missing = [r for r in needed if distribution(r) not in built]
        if missing:
            return f"ModuleNotFoundError: {missing[0]} is not installed in image {image.uri}"
    return None


def unpack_model_data(s3, url: str, target: Path) -> tuple[Path, str]:
    """SageMaker's step before the container starts: ModelDataUrl -> /opt/ml/model. Returns (dir, ETag)."""
    bucket, _, key = url[len("s3://"):].partition("/")
    from botocore.exceptions import ClientError

    try:
        obj = s3.get_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        raise ContainerFailed(
            f'ClientError: Failed to download model data for container "container_1" from URL: "{url}". '
            "Please ensure that there is an object located at the URL and that the role passed to "
            "CreateModel has permissions to download the object.") from exc
    etag = obj["ETag"].strip('"')
    model_dir = target / etag / "model"
    if not model_dir.is_dir():
        try:
            with tarfile.open(fileobj=io.BytesIO(obj["Body"].read()), mode="r:gz") as tar:
                tar.extractall(model_dir, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            shutil.rmtree(model_dir, ignore_errors=True)
            raise ContainerFailed(
                f'ClientError: Failed to extract model data archive for container "container_1" from URL '
                f'"{url}". Please ensure that the object located at the URL is a valid tar.gz archive.') from exc
    return model_dir, etag


class ModelContainers:
    """Session cache of running containers (real scoring servers), stopped when `close` is called."""

    def __init__(self, root: Path, images: ImageRegistry):
        self.root, self.images = root, images
        self._stack = ExitStack()
        self._servers: dict[tuple, str] = {}

    def sagemaker(self, model: dict, s3) -> str:
        """URL of the container of a SageMaker Model (DescribeModel fields); ContainerFailed if it would not start."""
        container = model["PrimaryContainer"]
        image = self.images.pull(container["Image"])
        url = container.get("ModelDataUrl")
        if url:  # SageMaker's model data replaces whatever the image holds at /opt/ml/model
            model_dir, etag = unpack_model_data(s3, url, self.root / "sagemaker" / _digest(url))
        else:
            model_dir, etag = image.model_dir, ""
        printed = start_failure(image, model_dir, bool(model.get("EnableNetworkIsolation")))
        if printed:
            raise ContainerFailed(SAGEMAKER_START_FAILED, printed)
        env = container.get("Environment") or {}
        return self._serve(model_dir, env)

    def vertex(self, model) -> str:
        """URL of the container of a Vertex Model (aiplatform_v1 Model): the model its image holds."""
        spec = model.container_spec
        image = self.images.pull(spec.image_uri)
        printed = start_failure(image, image.model_dir, network_isolated=False)
        if printed:
            raise ContainerFailed(VERTEX_START_FAILED, printed)
        env = {e.name: e.value for e in spec.env}
        return self._serve(image.model_dir, env)

    def _serve(self, model_dir: Path, env: dict) -> str:
        # the same files and environment serve the same way, whichever archive or image held them
        key = (_content(model_dir), tuple(sorted(env.items())))
        if key not in self._servers:
            log = self.root / f"container-{_digest(repr(key))}.log"
            self._servers[key] = self._stack.enter_context(scoring_process(model_dir, log, env))
        return self._servers[key]

    def close(self) -> None:
        self._stack.close()


@contextmanager
def scoring_process(model_dir: Path, log_path: Path, env: dict):
    """The command the MLflow image's entry point runs behind nginx (`_serve_pyfunc`:
    `scoring_server.get_cmd(model_uri=/opt/ml/model, ...)`, a uvicorn of the pyfunc scoring app), on
    127.0.0.1 with one worker; yields its URL."""
    import subprocess
    import sys

    from mlflow.pyfunc import scoring_server

    from emulators import free_port
    from scoring_server import stop, wait_for_ping

    port = free_port()
    cmd, cmd_env = scoring_server.get_cmd(model_uri=str(model_dir), port=port, host="127.0.0.1", nworkers=1)
    bin_dir = str(Path(sys.executable).parent)
    cmd_env.update(env, PATH=bin_dir + os.pathsep + cmd_env.get("PATH", ""))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(["/bin/bash", "-c", cmd], env=cmd_env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            wait_for_ping(f"http://127.0.0.1:{port}", process)
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(process)


def _content(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(model_dir)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]
