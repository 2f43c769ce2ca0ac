"""resolve_model: turn the spec's MLflow alias into one pinned model version for the whole run, and check
that the spec's features fit that version's signature.

Later steps read the version from this task's XCom, never the alias, so moving `champion` while a run
is in flight cannot mix two models in one output partition.
"""

from __future__ import annotations

from typing import Any

from mlbatch.errors import ModelMismatchError, ModelNotFoundError
from mlbatch.operators.links import MlflowModelVersionLink
from mlbatch.operators.base import PipelineStepOperator
from mlbatch.run.paths import RunPaths
from mlbatch.spec.models import PipelineSpec


class ResolveModelOperator(PipelineStepOperator):
    operator_extra_links = (MlflowModelVersionLink(),)
    ui_color = "#e6f4ea"

    def run(self, context: Any, spec: PipelineSpec, paths: RunPaths) -> dict:
        pinned = pin_and_check(spec)
        self.log.info("Pinned %s (alias %s) for run %s", pinned["uri"], spec.model.alias, context["run_id"])
        return pinned


def pin_and_check(spec: PipelineSpec) -> dict:
    """The model version the spec's alias (or version) names now, checked against the spec
    (`check_signature`); also what `mlbatch validate --model` runs."""
    import mlflow
    from mlflow import MlflowClient

    ref = spec.model
    # The spec's tracking server is the registry too: a process-wide registry URI (MLFLOW_REGISTRY_URI,
    # mlflow.set_registry_uri) would otherwise win over it.
    client = MlflowClient(tracking_uri=ref.tracking_uri, registry_uri=ref.tracking_uri)
    version = pinned_version(client, ref)
    artifact_uri = client.get_model_version_download_uri(ref.name, version.version)
    pinned = {
        "name": ref.name,
        "alias": ref.alias,
        "version": int(version.version),
        "uri": f"models:/{ref.name}/{version.version}",
        "artifact_uri": artifact_uri,
        "source_run_id": version.run_id,
        "tracking_uri": ref.tracking_uri or mlflow.get_tracking_uri(),
    }
    input_types = check_signature(spec, pinned)
    if input_types:  # prep writes each feature as this type (mlbatch.spec.type_contract)
        pinned["input_types"] = input_types
    return pinned


def pinned_version(client: Any, ref: Any) -> Any:
    """The model version the alias (or version) names; a missing one says what the registry has."""
    from mlflow.exceptions import MlflowException

    try:
        if ref.alias:
            return client.get_model_version_by_alias(ref.name, ref.alias)
        return client.get_model_version(ref.name, str(ref.version))
    except MlflowException as exc:  # stores differ in the error code: look at what the registry has
        if exc.get_http_status_code() not in (400, 404):  # unreachable, 5xx, throttled: retried as itself
            raise
        where = f"the registry at {client.tracking_uri}"
        try:
            registered = client.get_registered_model(ref.name)
        except MlflowException as missing:
            if missing.get_http_status_code() != 404:  # not an answer about the model: retried as itself
                raise
            raise ModelNotFoundError(f"model {ref.name!r} is not registered in {where}") from None
        if ref.alias and ref.alias not in registered.aliases:
            aliases = ", ".join(f"{a} -> v{v}" for a, v in sorted(registered.aliases.items())) or "none"
            raise ModelNotFoundError(
                f"model {ref.name!r} has no alias {ref.alias!r} in {where}; its aliases: {aliases}") from None
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{ref.name}'"))
        if ref.version and ref.version not in versions:
            raise ModelNotFoundError(
                f"model {ref.name!r} has no version {ref.version} in {where}; its versions: {versions}") from None
        raise


def check_signature(spec: PipelineSpec, pinned: dict) -> dict[str, str] | None:
    """Fail before any job runs when input.features or output.predictions do not fit the model's signature
    (and the function it was logged with). Returns each feature's signature column type (None without a
    column signature): the type prep writes, so the containers' schema enforcement passes."""
    from mlbatch.spec.signature import input_columns, output_problems, signature_problems

    info = model_metadata(pinned["artifact_uri"])
    problems = signature_problems(spec.input.features, info.signature)
    if problems:
        raise ModelMismatchError(
            f"{spec.name}: input.features do not fit {pinned['uri']} (its MLflow signature):\n- "
            + "\n- ".join(problems))
    pyfunc = info.flavors.get("python_function", {})
    predict_fn = pyfunc.get("predict_fn", "predict") if pyfunc.get("loader_module") == "mlflow.sklearn" else None
    problems = output_problems(spec.output.predictions, info.signature, predict_fn)
    if problems:
        raise ModelMismatchError(
            f"{spec.name}: output.predictions does not fit {pinned['uri']} (what the model returns):\n- "
            + "\n- ".join(problems))
    columns = input_columns(info.signature)
    return None if columns is None else {f.name: columns[f.name][0] for f in spec.input.features}


def model_metadata(artifact_uri: str) -> Any:
    """The model's MLmodel file (signature, flavors), read from its artifacts alone: mlflow's
    get_model_info also looks the model up in the *current* tracking store by its logged-model id, which
    fails for a model registered elsewhere (`model.tracking_uri`)."""
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    return Model.load(download_artifacts(artifact_uri=artifact_uri.rstrip("/") + "/MLmodel"))
