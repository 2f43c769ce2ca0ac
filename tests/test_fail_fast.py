"""Errors a retry cannot fix fail at once; transient ones retry (mlbatch.operators.fail_fast, docs/errors.md).

The classification by type and code, unit by unit, then real DAG runs through `dag.test()`: a missing
alias on the shipped natality_daily DAG (retries 1, retry delay 2 min) and a spec/model mismatch end in
a failed task at try 1, no retry wait, the error's name and message in the Slack alert; a registry that
answers 503 is retried.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from fake_slack import VALID_TOKEN, FakeSlack

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "include" / "pipelines"
DATE = "2026-11-20"


# --- the classification ---------------------------------------------------------------------------

def _client_error(code: str, status: int):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "CreateTransformJob")


def _our_errors():
    from mlbatch import errors

    return {name: cls for name, cls in vars(errors).items()
            if isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == errors.__name__}


def test_our_permanent_errors_fail_and_the_others_retry():
    from mlbatch.errors import (BackendConfigError, CountMismatchError, ModelMismatchError, ModelNotFoundError,
                                NoValidRowsError, RemoteJobError, SpecError, SpecProblem, TooManyRejectedError,
                                TriggerConfError, WaitFailedError, retry_verdict)

    permanent = [ModelMismatchError("m"), ModelNotFoundError("m"), NoValidRowsError("m"), TooManyRejectedError("m"),
                 CountMismatchError("m"), BackendConfigError("m"), TriggerConfError("p", ["x"], ["backend"]),
                 SpecError(Path("trigger params of p"), [SpecProblem("predict.backend", "gpu", "one of ...")])]
    for exc in permanent:
        assert retry_verdict(exc).retry is False, exc
    for exc in (RemoteJobError("job failed"), WaitFailedError("upstream failed"), RuntimeError("a bug"),
                ConnectionError("reset"), TimeoutError()):
        assert retry_verdict(exc).retry is True, exc
    # they stay what they were: callers that catch ValueError/RuntimeError/LookupError still do
    assert issubclass(ModelMismatchError, ValueError) and issubclass(ModelNotFoundError, LookupError)
    assert issubclass(CountMismatchError, RuntimeError) and issubclass(BackendConfigError, ValueError)


@pytest.mark.parametrize("code,status,retry", [
    ("ValidationException", 400, False), ("AccessDeniedException", 400, False), ("ResourceNotFound", 400, False),
    ("ThrottlingException", 400, True), ("ResourceLimitExceeded", 400, True), ("SlowDown", 503, True),
    ("InternalFailure", 500, True), ("SomethingNew", 503, True), ("SomethingNew", 400, True),
])
def test_aws_errors_by_code(code, status, retry):
    from mlbatch.errors import retry_verdict

    assert retry_verdict(_client_error(code, status)).retry is retry


def test_google_and_mlflow_errors_by_type_and_status():
    from google.api_core import exceptions as g
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import (INTERNAL_ERROR, INVALID_PARAMETER_VALUE, REQUEST_LIMIT_EXCEEDED,
                                              RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE)

    from mlbatch.errors import retry_verdict

    for exc in (g.InvalidArgument("x"), g.NotFound("x"), g.PermissionDenied("x"), g.FailedPrecondition("x"),
                g.BadRequest("x"), g.Unauthenticated("x")):
        assert retry_verdict(exc).retry is False, exc
    for exc in (g.ServiceUnavailable("x"), g.TooManyRequests("x"), g.ResourceExhausted("x"),
                g.InternalServerError("x"), g.DeadlineExceeded("x"), g.Aborted("x")):
        assert retry_verdict(exc).retry is True, exc
    for code in (RESOURCE_DOES_NOT_EXIST, INVALID_PARAMETER_VALUE):
        assert retry_verdict(MlflowException("x", error_code=code)).retry is False
    for code in (INTERNAL_ERROR, TEMPORARILY_UNAVAILABLE, REQUEST_LIMIT_EXCEEDED):
        assert retry_verdict(MlflowException("x", error_code=code)).retry is True


def test_the_policy_fails_permanent_errors_and_leaves_the_rest_to_airflow():
    from airflow.sdk.definitions.retry_policy import RetryAction

    from mlbatch.errors import ModelMismatchError, RemoteJobError
    from mlbatch.operators.fail_fast import FailFastRetryPolicy

    policy = FailFastRetryPolicy()
    decision = policy.evaluate(ModelMismatchError("features"), try_number=1, max_tries=3)
    assert decision.action == RetryAction.FAIL and "ModelMismatchError" in decision.reason
    assert policy.evaluate(RemoteJobError("preempted"), try_number=1, max_tries=3).action == RetryAction.DEFAULT
    assert policy.evaluate(_client_error("ThrottlingException", 400), 1, 3).action == RetryAction.DEFAULT


def agent_lines(status: int, body: str) -> list[str]:
    """A SageMaker data-log for one refused file, in the agent's format (tests/dataplane/SOURCES.md)."""
    key = "staging/run/prepared/part-00000.parquet"
    return [f"2026-11-23T00:00:01.000:[sagemaker logs]: {key}: {text}".rstrip()
            for text in [f"ClientError: {status}", "", "Message:", *body.splitlines()]]


