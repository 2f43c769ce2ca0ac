"""`predict.backend: endpoint` (issue 24): a partition scored through a live model endpoint.

Spec: the block's fields per kind, the service's request limit, connections and the trigger form."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cloud_backends import aws_conn  # noqa: F401 - the moto server, through aws_default

from mlbatch.errors import SpecError
from mlbatch.local.cli import main as cli_main
from mlbatch.spec.loader import load_spec, with_overrides

ROOT = Path(__file__).resolve().parents[1]
DAILY = ROOT / "include" / "pipelines" / "natality_daily.yaml"
KINDS = {
    "mlflow": {"kind": "mlflow", "url": "http://scoring.internal:5000"},
    "sagemaker": {"kind": "sagemaker", "endpoint_name": "natality", "region": "eu-west-1"},
    "vertex": {"kind": "vertex", "endpoint_id": "123", "project": "p", "region": "europe-west4"},
}


def spec_file(folder: Path, endpoint: dict | None, backend: str = "endpoint", **top) -> Path:
    doc = yaml.safe_load(DAILY.read_text())
    doc["name"] = "p_endpoint"
    doc["predict"]["backend"] = backend
    if endpoint is not None:
        doc["predict"]["endpoint"] = endpoint
    doc["trigger_params"]["backend"]["enum"] = sorted({backend, "dataflow"})
    doc.update(top)
    path = folder / "p_endpoint.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def refused(capsys, path: Path) -> str:
    assert cli_main(["validate", str(path)]) == 1
    return capsys.readouterr().err


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_loads_with_its_fields(tmp_path, kind):
    spec = load_spec(spec_file(tmp_path, KINDS[kind]))
    assert (spec.predict.backend, spec.predict.endpoint.kind) == ("endpoint", kind)


@pytest.mark.parametrize(("kind", "fields"), [
    ("mlflow", ["url"]), ("sagemaker", ["endpoint_name", "region"]), ("vertex", ["endpoint_id", "project", "region"])])
def test_a_kind_without_its_fields_is_refused_naming_each(tmp_path, capsys, kind, fields):
    err = refused(capsys, spec_file(tmp_path, {"kind": kind}))
    assert "p_endpoint.yaml:" in err
    for f in fields:
        assert f"predict.endpoint.{f}: expected a value: backend endpoint (kind {kind}) needs it" in err


def test_backend_endpoint_without_the_block_is_refused(tmp_path, capsys):
    err = refused(capsys, spec_file(tmp_path, None))
    assert "predict.endpoint.kind: expected one of ['mlflow', 'sagemaker', 'vertex']" in err


@pytest.mark.parametrize(("kind", "limit"), [("sagemaker", 6 * 1024 * 1024), ("vertex", 1_572_864)])
def test_a_request_size_over_the_services_limit_is_refused_naming_field_and_limit(tmp_path, capsys, kind, limit):
    err = refused(capsys, spec_file(tmp_path, {**KINDS[kind], "max_bytes_per_request": limit + 1}))
    assert (f"predict.endpoint.max_bytes_per_request = {limit + 1}: expected at most {limit} bytes, "
            f"the {kind} request limit") in err
    assert load_spec(spec_file(tmp_path, {**KINDS[kind], "max_bytes_per_request": limit})).predict.endpoint \
        .request_bytes() == limit


def test_a_url_that_is_not_http_is_refused(tmp_path, capsys):
    err = refused(capsys, spec_file(tmp_path, {"kind": "mlflow", "url": "scoring.internal:5000"}))
    assert "predict.endpoint.url = 'scoring.internal:5000': expected an http:// or https:// URL" in err


def test_the_endpoints_cloud_connections_follow_the_storage_rule(tmp_path):
    spec = load_spec(spec_file(tmp_path, KINDS["sagemaker"], storage={"aws_conn_id": "aws_team",
                                                                      "gcp_conn_id": "gcp_team"}))
    assert (spec.predict.endpoint.aws_conn_id, spec.predict.endpoint.gcp_conn_id) == ("aws_team", "gcp_team")
    moved = with_overrides(spec, {"storage.aws_conn_id": "aws_other"})
    assert moved.predict.endpoint.aws_conn_id == "aws_other"
    own = load_spec(spec_file(tmp_path, {**KINDS["sagemaker"], "aws_conn_id": "aws_endpoint"},
                              storage={"aws_conn_id": "aws_team"}))
    assert with_overrides(own, {"storage.aws_conn_id": "aws_other"}).predict.endpoint.aws_conn_id == "aws_endpoint"


def test_the_trigger_form_can_switch_a_spec_to_and_from_the_endpoint(tmp_path):
    spec = load_spec(spec_file(tmp_path, KINDS["mlflow"], backend="dataflow",
                               trigger_params={"backend": {"field": "predict.backend",
                                                           "enum": ["dataflow", "endpoint"]}}))
    assert with_overrides(spec, {"predict.backend": "endpoint"}).predict.backend == "endpoint"
    back = load_spec(spec_file(tmp_path, KINDS["mlflow"]))
    assert with_overrides(back, {"predict.backend": "dataflow"}).predict.backend == "dataflow"


def test_a_run_override_to_the_endpoint_without_one_configured_is_refused():
    with pytest.raises(SpecError, match=r"predict\.endpoint\.kind: expected one of"):
        with_overrides(load_spec(DAILY), {"predict.backend": "endpoint"})


# --- credentials: what reaches the job, from the spec's Airflow connections ------------------------------

@pytest.mark.parametrize(("connection", "header"), [
    ({"conn_type": "http", "extra": {"Authorization": "Token abc"}, "login": "u", "password": "p"}, "Token abc"),
    ({"conn_type": "http", "login": "user", "password": "pw"}, "Basic dXNlcjpwdw=="),
    ({"conn_type": "http", "password": "s3cret-token"}, "Bearer s3cret-token"),
])
def test_an_http_connection_becomes_one_authorization_header(monkeypatch, connection, header):
    import json

    from mlbatch.backends.endpoint import http_authorization

    monkeypatch.setenv("AIRFLOW_CONN_ENDPOINT_HTTP", json.dumps(connection))
    assert http_authorization("endpoint_http") == header


def test_an_http_connection_without_credentials_is_refused_naming_it(monkeypatch):
    import json

    from mlbatch.backends.endpoint import http_authorization
    from mlbatch.errors import BackendConfigError

    monkeypatch.setenv("AIRFLOW_CONN_ENDPOINT_HTTP", json.dumps({"conn_type": "http", "host": "x"}))
    with pytest.raises(BackendConfigError, match=r"HTTP connection 'endpoint_http' \(predict.endpoint.http_conn_id\) "
                                                  "carries no credentials"):
        http_authorization("endpoint_http")
    with pytest.raises(BackendConfigError, match=r"no Airflow connection 'endpoint_none' "
                                                  r"\(predict.endpoint.http_conn_id\)"):
        http_authorization("endpoint_none")


def test_the_jobs_arguments_carry_no_secret(tmp_path):
    import json

    from mlbatch.backends.endpoint import endpoint_json

    spec = load_spec(spec_file(tmp_path, {**KINDS["sagemaker"], "max_rows_per_request": 50}))
    sent = json.loads(endpoint_json(spec.predict.endpoint, "http://127.0.0.1:1"))
    assert sent == {"kind": "sagemaker", "endpoint_name": "natality", "region": "eu-west-1",
                    "endpoint_url": "http://127.0.0.1:1", "max_rows_per_request": 50,
                    "max_bytes_per_request": 6 * 1024 * 1024, "max_in_flight": 4, "timeout_s": 60.0, "max_retries": 5}
    mlflow = load_spec(spec_file(tmp_path, {"kind": "mlflow", "url": "http://h:5000/invocations"})).predict.endpoint
    assert json.loads(endpoint_json(mlflow))["url"] == "http://h:5000"  # the job adds /invocations


# --- the served version, before scoring -------------------------------------------------------------------

PINNED = {"name": "natality_weight", "version": 3, "alias": "champion", "uri": "models:/natality_weight/3",
          "artifact_uri": "/nowhere"}


def sagemaker_endpoint(aws_conn, endpoint: str, variants: dict[str, str | None]) -> None:
    """An endpoint on moto whose production variants serve Models tagged `mlbatch-model` = the value
    given (no tag for None), as backend sagemaker tags the Models it creates."""
    sm = aws_conn.client("sagemaker")
    for variant, tag in variants.items():
        sm.create_model(ModelName=f"{endpoint}-{variant}", ExecutionRoleArn="arn:aws:iam::123456789012:role/x",
                        PrimaryContainer={"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/m:1"},
                        Tags=[{"Key": "mlbatch-model", "Value": tag}] if tag else [])
    sm.create_endpoint_config(EndpointConfigName=f"{endpoint}-config", ProductionVariants=[
        {"VariantName": variant, "ModelName": f"{endpoint}-{variant}", "InitialInstanceCount": 1,
         "InstanceType": "ml.m5.large"} for variant in variants])
    sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=f"{endpoint}-config")


def endpoint_spec(tmp_path, kind: str, **fields):
    return load_spec(spec_file(tmp_path, {**KINDS[kind], **fields}))


def test_sagemaker_served_version_is_read_from_the_endpoints_model_tags(aws_conn, tmp_path):  # noqa: F811
    from mlbatch.backends.served_version import check_served_version
    from mlbatch.errors import ServedVersionError

    region = aws_conn.region
    sagemaker_endpoint(aws_conn, "ep-same", {"AllTraffic": "natality_weight/3"})
    served = check_served_version(endpoint_spec(tmp_path, "sagemaker", endpoint_name="ep-same", region=region), PINNED)
    assert served.version == 3 and "variant AllTraffic: model ep-same-AllTraffic" in served.how

    sagemaker_endpoint(aws_conn, "ep-other", {"AllTraffic": "natality_weight/2"})
    with pytest.raises(ServedVersionError, match=r"serves natality_weight v2 .* but the run pinned v3 \(alias "
                                                 r"'champion'\); nothing was scored"):
        check_served_version(endpoint_spec(tmp_path, "sagemaker", endpoint_name="ep-other", region=region), PINNED)

    sagemaker_endpoint(aws_conn, "ep-mixed", {"blue": "natality_weight/3", "green": None})
    with pytest.raises(ServedVersionError, match=r"cannot tell .*variant blue: model ep-mixed-blue: v3; "
                                                 r"variant green: model ep-mixed-green: no mlbatch-model version"):
        check_served_version(endpoint_spec(tmp_path, "sagemaker", endpoint_name="ep-mixed", region=region), PINNED)


class FakeEndpointService:
    """EndpointServiceClient behind EndpointServiceHook: GetEndpoint on real protos (no emulator exists)."""

    def __init__(self, endpoints: dict):
        from google.cloud.aiplatform_v1.services.endpoint_service import EndpointServiceClient

        self.paths, self.endpoints = EndpointServiceClient, endpoints

    def endpoint_path(self, project, location, endpoint):
        return self.paths.endpoint_path(project, location, endpoint)

    def get_endpoint(self, request, retry=None, timeout=None, metadata=()):
        from google.cloud.aiplatform_v1.types import GetEndpointRequest

        return self.endpoints[GetEndpointRequest(request).name]


class FakeModelService:
    def __init__(self, models: dict):
        from google.cloud.aiplatform_v1.services.model_service import ModelServiceClient

        self.paths, self.models = ModelServiceClient, models

    def model_path(self, project, location, model):
        return self.paths.model_path(project, location, model)

    def get_model(self, request, retry=None, timeout=None, metadata=()):
        from google.cloud.aiplatform_v1.types import GetModelRequest

        return self.models[GetModelRequest(request).name]


@pytest.fixture
def vertex_control_plane(monkeypatch):
    """A Vertex endpoint `123` (project p, europe-west4) and its deployed Models, set by the test."""
    import json

    from airflow.providers.google.cloud.hooks.vertex_ai.endpoint_service import EndpointServiceHook
    from airflow.providers.google.cloud.hooks.vertex_ai.model_service import ModelServiceHook
    from google.cloud.aiplatform_v1.types import DeployedModel, Endpoint, Model

    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", json.dumps(
        {"conn_type": "google_cloud_platform", "extra": {"project": "p", "is_anonymous": True}}))
    endpoints, models = {}, {}
    monkeypatch.setattr(EndpointServiceHook, "get_endpoint_service_client",
                        lambda self, region=None: FakeEndpointService(endpoints))
    monkeypatch.setattr(ModelServiceHook, "get_model_service_client",
                        lambda self, region=None: FakeModelService(models))

    def deploy(displays: dict[str, str], traffic: dict[str, int] | None = None, endpoint_id: str = "123"):
        base = "projects/p/locations/europe-west4"
        deployed = []
        for i, (deployed_id, display) in enumerate(displays.items()):
            models[f"{base}/models/{500 + i}"] = Model(name=f"{base}/models/{500 + i}", display_name=display)
            deployed.append(DeployedModel(id=deployed_id, model=f"{base}/models/{500 + i}@1"))
        endpoints[f"{base}/endpoints/{endpoint_id}"] = Endpoint(
            name=f"{base}/endpoints/{endpoint_id}", deployed_models=deployed, traffic_split=traffic or {})

    return deploy


def test_vertex_served_version_is_read_from_the_deployed_models(vertex_control_plane, tmp_path):
    from mlbatch.backends.served_version import check_served_version
    from mlbatch.errors import ServedVersionError

    spec = endpoint_spec(tmp_path, "vertex")
    vertex_control_plane({"d1": "mlb-natality_weight-v3-0a1b2c3d", "d2": "mlb-natality_weight-v2-0a1b2c3d"},
                         traffic={"d1": 100, "d2": 0})  # v2 deployed but given no traffic: not served
    assert check_served_version(spec, PINNED).version == 3

    vertex_control_plane({"d1": "mlb-natality_weight-v2-0a1b2c3d"})
    with pytest.raises(ServedVersionError, match=r"vertex endpoint serves natality_weight v2 \(deployed model d1: "
                                                 r"mlb-natality_weight-v2-0a1b2c3d\) but the run pinned v3"):
        check_served_version(spec, PINNED)

    vertex_control_plane({"d1": "my-own-model"})
    with pytest.raises(ServedVersionError, match=r"cannot tell which version .*deployed model d1: my-own-model: "
                                                 r"no mlbatch-model version"):
        check_served_version(spec, PINNED)


# --- end to end: the DAG's steps through dag.test(), the emulators in front of the real scoring server -------

DATE = "2026-11-22"
ROWS = 3_000


class AuthCheckingProxy:
    """The MLflow proxy (tests/dataplane/endpoint_faults.MLflowProxy) that refuses a request without the
    expected Authorization header with 401, as an authenticating gateway in front of a scoring server."""

    def __new__(cls, scoring_url: str, expected: str):
        from dataplane.endpoint_faults import MLflowProxy

        class Proxy(MLflowProxy):
            seen: list[str] = []

            def invoke(self, path, headers, body):
                self.seen.append(headers.get("Authorization") or "")
                if headers.get("Authorization") != expected:
                    return self.error(401, "missing or wrong Authorization")
                return super().invoke(path, headers, body)

        return Proxy(scoring_url)


def json_server(body: bytes, seen: list | None = None):
    """An HTTP server on loopback answering every POST with `body` (JSON); notes each request's
    (path, Authorization header) in `seen`. Returns the server and its base URL."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from emulators import free_port

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if seen is not None:
                seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    port = free_port()
    http = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    return http, f"http://127.0.0.1:{port}"


