"""Whether a valid spec can run: what its backend needs before a job request can be built, and what the
trigger form lets a run choose.

The loader applies these after pydantic and after `backend: auto` is resolved (`mlbatch validate`, the DAG
parse, every run's trigger overrides), so a spec that cannot run is refused with the field to fix before
anything runs, not in predict with a BackendConfigError. The backends call `backend_problems` again when
they build a request (one rule, two places). Pure: runs at DAG-parse time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mlbatch.errors import SpecProblem
from mlbatch.spec import accelerators

if TYPE_CHECKING:
    from mlbatch.spec.models import PipelineSpec

SAGEMAKER_PAYLOAD_LIMIT_MB = 100  # CreateTransformJob: MaxConcurrentTransforms x MaxPayloadInMB


def backend_problems(spec: PipelineSpec, backend: str | None = None) -> list[SpecProblem]:
    """What `backend` (default: the spec's own) lacks in this spec; empty when it can build a job."""
    backend = backend or spec.predict.backend
    check = {"sagemaker": _sagemaker, "vertex": _vertex, "dataflow": _dataflow, "endpoint": _endpoint}.get(backend)
    return check(spec) if check else []


def _missing(block: str, cfg: Any, fields: tuple[str, ...], backend: str) -> list[SpecProblem]:
    return [SpecProblem(f"predict.{block}.{f}", None, f"a value: backend {backend} needs it to build a job")
            for f in fields if not getattr(cfg, f)]


def _scheme(where: str, uri: str | None, scheme: str, backend: str) -> list[SpecProblem]:
    if uri and not uri.startswith(scheme):
        return [SpecProblem(where, uri, f"a {scheme} URI (backend {backend} stages there)")]
    return []


def _sagemaker(spec: PipelineSpec) -> list[SpecProblem]:
    cfg, net = spec.predict.sagemaker, spec.predict.network
    problems = _missing("sagemaker", cfg, ("role_arn", "image_uri", "s3_staging_uri"), "sagemaker")
    problems += _scheme("predict.sagemaker.s3_staging_uri", cfg.s3_staging_uri, "s3://", "sagemaker")
    if bool(net.subnetwork) != bool(net.security_group_ids):
        problems.append(SpecProblem("predict.network", {"subnetwork": net.subnetwork,
                                                        "security_group_ids": net.security_group_ids},
                                    "both subnetwork and security_group_ids, or neither (a SageMaker VpcConfig "
                                    "needs Subnets and SecurityGroupIds)"))
    if cfg.max_concurrent_transforms and cfg.max_concurrent_transforms * cfg.max_payload_mb > SAGEMAKER_PAYLOAD_LIMIT_MB:
        problems.append(SpecProblem(
            "predict.sagemaker.max_concurrent_transforms", cfg.max_concurrent_transforms,
            f"at most {SAGEMAKER_PAYLOAD_LIMIT_MB // cfg.max_payload_mb} with max_payload_mb {cfg.max_payload_mb} "
            f"(SageMaker allows MaxConcurrentTransforms x MaxPayloadInMB <= {SAGEMAKER_PAYLOAD_LIMIT_MB})"))
    return problems + _sagemaker_gpu(spec)


def _sagemaker_gpu(spec: PipelineSpec) -> list[SpecProblem]:
    """SageMaker has no accelerator setting: the GPU named must be the one the instance type carries."""
    compute = spec.predict.compute
    if not compute.accelerator_type:
        return []
    carried = accelerators.sagemaker_gpu(compute.machine_type)
    if carried is None:
        families = ", ".join(f"ml.{f}.* ({g})" for f, g in accelerators.SAGEMAKER_GPUS.items())
        return [SpecProblem("predict.compute.machine_type", compute.machine_type,
                            f"a SageMaker GPU instance type for accelerator_type {compute.accelerator_type!r} "
                            f"(SageMaker has no accelerator setting; the GPU comes with the instance): {families}")]
    if carried != compute.accelerator_type:
        return [SpecProblem("predict.compute.accelerator_type", compute.accelerator_type,
                            f"{carried!r}, the GPU of instance type {compute.machine_type} (or pick the instance "
                            "type that carries the GPU you named)")]
    return []


def _vertex(spec: PipelineSpec) -> list[SpecProblem]:
    cfg, net = spec.predict.vertex, spec.predict.network
    problems = _missing("vertex", cfg, ("project", "region", "serving_container_image_uri", "gcs_staging_uri"),
                        "vertex")
    problems += _scheme("predict.vertex.gcs_staging_uri", cfg.gcs_staging_uri, "gs://", "vertex")
    if net.network or net.subnetwork:
        problems.append(SpecProblem("predict.network", {"network": net.network, "subnetwork": net.subnetwork},
                                    "no network/subnetwork on backend vertex (BatchPredictionJob v1 has no VPC "
                                    "setting); remove them or use another backend"))
    if cfg.serving_container_image_uri:
        try:
            cfg.serving_container_image_uri.format(model_name="m", model_version=1)
        except (KeyError, IndexError, ValueError) as exc:
            problems.append(SpecProblem("predict.vertex.serving_container_image_uri", cfg.serving_container_image_uri,
                                        f"an image URI whose only placeholders are {{model_name}} and "
                                        f"{{model_version}} ({exc!r})"))
    return problems + _gpu_on("vertex", spec)


def _dataflow(spec: PipelineSpec) -> list[SpecProblem]:
    return _dataflow_runner(spec, "dataflow") + _gpu_on("dataflow", spec)


def _dataflow_runner(spec: PipelineSpec, backend: str) -> list[SpecProblem]:
    """What `predict.dataflow.runner: dataflow` needs, for the backends whose job runs there."""
    cfg = spec.predict.dataflow
    if cfg.runner != "dataflow":
        return []
    return (_missing("dataflow", cfg, ("project", "region", "temp_location"), f"{backend} (runner dataflow)")
            + _scheme("predict.dataflow.temp_location", cfg.temp_location, "gs://", backend))


ENDPOINT_FIELDS = {"mlflow": ("url",), "sagemaker": ("endpoint_name", "region"),
                   "vertex": ("endpoint_id", "project", "region")}


def _endpoint(spec: PipelineSpec) -> list[SpecProblem]:
    """The endpoint's kind and the fields that kind needs; the job runs like the direct-model job
    (`predict.dataflow.runner`), so the runner's own needs apply too, and on Dataflow how the workers
    authenticate."""
    cfg = spec.predict.endpoint
    if cfg is None or cfg.kind is None:
        return [SpecProblem("predict.endpoint.kind", None,
                            f"one of {list(ENDPOINT_FIELDS)}: backend endpoint needs the endpoint it scores through")]
    problems = _missing("endpoint", cfg, ENDPOINT_FIELDS[cfg.kind], f"endpoint (kind {cfg.kind})")
    if cfg.kind == "mlflow" and cfg.url and not cfg.url.startswith(("http://", "https://")):
        problems.append(SpecProblem("predict.endpoint.url", cfg.url, "an http:// or https:// URL (the /invocations route)"))
    if spec.predict.compute.accelerator_count:
        problems.append(SpecProblem("predict.compute.accelerator_type", spec.predict.compute.accelerator_type,
                                    "no GPU on backend endpoint (the endpoint's own machines score)"))
    if cfg.authorization_secret and cfg.kind != "mlflow":
        problems.append(SpecProblem("predict.endpoint.authorization_secret", cfg.authorization_secret,
                                    f"no value with kind {cfg.kind} (it holds an mlflow endpoint's "
                                    "Authorization header)"))
    if cfg.authorization_secret and cfg.http_conn_id:
        problems.append(SpecProblem("predict.endpoint.http_conn_id", cfg.http_conn_id,
                                    "no value with authorization_secret (one source of the Authorization header)"))
    return problems + _dataflow_runner(spec, "endpoint") + _endpoint_on_dataflow(spec)


def _endpoint_on_dataflow(spec: PipelineSpec) -> list[SpecProblem]:
    """On Dataflow no secret may travel in the pipeline options (the console shows them): the workers
    authenticate themselves (docs/endpoint.md "On Dataflow")."""
    cfg = spec.predict.endpoint
    if spec.predict.dataflow.runner != "dataflow":
        return []
    if cfg.kind == "sagemaker":
        return [SpecProblem("predict.endpoint.kind", "sagemaker", (
            "'mlflow' or 'vertex' with predict.dataflow.runner 'dataflow', or runner 'local': a SageMaker "
            "endpoint needs AWS credentials, which would have to travel to the Dataflow workers in the "
            "pipeline options (visible in the console)"))]
    if cfg.kind == "mlflow" and cfg.http_conn_id:
        return [SpecProblem("predict.endpoint.http_conn_id", cfg.http_conn_id, (
            "no value with predict.dataflow.runner 'dataflow' (the connection's secret would travel in the "
            "pipeline options, visible in the console): put the Authorization header in Secret Manager and "
            "name its version in predict.endpoint.authorization_secret, which the workers read themselves"))]
    return []


def _gpu_on(backend: str, spec: PipelineSpec) -> list[SpecProblem]:
    name = spec.predict.compute.accelerator_type
    if name and name not in accelerators.allowed_on(backend):
        return [SpecProblem("predict.compute.accelerator_type", name,
                            f"a GPU backend {backend} has, one of {accelerators.allowed_on(backend)}")]
    return []


def trigger_problems(spec: PipelineSpec,
                     problems_with: Callable[[dict[str, Any]], list[SpecProblem]]) -> list[SpecProblem]:
    """What the trigger form's choices break: an `enum` must hold the spec's own value (the form's default;
    Airflow refuses a default outside the enum with ParamValidationError), and every value it offers
    must give a spec that can run (`problems_with({field: value})`, e.g. each backend's required fields)."""
    problems = []
    for key, param in spec.trigger_params.items():
        if param.enum is None or param.field == "ds":
            continue
        where, own = f"trigger_params.{key}.enum", _value_at(spec, param.field)
        if own not in param.enum:
            problems.append(SpecProblem(where, param.enum, f"a list holding the spec's own {param.field} {own!r} "
                                                           "(the form's default, which Airflow checks against the enum)"))
        for value in param.enum:
            if value != own:
                problems += [SpecProblem(where, value, f"values a run can use; with {param.field} = {value!r}: "
                                                       f"{p.where}{'' if p.value is None else f' = {p.value!r}'}: "
                                                       f"expected {p.expected}")
                             for p in problems_with({param.field: value})]
    return problems


def _value_at(spec: PipelineSpec, dotted: str) -> Any:
    node: Any = spec
    for part in dotted.split("."):
        node = getattr(node, part)
    return node