def test_a_refusal_by_the_model_container_fails_at_once_and_other_job_failures_retry():
    """The verdict is carried by the status each service recorded (failure_reasons.Reason), through the
    one place a job's error gets its reason (backends.base.with_reason): 4xx but 408/429 -> not retried."""
    from airflow.sdk.definitions.retry_policy import RetryAction

    from mlbatch.backends.base import with_reason
    from mlbatch.backends.failure_reasons import container_reason, errors_file_reason, job_output_reason
    from mlbatch.errors import ContainerRefusedError, RemoteJobError, retry_verdict
    from mlbatch.operators.fail_fast import FailFastRetryPolicy

    body = ('{"error_code": "BAD_REQUEST", "message": "Failed to enforce schema. Error: Incompatible input '
            'types for column x. Can not safely convert int64 to float64."}')
    instance = lambda code: json.dumps({"key": 1, "error": {"code": code, "message": body}})  # noqa: E731
    would = "{}: /w/prepared/part-00000.parquet: the scoring server would answer {}: Invalid input."
    refused = [container_reason(agent_lines(400, body)), container_reason(agent_lines(415, "")),
               errors_file_reason([instance(3)]), errors_file_reason([instance(9)]),
               job_output_reason(would.format("ValueError", 400))]
    retried = [container_reason(agent_lines(500, "boom")), container_reason(agent_lines(504, "Request "
               "processing time exceeded limit")), container_reason(agent_lines(408, "")),
               container_reason(agent_lines(429, "")), errors_file_reason([instance(13)]),
               errors_file_reason(["('model server never became ready', 12)"]),
               job_output_reason(would.format("ValueError", 503)), "Workflow failed. Causes: capacity"]
    policy = FailFastRetryPolicy()
    for reason in refused:
        error = with_reason("p", reason, "SageMaker transform job j did not succeed")
        assert type(error) is ContainerRefusedError and isinstance(error, RemoteJobError), reason
        assert str(error).startswith(f"p: {reason} — ") and retry_verdict(error).retry is False
        assert policy.evaluate(error, try_number=1, max_tries=3).action == RetryAction.FAIL
    for reason in retried:
        error = with_reason("p", reason, "job j did not succeed")
        assert type(error) is RemoteJobError and retry_verdict(error).retry is True, reason
        assert policy.evaluate(error, try_number=1, max_tries=3).action == RetryAction.DEFAULT
    assert "Can not safely convert int64 to float64" in refused[0]  # the text is the reason line still


def test_every_step_of_a_pipeline_dag_has_the_policy_and_the_dag_still_serializes(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    from mlbatch.operators.fail_fast import FailFastRetryPolicy

    monkeypatch.setenv("MLBATCH_PIPELINES_DIR", str(PIPELINES))
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    for dag in bag.dags.values():
        assert all(isinstance(t.retry_policy, FailFastRetryPolicy) for t in dag.tasks), dag.dag_id
        assert all(t.retries == dag.default_args["retries"] for t in dag.tasks)  # retries stay as the spec says
        DagSerialization.to_dict(dag)


def test_docs_table_names_every_error_with_its_verdict():
    """docs/errors.md says, for each exception class of mlbatch.errors, whether it is retried: the table
    cannot drift from the code."""
    from mlbatch.errors import PermanentError

    text = (REPO / "docs" / "errors.md").read_text()
    rows = {m.group(1): m.group(2).strip().lower() for m in
            re.finditer(r"^\|\s*`(\w+)`[^|]*\|[^|]*\|\s*(\w+)", text, flags=re.MULTILINE)}
    for name, cls in _our_errors().items():
        if name in ("PermanentError", "SpecProblem", "RetryVerdict"):
            continue
        assert name in rows, f"docs/errors.md has no row for {name}"
        assert rows[name] == ("no" if issubclass(cls, PermanentError) else "yes"), (name, rows[name])


# --- real DAG runs ----------------------------------------------------------------------------------

@pytest.fixture
def fake_slack(monkeypatch, tmp_path):
    with FakeSlack() as fake:
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_API_DEFAULT", json.dumps(
            {"conn_type": "slack", "password": VALID_TOKEN, "extra": {"base_url": fake.api_url}}))
        monkeypatch.setenv("MLBATCH_ALERTS_DIR", str(tmp_path / "alerts"))
        yield fake


