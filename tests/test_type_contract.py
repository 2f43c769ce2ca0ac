"""The type contract (mlbatch.spec.type_contract) over every signature type x spec type x nullability,
on one small sklearn model whose signature has a column per case it accepts (required and optional).

Each case is either refused by resolve_model's signature check (`check_signature`, which
`mlbatch validate --model` also runs) with its reason, or scores with equal predictions on every path:
`dataflow` (the direct-model job on the FnApiRunner), `local` in both flavors, and the SageMaker and
Vertex data-plane emulators (tests/dataplane) sending the bytes our backends send (the prepared Parquet
files as SageMaker requests, `write_request_files`; the prepared JSON Lines as Vertex `instances`,
`job_request`'s instance config) to the container of the model the job names (tests/dataplane/containers.py:
the SageMaker ModelDataUrl archive unpacked, the Vertex per-version image; a real MLflow scoring server).
"""

from __future__ import annotations

import datetime
import io
import itertools
import json
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest


COLUMN_TYPES = ("double", "float", "long", "integer", "boolean", "string")
SPEC_TYPES = ("int", "float", "bool", "string")
NATURAL_ARROW = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "string": pa.string()}
ROWS = 240
OUT_OF_RANGE = {"integer_req_int": 2**31, "float_req_int": 2**24 + 1, "double_opt_int": 2**53 + 1}
CASES = list(itertools.product(COLUMN_TYPES, (True, False), SPEC_TYPES, (False, True)))


def verdict(column_type: str, required: bool, spec_type: str, nullable: bool) -> str | None:
    from mlbatch.spec.type_contract import null_problem, type_problem

    problem = type_problem("c", spec_type, column_type)
    return problem or (null_problem("c", column_type, required) if nullable else None)


def column_name(column_type, required, spec_type, nullable) -> str:
    return f"{column_type}_{'req' if required else 'opt'}_{spec_type}" + ("_null" if nullable else "")


ACCEPTED = [c for c in CASES if verdict(*c) is None]
REFUSED = [c for c in CASES if verdict(*c) is not None]
COLUMNS = {column_name(*c): c for c in ACCEPTED}  # the model's signature: one column per accepted case


def test_the_matrix_is_what_mlflow_enforces():
    """Accepted: the conversions prep makes exactly (int into any number column, float into double or
    float, bool and string into their own); nulls only into optional double/float columns."""
    assert sorted((t, s) for t, r, s, n in ACCEPTED if r and not n) == sorted(
        [("double", "int"), ("double", "float"), ("float", "int"), ("float", "float"), ("long", "int"),
         ("integer", "int"), ("boolean", "bool"), ("string", "string")])
    assert sorted((t, s) for t, r, s, n in ACCEPTED if n) == [
        ("double", "float"), ("double", "int"), ("float", "float"), ("float", "int")]
    assert all(not r for t, r, s, n in ACCEPTED if n)
    assert (len(ACCEPTED), len(REFUSED)) == (20, 76)


def _value(column: str, rows: int, rng) -> pa.Array:
    column_type, _, spec_type, nullable = COLUMNS[column]
    if spec_type == "int":
        values = rng.integers(-50, 50, rows).tolist()
    elif spec_type == "float":
        values = rng.normal(size=rows).tolist()
    elif spec_type == "bool":
        values = rng.integers(0, 2, rows).astype(bool).tolist()
    else:
        values = rng.choice(["x", "y", "z"], rows).tolist()
    if nullable:
        values = [None if i % 7 == 3 else v for i, v in enumerate(values)]
    return pa.array(values, NATURAL_ARROW[spec_type])