def token_server():
    """An OAuth token endpoint on loopback for a service-account key whose token_uri points here: the
    google provider's hook gets a real access token through google-auth without the internet."""
    http, url = json_server(b'{"access_token": "ya29.endpoint-test", "expires_in": 3600, "token_type": "Bearer"}')
    return http, f"{url}/token"


def service_account_key(token_uri: str) -> dict:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": "p", "private_key_id": "k1", "private_key": pem,
            "client_email": "scorer@p.iam.gserviceaccount.com", "client_id": "1", "token_uri": token_uri}


@pytest.fixture
def partition(tmp_path):
    from mlbatch.local.demo.natality import write_partition

    folder = write_partition(tmp_path / "data" / "natality" / f"ds={DATE}", ROWS, files=2, seed=23,
                             row_group_rows=1_000)
    import pandas as pd

    return pd.concat(pd.read_parquet(f) for f in sorted(folder.glob("*.parquet")))


def endpoint_dag(tmp_path, monkeypatch, endpoint: dict, name: str = "endpoint_e2e", retries: int = 0):
    """The natality pipeline with `backend: endpoint`, in a pipelines folder of its own."""
    from airflow.dag_processing.dagbag import DagBag

    doc = yaml.safe_load(DAILY.read_text())
    doc.update(name=name, vars={"data_root": str(tmp_path / "data")}, trigger_params={}, environments={})
    doc.pop("alerts", None)
    doc["tasks"] = {"retries": retries}
    doc["predict"].update(backend="endpoint", endpoint=endpoint)
    doc["output"]["uri"] = f"${{vars.data_root}}/predictions/{name}/ds={{{{ ds }}}}"
    folder = tmp_path / "pipelines"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    monkeypatch.setenv("MLBATCH_PIPELINES_DIR", str(folder))
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags[name]


