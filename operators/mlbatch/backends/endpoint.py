"""`predict.backend: endpoint`: the partition scored through a live model endpoint (an MLflow scoring
server, a SageMaker real-time endpoint, a Vertex AI endpoint), seed 004's third way.

The job is `mlbatch_beam.endpoint_score`: the direct-model job's one pass (read, validate with prep's
rules, dead letters, write predictions) with the model call replaced by micro-batched requests to the
endpoint, so prep runs inside it (mlbatch.spec.prep_contract.prep_runs_in_predict) and publish reads its
output as the direct model's. It runs on this machine as a child process, like `DirectModelBackend`
(`predict.dataflow.runner: local`); on `runner: dataflow` it is a Dataflow job
(mlbatch.backends.endpoint_dataflow). Rows a request could not score after its retries are dead letters
with the service's reason, beside prep's rejected rows: rows in = scored + rejected + failed.

Before scoring, the endpoint's served version is checked against the run's pinned version
(mlbatch.backends.served_version): a mismatch fails the step with both versions named, nothing scored.

What travels to the job: where the endpoint is and how to batch (`--endpoint-json`, no secret), and the
credentials as environment variables, resolved here from the spec's Airflow connections:
- mlflow, `http_conn_id`: the connection's extra {"Authorization": "..."} as it is; else login and
  password as Basic; else the password alone as a Bearer token -> MLBATCH_ENDPOINT_AUTHORIZATION;
  or `authorization_secret`, a Secret Manager version read here with `gcp_conn_id` -> the same variable.
- sagemaker, `aws_conn_id`: the amazon provider's frozen credentials -> the standard AWS variables (as
  Storage.job_env does for s3://); the runtime's endpoint URL from the connection (service_config
  `sagemaker-runtime`, else its endpoint_url), for a VPC endpoint or an emulator.
- vertex, `gcp_conn_id`: an access token from the google provider's hook -> MLBATCH_ENDPOINT_ACCESS_TOKEN
  (none for an anonymous connection, an emulator's).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from mlbatch.backends.base import JobRequest, JobState, Handle, Submission, require_runnable
from mlbatch.backends.dataflow_options import local_job, local_runner_args, prediction_output_args
from mlbatch.backends.local import LocalJobBackend
from mlbatch.errors import BackendConfigError
from mlbatch.quality.baseline import edges_args
from mlbatch.spec.prep_contract import schema_json
from mlbatch.storage.layer import Storage

BACKEND = "endpoint"
MODULE = "mlbatch_beam.endpoint_score"
AUTHORIZATION_ENV = "MLBATCH_ENDPOINT_AUTHORIZATION"
ACCESS_TOKEN_ENV = "MLBATCH_ENDPOINT_ACCESS_TOKEN"
log = logging.getLogger(__name__)


def endpoint_json(cfg: Any, runtime_url: str | None = None) -> str:
    """The job's `--endpoint-json`: where the endpoint is and how to batch; never a secret."""
    where = {"mlflow": {"url": cfg.url},
             "sagemaker": {"endpoint_name": cfg.endpoint_name, "region": cfg.region},
             "vertex": {"endpoint_id": cfg.endpoint_id, "project": cfg.project, "region": cfg.region}}[cfg.kind]
    if cfg.kind == "mlflow":
        where["url"] = cfg.url.rstrip("/").removesuffix("/invocations")  # the job adds the route
        if cfg.authorization_secret:  # the secret's name, not its value: the job reads it itself
            where["authorization_secret"] = cfg.authorization_secret
    if cfg.kind == "sagemaker" and runtime_url:
        where["endpoint_url"] = runtime_url
    if cfg.kind == "vertex" and cfg.api_endpoint:
        where["api_endpoint"] = cfg.api_endpoint
    return json.dumps({"kind": cfg.kind, **where, "max_rows_per_request": cfg.max_rows_per_request,
                       "max_bytes_per_request": cfg.request_bytes(), "max_in_flight": cfg.max_in_flight,
                       "timeout_s": cfg.timeout_s, "max_retries": cfg.max_retries})


def http_authorization(conn_id: str) -> str:
    """The Authorization header an HTTP connection stands for (the rule in the module docstring)."""
    import base64

    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise BackendConfigError(f"there is no Airflow connection {conn_id!r} (predict.endpoint.http_conn_id): "
                                 "add it, or set the field to a connection that exists") from None
    given = (conn.extra_dejson or {}).get("Authorization")
    if given:
        return given
    if conn.login:
        return "Basic " + base64.b64encode(f"{conn.login}:{conn.password or ''}".encode()).decode()
    if conn.password:
        return f"Bearer {conn.password}"
    raise BackendConfigError(f"HTTP connection {conn_id!r} (predict.endpoint.http_conn_id) carries no credentials: "
                             "set extra {\"Authorization\": ...}, login and password (Basic), or a password "
                             "alone (Bearer token)")


