"""The seam between cloud backends and alerts: the last lines of a remote job's own log.

Steps that run a remote job (predict on SageMaker/Vertex/Dataflow, prep on Dataflow) push a
`remote_job` XCom: {"backend": ..., "job_id"/"job_name": ..., "region"/"project": ..., "console_url": ...}.
The Slack notifier calls `remote_log_tail(remote_job)`, which asks the job's backend
(`mlbatch.backends.base.Backend.log_tail`). Fetching logs must never raise into the caller: an alert
with "(remote log unavailable: <why>)" beats no alert.

`BACKEND_CLASSES` names each backend's class by path, so core code and the operators reach a backend
by name at run time without importing it (and its cloud SDKs) at DAG-parse time.
"""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger(__name__)

REMOTE_JOB_KEY = "remote_job"
BACKEND_CLASSES = {
    "local": "mlbatch.backends.local.LocalBackend",
    "dataflow": "mlbatch.backends.dataflow.DataflowBackend",
    "sagemaker": "mlbatch.backends.sagemaker.SageMakerBackend",
    "vertex": "mlbatch.backends.vertex.VertexBackend",
    "endpoint": "mlbatch.backends.endpoint.EndpointBackend",
    "endpoint-dataflow": "mlbatch.backends.endpoint_dataflow.EndpointDataflowBackend",  # runner dataflow
}


def remote_log_tail(remote_job: dict | None, lines: int = 30) -> list[str]:
    if not remote_job:
        return []
    backend = remote_job.get("backend")
    if backend not in BACKEND_CLASSES:
        return []
    try:
        module_name, _, class_name = BACKEND_CLASSES[backend].rpartition(".")
        job_backend = getattr(importlib.import_module(module_name), class_name)()
        return list(job_backend.log_tail(remote_job, lines))[-lines:]
    except Exception as exc:  # the alert matters more than the log excerpt
        log.warning("Could not fetch the %s job log: %s", backend, exc)
        return [f"(remote log unavailable: {type(exc).__name__}: {exc})"]
