"""What the prep job is told and what it leaves for predict: the feature schema it validates against and
the prepared files' format per backend. Shared by the prep operator (local runs) and the Dataflow backend
(prep on Dataflow), so a backend never needs the operator.
"""

from __future__ import annotations

import json

from mlbatch.spec.models import PipelineSpec


def prepared_format(spec: PipelineSpec) -> str:
    """Parquet for the direct-model job and for SageMaker (whole files posted as
    application/vnd.apache.parquet); JSON Lines for Vertex, whose batch prediction reads jsonl
    instances (mlbatch_beam.local_predict.INPUT_FORMAT says the same for the local backend)."""
    backend = spec.predict.backend
    if backend == "local":
        backend = spec.predict.local.flavor
    return "jsonl" if backend == "vertex" else "parquet"


def prepared_file_rows(spec: PipelineSpec) -> int:
    """Rows per prepared file (prep writes one file per batch of at most `--batch-rows`): `prep.batch_rows`,
    capped for SageMaker (and the local backend mimicking it) by `predict.sagemaker.max_rows_per_request`,
    because each file is one whole request to the container, which must answer within its timeout."""
    backend = spec.predict.backend
    if backend == "sagemaker" or (backend == "local" and spec.predict.local.flavor == "sagemaker"):
        return min(spec.prep.batch_rows, spec.predict.sagemaker.max_rows_per_request)
    return spec.prep.batch_rows


def schema_json(spec: PipelineSpec, model: dict | None = None) -> str:
    """The feature schema for mlbatch_beam.schema.FeatureSchema. With the pinned model (resolve_model's
    XCom), each feature carries its signature column type (`column_type`), which prep writes so the
    files sent to a container pass MLflow's schema enforcement (mlbatch.spec.type_contract)."""
    column_types = (model or {}).get("input_types") or {}
    features = []
    for feature in spec.input.features:
        fields = feature.model_dump()
        if column_types.get(feature.name):
            fields["column_type"] = column_types[feature.name]
        features.append(fields)
    return json.dumps({"id_column": spec.input.id_column, "features": features})


def prep_runs_in_predict(spec: PipelineSpec) -> bool:
    """The direct-model job on the local runner validates and scores in one pass
    (mlbatch_beam.validate_and_score), and so does the endpoint job (mlbatch_beam.endpoint_score): no
    prepared copy is needed, so the prep step leaves its work to predict. On Google Dataflow prep stays
    its own job (its prepared files are the predict job's input)."""
    return spec.predict.backend == "endpoint" or (
        spec.predict.backend == "dataflow" and spec.predict.dataflow.runner == "local")