def run_dag(dag):
    """dag.test() of one run; each test publishes under its own tmp_path, so the pipeline's asset URI
    changes between tests (cloud_backends.pipeline_outputs_moved forgets the earlier one)."""
    from datetime import datetime, timezone

    from cloud_backends import pipeline_outputs_moved

    with pipeline_outputs_moved():
        return dag.test(logical_date=datetime.fromisoformat(DATE).replace(tzinfo=timezone.utc))


def committed(tmp_path, name: str = "endpoint_e2e"):
    import json

    import pyarrow.parquet as pq

    out = tmp_path / "data" / "predictions" / name / f"ds={DATE}"
    record = json.loads((out / "_SUCCESS").read_text())
    return record, pq.read_table(record["files"], partitioning=None).to_pandas()


@pytest.fixture
def kind_setup(request, scoring_server, registered_model, monkeypatch, tmp_path):
    """Per kind: the endpoint block and the emulator in front of the real scoring server."""
    import json

    version = registered_model["version"]
    kind = request.param
    if kind == "mlflow":
        proxy = AuthCheckingProxy(scoring_server.url, "Bearer tok-123").start()
        monkeypatch.setenv("AIRFLOW_CONN_ENDPOINT_HTTP", json.dumps({"conn_type": "http", "password": "tok-123"}))
        yield kind, {"kind": "mlflow", "url": proxy.url, "http_conn_id": "endpoint_http"}, proxy
        proxy.stop()
    elif kind == "sagemaker":
        from dataplane.sagemaker_runtime import SageMakerRuntime

        aws = request.getfixturevalue("aws_conn")
        runtime = SageMakerRuntime(scoring_server.url, "natality-live", region=aws.region).start()
        sagemaker_endpoint(aws, f"natality-live", {"AllTraffic": f"natality_weight/{version}"})
        monkeypatch.setenv("AIRFLOW_CONN_AWS_ENDPOINT", json.dumps({
            "conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"endpoint_url": aws.endpoint_url, "region_name": aws.region,
                      "service_config": {"sagemaker-runtime": {"endpoint_url": runtime.url}}}}))
        yield kind, {"kind": "sagemaker", "endpoint_name": "natality-live", "region": aws.region,
                     "aws_conn_id": "aws_endpoint"}, runtime
        runtime.stop()
        aws.client("sagemaker").delete_endpoint(EndpointName="natality-live")
    else:
        from dataplane.vertex_endpoint import VertexEndpoint

        deploy = request.getfixturevalue("vertex_control_plane")
        deploy({"987654321": f"mlb-natality_weight-v{version}-0a1b2c3d"})
        http, token_uri = token_server()
        monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", json.dumps(
            {"conn_type": "google_cloud_platform",
             "extra": {"project": "p", "keyfile_dict": json.dumps(service_account_key(token_uri))}}))
        endpoint = VertexEndpoint(scoring_server.url, "p", "europe-west4", "123").start()
        yield kind, {**KINDS["vertex"], "api_endpoint": endpoint.api_endpoint}, endpoint
        endpoint.stop()
        http.shutdown()