@pytest.fixture(scope="module")
def contract_model(tmp_path_factory) -> Path:
    """A Pipeline (imputers, one-hot for text, LinearRegression) logged with one column per accepted case."""
    import mlflow.sklearn
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    from mlbatch_beam.schema import COLUMN_ARROW_TYPES

    rng = np.random.default_rng(1)
    table = pa.table({c: _value(c, 400, rng).cast(COLUMN_ARROW_TYPES[COLUMNS[c][0]]) for c in COLUMNS})
    frame = table.to_pandas()
    text = [c for c in COLUMNS if COLUMNS[c][0] == "string"]
    numbers = [c for c in COLUMNS if c not in text]
    pipe = make_pipeline(
        ColumnTransformer([("num", SimpleImputer(strategy="constant", fill_value=0), numbers),
                           ("text", OneHotEncoder(handle_unknown="ignore"), text)]),
        LinearRegression()).fit(frame, rng.normal(size=len(frame)))
    signature = ModelSignature(inputs=Schema([ColSpec(t, c, required=r) for c, (t, r, _, _) in COLUMNS.items()]))
    path = tmp_path_factory.mktemp("contract") / "model"
    mlflow.sklearn.save_model(pipe, str(path), signature=signature, skops_trusted_types=["numpy.dtype"],
                             pip_requirements=["scikit-learn"])  # no requirement inference: seconds, not ~20
    return path


def spec_for(tmp_path: Path, features: list[dict]):
    from mlbatch.spec.models import PipelineSpec

    return PipelineSpec.model_validate({
        "name": "type_contract", "schedule": None,
        "model": {"name": "contract", "alias": "champion", "tracking_uri": "sqlite:///unused.db"},
        "input": {"uri": f"{tmp_path}/in/ds={{{{ ds }}}}/*.parquet", "format": "parquet", "id_column": "id",
                  "features": features},
        "predict": {"backend": "local", "compute": {"batch_rows": 100}},
        "output": {"uri": f"{tmp_path}/out/ds={{{{ ds }}}}", "predictions": {"kind": "value"}},
        "wait": {"targets": [f"{tmp_path}/in/ds={{{{ ds }}}}/*.parquet"]},
    })


def features_with(replaced: str | None = None, spec_type: str | None = None, nullable: bool = False) -> list:
    """Every model column as its accepted case declares it; `replaced` as the case under test."""
    features = [{"name": c, "type": s, "nullable": n} for c, (_, _, s, n) in COLUMNS.items()]
    for f in features:
        if f["name"] == replaced:
            f.update(type=spec_type, nullable=nullable)
    return features


def pinned(model_dir: Path) -> dict:
    return {"name": "contract", "version": 1, "uri": "models:/contract/1", "artifact_uri": str(model_dir)}


@pytest.mark.parametrize("column_type, required, spec_type, nullable", REFUSED,
                         ids=[column_name(*c) for c in REFUSED])
def test_a_refused_case_fails_the_signature_check_with_its_reason(contract_model, tmp_path, column_type,
                                                                   required, spec_type, nullable):
    from mlbatch.errors import ModelMismatchError
    from mlbatch.operators.resolve_model import check_signature

    column = next(c for c, (t, r, _, _) in COLUMNS.items() if (t, r) == (column_type, required))
    spec = spec_for(tmp_path, features_with(column, spec_type, nullable))
    with pytest.raises(ModelMismatchError) as refused:
        check_signature(spec, pinned(contract_model))
    problems = str(refused.value).split("\n- ")[1:]
    assert problems == [verdict(column_type, required, spec_type, nullable).replace("c: ", f"{column}: ", 1)]
    assert "Make the feature" in problems[0] or "Declare the feature" in problems[0] or "log the model" in problems[0]


def test_every_accepted_case_passes_the_check_and_names_the_types_prep_writes(contract_model, tmp_path):
    from mlbatch.operators.resolve_model import check_signature

    spec = spec_for(tmp_path, features_with())
    assert check_signature(spec, pinned(contract_model)) == {c: t for c, (t, _, _, _) in COLUMNS.items()}


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def test_without_the_signature_types_the_server_refuses_what_prep_now_converts(containers):
    """Why prep writes the column's type: each accepted conversion, sent as the spec's own type in a
    Parquet request (what prep wrote before), is refused by the real server; as the column type it scores."""
    import requests

    from mlbatch_beam.schema import COLUMN_ARROW_TYPES

    url = containers.vertex(_vertex_model())
    invocations = partial(requests.post, f"{url}/invocations",
                          headers={"Content-Type": "application/vnd.apache.parquet"}, timeout=60)
    rng = np.random.default_rng(2)
    exact = pa.table({c: _value(c, 5, rng).cast(COLUMN_ARROW_TYPES[COLUMNS[c][0]]) for c in COLUMNS})
    assert invocations(data=_parquet(exact)).status_code == 200
    converted = [c for c, (t, _, s, n) in COLUMNS.items() if COLUMN_ARROW_TYPES[t] != NATURAL_ARROW[s] and not n]
    assert len(converted) == 8  # int into double/float/integer, float into float; required and optional
    for column in converted:
        as_spec = exact.set_column(exact.schema.get_field_index(column), column,
                                   exact.column(column).cast(NATURAL_ARROW[COLUMNS[column][2]]))
        answer = invocations(data=_parquet(as_spec))
        assert answer.status_code == 400 and "Can not safely convert" in answer.text, (column, answer.text[-300:])


