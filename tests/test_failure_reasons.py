"""The service's reason reaches the user: a job the model container refuses ends with the container's
reason line (column, types) in the raised error, hence in the task log's last line, the `mlbatch run`
console and the Slack alert, not a DataFrame dump and not the service's "See job logs".

SageMaker through moto, its Batch Transform emulator (which writes the agent's data-log to moto's
CloudWatch Logs) and the real MLflow scoring server; Vertex through its emulator's errors files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from cloud_backends import aws_conn, moto_transform_jobs, sagemaker_dataplane, task_context  # noqa: F401
from test_backend_sagemaker import spec, staging_bucket  # noqa: F401 - natality_sagemaker on moto
from test_backend_vertex import vertex  # noqa: F401 - the Vertex API fakes + GCS emulator

REPO = Path(__file__).resolve().parents[1]
TYPE_REASON = "column mother_age: Can not safely convert int64 to float64"


def natality_rows(n: int = 4, **types) -> pd.DataFrame:
    """id + the natality model's features (signature: is_male boolean, mother_age double, plurality
    long, gestation_weeks double), with `types` overriding a column's dtype."""
    frame = pd.DataFrame({"id": range(n), "is_male": [True] * n, "mother_age": [30.0] * n,
                          "plurality": [1] * n, "gestation_weeks": [39.0] * n})
    return frame.astype(types)


