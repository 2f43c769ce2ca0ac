"""`predict.backend: auto`: the rule from seed document 004 (Google Cloud, "comparing ML model calls in
Dataflow pipelines").

For batch scoring the direct model inside the Dataflow workers was fastest end to end, so it is the
default. A managed batch-prediction job is worth its start-up cost only when
  1. the input already sits in cloud storage in prediction format (JSON Lines in s3:// or gs://): no
     prep pass is needed to reshape it, or
  2. GPUs are asked for (`compute.accelerator_count > 0`): batch prediction serves them, Beam workers
     would each load the model onto a shared accelerator.
The managed service is the one of the input's cloud (s3:// -> sagemaker, gs:// -> vertex), else the
one whose block is filled in.

A live endpoint (`predict.endpoint`, the seed's third way) comes first when it is configured and either
  - the spec says it is the model of record (`serves_source_of_truth: true`): scoring elsewhere could
    disagree with what the endpoint answers online, or
  - the partition is small (`input.expected_rows` <= ENDPOINT_MAX_ROWS): below that, the endpoint,
    already up, beats starting a job that loads the model (bench/results.md, "three ways").

`resolve_backend` is the named step that applies the rule: the spec loader calls it after validation
and gets a new spec whose `predict.backend` is concrete and whose `predict.auto_reason` says why (the
DAG's tag, `mlbatch validate` and the predict log show both). The spec models themselves never change
what they were given. Pure: runs at DAG-parse time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlbatch.spec.models import PipelineSpec

MANAGED_BY_SCHEME = {"s3": "sagemaker", "gs": "vertex"}
# Rows up to which a live endpoint is no slower end to end than the direct model and batch prediction:
# "endpoint crossover: 75,000 rows" of `make bench`'s "three ways" (bench/results.md; fits of wall time:
# direct 4.1 s + 3.1 s per 1M rows, endpoint 2.6 s + 23.5 s per 1M rows, the endpoint being up, 10,000
# rows per request; at the default 1,000 a row costs more and the true crossover is lower).
ENDPOINT_MAX_ROWS = 75_000


def choose_backend(input_uri: str, input_format: str, predict: Any,
                   expected_rows: int | None = None) -> tuple[str, str]:
    """(backend, why) for a spec whose `predict.backend` is `auto`."""
    endpoint = predict.endpoint
    if endpoint is not None and endpoint.kind is not None:
        if endpoint.serves_source_of_truth:
            return "endpoint", f"the {endpoint.kind} endpoint serves the source of truth"
        if expected_rows is not None and expected_rows <= ENDPOINT_MAX_ROWS:
            return "endpoint", (f"small partition ({expected_rows:,} expected rows <= {ENDPOINT_MAX_ROWS:,}): "
                                f"the {endpoint.kind} endpoint is up already")
    scheme = input_uri.split("://", 1)[0] if "://" in input_uri else ""
    in_cloud_storage = scheme in MANAGED_BY_SCHEME
    if in_cloud_storage and input_format == "jsonl":
        return MANAGED_BY_SCHEME[scheme], f"input is already JSON Lines in {scheme}:// storage"
    if predict.compute.accelerator_count > 0:
        if in_cloud_storage:
            return MANAGED_BY_SCHEME[scheme], f"GPUs asked for, input in {scheme}:// storage"
        configured = [name for name, block in (("sagemaker", predict.sagemaker.image_uri),
                                               ("vertex", predict.vertex.serving_container_image_uri))
                      if block]
        if len(configured) != 1:
            raise ValueError(
                "predict.backend 'auto' with GPUs needs a batch-prediction service: put the input in "
                "s3:// or gs://, or fill exactly one of predict.sagemaker.image_uri / "
                f"predict.vertex.serving_container_image_uri (filled: {configured or 'none'})")
        return configured[0], f"GPUs asked for, {configured[0]} is the configured service"
    return "dataflow", "batch scoring: the direct model in the Beam workers is fastest end to end"


def resolve_backend(spec: PipelineSpec) -> PipelineSpec:
    """The spec with `backend: auto` replaced by the chosen backend and `auto_reason` set (validated
    again, so the chosen backend's own checks apply); any other spec is returned as it is."""
    if spec.predict.backend != "auto":
        return spec
    backend, why = choose_backend(spec.input.uri, spec.input.format, spec.predict, spec.input.expected_rows)
    data = spec.model_dump()
    data["predict"].update(backend=backend, auto_reason=why)
    return type(spec).model_validate(data)