@pytest.fixture
def partition(session_dir):
    from mlbatch.local.demo.natality import write_partition

    folder = session_dir / "data" / "natality" / f"ds={DATE}"
    if not (folder / "_SUCCESS").exists():
        write_partition(folder, 2_000, files=1, seed=3, row_group_rows=1_000)
    return folder


def pipeline_dag(pipelines: Path, dag_id: str, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("MLBATCH_PIPELINES_DIR", str(pipelines))
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags[dag_id]


def variant(tmp_path: Path, name: str, change) -> Path:
    """natality_daily under another name, changed by `change(doc)`, alone in a pipelines folder."""
    doc = yaml.safe_load((PIPELINES / "natality_daily.yaml").read_text())
    doc["name"] = name
    doc["schedule"] = None
    doc["output"]["uri"] = doc["output"]["uri"].replace("natality_daily", name)
    change(doc)
    folder = tmp_path / "pipelines"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder


def run(dag, conf: dict):
    return dag.test(logical_date=datetime.fromisoformat(DATE).replace(tzinfo=timezone.utc), run_conf=conf)


def task_tries(dagrun, task_id: str) -> tuple[str, int, list]:
    """(state, try_number, earlier tries' states): earlier tries live in task_instance_history."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskinstancehistory import TaskInstanceHistory
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id=dagrun.dag_id, run_id=dagrun.run_id, task_id=task_id).one()
        history = session.query(TaskInstanceHistory).filter_by(dag_id=dagrun.dag_id, run_id=dagrun.run_id,
                                                               task_id=task_id).all()
        return ti.state, ti.try_number, sorted((h.try_number, h.state) for h in history)


def test_missing_alias_fails_at_once_on_the_shipped_dag(airflow_db, registered_model, partition, fake_slack,
                                                        monkeypatch):
    """natality_daily as shipped (retries 1, retry delay 2 min): alias `challenger` is allowed by the
    trigger form but not set in the registry."""
    dag = pipeline_dag(PIPELINES, "natality_daily", monkeypatch)
    assert dag.get_task("resolve_model").retries == 1
    dagrun = run(dag, {"model_alias": "challenger", "backend": "local"})
    assert dagrun.state == "failed"
    assert task_tries(dagrun, "resolve_model") == ("failed", 1, [])  # no retry, so no retry wait either
    assert task_tries(dagrun, "prep")[0] == "upstream_failed"

    [message] = fake_slack.messages
    text = json.dumps(message["blocks"])
    assert "ModelNotFoundError" in text
    assert "has no alias 'challenger'" in text
    assert "not retried: a retry cannot fix it" in message["text"] and "try 1 of 2" not in text  # says so
    [attached] = fake_slack.files.values()  # the full task log, in the alert's thread
    assert "ModelNotFoundError: model 'natality_weight' has no alias 'challenger'" in attached["content"]
    assert "not retried: ModelNotFoundError: a retry cannot fix it" in attached["content"]


def test_spec_model_mismatch_fails_at_once(airflow_db, registered_model, partition, tmp_path, fake_slack,
                                           monkeypatch):
    def renamed_feature(doc):
        doc["input"]["features"][3]["name"] = "gestation_days"
        doc["tasks"] = {"retries": 2, "retry_delay_minutes": 0.05}  # were it retried, it would be at once

    dag = pipeline_dag(variant(tmp_path, "natality_mismatch", renamed_feature), "natality_mismatch", monkeypatch)
    dagrun = run(dag, {"backend": "local"})
    assert dagrun.state == "failed"
    assert task_tries(dagrun, "wait_for_data") == ("success", 1, [])
    assert task_tries(dagrun, "resolve_model") == ("failed", 1, [])
    [message] = fake_slack.messages
    text = json.dumps(message["blocks"])
    assert "ModelMismatchError" in text and "gestation_weeks" in text


class Unavailable(BaseHTTPRequestHandler):
    """An MLflow server in trouble: every request answers 503."""

    requests: list[str] = []

    def do_GET(self):
        Unavailable.requests.append(self.path)
        self.send_response(503)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"upstream connect error")

    def log_message(self, *args):
        pass


@pytest.fixture
def unavailable_registry():
    Unavailable.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_registry_answering_503_is_retried(airflow_db, partition, tmp_path, unavailable_registry, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own retries would take minutes

    def unreachable(doc):
        doc["model"]["tracking_uri"] = unavailable_registry
        doc["tasks"] = {"retries": 1, "retry_delay_minutes": 0.02}

    dag = pipeline_dag(variant(tmp_path, "natality_flaky", unreachable), "natality_flaky", monkeypatch)
    dagrun = run(dag, {"backend": "local"})
    assert dagrun.state == "failed"  # the registry never recovers here: both tries fail ...
    state, try_number, earlier = task_tries(dagrun, "resolve_model")
    assert (state, try_number) == ("failed", 2) and [t for t, _ in earlier] == [1]  # ... but it was retried
    assert len(Unavailable.requests) >= 2
