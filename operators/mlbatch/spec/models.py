"""Pydantic models of one pipeline YAML file: the whole spec and its smaller blocks.

Every model forbids unknown keys (`SpecModel`), so a typo fails loudly instead of silently falling back
to a default. The `predict:` block is in `mlbatch.spec.predict`, the `output:` block in
`mlbatch.spec.output`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from mlbatch.spec.base import DataFormat, SpecModel
from mlbatch.spec.output import Output
from mlbatch.spec.predict import Predict
from mlbatch.spec.quality import Quality

FeatureType = Literal["int", "float", "bool", "string"]

_NAME = r"^[a-z][a-z0-9_]{0,62}$"


class Alerts(SpecModel):
    """Slack alerts (mlbatch.alerts): a failure alert per failed task; optional retry/success notices."""

    slack_channel: str | None = None
    mention: str | None = None
    on_success: bool = False
    notify_retries: bool = False
    slack_conn_id: str = "slack_api_default"
    webhook_conn_id: str | None = None
    log_lines: int = Field(default=40, ge=5, le=200)
    thread_window_minutes: float = Field(default=360, ge=0)


class ModelRef(SpecModel):
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


class Feature(SpecModel):
    """One model input column; prep checks `min`/`max`/`allowed` on the converted value."""

    name: str
    type: FeatureType
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    allowed: list[Any] | None = None

    @model_validator(mode="after")
    def _constraints_fit_the_type(self) -> Feature:
        """Refuse constraints prep cannot apply to this type, or that no value can pass."""
        if self.type in ("string", "bool") and (self.min is not None or self.max is not None):
            instead = "allowed: [...]" if self.type == "string" else "allowed: [true] or [false]"
            raise ValueError(f"feature {self.name!r}: min/max apply to int and float features, not {self.type}; "
                             f"use {instead}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature {self.name!r}: min {self.min} > max {self.max}: no value can pass")
        if self.allowed is not None:
            self._check_allowed(self.allowed)
        return self

    def _check_allowed(self, allowed: list[Any]) -> None:
        kinds = {"int": (int,), "float": (int, float), "bool": (bool,), "string": (str,)}[self.type]
        if not allowed:
            raise ValueError(f"feature {self.name!r}: allowed is empty, no value can pass (drop it to allow any)")
        if any(v is None for v in allowed):
            raise ValueError(f"feature {self.name!r}: null in allowed; use nullable: true")
        wrong = [v for v in allowed if not isinstance(v, kinds) or (self.type != "bool" and isinstance(v, bool))]
        if wrong:
            raise ValueError(f"feature {self.name!r}: allowed values {wrong} are not of type {self.type}")
        outside = [v for v in allowed if (self.min is not None and v < self.min)
                   or (self.max is not None and v > self.max)]
        if outside:
            raise ValueError(f"feature {self.name!r}: allowed values {outside} are outside min/max "
                             f"[{self.min}, {self.max}] and could never pass")


class Input(SpecModel):
    uri: str = Field(description="File pattern; may use Airflow templates such as {{ ds }}.")
    format: DataFormat
    id_column: str
    features: list[Feature] = Field(min_length=1)
    marker: str | None = Field(
        default=None, description="File that must exist before the run starts, e.g. a _SUCCESS marker "
                                  "(the default target of `wait`)."
    )
    expected_rows: int | None = Field(default=None, ge=1, description=(
        "About how many rows one partition holds; `backend: auto` scores a small one through a configured "
        "endpoint (mlbatch.spec.backend_choice)."))

    @model_validator(mode="after")
    def _unique_columns(self) -> Input:
        names = [self.id_column] + [f.name for f in self.features]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"column names must be unique, repeated: {dupes}")
        return self


class Prep(SpecModel):
    batch_rows: int = Field(default=65_536, ge=1)
    max_rejected_fraction: float = Field(default=0.05, ge=0, le=1)


class StorageSettings(SpecModel):
    """How the bundle reaches object stores (input, work, staging, output): Airflow connections, and how
    long a run's work folder and staged job inputs/outputs stay after its partition is committed."""

    aws_conn_id: str = Field(default="aws_default", description="Airflow connection for s3:// URIs.")
    gcp_conn_id: str = Field(default="google_cloud_default", description="Airflow connection for gs:// URIs.")
    keep_staged_days: float = Field(
        default=0, ge=0, description="Keep the work folder and staged job files this many days after the "
                                     "commit (0: delete them at once); later runs delete expired ones.")


