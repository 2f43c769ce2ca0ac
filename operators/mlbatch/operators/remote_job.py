"""The lifecycle of a step whose job runs on a backend (mlbatch.backends.base.Backend), the providers'
shape: `execute` builds the `JobRequest` and submits it -> the handle is recorded (XCom `remote_job`,
which alerts read, and the "Remote job console" link) -> `defer` on the backend's trigger ->
`execute_complete` asks the backend to check the event and the job's own state, and defers once more
when the backend says the job runs on. The job is stopped whenever the task is killed: while running on
a worker (`on_kill`), while deferred (the backend's trigger `on_kill`, called by the triggerer on user
actions) and when the deferral times out (`resume_execution` with `__fail__` and the timeout reason;
no other trigger error stops a job).

Only this mixin defers, pushes XComs and sets links; a backend gets a request and a handle, never the
operator or its context.
"""

from __future__ import annotations

from typing import Any

from mlbatch.backends.base import SUCCESS_EVENT, WAIT_AGAIN, Backend, JobRequest, backend_for, load_backend
from mlbatch.operators.base import RESOURCES_KEY, effective_spec
from mlbatch.remote_logs import REMOTE_JOB_KEY
from mlbatch.run.paths import RunPaths
from mlbatch.run.resources import measure
from mlbatch.spec.models import PipelineSpec

RESOLVE_MODEL_TASK_ID = "resolve_model"  # the DAG's step that pins the model (dag_factory)


class BackendJobMixin:
    """Mix into a PipelineStepOperator; call `run_backend(...)` from `run()`.

    `job_kind` says which job of the backend the step runs ("predict" or "prep")."""

    job_kind = "predict"
    _remote: dict | None = None  # this try's handle, read by the console link at the end of the try
    _backend: Backend | None = None

    def job_request(self, context: Any, spec: PipelineSpec, paths: RunPaths, model: dict | None = None,
                    prep: dict | None = None) -> JobRequest:
        if model is None:
            model = context["ti"].xcom_pull(task_ids=RESOLVE_MODEL_TASK_ID)
        return JobRequest(spec=spec, paths=paths, run_id=context["run_id"], task_id=self.task_id,
                          model=model, kind=self.job_kind, prep=prep)

    def run_backend(self, context: Any, request: JobRequest) -> dict:
        """Submit (or re-attach); a job that already finished is completed at once, else defer."""
        backend = self._backend = backend_for(request.spec, request.kind)
        submission = backend.submit(request)
        if backend.remote:
            self.remote_job_started(context, submission.handle)
        if submission.state == "succeeded":
            return self._complete(backend, request, submission.handle, SUCCESS_EVENT)
        self._defer(backend, submission.handle)

    def remote_job_started(self, context: Any, remote: dict) -> None:
        """Record the job before anything can go wrong: XCom for alerts, links and retries."""
        self._remote = remote
        context["ti"].xcom_push(key=REMOTE_JOB_KEY, value=remote)
        self.log.info("Remote %s job %s: %s", remote["backend"], remote.get("job_name") or
                      remote.get("job_id"), remote.get("console_url"))

    def remote_job(self, context: Any) -> dict:
        if self._remote is None:
            self._remote = context["ti"].xcom_pull(task_ids=self.task_id, key=REMOTE_JOB_KEY)
        if not self._remote:
            raise RuntimeError(f"{self.task_id}: no remote job recorded for this try")
        return self._remote

    def execute_complete(self, context: Any, event: dict | None = None) -> Any:
        """Back from the trigger: the backend checks the event's status and the job's own state."""
        spec = effective_spec(self.spec, context["params"])
        remote = self.remote_job(context)
        request = self.job_request(context, spec, self.run_paths(context, spec))
        backend = self._backend = load_backend(remote["backend"])
        with measure() as figures:
            result = self._complete(backend, request, remote, event)
        context["ti"].xcom_push(key=RESOURCES_KEY, value=figures)
        self.log.info("%s finished on %s: %s", self.task_id, remote["backend"], result)
        return result

    def _complete(self, backend: Backend, request: JobRequest, handle: dict, event: dict | None) -> dict:
        result = backend.complete(request, handle, event)
        if result is WAIT_AGAIN:  # the trigger gave up, the job runs on
            self._defer(backend, handle)
        return result

    def _defer(self, backend: Backend, handle: dict) -> None:
        self.defer(trigger=backend.trigger(handle), method_name="execute_complete",
                   timeout=self.execution_timeout)

    def resume_execution(self, next_method: str, next_kwargs: dict | None, context: Any) -> Any:
        """A deferral that timed out (execution timeout) comes back as `__fail__`: stop the job first.
        Only the deadline stops it: a trigger that crashed (`Trigger failure`) fails this try, and the
        retry re-attaches to the job, which runs on."""
        from airflow.sdk.bases.operator import TriggerFailureReason

        if next_method == "__fail__" and (next_kwargs or {}).get("error") == TriggerFailureReason.TRIGGER_TIMEOUT:
            self._cancel_job(context)
        return super().resume_execution(next_method, next_kwargs, context)

    def on_kill(self) -> None:
        super().on_kill()
        self._cancel_job(None)

    def _cancel_job(self, context: Any) -> None:
        backend, remote = self._backend, self._remote
        if backend is not None and not backend.remote:  # a child process of this task
            backend.cancel({})
            return
        if remote is None and context is not None:
            remote = context["ti"].xcom_pull(task_ids=self.task_id, key=REMOTE_JOB_KEY)
        if not remote:
            return
        self.log.warning("Stopping remote %s job %s", remote["backend"],
                         remote.get("job_name") or remote.get("job_id"))
        try:
            (backend or load_backend(remote["backend"])).cancel(remote)
        except Exception:  # the kill must go on; say loudly that the job may still run
            self.log.exception("Could not stop remote job %s; stop it by hand: %s",
                               remote.get("job_name") or remote.get("job_id"), remote.get("console_url"))