def raw_input(folder: Path) -> pa.Table:
    """The input partition: each column as its feature's own type, nulls where nullable, and one row per
    conversion that would change a value (OUT_OF_RANGE), which prep rejects."""
    rng = np.random.default_rng(3)
    columns = {"id": pa.array(range(ROWS), pa.int64())}
    for i, column in enumerate(COLUMNS):
        values = _value(column, ROWS, rng).to_pylist()
        if column in OUT_OF_RANGE:
            values[5 + list(OUT_OF_RANGE).index(column)] = OUT_OF_RANGE[column]
        columns[column] = pa.array(values, NATURAL_ARROW[COLUMNS[column][2]])
    table = pa.table(columns)
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-0.parquet")
    return table


def _prep(tmp_path: Path, schema: str, fmt: str) -> dict:
    from mlbatch_beam import prep

    return prep.run(["--input", f"{tmp_path}/in/*.parquet", "--input-format", "parquet", "--schema-json", schema,
                     "--output-dir", str(tmp_path / f"prepared-{fmt}"), "--output-format", fmt,
                     "--dead-letter-dir", str(tmp_path / f"rejected-{fmt}"), "--batch-rows", "100",
                     "--result-file", str(tmp_path / f"prep-{fmt}.json"), "--runner=FnApiRunner"])


def _dead_letters(folder: Path) -> list[tuple[int, str]]:
    return sorted((json.loads(line)["row"]["id"], json.loads(line)["reason"])
                  for path in folder.glob("*.jsonl") for line in path.read_text().splitlines())


def _by_id(ids, predictions) -> dict:
    ids, predictions = list(ids), list(predictions)
    assert len(ids) == len(predictions)
    return dict(zip(ids, predictions))


def _sagemaker_outputs(prepared: Path, read_out) -> dict:
    """`<file>.out` answers joined back to the prepared file's ids by row order, as publish does."""
    scored = {}
    for path in sorted(prepared.glob("*.parquet")):
        ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
        scored.update(_by_id(ids, json.loads(read_out(path.name + ".out"))["predictions"]))
    return scored


def _vertex_lines(texts) -> dict:
    return dict((row["key"], row["prediction"]) for text in texts for row in map(json.loads, text.splitlines()))


SAGEMAKER_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/mlflow-contract:v1"
VERTEX_IMAGE = "europe-docker.pkg.dev/example/serving/mlflow-contract:v1"


@pytest.fixture(scope="module")
def containers(contract_model, tmp_path_factory):
    """The serving containers of the data-plane emulators (tests/dataplane/containers.py), with the
    contract model's per-version images (`mlflow models build-docker -m`) in their registry."""
    from dataplane.containers import ImageRegistry, ModelContainers

    root = tmp_path_factory.mktemp("containers")
    images = ImageRegistry(root)
    for uri in (SAGEMAKER_IMAGE, VERTEX_IMAGE):
        images.per_version(uri, str(contract_model))
    running = ModelContainers(root, images)
    try:
        yield running
    finally:
        running.close()


