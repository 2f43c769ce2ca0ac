"""Pydantic models of one pipeline YAML file.

Every model forbids unknown keys, so a typo fails loudly instead of silently falling back to a default.
`compute:` and `network:` mean the same for every backend; translating them into SageMaker, Vertex or
Dataflow terms is the backend module's job, not the spec's (buzzflow's lesson in the seed documents).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Backend = Literal["local", "dataflow", "sagemaker", "vertex", "auto"]
DataFormat = Literal["parquet", "csv", "jsonl"]
FeatureType = Literal["int", "float", "bool", "string"]

_NAME = r"^[a-z][a-z0-9_]{0,62}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Alerts(_Model):
    """Slack alerts (mlbatch.alerts): a failure alert per failed task; optional retry/success notices."""

    slack_channel: str | None = None
    mention: str | None = None
    on_success: bool = False
    notify_retries: bool = False
    slack_conn_id: str = "slack_api_default"
    webhook_conn_id: str | None = None
    log_lines: int = Field(default=40, ge=5, le=200)
    thread_window_minutes: float = Field(default=360, ge=0)


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
        default=None, description="File that must exist before the run starts, e.g. a _SUCCESS marker "
                                  "(the default target of `wait`)."
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
    local_workers: int = Field(default=1, ge=1, description=(
        "Local Beam runs: this many in-memory jobs over disjoint groups of the input files (one model copy each)."))
    large_model: bool = Field(
        default=False, description="Direct-model jobs: one model copy per machine, shared by its worker processes.")
    model_copies: int | None = Field(
        default=None, ge=1, description="Direct-model jobs: exactly this many model copies per machine.")
    one_process_per_worker: bool = Field(
        default=False, description="Dataflow: one SDK process per worker VM (experiments=no_use_multiple_sdk_containers).")

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
    experiments: list[str] = Field(default=[], description="Extra Dataflow experiments, e.g. use_runner_v2.")
    service_options: list[str] = Field(
        default=[], description="Extra Dataflow service options (GPUs come from compute.accelerator_*).")
    gcp_conn_id: str = Field(
        default="google_cloud_default",
        description="Airflow connection for the Dataflow API and GCS staging (runner 'dataflow').")


class SageMakerBackend(_Model):
    """SageMaker Batch Transform; `compute:`/`network:` are translated in mlbatch.backends.sagemaker."""

    region: str | None = None
    role_arn: str | None = Field(default=None, description="Execution role of the SageMaker Model.")
    image_uri: str | None = Field(
        default=None, description="Serving image, e.g. built by `mlflow sagemaker build-and-push-container`.")
    s3_staging_uri: str | None = Field(
        default=None, description="s3:// prefix for the model artifact and the job's input and output.")
    aws_conn_id: str = "aws_default"
    max_payload_mb: int = Field(default=6, ge=1, le=100)
    max_concurrent_transforms: int | None = Field(default=None, ge=1)


class VertexBackend(_Model):
    """Vertex AI batch prediction; `compute:`/`network:` are translated in mlbatch.backends.vertex."""

    project: str | None = None
    region: str | None = None
    serving_container_image_uri: str | None = None
    gcs_staging_uri: str | None = Field(
        default=None, description="gs:// prefix for the model artifact and the job's input and output.")
    gcp_conn_id: str = "google_cloud_default"
    predict_route: str = "/invocations"
    health_route: str = "/ping"


class Predict(_Model):
    backend: Backend = "local"
    compute: Compute = Compute()
    network: Network = Network()
    local: LocalBackend = LocalBackend()
    dataflow: DataflowBackend = DataflowBackend()
    sagemaker: SageMakerBackend = SageMakerBackend()
    vertex: VertexBackend = VertexBackend()
    labels: dict[str, str] = Field(
        default={}, description="Cloud labels/tags of remote jobs and models (plus pipeline and run).")
    auto_reason: str | None = Field(
        default=None, description="Set by the loader, not in spec files: why `backend: auto` chose the "
                                  "backend (mlbatch.spec.backend_choice.resolve_backend).")


PredictionKind = Literal["value", "label", "probabilities", "positive_probability", "columns"]
ClassName = str | int | bool


class Predictions(_Model):
    """Which columns the model's answer becomes (mlbatch_beam.outputs maps it the same way for every
    backend). The model decides what it returns (e.g. sklearn logged with pyfunc_predict_fn=
    "predict_proba" returns one probability per class); this says how to publish it."""

    kind: PredictionKind = Field(
        default="value", description="value/label: one column (`output.prediction_column`); probabilities: "
                                     "one column per class; positive_probability: the positive class's "
                                     "probability as `output.prediction_column`; columns: named model outputs.")
    classes: list[ClassName] = Field(
        default=[], description="The model's classes in the order of its probability columns "
                                "(sklearn: `classes_`).")
    positive_class: ClassName | None = Field(
        default=None, description="positive_probability: one of `classes`; default the second of two.")
    column_prefix: str = Field(default="probability_", description="probabilities: column = prefix + class.")
    columns: list[str] = Field(default=[], description="columns: the model's output columns to publish.")
    method: Literal["predict_proba"] | None = Field(
        default=None, description="Call this method of an sklearn model instead of the function it was logged "
                                  "with; direct-model backend (dataflow) only.")

    @model_validator(mode="after")
    def _fields_of_kind(self) -> Predictions:
        kind = self.kind
        if kind == "probabilities" and not self.classes:
            raise ValueError("kind 'probabilities' needs 'classes' (the model's classes, in its column order)")
        if kind == "columns" and not self.columns:
            raise ValueError("kind 'columns' needs 'columns' (the model's output columns to publish)")
        if self.columns and kind != "columns":
            raise ValueError(f"'columns' belongs to kind 'columns', not {kind!r}")
        if self.classes and kind not in ("probabilities", "positive_probability"):
            raise ValueError(f"'classes' belongs to kinds 'probabilities' and 'positive_probability', not {kind!r}")
        if self.positive_class is not None:
            if kind != "positive_probability":
                raise ValueError(f"'positive_class' belongs to kind 'positive_probability', not {kind!r}")
            if str(self.positive_class) not in [str(c) for c in self.classes]:
                raise ValueError(f"positive_class {self.positive_class!r} is not one of classes {self.classes}")
        if len({str(c) for c in self.classes}) != len(self.classes):
            raise ValueError(f"'classes' repeats a class: {self.classes}")
        if self.method and kind not in ("probabilities", "positive_probability"):
            raise ValueError(f"method {self.method!r} returns class probabilities: use kind 'probabilities' "
                             "or 'positive_probability'")
        return self


class Output(_Model):
    uri: str = Field(description="The output partition; a rerun of the same date replaces it.")
    format: DataFormat = "parquet"
    prediction_column: str = "prediction"
    predictions: Predictions = Predictions()
    dead_letter_uri: str | None = Field(default=None, description="Defaults to <uri>/../_rejected/<leaf>.")
    work_uri: str | None = Field(default=None, description="Scratch space; defaults to <uri>/../_work.")

    @property
    def prediction_columns(self) -> list[str]:
        """The published columns next to the id, in order."""
        p = self.predictions
        if p.kind == "probabilities":
            return [f"{p.column_prefix}{c}" for c in p.classes]
        return list(p.columns) if p.kind == "columns" else [self.prediction_column]

    def prediction_output(self) -> str:
        """JSON of mlbatch_beam.outputs.PredictionOutput, for the jobs and readers (no Beam import here)."""
        import json

        p = self.predictions
        return json.dumps({"kind": p.kind, "column": self.prediction_column, "classes": p.classes,
                           "positive_class": p.positive_class, "columns": p.columns,
                           "prefix": p.column_prefix, "method": p.method})


class StorageSettings(_Model):
    """How the bundle reaches object stores (input, work, staging, output): Airflow connections, and how
    long a run's work folder and staged job inputs/outputs stay after its partition is committed."""

    aws_conn_id: str = Field(default="aws_default", description="Airflow connection for s3:// URIs.")
    gcp_conn_id: str = Field(default="google_cloud_default", description="Airflow connection for gs:// URIs.")
    keep_staged_days: float = Field(
        default=0, ge=0, description="Keep the work folder and staged job files this many days after the "
                                     "commit (0: delete them at once); later runs delete expired ones.")