@pytest.mark.parametrize("kind_setup", ["mlflow", "sagemaker", "vertex"], indirect=True)
def test_a_partition_scored_through_each_endpoint_kind_matches_the_direct_model(
        kind_setup, partition, registered_model, airflow_db, tmp_path, monkeypatch):
    import mlflow

    from cloud_backends import direct_model_predictions

    kind, endpoint, server = kind_setup
    dagrun = run_dag(endpoint_dag(tmp_path, monkeypatch, {**endpoint, "max_rows_per_request": 250}))
    assert dagrun.state == "success", kind
    record, table = committed(tmp_path)
    version = registered_model["version"]
    assert record["rows_in"] == ROWS == record["rows_scored"] + record["rows_rejected"] + record["rows_failed"]
    assert record["rows_failed"] == 0 and record["rows_rejected"] > 0
    assert record["model_version"] == version
    expected_how = {"mlflow": "probe of 20 rows matched", "sagemaker": "variant AllTraffic",
                    "vertex": "deployed model 987654321"}[kind]
    assert expected_how in record["served_version"]
    assert server.faults.requests >= ROWS // 250 - 1  # micro-batches of at most 250 rows reached the endpoint

    features = [f.name for f in load_spec(DAILY).input.features]
    direct = direct_model_predictions(partition[partition.id.isin(table.id)],
                                      f"models:/natality_weight/{version}", features, tmp_path / "direct")
    scored = table.set_index("id")["predicted_weight_pounds"].sort_index()
    assert len(scored) == record["rows_scored"] and scored.index.is_unique
    assert (scored - direct.sort_index()).abs().max() < 1e-9

    steps = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in dagrun.get_task_instances()}
    assert steps["prep"] == {"runs_in": "predict"}
    assert steps["predict"]["requests"] >= 1 and steps["predict"]["model_version"] == version
    runs = mlflow.search_runs(experiment_names=["mlbatch/endpoint_e2e"], output_format="list")
    latest = max(runs, key=lambda r: r.info.start_time)
    assert latest.data.params["backend"] == "endpoint"
    assert expected_how in latest.data.params["endpoint_served_version"]
    assert latest.data.metrics["rows_failed"] == 0
    if kind == "mlflow":  # the connection's token reached the endpoint on every request, the probe's too
        assert server.seen and set(server.seen) == {"Bearer tok-123"}


