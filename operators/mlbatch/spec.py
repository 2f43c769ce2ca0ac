"""Pydantic models of one pipeline YAML file.

Every model forbids unknown keys, so a typo fails loudly instead of silently falling back to a default.
`compute:` and `network:` mean the same for every backend; translating them into SageMaker, Vertex or
Dataflow terms is the backend module's job, not the spec's (buzzflow's lesson in the seed documents).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Backend = Literal["local", "dataflow", "sagemaker", "vertex"]
DataFormat = Literal["parquet", "csv", "jsonl"]
FeatureType = Literal["int", "float", "bool", "string"]

_NAME = r"^[a-z][a-z0-9_]{0,62}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Alerts(_Model):
    slack_channel: str | None = None
    mention: str | None = None
    on_success: bool = False
    notify_retries: bool = False


class ModelRef(_Model):
    """An MLflow registered model, pinned by alias (resolved once per run) or by version."""

    name: str
    alias: str | None = None
    version: int | None = Field(default=None, ge=1)
    tracking_uri: str | None = None

    @model_validator(mode="after")
    def _alias_or_version(self) -> ModelRef:
        if (self.alias is None) == (self.version is None):
            raise ValueError("give exactly one of 'alias' or 'version'")
        return self


class Feature(_Model):
    name: str
    type: FeatureType
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    allowed: list[Any] | None = None


class Input(_Model):
    uri: str = Field(description="File pattern; may use Airflow templates such as {{ ds }}.")
    format: DataFormat
    id_column: str
    features: list[Feature] = Field(min_length=1)
    marker: str | None = Field(
        default=None, description="File that must exist before the run starts, e.g. a _SUCCESS marker."
    )

    @model_validator(mode="after")
    def _unique_columns(self) -> Input:
        names = [self.id_column] + [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"column names must be unique, repeated: {dupes}")
        return self


class Prep(_Model):
    batch_rows: int = Field(default=65_536, ge=1)
    max_rejected_fraction: float = Field(default=0.05, ge=0, le=1)


class Compute(_Model):
    """Where the work runs, in words every backend understands."""

    machine_type: str | None = None
    min_workers: int = Field(default=1, ge=1)
    max_workers: int = Field(default=1, ge=1)
    accelerator_type: str | None = None
    accelerator_count: int = Field(default=0, ge=0)
    batch_rows: int = Field(default=65_536, ge=1)
    local_workers: int = Field(default=1, ge=1, description="Processes for local Beam runs.")

    @model_validator(mode="after")
    def _workers(self) -> Compute:
        if self.max_workers < self.min_workers:
            raise ValueError(f"max_workers ({self.max_workers}) < min_workers ({self.min_workers})")
        if (self.accelerator_count > 0) != (self.accelerator_type is not None):
            raise ValueError("accelerator_type and accelerator_count > 0 go together")
        return self


class Network(_Model):
    """How the remote job reaches the network, in words every backend understands."""

    network: str | None = None
    subnetwork: str | None = None
    security_group_ids: list[str] = []
    service_account: str | None = None
    public_ips: bool = True
    kms_key: str | None = None


class LocalBackend(_Model):
    flavor: Literal["vertex", "sagemaker"] = "vertex"


class DataflowBackend(_Model):
    runner: Literal["local", "dataflow"] = Field(
        default="local", description="local = Beam FnApiRunner on this machine; dataflow = Google Dataflow."
    )
    project: str | None = None
    region: str | None = None
    temp_location: str | None = None
    staging_location: str | None = None
    sdk_container_image: str | None = None


class SageMakerBackend(_Model):
    region: str | None = None
    role_arn: str | None = None
    image_uri: str | None = None
    s3_staging_uri: str | None = None


class VertexBackend(_Model):
    project: str | None = None
    region: str | None = None
    serving_container_image_uri: str | None = None
    gcs_staging_uri: str | None = None


class Predict(_Model):
    backend: Backend = "local"
    compute: Compute = Compute()
    network: Network = Network()
    local: LocalBackend = LocalBackend()
    dataflow: DataflowBackend = DataflowBackend()
    sagemaker: SageMakerBackend = SageMakerBackend()
    vertex: VertexBackend = VertexBackend()


class Output(_Model):
    uri: str = Field(description="The output partition; a rerun of the same date replaces it.")
    format: DataFormat = "parquet"
    prediction_column: str = "prediction"
    dead_letter_uri: str | None = Field(default=None, description="Defaults to <uri>/../_rejected/<leaf>.")
    work_uri: str | None = Field(default=None, description="Scratch space; defaults to <uri>/../_work.")


class TriggerParam(_Model):
    """One field of the manual-trigger form, bound to a spec field (dotted path) or to `ds`."""

    field: str
    type: Literal["string", "integer", "number", "boolean"] = "string"
    enum: list[Any] | None = None
    description: str | None = None
    format: Literal["date"] | None = None


class Tasks(_Model):
    retries: int = Field(default=1, ge=0)
    retry_delay_minutes: float = Field(default=5, gt=0)
    execution_timeout_minutes: float = Field(default=120, gt=0)
    wait_timeout_minutes: float = Field(default=60, gt=0)
    wait_poke_seconds: float = Field(default=30, gt=0)


class PipelineSpec(_Model):
    name: str = Field(pattern=_NAME)
    description: str = ""
    owner: str = "mlops"
    tags: list[str] = []
    schedule: str | None = None
    start_date: str = "2026-01-01"
    alerts: Alerts = Alerts()
    model: ModelRef
    input: Input
    prep: Prep = Prep()
    predict: Predict = Predict()
    output: Output
    trigger_params: dict[str, TriggerParam] = {}
    tasks: Tasks = Tasks()

    @model_validator(mode="after")
    def _trigger_fields_exist(self) -> PipelineSpec:
        for key, param in self.trigger_params.items():
            if not re.match(_NAME, key):
                raise ValueError(f"trigger_params key {key!r} must match {_NAME}")
            if param.field != "ds" and not has_path(self, param.field):
                raise ValueError(f"trigger_params.{key}.field {param.field!r} is not a field of the spec")
        return self

    @property
    def dag_id(self) -> str:
        return self.name


def has_path(model: BaseModel, dotted: str) -> bool:
    node: Any = model
    for part in dotted.split("."):
        if not isinstance(node, BaseModel) or part not in type(node).model_fields:
            return False
        node = getattr(node, part)
    return True
