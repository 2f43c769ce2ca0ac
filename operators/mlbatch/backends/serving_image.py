"""How our serving images carry the model's environment, and the check that a job's container can start.

Decision: **built in**. The image a SageMaker or Vertex job runs is built per model version with
`mlflow models build-docker -m models:/<name>/<version>`: the model's requirements are installed when
the image is built (its Dockerfile sets MLFLOW_DISABLE_ENV_CREATION=true), so the container installs
nothing when it starts and needs no package index. The spec names it with placeholders:
`.../mlflow-{model_name}:v{model_version}` (filled in here for the pinned version).

A fixed image URI (no `{model_version}`) is read as the generic image `mlflow sagemaker
build-and-push-container` builds: no model inside, MLFLOW_DISABLE_ENV_CREATION=false, so at start its
entry point (mlflow.models.container._serve_pyfunc) pip-installs the model's requirements into a new
virtualenv. That needs a package index, which `network.public_ips: false` (SageMaker
EnableNetworkIsolation) takes away: the container exits before it serves, and the job fails after its
instances started. `check_start` refuses such a job before anything is submitted.
"""

from __future__ import annotations

from pathlib import Path

from mlbatch.errors import BackendConfigError, ServingImageError

PER_VERSION = "{model_version}"


def image_for(template: str, model: dict, field: str, pipeline: str) -> str:
    """The image of this model version: `{model_name}` and `{model_version}` filled in."""
    try:
        return template.format(model_name=model["name"], model_version=model["version"])
    except (KeyError, IndexError, ValueError) as exc:
        raise BackendConfigError(f"{pipeline}: {field} {template!r}: only {{model_name}} and {{model_version}} "
                                 f"can be filled in ({exc})") from exc


def installs_at_start(template: str) -> bool:
    """A fixed URI is the generic image, which installs the model's requirements when it starts."""
    return PER_VERSION not in template


def model_requirements(model_dir: Path) -> list[str]:
    """The pip requirements MLflow logged with the model (requirements.txt)."""
    path = model_dir / "requirements.txt"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "-"))]


def check_start(pipeline: str, template: str, model: dict, model_dir: Path, network_isolated: bool,
                field: str) -> None:
    """Refuse a job whose container would have to install the model's requirements without a network."""
    if not (network_isolated and installs_at_start(template)):
        return
    needed = model_requirements(model_dir) or ["mlflow (installed into the new virtualenv)"]
    raise ServingImageError(
        f"{pipeline}: image {image_for(template, model, field, pipeline)} ({field}) installs the model's "
        f"requirements when the container starts, but network.public_ips: false isolates the container "
        f"from any package index, so model {model['name']} version {model['version']} could not start: "
        f"{needed[0]} cannot be installed ({len(needed)} requirement(s): {', '.join(needed)}). Build the "
        f"image per model version with `mlflow models build-docker -m models:/{model['name']}/"
        f"{model['version']}` and name it with {{model_name}}/{{model_version}} in {field}, or set "
        "network.public_ips: true.")