def test_an_endpoint_serving_another_version_fails_before_scoring(aws_conn, scoring_server, registered_model,
                                                                   partition, airflow_db, tmp_path, monkeypatch,
                                                                   capfd):
    import json

    from dataplane.sagemaker_runtime import SageMakerRuntime

    version = registered_model["version"]
    runtime = SageMakerRuntime(scoring_server.url, "natality-old", region=aws_conn.region).start()
    sagemaker_endpoint(aws_conn, "natality-old", {"AllTraffic": f"natality_weight/{version + 1}"})
    monkeypatch.setenv("AIRFLOW_CONN_AWS_ENDPOINT", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": aws_conn.endpoint_url, "region_name": aws_conn.region,
                  "service_config": {"sagemaker-runtime": {"endpoint_url": runtime.url}}}}))
    try:
        dagrun = run_dag(endpoint_dag(tmp_path, monkeypatch, {
            "kind": "sagemaker", "endpoint_name": "natality-old", "region": aws_conn.region,
            "aws_conn_id": "aws_endpoint"}, name="endpoint_mismatch", retries=1))
    finally:
        runtime.stop()
    assert dagrun.state == "failed"
    tries = {ti.task_id: (ti.state, ti.try_number) for ti in dagrun.get_task_instances()}
    assert tries["predict"] == ("failed", 1) and tries["publish"][0] != "success"  # not retried
    assert runtime.faults.requests == 0  # nothing was sent to be scored
    assert not (tmp_path / "data" / "predictions" / "endpoint_mismatch" / f"ds={DATE}" / "_SUCCESS").exists()
    logged = " ".join("".join(capfd.readouterr()).split())
    assert (f"ServedVersionError: endpoint_mismatch: the sagemaker endpoint serves natality_weight v{version + 1}"
            in logged and f"but the run pinned v{version} (alias 'champion'); nothing was scored" in logged)


def test_an_endpoint_answering_503_for_a_while_still_commits_every_row(scoring_server, registered_model, partition,
                                                                       airflow_db, tmp_path, monkeypatch):
    """503 for the job's first requests (armed once the version probe, one request, has passed): the
    job's retries absorb them and every valid row is committed."""
    import json
    import threading
    import time

    proxy = AuthCheckingProxy(scoring_server.url, "Bearer tok-123").start()
    monkeypatch.setenv("AIRFLOW_CONN_ENDPOINT_HTTP", json.dumps({"conn_type": "http", "password": "tok-123"}))
    armed = threading.Event()

    def arm_after_probe():
        while proxy.faults.requests < 1:
            time.sleep(0.01)
        proxy.faults.refuse(503, count=4)  # fewer than a request's retries (max_retries 5)
        armed.set()

    threading.Thread(target=arm_after_probe, daemon=True).start()
    try:
        dagrun = run_dag(endpoint_dag(tmp_path, monkeypatch, {
            "kind": "mlflow", "url": proxy.url, "http_conn_id": "endpoint_http", "max_rows_per_request": 500},
            name="endpoint_faults"))
    finally:
        proxy.stop()
    assert armed.is_set() and dagrun.state == "success"
    record, table = committed(tmp_path, "endpoint_faults")
    assert record["rows_failed"] == 0 and record["rows_scored"] + record["rows_rejected"] == ROWS == len(table) \
        + record["rows_rejected"]
    predicted = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id) for ti in dagrun.get_task_instances()}["predict"]
    assert predicted["retries"] >= 4 and proxy.faults.requests >= 1 + 4 + ROWS // 500