def run_sagemaker(spec, prepared: Path, contract_model: Path, tmp_path: Path, moto_server, containers) -> dict:
    """The SageMaker backend's model archive, request files and transform config, through the Batch
    Transform emulator (tests/dataplane/sagemaker_transform.py) against the container serving the
    archive the Model names (its ModelDataUrl unpacked as /opt/ml/model, a real scoring server)."""
    from cloud_backends import upload_model_archive
    from dataplane.sagemaker_transform import run_transform

    from mlbatch.backends.sagemaker import transform_config, write_request_files
    from mlbatch.storage.layer import Storage

    s3 = moto_server.client("s3")
    s3.create_bucket(Bucket="type-contract")
    model_data = upload_model_archive(s3, "type-contract", "model/model.tar.gz", str(contract_model), tmp_path / "pack")
    container = containers.sagemaker({"PrimaryContainer": {
        "Image": SAGEMAKER_IMAGE, "ModelDataUrl": model_data,
        "Environment": {"MLFLOW_DEPLOYMENT_FLAVOR_NAME": "python_function"}}}, s3)
    for path in write_request_files(spec, Storage.for_spec(spec), str(prepared), str(tmp_path / "requests")):
        s3.put_object(Bucket="type-contract", Key=f"in/{Path(path).name}", Body=Path(path).read_bytes())
    request = transform_config(spec, "type-contract", {"sagemaker_model": "contract"}, "s3://type-contract/in/",
                               "s3://type-contract/out", "run")
    run_transform(request, s3, container)
    return _sagemaker_outputs(prepared, lambda key: s3.get_object(Bucket="type-contract", Key=f"out/{key}")[
        "Body"].read())


def _vertex_model():
    """The uploaded Model as the Vertex backend's container spec makes it, on the per-version image."""
    from google.cloud.aiplatform_v1.types import EnvVar, Model, ModelContainerSpec, Port

    from mlbatch.backends.vertex import MLFLOW_IMAGE_PORT

    return Model(display_name="contract", container_spec=ModelContainerSpec(
        image_uri=VERTEX_IMAGE, predict_route="/invocations", health_route="/ping",
        ports=[Port(container_port=MLFLOW_IMAGE_PORT)],
        env=[EnvVar(name="MLFLOW_DEPLOYMENT_FLAVOR_NAME", value="python_function")]))


def run_vertex(spec, prepared: Path, gcs_emulator, containers) -> dict:
    """The Vertex backend's job (instance config: the features as objects, the id as key) through the
    batch prediction emulator (tests/dataplane/vertex_batch.py) against the container of the job's Model
    (the per-version image, with the container spec the backend uploads)."""
    from dataplane.vertex_batch import run_batch_prediction

    from mlbatch.backends.vertex import job_request

    gcs = gcs_emulator.client()
    bucket = gcs.create_bucket("type-contract")
    uris = []
    for path in sorted(prepared.glob("*.jsonl")):
        bucket.blob(f"in/{path.name}").upload_from_string(path.read_bytes())
        uris.append(f"gs://type-contract/in/{path.name}")
    job = job_request(spec, "type-contract", "projects/p/locations/l/models/m", uris, "gs://type-contract/out", "run")
    job.create_time = datetime.datetime.now(datetime.timezone.utc)
    model = _vertex_model()
    out_dir, succeeded, failed = run_batch_prediction(job, model, gcs, containers.vertex(model))
    assert failed == 0
    prefix = out_dir[len("gs://type-contract/"):]
    return _vertex_lines(b.download_as_text() for b in bucket.list_blobs(prefix=prefix)
                         if "prediction.results-" in b.name)