def secret_authorization(cfg: Any) -> str:
    """The Authorization header in the Secret Manager version `authorization_secret`, read through the
    google provider's hook with `gcp_conn_id` (the served-version probe's, and a local job's)."""
    from airflow.providers.google.cloud.hooks.secret_manager import GoogleCloudSecretManagerHook

    _, project, _, secret, _, version = cfg.authorization_secret.split("/")
    answer = GoogleCloudSecretManagerHook(gcp_conn_id=cfg.gcp_conn_id).access_secret(
        project_id=project, secret_id=secret, secret_version=version)
    return answer.payload.data.decode().strip()


def mlflow_authorization(cfg: Any) -> str | None:
    """The Authorization header for an mlflow endpoint: from `http_conn_id`, else `authorization_secret`."""
    if cfg.http_conn_id:
        return http_authorization(cfg.http_conn_id)
    return secret_authorization(cfg) if cfg.authorization_secret else None


def aws_env(cfg: Any) -> tuple[dict[str, str], str | None]:
    """Frozen credentials of the endpoint's AWS connection, and the runtime endpoint URL it names."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    hook = AwsBaseHook(aws_conn_id=cfg.aws_conn_id, client_type="sagemaker-runtime", region_name=cfg.region)
    credentials = hook.get_credentials(region_name=cfg.region)
    env = {"AWS_ACCESS_KEY_ID": credentials.access_key, "AWS_SECRET_ACCESS_KEY": credentials.secret_key,
           "AWS_DEFAULT_REGION": cfg.region}
    if credentials.token:
        env["AWS_SESSION_TOKEN"] = credentials.token
    return env, hook.conn_config.get_service_endpoint_url(service_name="sagemaker-runtime")


def gcp_token(cfg: Any) -> dict[str, str]:
    """An access token of the endpoint's Google connection (none for an anonymous one)."""
    from airflow.providers.google.common.hooks.base_google import GoogleBaseHook

    hook = GoogleBaseHook(gcp_conn_id=cfg.gcp_conn_id)
    if hook.extras.get("is_anonymous"):
        return {}
    return {ACCESS_TOKEN_ENV: hook._get_access_token()}


class EndpointBackend(LocalJobBackend):
    """The endpoint scoring job in a child process (see the module docstring)."""

    name = BACKEND
    job_label = "endpoint scoring job"

    def __init__(self) -> None:
        super().__init__()
        self._secrets: dict[str, str] = {}
        self._runtime_url: str | None = None
        self._served = None

    def submit(self, request: JobRequest) -> Submission:
        from mlbatch.backends.served_version import check_served_version

        spec = request.spec
        require_runnable(spec, BACKEND)
        cfg = spec.predict.endpoint
        if cfg.kind == "mlflow":
            auth = mlflow_authorization(cfg)
            self._secrets = {AUTHORIZATION_ENV: auth} if auth else {}
        elif cfg.kind == "sagemaker":
            self._secrets, self._runtime_url = aws_env(cfg)
        else:
            self._secrets = gcp_token(cfg)
        self._served = check_served_version(spec, request.model, self._secrets.get(AUTHORIZATION_ENV),
                                            Storage.for_spec(spec), request.paths.input_pattern)
        return super().submit(request)

    def model_args(self, request: JobRequest) -> list[str]:
        return []  # the endpoint holds the model

    def job_secrets(self, request: JobRequest) -> dict[str, str]:
        return self._secrets

    def output_folders(self, request: JobRequest) -> list[str]:
        return [request.paths.output_staging, request.paths.rejected_staging]

    def job_args(self, request: JobRequest) -> tuple[str, list[str], list[str]]:
        spec, paths = request.spec, request.paths
        module, leading = local_job(spec, MODULE)
        return module, leading, [
            "--input", paths.input_pattern,
            "--input-format", spec.input.format,
            "--schema-json", schema_json(spec, request.model),
            "--dead-letter-dir", paths.rejected_staging,
            "--output-format", spec.output.format,
            *prediction_output_args(spec),
            "--batch-rows", str(spec.predict.compute.batch_rows),  # read batches; requests are smaller
            "--endpoint-json", endpoint_json(spec.predict.endpoint, self._runtime_url),
            *local_runner_args(spec),
            *edges_args(Storage.for_spec(spec), spec, paths, request.model["version"]),  # the quality gate's
        ]

    def result(self, request: JobRequest, handle: Handle, state: JobState) -> dict:
        """The job's counts with the version the endpoint served (recorded by publish and record), once
        what answered is known to be what was checked."""
        from mlbatch.backends.served_version import check_answered

        served = self._served
        if served:
            check_answered(request.spec, served, (self._result or {}).get("endpoint_model"))
        return {**super().result(request, handle, state), "endpoint_kind": request.spec.predict.endpoint.kind,
                "model_version": served.version if served else request.model["version"],
                "served_version": served.how if served else None}