class TriggerParam(_Model):
    """One field of the manual-trigger form, bound to a spec field (dotted path) or to `ds`."""

    field: str
    type: Literal["string", "integer", "number", "boolean"] = "string"
    enum: list[Any] | None = None
    description: str | None = None
    format: Literal["date"] | None = None


WaitKind = Literal["object", "bigquery_partition", "upstream_task", "upstream_asset"]


class WaitChecks(_Model):
    """Completeness of the input files (`input.uri`), checked once the wait condition holds; until they
    pass, the step keeps waiting (deferred), and `on_timeout` applies at the deadline."""

    min_rows: int | None = Field(default=None, ge=1, description="Rows over all input files at least.")
    min_bytes: int | None = Field(default=None, ge=1, description="Bytes over all input files at least.")
    max_age_minutes: float | None = Field(default=None, gt=0, description="Newest input file at most this old.")

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.min_rows, self.min_bytes, self.max_age_minutes))


class Wait(_Model):
    """What `wait_for_data` waits for before the run proceeds; every kind defers (no worker slot)."""

    kind: WaitKind = "object"
    targets: list[str] = Field(
        default=[], description="kind object: paths/globs (local, file://, s3://, gs://), all must exist; "
                                "default `input.marker`, else `input.uri`. Templated.")
    table: str | None = Field(default=None, description="kind bigquery_partition: project.dataset.table.")
    partition: str | None = Field(
        default=None, description="kind bigquery_partition: partition id, templated (e.g. {{ ds_nodash }}); "
                                  "null = the table must exist.")
    dag_id: str | None = Field(default=None, description="kind upstream_task: the upstream DAG.")
    task_ids: list[str] = Field(default=[], description="kind upstream_task: tasks; empty = the whole DAG run.")
    assets: list[str] = Field(
        default=[], description="kind upstream_asset: pipeline names (their predictions) or asset URIs.")
    assets_mode: Literal["all", "any"] = "all"
    aws_conn_id: str = "aws_default"
    gcp_conn_id: str = "google_cloud_default"
    timeout_minutes: float = Field(default=60, gt=0)
    poke_seconds: float = Field(default=30, gt=0)
    on_timeout: Literal["fail", "skip"] = "fail"
    checks: WaitChecks = WaitChecks()

    @model_validator(mode="after")
    def _fields_of_kind(self) -> Wait:
        needs = {"bigquery_partition": ("table",), "upstream_task": ("dag_id",), "upstream_asset": ("assets",)}
        owner = {"targets": "object", "table": "bigquery_partition", "partition": "bigquery_partition",
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


class Tasks(_Model):
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


class PipelineSpec(_Model):
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
