"""The `Backend` protocol (mlbatch.backends.base) and the operator lifecycle around it, with a fake
backend registered by class path: what a new backend gets for free by implementing submit, describe and
result (docs/adding-a-backend.md). The real backends are tested against their services' emulators in
test_backend_{dataflow,sagemaker,vertex}.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from cloud_backends import task_context

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "include" / "pipelines" / "natality_daily.yaml"
DS = "2026-11-21"
MODEL = {"name": "m", "version": 3, "uri": "models:/m/3", "artifact_uri": "/nowhere"}

from airflow.triggers.base import BaseTrigger, TriggerEvent  # noqa: E402

from mlbatch.backends.base import WAIT_AGAIN, Backend, JobState, Submission  # noqa: E402


class FakeTrigger(BaseTrigger):
    def __init__(self, job_id: str):
        super().__init__()
        self.job_id = job_id

    def serialize(self):
        return f"{__name__}.FakeTrigger", {"job_id": self.job_id}

    async def run(self):
        yield TriggerEvent({"status": "success"})


class FakeBackend(Backend):
    """A service with one job per run: its state is whatever the test sets in `STATES`."""

    name = "fake"
    job_label = "fake job"
    STATES: dict[str, str] = {}
    CANCELLED: list[str] = []
    WAIT: list[bool] = []  # complete() answers WAIT_AGAIN while this holds True

    def submit(self, request):
        job_id = f"{request.spec.name}-{request.task_id}-{request.run_id}"
        state = self.STATES.setdefault(job_id, "RUNNING")
        handle = {"backend": "local", "job_id": job_id, "console_url": f"https://fake/{job_id}"}
        return Submission(handle, "succeeded" if state == "DONE" else "submitted")

    def trigger(self, handle):
        return FakeTrigger(handle["job_id"])

    def describe(self, handle):
        state = self.STATES[handle["job_id"]]
        return JobState({"DONE": "succeeded", "RUNNING": "running"}.get(state, "failed"), state)

    def result(self, request, handle, state):
        return {"backend": "fake", "job_id": handle["job_id"], "model_version": request.model["version"]}

    def complete(self, request, handle, event):
        if self.WAIT and self.WAIT.pop():
            return WAIT_AGAIN
        return super().complete(request, handle, event)

    def cancel(self, handle):
        self.CANCELLED.append(handle["job_id"])


@pytest.fixture
def fake(monkeypatch, tmp_path):
    from mlbatch import remote_logs
    from mlbatch.spec.loader import load_spec, with_overrides

    monkeypatch.setitem(remote_logs.BACKEND_CLASSES, "local", f"{__name__}.FakeBackend")
    FakeBackend.STATES.clear()
    FakeBackend.CANCELLED.clear()
    FakeBackend.WAIT.clear()
    return with_overrides(load_spec(SPEC), {"predict.backend": "local",
                                            "output.uri": str(tmp_path / "out" / "ds={{ ds }}")})


def predict(spec, context):
    from mlbatch.operators.predict import PredictOperator

    op = PredictOperator(task_id="predict", spec=spec)
    prepared = Path(op.run_paths(context, spec).prepared)
    prepared.mkdir(parents=True, exist_ok=True)
    (prepared / "part-0.jsonl").write_text("{}\n")
    return op


def test_the_operator_records_the_handle_defers_and_completes_through_the_backend(fake):
    from airflow.sdk.exceptions import TaskDeferred

    from mlbatch.errors import RemoteJobError

    context = task_context("manual__fake", DS, MODEL)
    op = predict(fake, context)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    handle = context["ti"].pushed["remote_job"]
    assert deferred.value.trigger.job_id == handle["job_id"] and deferred.value.method_name == "execute_complete"
    assert op.operator_extra_links[0].get_link(op, ti_key=None) == handle["console_url"]

    FakeBackend.WAIT.append(True)  # the backend says the job runs on: the operator waits again
    with pytest.raises(TaskDeferred):
        op.execute_complete(context, {"status": "timeout"})
    with pytest.raises(RemoteJobError, match="fake job .* did not succeed"):
        op.execute_complete(context, {"status": "error", "message": "boom"})
    with pytest.raises(RemoteJobError, match="the trigger reported success but fake job .* is RUNNING"):
        op.execute_complete(context, {"status": "success"})
    FakeBackend.STATES[handle["job_id"]] = "DONE"
    assert op.execute_complete(context, {"status": "success"}) == {
        "backend": "fake", "job_id": handle["job_id"], "model_version": 3}

    again = task_context("manual__fake", DS, MODEL)  # a retry finds the job done: no deferral
    assert predict(fake, again).execute(again)["job_id"] == handle["job_id"]


def test_kill_and_deadline_cancel_through_the_backend_with_the_recorded_handle(fake):
    from airflow.sdk.bases.operator import TriggerFailureReason
    from airflow.sdk.exceptions import TaskDeferralError, TaskDeferralTimeout, TaskDeferred

    from mlbatch.operators.predict import PredictOperator

    context = task_context("manual__fake_kill", DS, MODEL)
    op = predict(fake, context)
    with pytest.raises(TaskDeferred):
        op.execute(context)
    job_id = context["ti"].pushed["remote_job"]["job_id"]
    op.on_kill()
    assert FakeBackend.CANCELLED == [job_id]

    resumed = PredictOperator(task_id="predict", spec=fake)  # a new process: the handle comes from XCom
    with pytest.raises(TaskDeferralError):
        resumed.resume_execution("__fail__", {"error": TriggerFailureReason.TRIGGER_FAILURE}, context)
    assert FakeBackend.CANCELLED == [job_id]  # a crashed trigger does not stop the job
    with pytest.raises(TaskDeferralTimeout):
        resumed.resume_execution("__fail__", {"error": TriggerFailureReason.TRIGGER_TIMEOUT}, context)
    assert FakeBackend.CANCELLED == [job_id, job_id]


def test_each_spec_gets_its_backend_and_every_registered_backend_loads():
    from mlbatch.backends.base import Backend, backend_for, load_backend
    from mlbatch.remote_logs import BACKEND_CLASSES
    from mlbatch.spec.loader import load_spec, with_overrides

    for name in BACKEND_CLASSES:
        backend = load_backend(name)
        assert isinstance(backend, Backend) and backend.name == name
    spec = load_spec(SPEC)
    on = lambda **o: with_overrides(spec, o)  # noqa: E731
    assert type(backend_for(on(**{"predict.backend": "local"}))).__name__ == "LocalBackend"
    local_runner = on(**{"predict.backend": "dataflow", "predict.dataflow.runner": "local"})
    assert type(backend_for(local_runner)).__name__ == "DirectModelBackend"
    assert not backend_for(local_runner).remote
    dataflow = on(**{"predict.backend": "dataflow", "predict.dataflow": {
        "runner": "dataflow", "project": "p", "region": "europe-west1", "temp_location": "gs://b/tmp"}})
    assert type(backend_for(dataflow, "prep")).__name__ == "DataflowBackend"
    with pytest.raises(ValueError, match="prep runs inside predict"):
        backend_for(local_runner, "prep")