def test_the_mlflow_probe_names_the_version_an_endpoint_answers_like(tmp_path, partition, session_dir):
    """A scoring server of v1 while the alias pins v2: the 20-row probe's answers differ from v2's and
    match v1's, so the error names both; a model of another name matches none of the versions."""
    from mlflow import MlflowClient

    from mlbatch.backends.served_version import check_served_version
    from mlbatch.errors import ServedVersionError
    from mlbatch.local.demo.natality import train_and_register
    from mlbatch.storage.layer import Storage
    from scoring_server import serve_model

    first = train_and_register("endpoint_probe", rows=2_000, seed=1, pip_requirements=[])
    second = train_and_register("endpoint_probe", rows=2_000, seed=2, pip_requirements=[])
    other = train_and_register("endpoint_probe_other", rows=2_000, seed=3, pip_requirements=[])
    client = MlflowClient()
    pinned = {"name": "endpoint_probe", "version": second, "alias": "champion",
              "artifact_uri": client.get_model_version_download_uri("endpoint_probe", second)}
    pattern = str(tmp_path / "data" / "natality" / f"ds={DATE}" / "*.parquet")
    for served, message in ((first, rf"the endpoint's answers match v{first}, not v{second}\) but the run pinned "
                                    rf"v{second} \(alias 'champion'\)"),
                            (None, rf"does not serve the pinned endpoint_probe v{second} .* on a probe of 20 rows "
                                   r"its answers differ")):
        uri = f"models:/endpoint_probe/{served}" if served else f"models:/endpoint_probe_other/{other}"
        with serve_model(uri, session_dir / f"probe-{served}.log") as server:
            spec = endpoint_spec(tmp_path, "mlflow", url=f"{server.url}/invocations")
            with pytest.raises(ServedVersionError, match=message):
                check_served_version(spec, pinned, None, Storage(), pattern)


def test_an_endpoint_failing_on_a_batch_fails_publish_naming_the_failed_rows(scoring_server, registered_model,
                                                                             partition, airflow_db, tmp_path,
                                                                             monkeypatch, capfd):
    """One micro-batch refused past its retries (503 six times, max_retries 5): its 500 rows are dead
    letters with the service's reason, the counts still add up, and publish refuses the 16.7 % share."""
    import json
    import threading
    import time

    proxy = AuthCheckingProxy(scoring_server.url, "Bearer tok-123").start()
    monkeypatch.setenv("AIRFLOW_CONN_ENDPOINT_HTTP", json.dumps({"conn_type": "http", "password": "tok-123"}))

    def arm_after_probe():
        while proxy.faults.requests < 1:
            time.sleep(0.01)
        proxy.faults.refuse(503, count=6)

    threading.Thread(target=arm_after_probe, daemon=True).start()
    try:
        dagrun = run_dag(endpoint_dag(tmp_path, monkeypatch, {
            "kind": "mlflow", "url": proxy.url, "http_conn_id": "endpoint_http", "max_rows_per_request": 500,
            "max_in_flight": 1}, name="endpoint_failing"))
    finally:
        proxy.stop()
    assert dagrun.state == "failed"
    tries = {ti.task_id: (ti.state, ti.xcom_pull(task_ids=ti.task_id)) for ti in dagrun.get_task_instances()}
    predicted = tries["predict"][1]
    assert tries["publish"][0] == "failed" and predicted["rows_failed"] == 500
    assert predicted["rows_in"] == predicted["rows_scored"] + predicted["rows_rejected"] + predicted["rows_failed"]
    logged = " ".join("".join(capfd.readouterr()).split())
    assert (f"TooManyRejectedError: endpoint_failing: {500 + predicted['rows_rejected']} of {ROWS} rows rejected "
            "(500 of them failed at the endpoint)") in logged
    work = tmp_path / "data" / "predictions" / "endpoint_failing" / "_work" / "endpoint_failing"
    failed = [json.loads(line) for f in work.glob("*/rejected/endpoint-failed-*.jsonl") for line in f.open()]
    assert len(failed) == 500 and all("503" in r["reason"] for r in failed)


def test_the_mlflow_probe_is_retried_like_the_jobs_requests(scoring_server, registered_model, model, tmp_path,
                                                            partition):
    """429 then 503 on the probe: retried with backoff, then the probe matches; a 401 is not retried."""
    from urllib.error import HTTPError

    from dataplane.endpoint_faults import MLflowProxy

    from mlbatch.backends.served_version import check_served_version
    from mlbatch.storage.layer import Storage

    pattern = str(tmp_path / "data" / "natality" / f"ds={DATE}" / "*.parquet")
    with MLflowProxy(scoring_server.url) as proxy:
        spec = endpoint_spec(tmp_path, "mlflow", url=proxy.url)
        proxy.faults.refuse(429, count=1)
        proxy.faults.refuse(503, count=1)
        served = check_served_version(spec, model, None, Storage(), pattern)
        assert served.version == model["version"] and proxy.faults.requests == 3
        proxy.faults.refuse(401, count=1)
        with pytest.raises(HTTPError, match="401"):
            check_served_version(spec, model, None, Storage(), pattern)
        assert proxy.faults.requests == 4


def test_rows_answered_by_a_model_not_checked_before_scoring_fail_the_step(tmp_path):
    """What the job says served the rows (SageMaker's variant header, Vertex's deployedModelId) must be
    among what was checked before scoring: a deployment changed mid-run is refused."""
    from mlbatch.backends.served_version import Served, check_answered
    from mlbatch.errors import ServedVersionError

    vertex = endpoint_spec(tmp_path, "vertex")
    checked = Served(3, "deployed model d1: mlb-natality_weight-v3-0a1b2c3d", ("d1",))
    check_answered(vertex, checked, {"deployedModelId": "d1", "model": "projects/p/.../models/5"})
    check_answered(vertex, checked, None)  # the endpoint never said: nothing to compare
    with pytest.raises(ServedVersionError, match=r"answered from d2, not among what served v3 before scoring "
                                                 r"\(deployed model d1: .*\): its deployment changed during the run"):
        check_answered(vertex, checked, [{"deployedModelId": "d1"}, {"deployedModelId": "d2"}])
    sagemaker = endpoint_spec(tmp_path, "sagemaker")
    check_answered(sagemaker, Served(3, "variant blue: model m", ("blue",)), "blue")
    with pytest.raises(ServedVersionError, match="answered from green"):
        check_answered(sagemaker, Served(3, "variant blue: model m", ("blue",)), ["blue", "green"])


