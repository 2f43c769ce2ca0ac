"""The `Backend` protocol: what a pipeline step asks of the place where its job runs.

In the spirit of Beam's `ModelHandler`: a few required methods, overridable defaults for the rest.

Required (each backend module implements them for its service):
- `submit(request) -> Submission`: find this attempt's job by its deterministic name (a retry
  re-attaches, see `job_names`) or submit it; never waits for a remote job to end. The submission's
  `handle` is a JSON-serializable dict: `backend`, `job_id`/`job_name`, `console_url` and whatever
  `trigger`, `describe`, `result` and `cancel` need later, possibly in another process.
- `describe(handle) -> JobState`: the job's own state, read from the service.
- `result(request, handle, state) -> dict`: what the finished job left (output prefixes, counts):
  the step's return value. `state` is `describe`'s answer, so the service is not asked twice.

Defaults (override where the service differs):
- `trigger(handle)`: the trigger that waits for the job (None: `submit` ran it to its end).
- `complete(request, handle, event)`: the trigger's event says success *and* `describe` says
  succeeded, then `result`; `WAIT_AGAIN` where the job runs on and the step should wait once more.
- `cancel(handle)`: stop the job unless it ended (nothing to stop by default).
- `log_tail(handle, lines)`: the last lines of the job's own log, for alerts (none by default).

A backend never sees an operator or a task context: the operator builds the `JobRequest`, records the
handle (XCom `remote_job`, console link), defers on the trigger and resumes with the event. That
keeps the dependency one way (tests/test_import_direction.py checks it).

Light imports only: operators import this module at DAG-parse time.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from mlbatch.backends.failure_reasons import is_refusal
from mlbatch.errors import BackendConfigError, ContainerRefusedError, RemoteJobError
from mlbatch.remote_logs import BACKEND_CLASSES
from mlbatch.run.paths import RunPaths
from mlbatch.spec.models import PipelineSpec
from mlbatch.spec.runnable import backend_problems

Handle = dict[str, Any]
log = logging.getLogger(__name__)
# submitted: a new job; running: an earlier try's job, re-attached; succeeded: it already finished
# (a remote job found done, or a local job that ran to its end inside `submit`).
SubmitState = Literal["submitted", "running", "succeeded"]
WAIT_AGAIN = None  # `complete`'s answer when the trigger gave up but the job runs on
SUCCESS_EVENT = {"status": "success"}
LOCAL_RUNNER_BACKEND = "mlbatch.backends.local.DirectModelBackend"  # `dataflow` on the local runner


@dataclass(frozen=True)
class JobRequest:
    """Everything a backend needs to run one step's job, built by the operator from its context.

    :param spec: the pipeline spec with this run's trigger overrides.
    :param paths: the run's rendered locations.
    :param run_id: the DAG run id (part of job names and staging prefixes).
    :param task_id: the step's task id (part of job names; names the job's result file).
    :param model: the pinned model (resolve_model's XCom: name, version, uri, artifact_uri).
    :param kind: which job the step runs: "predict" or "prep" (Dataflow runs both).
    :param prep: what the prep step returned (predict only): e.g. its `prepared_uri` on GCS.
    """

    spec: PipelineSpec
    paths: RunPaths
    run_id: str
    task_id: str
    model: dict
    kind: str = "predict"
    prep: dict | None = field(default=None)


@dataclass(frozen=True)
class JobState:
    """A job's state as the service reports it: `phase` is what it means for the step."""

    phase: Literal["running", "succeeded", "failed"]
    detail: str = ""  # the service's own state name and reason, for messages
    job: Any = None  # the service's description of the job


@dataclass(frozen=True)
class Submission:
    handle: Handle
    state: SubmitState


class Backend:
    """Base of the backends; see the module docstring for the protocol."""

    name: ClassVar[str]
    remote: ClassVar[bool] = True  # False: the job runs in a child process of the task, nothing to record
    job_label: ClassVar[str] = "job"  # how messages name the job, e.g. "SageMaker transform job"

    def submit(self, request: JobRequest) -> Submission:
        raise NotImplementedError

    def describe(self, handle: Handle) -> JobState:
        raise NotImplementedError

    def result(self, request: JobRequest, handle: Handle, state: JobState) -> dict:
        raise NotImplementedError

    def trigger(self, handle: Handle) -> Any:
        return None

    def complete(self, request: JobRequest, handle: Handle, event: dict | None) -> dict | None:
        """The event *and* the job's own state (a provider trigger once reported a failed SageMaker job
        as a success), then the result."""
        label = f"{self.job_label} {job_ref(handle)}"
        try:
            require_success_event(request.spec.name, label, event, handle.get("console_url", ""))
        except RemoteJobError as failed:
            raise self._with_reason(request.spec.name, failed, handle) from None
        state = self.describe(handle)
        if state.phase != "succeeded":
            raise self._with_reason(request.spec.name, RemoteJobError(
                f"{request.spec.name}: the trigger reported success but {label} is {state.detail}; see "
                f"{handle.get('console_url', '')}"), handle)
        return self.result(request, handle, state)

    def failure_reason(self, handle: Handle) -> str:
        """Why the ended job failed, in one line, from where the service keeps it (a log stream, an
        errors file, job messages): "" when it says nothing more than the job's state."""
        return ""

    def _with_reason(self, spec_name: str, failed: RemoteJobError, handle: Handle) -> RemoteJobError:
        """`failed` with the job's own reason put first (`failure_reason`), so that the task log's last
        line, the CLI and the alert show it; unchanged when there is none or it cannot be read."""
        try:
            reason = self.failure_reason(handle)
        except Exception as exc:  # the job's failure matters more than why it could not be explained
            log.warning("Could not read why %s failed: %s: %s", job_ref(handle), type(exc).__name__, exc)
            return failed
        if not reason:
            return failed
        return with_reason(spec_name, reason, str(failed).removeprefix(f"{spec_name}: "))

    def cancel(self, handle: Handle) -> None:
        return None

    def log_tail(self, handle: Handle, lines: int) -> list[str]:
        return []


def with_reason(spec_name: str, reason: str, failure: str) -> RemoteJobError:
    """The job's error with its reason first; `ContainerRefusedError` (not retried) when the reason
    says the model container refused the requests (`failure_reasons.Reason.refused`)."""
    error = ContainerRefusedError if is_refusal(reason) else RemoteJobError
    return error(f"{spec_name}: {reason} — {failure}")


def require_success_event(spec_name: str, job: str, event: dict | None, console_url: str) -> None:
    """Raise `RemoteJobError` unless `event` is a `{"status": "success", ...}` trigger event. Only the
    first check of `complete`: the job's own state is read next."""
    if not event or event.get("status") != "success":
        detail = (event or {}).get("message", event)
        raise RemoteJobError(f"{spec_name}: {job} did not succeed: {detail!r}; see {console_url}")


def require_runnable(spec: PipelineSpec, backend: str) -> None:
    """The spec loader's backend check again where the request is built (a spec made without the loader
    gets it too): `BackendConfigError` naming each field, before anything is staged."""
    problems = backend_problems(spec, backend)
    if problems:
        raise BackendConfigError(f"{spec.name}: backend {backend} cannot build a job: " + "; ".join(
            f"{p.where}{'' if p.value is None else f' = {p.value!r}'}: expected {p.expected}" for p in problems))


def job_ref(handle: Handle) -> str:
    return str(handle.get("job_id") or handle.get("job_name") or "")


def load_backend(classpath_or_name: str) -> Backend:
    """A new backend object, by name (`BACKEND_CLASSES`) or class path; imports its module only now."""
    classpath = BACKEND_CLASSES.get(classpath_or_name, classpath_or_name)
    if "." not in classpath:
        raise ValueError(f"no backend named {classpath_or_name!r}")
    module_name, _, class_name = classpath.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise NotImplementedError(f"{classpath_or_name} as a backend is not available in this version "
                                  f"({exc.name} is missing)") from None
    return getattr(module, class_name)()


def backend_for(spec: PipelineSpec, kind: str = "predict") -> Backend:
    """The backend a step of this spec runs on: `predict.backend`, where `dataflow` on the local runner
    is the direct-model Beam job in a child process (prep then runs inside it), and `endpoint` on the
    Dataflow runner is the endpoint job on Dataflow."""
    name = spec.predict.backend
    if name == "dataflow" and spec.predict.dataflow.runner != "dataflow":
        if kind != "predict":
            raise ValueError(f"{spec.name}: {kind} runs inside predict's job on the local runner")
        return load_backend(LOCAL_RUNNER_BACKEND)
    if name == "endpoint" and spec.predict.dataflow.runner == "dataflow":
        return load_backend("endpoint-dataflow")
    return load_backend(name)
