"""`predict:` of a pipeline spec: which backend scores, where the work runs and how it reaches the network.

`compute:` and `network:` mean the same for every backend; translating them into SageMaker, Vertex or
Dataflow terms is the backend module's job, not the spec's (buzzflow's lesson in the seed documents).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from mlbatch.spec import accelerators
from mlbatch.spec.base import SpecModel

Backend = Literal["local", "dataflow", "sagemaker", "vertex", "endpoint", "auto"]
# Each service's request payload limit (bytes): SageMaker InvokeEndpoint 6 MB, Vertex AI online
# prediction 1.5 MB. `predict.endpoint.max_bytes_per_request` may only lower it.
ENDPOINT_PAYLOAD_LIMITS = {"sagemaker": 6 * 1024 * 1024, "vertex": 1_572_864}
ENDPOINT_LIMIT_NAMES = {"sagemaker": "InvokeEndpoint, 6 MB", "vertex": "online prediction, 1.5 MB"}
MLFLOW_DEFAULT_REQUEST_BYTES = 6 * 1024 * 1024  # an MLflow scoring server has no documented limit


class Compute(SpecModel):
    """Where the work runs, in words every backend understands."""

    machine_type: str | None = None
    min_workers: int = Field(default=1, ge=1)
    max_workers: int = Field(default=1, ge=1)
    accelerator_type: str | None = Field(default=None, description=(
        "A GPU as Compute Engine names it (nvidia-tesla-t4, nvidia-l4, ...), translated per backend "
        "(mlbatch.spec.accelerators)."))
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

    @field_validator("accelerator_type")
    @classmethod
    def _one_vocabulary(cls, name: str | None) -> str | None:
        if name is not None and not accelerators.known(name):
            spelled = name.lower().replace("_", "-")
            hint = f" (did you mean {spelled!r}?)" if accelerators.known(spelled) else ""
            raise ValueError(f"one of {list(accelerators.ACCELERATORS)}{hint}: the spec names GPUs as Compute "
                             "Engine does, each backend translates the name")
        return name

    @model_validator(mode="after")
    def _workers(self) -> Compute:
        if self.max_workers < self.min_workers:
            raise ValueError(f"max_workers ({self.max_workers}) < min_workers ({self.min_workers})")
        if (self.accelerator_count > 0) != (self.accelerator_type is not None):
            raise ValueError("accelerator_type and accelerator_count > 0 go together")
        return self


class Network(SpecModel):
    """How the remote job reaches the network, in words every backend understands."""

    network: str | None = None
    subnetwork: str | None = None
    security_group_ids: list[str] = []
    service_account: str | None = None
    public_ips: bool = True
    kms_key: str | None = None


class LocalBackend(SpecModel):
    flavor: Literal["vertex", "sagemaker"] = "vertex"


class DataflowBackend(SpecModel):
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
        description="Airflow connection for the Dataflow API and GCS staging (runner 'dataflow'); "
                    "default: `storage.gcp_conn_id`.")


class SageMakerBackend(SpecModel):
    """SageMaker Batch Transform; `compute:`/`network:` are translated in mlbatch.backends.sagemaker."""

    region: str | None = None
    role_arn: str | None = Field(default=None, description="Execution role of the SageMaker Model.")
    image_uri: str | None = Field(
        default=None, description=(
            "Serving image; {model_name}/{model_version} name the image of each version (`mlflow models "
            "build-docker -m`, environment built in). A fixed URI is the generic image that installs the "
            "model's requirements at start: refused with network.public_ips false."))
    s3_staging_uri: str | None = Field(
        default=None, description="s3:// prefix for the model artifact and the job's input and output.")
    aws_conn_id: str = Field(default="aws_default", description="Default: `storage.aws_conn_id`.")
    max_payload_mb: int = Field(default=6, ge=1, le=100)
    max_concurrent_transforms: int | None = Field(default=None, ge=1)
    max_rows_per_request: int = Field(default=65_536, ge=1, description=(
        "Rows in one request (one prepared file, SplitType None): prep writes files of at most this many "
        "rows, and a file over it is refused before submitting. The MLflow container answers 504 after "
        "60 s (its server's request timeout and nginx's default proxy_read_timeout), so rows / the model's "
        "rows per second on the instance must stay well under 60 (docs/spec.md, request sizing)."))


class VertexBackend(SpecModel):
    """Vertex AI batch prediction; `compute:`/`network:` are translated in mlbatch.backends.vertex."""

    project: str | None = None
    region: str | None = None
    serving_container_image_uri: str | None = None
    gcs_staging_uri: str | None = Field(
        default=None, description="gs:// prefix for the model artifact and the job's input and output.")
    gcp_conn_id: str = Field(default="google_cloud_default", description="Default: `storage.gcp_conn_id`.")
    predict_route: str = "/invocations"
    health_route: str = "/ping"


class EndpointBackend(SpecModel):
    """A live model endpoint that scores the partition request by request (`backend: endpoint`); the Beam
    job is mlbatch_beam.endpoint_score, the glue mlbatch.backends.endpoint (docs/endpoint.md)."""

    kind: Literal["mlflow", "sagemaker", "vertex"] | None = Field(default=None, description=(
        "mlflow: any MLflow-compatible /invocations URL; sagemaker: a real-time endpoint (InvokeEndpoint); "
        "vertex: a Vertex AI endpoint (:predict)."))
    url: str | None = Field(default=None, description="mlflow: the scoring server's /invocations URL.")
    http_conn_id: str | None = Field(default=None, description=(
        "mlflow: Airflow HTTP connection for auth: extra {\"Authorization\": ...} is sent as it is; else "
        "login + password -> Basic; else the password alone -> Bearer token."))
    authorization_secret: str | None = Field(
        default=None, pattern=r"^projects/[^/]+/secrets/[^/]+/versions/[^/]+$", description=(
        "mlflow: a Secret Manager secret version (projects/<p>/secrets/<name>/versions/<v>) holding the "
        "Authorization header; the job reads it itself (on Dataflow, with the workers' service account), so "
        "no secret travels in the pipeline options. Instead of http_conn_id; the task reads it with "
        "gcp_conn_id for the served-version probe."))
    endpoint_name: str | None = Field(default=None, description="sagemaker: the endpoint's name.")
    endpoint_id: str | None = Field(default=None, description="vertex: the endpoint's id (a number).")
    project: str | None = Field(default=None, description="vertex: the endpoint's project.")
    region: str | None = Field(default=None, description="sagemaker, vertex: the endpoint's region.")
    api_endpoint: str | None = Field(default=None, description=(
        "vertex: the API's address when it is not https://{region}-aiplatform.googleapis.com (a Private "
        "Service Connect endpoint, an emulator). SageMaker's comes from the AWS connection "
        "(service_config sagemaker-runtime endpoint_url)."))
    aws_conn_id: str = Field(default="aws_default", description="sagemaker; default: `storage.aws_conn_id`.")
    gcp_conn_id: str = Field(default="google_cloud_default",
                             description="vertex, and mlflow's authorization_secret; default: `storage.gcp_conn_id`.")
    max_rows_per_request: int = Field(default=1000, ge=1, description=(
        "Rows per request (micro-batch); bench/results.md 'three ways' has the sweep."))
    max_bytes_per_request: int | None = Field(default=None, ge=1, description=(
        "Bytes per request body; default and ceiling: the service's limit (SageMaker 6 MB, Vertex 1.5 MB)."))
    max_in_flight: int = Field(default=4, ge=1, description="Requests in flight per worker.")
    timeout_s: float = Field(default=60.0, gt=0, description="Per request.")
    max_retries: int = Field(default=5, ge=0, description="Per request, on 429/5xx/timeouts, with backoff.")
    serves_source_of_truth: bool = Field(default=False, description=(
        "The endpoint is the model of record: `backend: auto` scores through it at any partition size."))

    @field_validator("max_bytes_per_request")
    @classmethod
    def _within_service_limit(cls, value: int | None, info: ValidationInfo) -> int | None:
        kind = info.data.get("kind")
        limit = ENDPOINT_PAYLOAD_LIMITS.get(kind or "")
        if limit and value and value > limit:
            raise ValueError(f"at most {limit} bytes, the {kind} request limit ({ENDPOINT_LIMIT_NAMES[kind]}): "
                             "the spec may only lower it")
        return value

    def request_bytes(self) -> int:
        """The body size a request may reach: the spec's, else the service's limit."""
        return self.max_bytes_per_request or ENDPOINT_PAYLOAD_LIMITS.get(self.kind or "",
                                                                         MLFLOW_DEFAULT_REQUEST_BYTES)


class Predict(SpecModel):
    backend: Backend = "local"
    compute: Compute = Compute()
    network: Network = Network()
    local: LocalBackend = LocalBackend()
    dataflow: DataflowBackend = DataflowBackend()
    sagemaker: SageMakerBackend = SageMakerBackend()
    vertex: VertexBackend = VertexBackend()
    endpoint: EndpointBackend | None = Field(default=None, description=(
        "A live model endpoint: scores with `backend: endpoint`, and `backend: auto` may choose it."))
    labels: dict[str, str] = Field(
        default={}, description="Cloud labels/tags of remote jobs and models (plus pipeline and run).")
    auto_reason: str | None = Field(
        default=None, description="Set by the loader, not in spec files: why `backend: auto` chose the "
                                  "backend (mlbatch.spec.backend_choice.resolve_backend).")