def test_a_vertex_endpoint_answering_from_another_deployed_model_publishes_nothing(
        scoring_server, registered_model, partition, vertex_control_plane, airflow_db, tmp_path, monkeypatch,
        capfd):
    """The control plane says deployed model 111 (the pinned version) takes all traffic; the endpoint's
    answers say 987654321 served them (redeployed between the check and the scoring)."""
    import json

    from dataplane.vertex_endpoint import VertexEndpoint

    vertex_control_plane({"111": f"mlb-natality_weight-v{registered_model['version']}-0a1b2c3d"})
    http, token_uri = token_server()
    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", json.dumps(
        {"conn_type": "google_cloud_platform",
         "extra": {"project": "p", "keyfile_dict": json.dumps(service_account_key(token_uri))}}))
    with VertexEndpoint(scoring_server.url, "p", "europe-west4", "123", deployed_model_id="987654321") as endpoint:
        dagrun = run_dag(endpoint_dag(tmp_path, monkeypatch, {**KINDS["vertex"], "api_endpoint": endpoint.api_endpoint},
                                      name="endpoint_redeployed"))
    http.shutdown()
    assert dagrun.state == "failed" and endpoint.faults.requests > 0
    assert {ti.task_id: ti.state for ti in dagrun.get_task_instances()}["predict"] == "failed"
    assert not (tmp_path / "data" / "predictions" / "endpoint_redeployed" / f"ds={DATE}" / "_SUCCESS").exists()
    logged = " ".join("".join(capfd.readouterr()).split())
    assert "ServedVersionError: endpoint_redeployed: the vertex endpoint answered from 987654321" in logged


@pytest.mark.parametrize("backend", ["endpoint", "sagemaker", "vertex", "dataflow", "local"])
def test_mlbatch_new_writes_a_spec_valid_in_dev_and_with_its_prod_block_uncommented(tmp_path, backend):
    """`mlbatch new --backend <b>`: dev runs without the cloud (endpoint: the direct model), and the
    commented prod block, once uncommented, is a valid spec on that backend (its trigger form offers it)."""
    from mlbatch.local.infer import Column
    from mlbatch.local.scaffold import render

    base = "dataflow" if backend in ("dataflow", "endpoint") else "local"
    text = render({"name": "p_new", "today": "2026-12-01", "start_date": "2025-01-01", "model_text": "m@champion",
                   "model_name": "m", "alias": "champion", "version": None, "sample_rows": 10,
                   "sample_file": "/in/x.parquet", "path": "p_new.yaml", "date": None, "notes": [],
                   "pattern": "/in/*.parquet", "uri": "/in/*.parquet", "marker": None, "format": "parquet",
                   "id_column": "id", "columns": [Column("a", "float")], "backend": backend, "base_backend": base,
                   "output": "/out", "predictions": {"kind": "value"}})
    prod = (text.replace("# environments:", "environments:").replace("\n#   prod:", "\n  prod:")
            .replace("\n#     ", "\n    "))
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "p_new.yaml").write_text(text)
    (tmp_path / "prod").mkdir()
    (tmp_path / "prod" / "p_new.yaml").write_text(prod)
    assert load_spec(tmp_path / "dev" / "p_new.yaml", "dev").predict.backend == base
    assert load_spec(tmp_path / "prod" / "p_new.yaml", "prod").predict.backend == backend


# --- on Dataflow (predict.dataflow.runner: dataflow): no secret in the pipeline options ------------------------
# The launch itself, re-attach, cancel and completion: tests/test_backend_dataflow.py (the faked Dataflow boundary).

ON_DATAFLOW = {"runner": "dataflow", "project": "p", "region": "europe-west1", "temp_location": "gs://b/tmp"}
SECRET = "projects/p/secrets/scoring-auth/versions/3"


def dataflow_spec_file(folder: Path, endpoint: dict, dataflow: dict = ON_DATAFLOW) -> Path:
    path = spec_file(folder, endpoint)
    doc = yaml.safe_load(path.read_text())
    doc["predict"]["dataflow"] = dict(dataflow)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize("endpoint", [KINDS["vertex"], KINDS["mlflow"],
                                      {**KINDS["mlflow"], "authorization_secret": SECRET}])
def test_vertex_and_mlflow_without_a_connections_secret_run_on_dataflow(tmp_path, endpoint):
    from mlbatch.backends.base import backend_for

    spec = load_spec(dataflow_spec_file(tmp_path, endpoint))
    backend = backend_for(spec)
    assert type(backend).__name__ == "EndpointDataflowBackend" and backend.remote


def test_a_sagemaker_endpoint_on_dataflow_is_refused_saying_why(tmp_path, capsys):
    err = refused(capsys, dataflow_spec_file(tmp_path, KINDS["sagemaker"]))
    assert ("predict.endpoint.kind = 'sagemaker': expected 'mlflow' or 'vertex' with predict.dataflow.runner "
            "'dataflow', or runner 'local': a SageMaker endpoint needs AWS credentials") in err
    assert "pipeline options (visible in the console)" in err
    load_spec(spec_file(tmp_path, KINDS["sagemaker"]))  # on the local runner it runs