def parquet(frame: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    frame.to_parquet(sink, index=False)
    return sink.getvalue()


def predict_on_int64_mother_age(spec, model: dict, run_id: str, ds: str):
    """The predict step of `run_id` with its prepared file already written, mother_age as int64 where the
    model's column is double: what the containers refuse."""
    from mlbatch.operators.predict import PredictOperator

    context = task_context(run_id, ds, model)
    op = PredictOperator(task_id="predict", spec=spec)
    prepared = Path(op.run_paths(context, spec).prepared)
    prepared.mkdir(parents=True, exist_ok=True)
    (prepared / "part-00000.parquet").write_bytes(parquet(natality_rows(mother_age="int64")))
    return op, context


def test_the_reason_line_of_real_scoring_server_answers(scoring_server):
    """What the MLflow container answers a Parquet request it refuses, reduced to its reason."""
    from mlbatch.backends.failure_reasons import reason_line

    features = natality_rows(10).drop(columns=["id"])
    cases = {
        "mother_age": (features.astype({"mother_age": "int64"}), TYPE_REASON),
        "plurality": (features.astype({"plurality": "float64"}),
                      "column plurality: Can not safely convert float64 to int64"),
        "missing": (features.drop(columns=["plurality"]), "Model is missing inputs ['plurality']."),
    }
    for name, (frame, expected) in cases.items():
        answer = scoring_server.invocations(parquet(frame), "application/vnd.apache.parquet")
        assert answer.status_code == 400, name
        assert "is_male" in answer.text[:500] and expected not in answer.text[:500]  # dumps come first
        assert reason_line(answer.text) == expected, name


def test_the_timeout_answer_is_the_scoring_servers_own():
    """The 504 body the reason line recognises is the one MLflow's timeout middleware sends."""
    import inspect

    import mlflow.pyfunc.scoring_server as server

    from mlbatch.backends.failure_reasons import TIMEOUT_BODY, reason_line

    assert f'content="{TIMEOUT_BODY}"' in inspect.getsource(server)
    assert "timeout" in reason_line(TIMEOUT_BODY) and "504" in reason_line(TIMEOUT_BODY)


def test_a_sagemaker_job_refused_for_a_type_ends_with_the_column_and_types(spec, model, aws_conn,
                                                                          sagemaker_dataplane, tmp_path):
    """mother_age prepared as int64 for a double column: the container answers 400, the service says
    "See job logs"; the error names the column and the types (read from the job's data-log), first,
    and so do the alert and the `mlbatch run` console."""
    from airflow.sdk.exceptions import TaskDeferred

    from mlbatch.errors import RemoteJobError
    from mlbatch.operators.predict import PredictOperator

    op, context = predict_on_int64_mother_age(spec, model, "manual__type_refused", "2026-11-23")
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    name = deferred.value.trigger.job_name
    job = aws_conn.client("sagemaker").describe_transform_job(TransformJobName=name)
    assert job["TransformJobStatus"] == "Failed"
    assert job["FailureReason"] == "ClientError: See job logs for more information"

    event = {"status": "failed", "job_name": name, "message": job["FailureReason"]}  # the provider's trigger
    with pytest.raises(RemoteJobError) as failed:
        PredictOperator(task_id="predict", spec=spec).execute_complete(context, event)
    message = str(failed.value)
    assert "\n" not in message  # the task log's last line is the whole message
    assert message.startswith(f"natality_sagemaker: {TYPE_REASON} — SageMaker transform job {name} did "
                              "not succeed: 'ClientError: See job logs for more information'")
    assert_not_retried(failed.value)
    assert_alert_shows(failed.value, TYPE_REASON)
    assert_console_shows(failed.value, TYPE_REASON)


def assert_not_retried(error: Exception) -> None:
    """A refusal by the model container: the fail-fast policy fails the task at once."""
    from airflow.sdk.definitions.retry_policy import RetryAction

    from mlbatch.errors import ContainerRefusedError
    from mlbatch.operators.fail_fast import FAIL_FAST

    assert isinstance(error, ContainerRefusedError), type(error)
    assert FAIL_FAST.evaluate(error, try_number=1, max_tries=3).action == RetryAction.FAIL


def assert_alert_shows(error: Exception, reason: str) -> None:
    """The Slack alert the notifier builds from this error: its notification text and its blocks."""
    from mlbatch.alerts.message import Alert, as_text, blocks

    alert = Alert(kind="failure", pipeline="natality_sagemaker", dag_id="natality_sagemaker", task_id="predict",
                  run_id="manual__type_refused", try_number=1, max_tries=1, error_type=type(error).__name__,
                  error_message=str(error))
    assert reason in alert.fallback_text()
    assert f"{type(error).__name__}\n\n    natality_sagemaker: {reason} — " in as_text(blocks(alert))


def assert_console_shows(error: Exception, reason: str) -> None:
    """`mlbatch run`'s summary of a failed task, from the recorded `airflow dags test` output of a failed
    run with this error as the traceback's last line."""
    from rich.console import Console

    from mlbatch.local.display import RunWatcher

    recorded = (REPO / "tests" / "data" / "dags_test_failed_run.log").read_text().splitlines(True)
    out = io.StringIO()
    watcher = RunWatcher(Console(file=out, width=200))
    for line in recorded:
        if line.startswith("mlflow.exceptions.MlflowException"):
            line = f"mlbatch.errors.{type(error).__name__}: {error}\n"
        watcher.feed(line)
    name = type(error).__name__
    shown = [line for line in out.getvalue().splitlines() if name in line]
    assert len(shown) == 1 and f"{name}: natality_sagemaker: {reason}" in shown[0]


def test_a_vertex_job_whose_instances_were_refused_says_why(vertex, scoring_server, monkeypatch):
    """A batch the container refuses (nulls in a required long column): the job fails and its errors file
    holds each instance with the container's answer; the reason comes from there, not the JSON."""
    from google.cloud.aiplatform_v1.types import JobState

    from dataplane.vertex_batch import run_batch_prediction
    from test_dataplane_vertex import ROWS, _job_and_model

    from mlbatch.backends.vertex import VertexBackend

    jobs, _, gcs = vertex
    client = gcs.client("example-ml-prod")
    job, model = _job_and_model([{**r, "plurality": None} for r in ROWS], "refused", client,
                                instance_type="object", key_field="id")
    out_dir, ok, failed = run_batch_prediction(job, model, client, scoring_server.url)
    assert (ok, failed) == (0, len(ROWS))
    created = jobs.create_batch_prediction_job(parent="projects/example-ml-prod/locations/europe-west4",
                                               batch_prediction_job=job)
    created.output_info.gcs_output_directory = out_dir
    created.state = JobState.JOB_STATE_FAILED
    handle = {"backend": "vertex", "job_id": created.name, "project": "example-ml-prod",
              "region": "europe-west4", "gcp_conn_id": "google_cloud_default"}
    reason = VertexBackend().failure_reason(handle)
    # MLflow's own words for a null in a JSON instance's long column (it names no column here)
    assert reason == (f"{len(ROWS)} lines in the job's errors files; the first: Invalid input. int() argument "
                      "must be a string, a bytes-like object or a real number, not 'NoneType'"), reason
    assert reason.refused  # the instances' code INVALID_ARGUMENT: the same batch is refused again


def test_a_local_job_refused_for_a_type_ends_with_the_column_and_types(model, tmp_path):
    """The local backend (SageMaker flavor) runs the scoring server's own request handling in a child
    process; its error leads with the server's reason, before the job's last lines."""
    from mlbatch.errors import RemoteJobError
    from mlbatch.spec.loader import load_spec, with_overrides

    spec = with_overrides(load_spec(REPO / "include" / "pipelines" / "natality_sagemaker.yaml"), {
        "predict.backend": "local", "predict.local.flavor": "sagemaker",
        "output.uri": str(tmp_path / "out" / "ds={{ ds }}")})
    op, context = predict_on_int64_mother_age(spec, model, "manual__local_type_refused", "2026-11-24")
    with pytest.raises(RemoteJobError) as failed:
        op.execute(context)
    first = str(failed.value).splitlines()[0]
    assert first.startswith(f"natality_sagemaker: {TYPE_REASON} — mlbatch_beam.local_predict exited with code 1"), first
    assert_not_retried(failed.value)