class TriggerParam(SpecModel):
    """One field of the manual-trigger form, bound to a spec field (dotted path) or to `ds`."""

    field: str
    type: Literal["string", "integer", "number", "boolean"] = "string"
    enum: list[Any] | None = None
    description: str | None = None
    format: Literal["date"] | None = None


WaitKind = Literal["object", "bigquery_partition", "upstream_task", "upstream_asset"]


class WaitChecks(SpecModel):
    """Completeness of the input files (`input.uri`), checked once the wait condition holds; until they
    pass, the step keeps waiting (deferred), and `on_timeout` applies at the deadline."""

    min_rows: int | None = Field(default=None, ge=1, description="Rows over all input files at least.")
    min_bytes: int | None = Field(default=None, ge=1, description="Bytes over all input files at least.")
    max_age_minutes: float | None = Field(default=None, gt=0, description="Newest input file at most this old.")

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.min_rows, self.min_bytes, self.max_age_minutes))


class Wait(SpecModel):
    """What `wait_for_data` waits for before the run proceeds; every kind defers (no worker slot)."""

    kind: WaitKind = "object"
    targets: list[str] = Field(
        default=[], description="kind object: paths/globs (local, file://, s3://, gs://), all must exist; "
                                "default `input.marker`, else `input.uri`. Templated.")
    table: str | None = Field(default=None, description="kind bigquery_partition: project.dataset.table.")
    partition: str | None = Field(
        default=None, description="kind bigquery_partition: partition id, templated (e.g. {{ ds_nodash }}); "
                                  "null = the table must exist.")
    location: str | None = Field(
        default=None, description="kind bigquery_partition: the dataset's BigQuery location (EU, europe-west4); "
                                  "default: where BigQuery finds the dataset.")
    dag_id: str | None = Field(default=None, description="kind upstream_task: the upstream DAG.")
    task_ids: list[str] = Field(default=[], description="kind upstream_task: tasks; empty = the whole DAG run.")
    assets: list[str] = Field(
        default=[], description="kind upstream_asset: pipeline names (their predictions) or asset URIs.")
    assets_mode: Literal["all", "any"] = "all"
    aws_conn_id: str = Field(default="aws_default", description="Default: `storage.aws_conn_id`.")
    gcp_conn_id: str = Field(default="google_cloud_default", description="Default: `storage.gcp_conn_id`.")
    timeout_minutes: float = Field(default=60, gt=0)
    poke_seconds: float = Field(default=30, gt=0)
    on_timeout: Literal["fail", "skip"] = "fail"
    checks: WaitChecks = WaitChecks()

    @model_validator(mode="after")
    def _fields_of_kind(self) -> Wait:
        needs = {"bigquery_partition": ("table",), "upstream_task": ("dag_id",), "upstream_asset": ("assets",)}
        owner = {"targets": "object", "table": "bigquery_partition", "partition": "bigquery_partition",
                 "location": "bigquery_partition",
                 "dag_id": "upstream_task", "task_ids": "upstream_task", "assets": "upstream_asset"}
        for field in needs.get(self.kind, ()):
            if not getattr(self, field):
                raise ValueError(f"kind {self.kind!r} needs 'wait.{field}'")
        for field, kind in owner.items():
            if getattr(self, field) and kind != self.kind:
                raise ValueError(f"'wait.{field}' belongs to kind {kind!r}, not {self.kind!r}")
        if self.table is not None and len(self.table.split(".")) != 3:
            raise ValueError(f"'wait.table' {self.table!r}: expected project.dataset.table")
        return self