def test_an_mlflow_http_connection_on_dataflow_is_refused_naming_the_way_that_works(tmp_path, capsys):
    err = refused(capsys, dataflow_spec_file(tmp_path, {**KINDS["mlflow"], "http_conn_id": "scoring_http"}))
    assert ("predict.endpoint.http_conn_id = 'scoring_http': expected no value with predict.dataflow.runner "
            "'dataflow' (the connection's secret would travel in the pipeline options") in err
    assert "predict.endpoint.authorization_secret" in err


def test_the_dataflow_runners_own_fields_are_required_for_the_endpoint_job(tmp_path, capsys):
    err = refused(capsys, dataflow_spec_file(tmp_path, KINDS["vertex"], {"runner": "dataflow",
                                                                        "temp_location": "/tmp/x"}))
    for field in ("project", "region"):
        assert f"predict.dataflow.{field}: expected a value: backend endpoint (runner dataflow) needs it" in err
    assert "predict.dataflow.temp_location = '/tmp/x': expected a gs:// URI" in err


def test_authorization_secret_is_refused_off_mlflow_beside_a_connection_or_malformed(tmp_path, capsys):
    err = refused(capsys, spec_file(tmp_path, {**KINDS["vertex"], "authorization_secret": SECRET}))
    assert f"predict.endpoint.authorization_secret = '{SECRET}': expected no value with kind vertex" in err
    err = refused(capsys, spec_file(tmp_path, {**KINDS["mlflow"], "authorization_secret": SECRET,
                                               "http_conn_id": "scoring_http"}))
    assert "predict.endpoint.http_conn_id = 'scoring_http': expected no value with authorization_secret" in err
    err = refused(capsys, spec_file(tmp_path, {**KINDS["mlflow"], "authorization_secret": "scoring-auth"}))
    assert "predict.endpoint.authorization_secret" in err and "projects/" in err


class FakeSecretManager:
    """SecretManagerServiceClient's AccessSecretVersion on the real request and response types (no
    emulator exists): one secret version, and the names asked for."""

    def __init__(self, name: str, value: bytes):
        self.name, self.value, self.asked = name, value, []

    @staticmethod
    def secret_version_path(project, secret, version):
        from google.cloud.secretmanager_v1 import SecretManagerServiceClient

        return SecretManagerServiceClient.secret_version_path(project, secret, version)

    def access_secret_version(self, request=None, *, name=None, retry=None, timeout=None, metadata=()):
        from google.cloud.secretmanager_v1.types import (
            AccessSecretVersionRequest, AccessSecretVersionResponse, SecretPayload)

        request = AccessSecretVersionRequest(request) if request is not None else AccessSecretVersionRequest(name=name)
        self.asked.append(request.name)
        if request.name != self.name:
            from google.api_core.exceptions import NotFound

            raise NotFound(f"Secret Version [{request.name}] not found.")
        return AccessSecretVersionResponse(name=request.name, payload=SecretPayload(data=self.value))


def test_the_task_reads_authorization_secret_through_the_google_providers_hook(monkeypatch, tmp_path):
    import json

    from airflow.providers.google.cloud.hooks.secret_manager import GoogleCloudSecretManagerHook

    from mlbatch.backends.endpoint import mlflow_authorization

    monkeypatch.setenv("AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT", json.dumps(
        {"conn_type": "google_cloud_platform", "extra": {"project": "p", "is_anonymous": True}}))
    fake = FakeSecretManager(SECRET, b"Bearer from-secret-manager\n")
    monkeypatch.setattr(GoogleCloudSecretManagerHook, "client", property(lambda self: fake))
    cfg = load_spec(spec_file(tmp_path, {**KINDS["mlflow"], "authorization_secret": SECRET})).predict.endpoint
    assert mlflow_authorization(cfg) == "Bearer from-secret-manager"  # the probe's; a local job's variable
    assert fake.asked == [SECRET]
    assert mlflow_authorization(load_spec(spec_file(tmp_path, KINDS["mlflow"])).predict.endpoint) is None


def test_the_workers_read_authorization_secret_themselves_and_send_it(monkeypatch):
    """The job's mlflow client (what each Dataflow worker runs) with `authorization_secret` in
    --endpoint-json: the header read from Secret Manager once, sent on each request to a real HTTP server."""
    import json

    from google.cloud import secretmanager
    from mlbatch_beam.endpoint_handler import CLIENTS, EndpointConfig

    seen = []
    http, url = json_server(b'{"predictions": [7.5]}', seen)  # an MLflow server's answer to one row
    fake = FakeSecretManager(SECRET, b"Token worker-read\n")
    monkeypatch.setattr(secretmanager, "SecretManagerServiceClient", lambda *a, **k: fake)
    monkeypatch.delenv("MLBATCH_ENDPOINT_AUTHORIZATION", raising=False)
    try:
        config = EndpointConfig.from_json(json.dumps({"kind": "mlflow", "url": url, "authorization_secret": SECRET}))
        client = CLIENTS["mlflow"](config)
        assert client.call(b'{"instances": [{"a": 1}]}') == ([7.5], None)
        assert client.call(b'{"instances": [{"a": 2}]}') == ([7.5], None)
        assert seen == [("/invocations", "Token worker-read")] * 2 and fake.asked == [SECRET]  # read once

        monkeypatch.setenv("MLBATCH_ENDPOINT_AUTHORIZATION", "Basic from-the-task")  # a local job's: it wins
        CLIENTS["mlflow"](config).call(b'{"instances": [{"a": 3}]}')
        assert seen[-1] == ("/invocations", "Basic from-the-task") and fake.asked == [SECRET]
    finally:
        http.shutdown()