def test_every_accepted_case_scores_alike_on_every_backend(contract_model, containers, tmp_path, moto_server,
                                                            gcs_emulator):
    from mlbatch_beam import local_predict, validate_and_score

    from mlbatch.operators.resolve_model import check_signature
    from mlbatch.spec.prep_contract import schema_json

    spec = spec_for(tmp_path, features_with())
    model = {**pinned(contract_model), "input_types": check_signature(spec, pinned(contract_model))}
    schema = schema_json(spec, model)
    table = raw_input(tmp_path / "in")
    features = ["--id-column", "id", "--feature-columns", ",".join(COLUMNS), "--model-uri", str(contract_model)]

    results = {fmt: _prep(tmp_path, schema, fmt) for fmt in ("parquet", "jsonl")}
    assert [(r["rows_valid"], r["rows_rejected"]) for r in results.values()] == [(ROWS - 3, 3)] * 2
    rejected = _dead_letters(tmp_path / "rejected-parquet")
    assert rejected == _dead_letters(tmp_path / "rejected-jsonl") == [
        (5, "integer_req_int: 2147483648 does not fit the model's integer column (-2147483648 to 2147483647)"),
        (6, "float_req_int: 16777217 does not fit the model's float column (-16777216 to 16777216)"),
        (7, "double_opt_int: 9007199254740993 does not fit the model's double column "
            "(-9007199254740992 to 9007199254740992)")]
    prepared = pq.read_table(tmp_path / "prepared-parquet")
    assert [prepared.schema.field(c).type for c in COLUMNS] == [
        {"double": pa.float64(), "float": pa.float32(), "long": pa.int64(), "integer": pa.int32(),
         "boolean": pa.bool_(), "string": pa.string()}[COLUMNS[c][0]] for c in COLUMNS]

    validate_and_score.run(["--input", f"{tmp_path}/in/*.parquet", "--input-format", "parquet",
                            "--schema-json", schema, "--dead-letter-dir", str(tmp_path / "direct-rejected"),
                            "--output-dir", str(tmp_path / "direct"), "--output-format", "parquet",
                            "--batch-rows", "100", "--result-file", str(tmp_path / "direct.json"),
                            "--runner=FnApiRunner", *features])
    direct = pq.read_table(tmp_path / "direct")
    scored = {"dataflow": _by_id(direct.column("id").to_pylist(), direct.column("prediction").to_pylist())}
    for flavor, fmt in (("sagemaker", "parquet"), ("vertex", "jsonl")):
        local_predict.run(["--input", f"{tmp_path}/prepared-{fmt}/*", "--output-dir", str(tmp_path / f"local-{flavor}"),
                           "--flavor", flavor, "--chunk-rows", "100", "--result-file",
                           str(tmp_path / f"local-{flavor}.json"), *features])
    scored["local sagemaker"] = _sagemaker_outputs(tmp_path / "prepared-parquet",
                                                   lambda key: (tmp_path / "local-sagemaker" / key).read_bytes())
    scored["local vertex"] = _vertex_lines(p.read_text() for p in (tmp_path / "local-vertex").glob("prediction.results-*"))
    scored["sagemaker"] = run_sagemaker(spec, tmp_path / "prepared-parquet", contract_model, tmp_path, moto_server,
                                        containers)
    scored["vertex"] = run_vertex(spec, tmp_path / "prepared-jsonl", gcs_emulator, containers)

    expected_ids = sorted(set(table.column("id").to_pylist()) - {5, 6, 7})
    reference = scored["dataflow"]
    assert sorted(reference) == expected_ids
    for path, predictions in scored.items():
        assert sorted(predictions) == expected_ids, path
        np.testing.assert_allclose([predictions[i] for i in expected_ids], [reference[i] for i in expected_ids],
                                   rtol=1e-12, atol=0, err_msg=path)
    assert np.isfinite([reference[i] for i in expected_ids]).all()


@pytest.mark.parametrize("replaced, spec_type, nullable, refusal", [
    (None, None, False, None),
    ("boolean_req_bool", "int", False, "boolean_req_bool: input.features says int, the model signature says boolean"),
    ("long_opt_int", "int", True, "long_opt_int: input.features says nullable, the model's optional long column"),
])
def test_mlbatch_validate_model_checks_the_registered_signature(contract_model, tmp_path, capsys, replaced,
                                                               spec_type, nullable, refusal):
    """`mlbatch validate --model`: the registry's version for the alias, checked as resolve_model checks it."""
    import os

    import yaml
    from mlflow import MlflowClient

    from mlbatch.local.cli import main

    tracking = os.environ["MLBATCH_TEST_MLFLOW_URI"]
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    if not client.search_registered_models("name = 'type_contract'"):
        client.create_registered_model("type_contract")
        version = client.create_model_version("type_contract", source=str(contract_model))
        client.set_registered_model_alias("type_contract", "champion", version.version)
    spec = spec_for(tmp_path, features_with(replaced, spec_type, nullable)).model_dump(mode="json", exclude_unset=True)
    spec["model"] = {"name": "type_contract", "alias": "champion", "tracking_uri": tracking}
    path = tmp_path / "type_contract.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))

    assert main(["validate", str(path)]) == 0  # without --model nothing looks at the model
    code = main(["validate", str(path), "--model"])
    out, err = capsys.readouterr()
    if refusal is None:
        assert code == 0 and f"ok  {path}" in out.splitlines()[-1]
    else:
        assert code == 1 and f"{path} [dev]: ModelMismatchError: " in err and refusal in err, err