class Tasks(SpecModel):
    retries: int = Field(default=1, ge=0)
    retry_delay_minutes: float = Field(default=5, gt=0)
    execution_timeout_minutes: float = Field(default=120, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _moved_fields(cls, data: Any) -> Any:
        moved = {"wait_timeout_minutes": "wait.timeout_minutes", "wait_poke_seconds": "wait.poke_seconds"}
        for old, new in moved.items():
            if isinstance(data, dict) and old in data:
                raise ValueError(f"'tasks.{old}' moved to '{new}'")
        return data


class PipelineSpec(SpecModel):
    name: str = Field(pattern=_NAME)
    description: str = ""
    owner: str = "mlops"
    tags: list[str] = []
    schedule: str | None = None
    start_date: str = "2026-01-01"
    scheduled_data_date_offset_days: int = Field(
        default=-1, ge=-366, le=366,
        description="Scheduled runs score the day `run_after + offset` (run_after: when the run was due); "
                    "-1: the day that just ended, what a daily producer writes. Manual runs score their "
                    "`ds` trigger param, else their logical date.")
    max_active_runs: int = Field(
        default=4, ge=1, le=64,
        description="Runs of this pipeline at once; >1 so a run waiting for one date does not block another.")
    alerts: Alerts = Alerts()
    model: ModelRef
    input: Input
    prep: Prep = Prep()
    predict: Predict = Predict()
    output: Output
    storage: StorageSettings = StorageSettings()
    trigger_params: dict[str, TriggerParam] = {}
    tasks: Tasks = Tasks()
    wait: Wait = Wait()
    quality: Quality | None = Field(default=None, description="The gate between predict and publish "
                                    "(docs/quality.md); absent: no gate.")

    @model_validator(mode="after")
    def _quality_features_exist(self) -> PipelineSpec:
        names = [f.name for f in self.input.features]
        listed = self.quality.features if self.quality and self.quality.features != "all" else []
        unknown = [n for n in listed if n not in names]
        if unknown:
            raise ValueError(f"quality.features: {unknown} are not input features (those are {names})")
        return self

    @model_validator(mode="after")
    def _one_schedule(self) -> PipelineSpec:
        if self.wait.kind == "upstream_asset" and self.schedule is not None:
            raise ValueError(f"schedule {self.schedule!r} and wait.kind 'upstream_asset' exclude each other: "
                             "the upstream assets are the schedule (set schedule: null)")
        return self

    @model_validator(mode="after")
    def _backend_serves_predictions(self) -> PipelineSpec:
        """Refuse what the chosen backend cannot serve (checked again once `auto` has chosen one)."""
        method, backend = self.output.predictions.method, self.predict.backend
        if method and backend not in ("dataflow", "auto"):
            what = ("the local backend keeps the MLflow serving container's contract"
                    if backend == "local" else f"predict.backend {backend!r} serves the model in the MLflow container")
            raise ValueError(
                f"output.predictions.method {method!r} needs predict.backend 'dataflow': {what}, which calls "
                "only the function the model was logged with (python_function predict_fn) and has no "
                "per-request switch; log the model with mlflow.sklearn.log_model(..., "
                f"pyfunc_predict_fn={method!r}) and drop 'method', or use predict.backend 'dataflow'")
        clash = [c for c in self.output.prediction_columns if c == self.input.id_column]
        if clash or len(set(self.output.prediction_columns)) != len(self.output.prediction_columns):
            raise ValueError(f"published columns {[self.input.id_column, *self.output.prediction_columns]} "
                             "must be unique")
        return self

    @model_validator(mode="after")
    def _one_connection_rule(self) -> PipelineSpec:
        """A step reaches a store through the `storage:` connections unless it names its own
        (mlbatch.spec.connections)."""
        from mlbatch.spec.connections import inherit_connections

        inherit_connections(self)
        return self

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
