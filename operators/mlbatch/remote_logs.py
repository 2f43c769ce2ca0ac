"""The seam between cloud backends and alerts: the last lines of a remote job's own log.

Steps that run a remote job (predict on SageMaker/Vertex/Dataflow, prep on Dataflow) push a
`remote_job` XCom: {"backend": ..., "job_id"/"job_name": ..., "region"/"project": ..., "console_url": ...}.
The Slack notifier calls `remote_log_tail(remote_job)`; each backend module provides
`log_tail(remote_job, lines) -> list[str]`. Fetching logs must never raise into the caller: an alert
with "(remote log unavailable: <why>)" beats no alert.
"""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger(__name__)

REMOTE_JOB_KEY = "remote_job"
BACKEND_MODULES = {
    "sagemaker": "mlbatch.backends.sagemaker",
    "vertex": "mlbatch.backends.vertex",
    "dataflow": "mlbatch.backends.dataflow",
}


def remote_log_tail(remote_job: dict | None, lines: int = 30) -> list[str]:
    if not remote_job:
        return []
    backend = remote_job.get("backend")
    module_name = BACKEND_MODULES.get(backend)
    if module_name is None:
        return []
    try:
        module = importlib.import_module(module_name)
        return list(module.log_tail(remote_job, lines))[-lines:]
    except Exception as exc:  # the alert matters more than the log excerpt
        log.warning("Could not fetch the %s job log: %s", backend, exc)
        return [f"(remote log unavailable: {type(exc).__name__}: {exc})"]
