"""One connection rule: every step reaches a store or a cloud service through the `storage:` block's
connections (`storage.aws_conn_id`, `storage.gcp_conn_id`) unless the step names its own.

The steps that may name their own: `wait.aws_conn_id` / `wait.gcp_conn_id` (the wait for the input),
`predict.dataflow.gcp_conn_id`, `predict.sagemaker.aws_conn_id`, `predict.vertex.gcp_conn_id` (the
backend's API calls and staging), `predict.endpoint.aws_conn_id` / `gcp_conn_id` (a SageMaker or Vertex
endpoint's calls). A field left out of the spec file takes the `storage:` value when the
spec is validated; `needed_connections` lists which connection each URI of a spec is reached through,
and which field named it, for the checks of `mlbatch validate --connections` and of the first task
(`mlbatch.run.preflight`). No import beyond the standard library: the DAG processor loads this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# step field -> the `storage:` field it inherits
INHERITED = {
    ("wait", "aws_conn_id"): "aws_conn_id",
    ("wait", "gcp_conn_id"): "gcp_conn_id",
    ("predict.dataflow", "gcp_conn_id"): "gcp_conn_id",
    ("predict.sagemaker", "aws_conn_id"): "aws_conn_id",
    ("predict.vertex", "gcp_conn_id"): "gcp_conn_id",
    ("predict.endpoint", "aws_conn_id"): "aws_conn_id",
    ("predict.endpoint", "gcp_conn_id"): "gcp_conn_id",
}
KIND = {"s3": "aws", "gs": "gcp"}


@dataclass(frozen=True)
class Need:
    """One URI (or service) of a spec and the Airflow connection it is reached through."""

    uri: str         # the URI as the spec writes it (templated), or a service name
    kind: str        # "aws" or "gcp"
    conn_id: str
    field: str       # the spec field that names the connection, e.g. "storage.gcp_conn_id"
    explicit: bool   # the spec file names this connection (not the built-in default)
    purpose: str     # what it is for, e.g. "output.uri"


def inherit_connections(spec: Any) -> None:
    """Fill the step connection fields the spec file left out with the `storage:` values."""
    for (block, name), storage_name in INHERITED.items():
        model = _block(spec, block)
        if model is not None and name not in model.model_fields_set:
            object.__setattr__(model, name, getattr(spec.storage, storage_name))


def without_inherited(spec: Any, data: dict) -> dict:
    """`data` (a dump of `spec`) without the step fields that were filled from `storage:`, so that a
    re-validation with an overridden `storage.*_conn_id` fills them again from the new value (a trigger
    param, `mlbatch run --set`); a step's own connection from the spec file stays."""
    for (block, name), _ in INHERITED.items():
        model = _block(spec, block)
        if model is not None and name not in model.model_fields_set:
            node = data
            for part in block.split("."):
                node = node[part]
            node.pop(name, None)
    return data


def field_of(spec: Any, block: str, name: str) -> tuple[str, bool]:
    """(the field that decides this connection, whether the spec file set it)."""
    model = _block(spec, block)
    own = getattr(model, name)
    if block != "storage" and name in model.model_fields_set and own != getattr(spec.storage, name):
        return f"{block}.{name}", True
    return f"storage.{name}", name in spec.storage.model_fields_set


def needed_connections(spec: Any) -> list[Need]:
    """Every (URI, connection) the spec's steps use, in step order; local URIs need none."""
    needs: list[Need] = []

    def add(uri: str | None, purpose: str, block: str = "storage") -> None:
        scheme = uri.partition("://")[0] if uri and "://" in uri else ""
        if scheme in KIND:
            name = f"{KIND[scheme]}_conn_id"
            field, explicit = field_of(spec, block, name)
            needs.append(Need(uri, KIND[scheme], getattr(_block(spec, block), name), field, explicit, purpose))

    wait_targets = spec.wait.targets if spec.wait.kind == "object" else []
    for target in wait_targets or ([spec.input.marker or spec.input.uri] if spec.wait.kind == "object" else []):
        add(target, "wait.targets", "wait")
    add(spec.input.uri, "input.uri")
    add(spec.input.marker, "input.marker")
    add(spec.output.uri, "output.uri")
    add(spec.output.dead_letter_uri, "output.dead_letter_uri")
    add(spec.output.work_uri, "output.work_uri")
    _backend_needs(spec, add)
    return needs


def _backend_needs(spec: Any, add) -> None:
    backend = spec.predict.backend
    if backend in ("dataflow", "endpoint") and spec.predict.dataflow.runner == "dataflow":
        cfg = spec.predict.dataflow
        add(cfg.temp_location or "gs://", "predict.dataflow.temp_location", "predict.dataflow")
        add(cfg.staging_location, "predict.dataflow.staging_location", "predict.dataflow")
    elif backend == "sagemaker":
        add(spec.predict.sagemaker.s3_staging_uri or "s3://", "predict.sagemaker.s3_staging_uri",
            "predict.sagemaker")
    elif backend == "vertex":
        add(spec.predict.vertex.gcs_staging_uri or "gs://", "predict.vertex.gcs_staging_uri", "predict.vertex")


def _block(spec: Any, dotted: str) -> Any:
    """The block at `dotted`; None for an optional block the spec leaves out (`predict.endpoint`)."""
    node = spec
    for part in dotted.split("."):
        node = getattr(node, part)
        if node is None:
            return None
    return node
