"""The endpoint job (mlbatch_beam.endpoint_score) as a child process on the local FnApiRunner, scoring
through the real MLflow scoring server: directly (behind a pass-through proxy), behind the SageMaker
Runtime emulator (boto3, SigV4) and behind the Vertex endpoint emulator (tests/dataplane/). Predictions
must equal the direct-model job's by id, prep's rejected rows must be its dead letters, and no row is
lost whatever the endpoint does: rows_in = rows_scored + rows_rejected + rows_failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FEATURES = ["is_male", "mother_age", "plurality", "gestation_weeks"]
REPO = Path(__file__).resolve().parents[1]
ROWS = 240
BATCH_ROWS = 80  # three input batches
PROJECT, REGION, ENDPOINT_ID = "example-ml-prod", "europe-west4", "4455667788"


@pytest.fixture(scope="module")
def data(tmp_path_factory, model, scoring_server):
    """Raw natality rows with some invalid ones, the model's schema as resolve_model gives it, and the
    direct-model job's (validate_and_score) predictions and rejected rows."""
    import pandas as pd

    from mlbatch.local.demo.natality import make_frame
    from mlbatch.operators.resolve_model import check_signature
    from mlbatch.spec.loader import load_spec
    from mlbatch.spec.prep_contract import schema_json
    from mlbatch_beam import validate_and_score

    work = tmp_path_factory.mktemp("endpoint-data")
    spec = load_spec(REPO / "include" / "pipelines" / "natality_daily.yaml")
    schema = schema_json(spec, {"input_types": check_signature(spec, model)})
    make_frame(ROWS, seed=11, bad_fraction=0.05).drop(columns=["weight_pounds"]).to_parquet(
        work / "in.parquet", index=False)
    result = validate_and_score.run(
        ["--input", str(work / "in.parquet"), "--input-format", "parquet", "--schema-json", schema,
         "--dead-letter-dir", str(work / "direct-rejected"), "--model-uri", model["artifact_uri"],
         "--id-column", "id", "--feature-columns", ",".join(FEATURES), "--output-dir", str(work / "direct"),
         "--output-format", "parquet", "--batch-rows", str(BATCH_ROWS), "--result-file",
         str(work / "direct.json"), "--runner=FnApiRunner"])
    assert 0 < result["rows_rejected"] < ROWS
    direct = pd.read_parquet(work / "direct").set_index("id")["prediction"].sort_index()
    return {"work": work, "schema": schema, "direct": direct, "direct_result": result,
            "rejected": _dead_letters(work / "direct-rejected", "rejected")}


@pytest.fixture(scope="module")
def model(registered_model):
    from mlflow import MlflowClient

    name, version = registered_model["name"], registered_model["version"]
    return {"name": name, "version": version, "uri": f"models:/{name}/{version}",
            "artifact_uri": MlflowClient().get_model_version_download_uri(name, version)}


def _dead_letters(folder: Path, prefix: str) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob(f"{prefix}-*.jsonl"))
            for line in path.read_text().splitlines()]


