"""What a pipeline step needs to run a job on a cloud service: start it through the backend module,
remember it (XCom `remote_job`, console link), defer, check the completion event, and stop the job
whenever the task is killed -- while running on a worker (`on_kill`), while deferred (the backend's
trigger `on_kill`, called by the triggerer on user actions) and when the deferral times out
(`resume_execution` with `__fail__` and the timeout reason; no other trigger error stops a job).

Backend modules (mlbatch.backends.<name>) provide
`start(operator, context, spec, paths, model)`, `complete(operator, context, spec, paths, model,
event)`, `cancel(remote_job)` and `log_tail(remote_job, lines)`.
"""

from __future__ import annotations

import importlib
from typing import Any

from mlbatch.operators.base import RESOURCES_KEY, effective_spec
from mlbatch.remote_logs import BACKEND_MODULES, REMOTE_JOB_KEY
from mlbatch.run.resources import measure
from mlbatch.spec.models import PipelineSpec



def backend_module(backend: str):
    if backend not in BACKEND_MODULES:
        raise ValueError(f"no cloud backend module for {backend!r}")
    try:
        return importlib.import_module(BACKEND_MODULES[backend])
    except ModuleNotFoundError as exc:
        if exc.name != BACKEND_MODULES[backend]:
            raise
        raise NotImplementedError(f"{backend} as a remote service is not available in this version "
                                  f"({exc.name} is missing)") from None


class RemoteJobMixin:
    """Mix into a PipelineStepOperator; call `run_remote(...)` from `run()`."""

    _remote: dict | None = None

    def run_remote(self, backend: str, context: Any, spec: PipelineSpec, paths: Any, model: dict) -> dict:
        return backend_module(backend).start(self, context, spec, paths, model)

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
        paths = self.run_paths(context, spec)
        model = context["ti"].xcom_pull(task_ids="resolve_model")
        remote = self.remote_job(context)
        with measure() as figures:
            result = backend_module(remote["backend"]).complete(self, context, spec, paths, model, event)
        context["ti"].xcom_push(key=RESOURCES_KEY, value=figures)
        self.log.info("%s finished on %s: %s", self.task_id, remote["backend"], result)
        return result

    def resume_execution(self, next_method: str, next_kwargs: dict | None, context: Any) -> Any:
        """A deferral that timed out (execution timeout) comes back as `__fail__`: stop the job first.
        Only the deadline stops it: a trigger that crashed (`Trigger failure`) fails this try, and the
        retry re-attaches to the job, which runs on."""
        from airflow.sdk.bases.operator import TriggerFailureReason

        if next_method == "__fail__" and (next_kwargs or {}).get("error") == TriggerFailureReason.TRIGGER_TIMEOUT:
            self._cancel_remote(context)
        return super().resume_execution(next_method, next_kwargs, context)

    def on_kill(self) -> None:
        super().on_kill()
        self._cancel_remote(None)

    def _cancel_remote(self, context: Any) -> None:
        remote = self._remote
        if remote is None and context is not None:
            remote = context["ti"].xcom_pull(task_ids=self.task_id, key=REMOTE_JOB_KEY)
        if not remote:
            return
        self.log.warning("Stopping remote %s job %s", remote["backend"],
                         remote.get("job_name") or remote.get("job_id"))
        try:
            backend_module(remote["backend"]).cancel(remote)
        except Exception:  # the kill must go on; say loudly that the job may still run
            self.log.exception("Could not stop remote job %s; stop it by hand: %s",
                               remote.get("job_name") or remote.get("job_id"), remote.get("console_url"))