def run_job(data, out: Path, endpoint: dict, env: dict | None = None, input_path: Path | None = None,
            batch_rows: int = BATCH_ROWS) -> dict:
    """`python -m mlbatch_beam.endpoint_score` to its end; its result, predictions by id and dead letters."""
    import pandas as pd

    args = [sys.executable, "-m", "mlbatch_beam.endpoint_score",
            "--input", str(input_path or data["work"] / "in.parquet"), "--input-format", "parquet",
            "--schema-json", data["schema"], "--dead-letter-dir", str(out / "dead"), "--id-column", "id",
            "--feature-columns", ",".join(FEATURES), "--output-dir", str(out / "predictions"),
            "--output-format", "parquet", "--batch-rows", str(batch_rows), "--result-file", str(out / "result.json"),
            "--endpoint-json", json.dumps(endpoint), "--runner=FnApiRunner"]
    done = subprocess.run(args, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((out / "result.json").read_text())
    files = sorted((out / "predictions").glob("*.parquet"))
    predictions = (pd.read_parquet(files).set_index("id")["prediction"].sort_index() if files
                   else pd.Series(dtype="float64"))
    return {"result": result, "predictions": predictions,
            "rejected": _dead_letters(out / "dead", "rejected"),
            "failed": _dead_letters(out / "dead", "endpoint-failed")}


def assert_nothing_lost(run: dict) -> None:
    r = run["result"]
    assert r["rows_in"] == r["rows_scored"] + r["rows_rejected"] + r["rows_failed"], r
    assert len(run["predictions"]) == r["rows_scored"]
    assert len(run["failed"]) == r["rows_failed"]
    assert len(run["rejected"]) == r["rows_rejected"]


def assert_scored_as_direct(run: dict, data) -> None:
    import pandas as pd

    expected = data["direct"].loc[run["predictions"].index]
    pd.testing.assert_series_equal(run["predictions"], expected, check_names=False)


@pytest.fixture
def mlflow_proxy(scoring_server):
    from dataplane.endpoint_faults import MLflowProxy

    with MLflowProxy(scoring_server.url) as proxy:
        yield proxy


@pytest.fixture
def sagemaker(scoring_server):
    from dataplane.sagemaker_runtime import SageMakerRuntime

    with SageMakerRuntime(scoring_server.url, "natality-live", variant="natality-v1") as runtime:
        yield runtime


@pytest.fixture
def vertex(scoring_server):
    from dataplane.vertex_endpoint import VertexEndpoint

    with VertexEndpoint(scoring_server.url, PROJECT, REGION, ENDPOINT_ID, model_version_id="3") as endpoint:
        yield endpoint


AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "",
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
VERTEX_ENV = {"MLBATCH_ENDPOINT_ACCESS_TOKEN": "ya29.test-token"}


def endpoint_of(kind: str, server, **limits) -> tuple[dict, dict]:
    """The --endpoint-json for one emulator, and the environment holding its credentials."""
    if kind == "mlflow":
        return {"kind": "mlflow", "url": server.url, **limits}, {"MLBATCH_ENDPOINT_AUTHORIZATION": "Bearer t0k"}
    if kind == "sagemaker":
        return {"kind": "sagemaker", "endpoint_name": server.endpoint_name, "region": "us-east-1",
                "endpoint_url": server.url, **limits}, AWS_ENV
    return {"kind": "vertex", "endpoint_id": ENDPOINT_ID, "project": PROJECT, "region": REGION,
            "api_endpoint": server.url, **limits}, VERTEX_ENV


@pytest.mark.parametrize("kind", ["mlflow", "sagemaker", "vertex"])
def test_each_kind_scores_every_valid_row_as_the_direct_model(kind, data, request, tmp_path):
    server = request.getfixturevalue({"mlflow": "mlflow_proxy"}.get(kind, kind))
    endpoint, env = endpoint_of(kind, server, max_rows_per_request=25)

    run = run_job(data, tmp_path, endpoint, env)

    r, direct = run["result"], data["direct_result"]
    assert (r["rows_in"], r["rows_valid"], r["rows_rejected"]) == (ROWS, direct["rows_valid"], direct["rows_rejected"])
    assert (r["rows_scored"], r["rows_failed"], r["retries"]) == (direct["rows_valid"], 0, 0)
    assert r["requests"] == server.faults.requests == sum(-(-n // 25) for n in _valid_per_batch(data))
    assert_nothing_lost(run)
    assert_scored_as_direct(run, data)
    assert list(run["predictions"].index) == list(data["direct"].index)
    # prep's rejected rows, with prep's reasons, whatever scores the valid ones
    assert sorted(run["rejected"], key=lambda d: d["row"]["id"]) == sorted(data["rejected"], key=lambda d: d["row"]["id"])
    assert {"mlflow": None, "sagemaker": "natality-v1",
            "vertex": {"model": f"projects/{PROJECT}/locations/{REGION}/models/1234567890",
                       "modelVersionId": "3", "deployedModelId": "987654321"}}[kind] == r["endpoint_model"]


def _valid_per_batch(data) -> list[int]:
    import pandas as pd

    ids = pd.read_parquet(data["work"] / "in.parquet")["id"]
    rejected = {d["row"]["id"] for d in data["rejected"]}
    return [sum(1 for i in ids[start:start + BATCH_ROWS] if i not in rejected) for start in range(0, ROWS, BATCH_ROWS)]


@pytest.mark.parametrize("kind, fault", [("sagemaker", {"status": 429, "count": 2}),
                                         ("vertex", {"status": 503, "seconds": 1.5})])
def test_throttling_and_unavailability_are_retried_until_every_row_is_scored(kind, fault, data, request, tmp_path):
    server = request.getfixturevalue(kind)
    server.faults.refuse(**fault)
    endpoint, env = endpoint_of(kind, server, max_rows_per_request=40, max_in_flight=2)

    run = run_job(data, tmp_path, endpoint, env)

    r = run["result"]
    assert r["rows_failed"] == 0 and r["rows_scored"] == data["direct_result"]["rows_valid"]
    assert r["retries"] > 0 and r["requests"] == server.faults.requests
    assert_nothing_lost(run)
    assert_scored_as_direct(run, data)


def test_a_request_that_times_out_is_sent_again(data, mlflow_proxy, tmp_path):
    mlflow_proxy.faults.stall(seconds_each=3, count=1)
    endpoint, env = endpoint_of("mlflow", mlflow_proxy, max_rows_per_request=40, timeout_s=1, max_in_flight=1)

    run = run_job(data, tmp_path, endpoint, env)

    assert run["result"]["retries"] == 1 and run["result"]["rows_failed"] == 0
    assert_nothing_lost(run)
    assert_scored_as_direct(run, data)


def test_no_more_than_max_in_flight_requests_are_open_at_once(data, mlflow_proxy, tmp_path):
    mlflow_proxy.faults.stall(seconds_each=0.4)  # every answer takes a while: requests overlap if they can
    endpoint, env = endpoint_of("mlflow", mlflow_proxy, max_rows_per_request=10, max_in_flight=3)

    run = run_job(data, tmp_path, endpoint, env)

    assert run["result"]["rows_failed"] == 0
    assert mlflow_proxy.faults.most_at_once == 3  # concurrent, and bounded


@pytest.mark.parametrize("fault, rule, reason", [
    ("malformed", "endpoint: malformed", "endpoint: malformed: the answer is not JSON"),
    ("refuse_400", "endpoint: 400", "endpoint: 400: INVALID_ARGUMENT: injected fault: 400")])
def test_an_answer_a_retry_cannot_fix_sends_its_rows_to_the_dead_letters_and_the_rest_is_scored(
        fault, rule, reason, data, vertex, tmp_path):
    """A cut-off answer, or a 4xx other than 429: the same request would get the same answer."""
    if fault == "malformed":
        vertex.faults.malformed(count=1)
    else:
        vertex.faults.refuse(400, count=1)
    endpoint, env = endpoint_of("vertex", vertex, max_rows_per_request=30, max_in_flight=1)

    run = run_job(data, tmp_path, endpoint, env)

    r = run["result"]
    assert 0 < r["rows_failed"] <= 30 and r["retries"] == 0
    assert r["rows_scored"] == data["direct_result"]["rows_valid"] - r["rows_failed"]
    assert_nothing_lost(run)
    assert_scored_as_direct(run, data)
    assert {d["rule"] for d in run["failed"]} == {rule}
    assert all(d["reason"].startswith(reason) for d in run["failed"])
    assert {d["source"] for d in run["failed"]} == {str(data["work"] / "in.parquet")}
    failed_ids = {d["row"]["id"] for d in run["failed"]}
    assert not failed_ids & set(run["predictions"].index)
    assert failed_ids | set(run["predictions"].index) == set(data["direct"].index)


def test_an_endpoint_that_dies_mid_run_leaves_its_unscored_rows_in_the_dead_letters(data, sagemaker, tmp_path):
    sagemaker.faults.die_after(3)
    endpoint, env = endpoint_of("sagemaker", sagemaker, max_rows_per_request=40, max_in_flight=4, max_retries=1,
                                timeout_s=5)

    run = run_job(data, tmp_path, endpoint, env)

    r = run["result"]
    assert 0 < r["rows_scored"] <= 120 and r["rows_failed"] == data["direct_result"]["rows_valid"] - r["rows_scored"]
    assert r["retries"] > 0  # each remaining request was tried again before its rows were written off
    assert_nothing_lost(run)
    assert_scored_as_direct(run, data)
    assert not list(tmp_path.glob("result.json.served-*"))  # the job's own scratch file is gone
    assert {d["rule"] for d in run["failed"]} == {"endpoint: connection"}
    # refused once the server stopped listening; closed unanswered on a connection it still held open
    reasons = {d["reason"] for d in run["failed"]}
    assert all("Could not connect to the endpoint URL" in reason or "Connection was closed before we received "
               "a valid response" in reason for reason in reasons), reasons


def test_a_request_over_the_services_byte_limit_is_split_before_it_is_sent(data, vertex, tmp_path):
    """20,000 rows in one input batch and no row limit: only Vertex's 1.5 MB request limit splits them,
    and no request the emulator receives is over it (it would answer 400)."""
    from dataplane.vertex_endpoint import MAX_REQUEST_BYTES

    from mlbatch.local.demo.natality import make_frame

    big = tmp_path / "big.parquet"
    make_frame(20_000, seed=12, bad_fraction=0.0).drop(columns=["weight_pounds"]).to_parquet(big, index=False)
    endpoint, env = endpoint_of("vertex", vertex, max_rows_per_request=1_000_000)

    run = run_job(data, tmp_path, endpoint, env, input_path=big, batch_rows=65_536)

    r = run["result"]
    assert r["rows_scored"] == 20_000 and r["rows_failed"] == 0
    assert r["requests"] == len(vertex.faults.bodies) >= 2
    assert max(vertex.faults.bodies) <= 1_500_000 <= MAX_REQUEST_BYTES
    assert_nothing_lost(run)


def test_micro_batches_respect_both_limits_and_set_aside_a_row_too_big_to_send():
    import pyarrow as pa

    from mlbatch_beam.endpoint_handler import micro_batches

    batch = pa.RecordBatch.from_pydict({"id": list(range(7)), "x": ["a", "b", "c" * 500, "d", "e", "f", "g"]})
    requests, too_big = micro_batches(batch, "piece", ["x"], max_rows=2, max_bytes=200)

    assert [(m.index, m.rows.column("id").to_pylist()) for m in requests] == [(0, [0, 1]), (1, [3, 4]), (2, [5, 6])]
    assert all(len(m.body) <= 200 and json.loads(m.body)["instances"] == m.rows.select(["x"]).to_pylist()
               for m in requests)
    assert [(i, f.code) for i, f in too_big] == [(2, "too_big")]
    requests, _ = micro_batches(batch.filter(pa.array([i != 2 for i in range(7)])), "p", ["x"], max_rows=100,
                                max_bytes=40)
    assert [m.rows.num_rows for m in requests] == [2, 2, 2]  # 40 bytes hold two {"x": "a"} rows

