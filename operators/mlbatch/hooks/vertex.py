"""Vertex AI batch prediction through the google provider's `BatchPredictionJobHook` (connection,
credentials, regional clients), plus: a job's verdict by display name, creating a job from a full
`BatchPredictionJob` request (the provider's operator goes through the aiplatform SDK, which cannot set
`instance_config.key_field`), cancelling unless ended, and a Model uploaded once (ModelServiceHook on
the same connection)."""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

from airflow.providers.google.cloud.hooks.vertex_ai.batch_prediction_job import BatchPredictionJobHook

from mlbatch.hooks import verdict

log = logging.getLogger(__name__)
SUCCEEDED = {"JOB_STATE_SUCCEEDED"}
FAILED = {"JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED", "JOB_STATE_PARTIALLY_SUCCEEDED"}
ENDING = {"JOB_STATE_CANCELLING"}  # waited out before the next attempt


def job_id_of(resource: str) -> str:
    """`projects/p/locations/r/batchPredictionJobs/123` -> `123`."""
    return resource.rsplit("/", 1)[-1]


class VertexBatchHook(BatchPredictionJobHook):
    def __init__(self, gcp_conn_id: str = "google_cloud_default", **kwargs: Any):
        super().__init__(gcp_conn_id=gcp_conn_id, **kwargs)

    @cached_property
    def models(self):
        from airflow.providers.google.cloud.hooks.vertex_ai.model_service import ModelServiceHook

        return ModelServiceHook(gcp_conn_id=self.gcp_conn_id)

    def job_verdict(self, project: str, region: str, display_name: str) -> tuple[str, Any]:
        """The newest job with this display name and its verdict (mlbatch.backends.job_names.Verdict)."""
        jobs = list(self.list_batch_prediction_jobs(project_id=project, region=region,
                                                    filter=f'display_name="{display_name}"'))
        if not jobs:
            return "absent", None
        job = max(jobs, key=lambda j: j.create_time)
        return verdict(job.state.name, succeeded=SUCCEEDED, ending=ENDING, failed=FAILED), job

    def create_job(self, project: str, region: str, request: Any) -> Any:
        client = self.get_job_service_client(region)
        return client.create_batch_prediction_job(parent=client.common_location_path(project, region),
                                                  batch_prediction_job=request)

    def job(self, project: str, region: str, resource: str) -> Any:
        return self.get_batch_prediction_job(project_id=project, region=region,
                                             batch_prediction_job=job_id_of(resource))

    def cancel_job(self, project: str, region: str, resource: str) -> None:
        """Cancel a job; one that already ended is left as it is and its final state logged.

        CancelBatchPredictionJob on an ended job answers FAILED_PRECONDITION, so the answer decides, not
        a look before (the job may end between the two)."""
        from google.api_core.exceptions import FailedPrecondition

        client = self.get_job_service_client(region)
        try:
            client.cancel_batch_prediction_job(
                name=client.batch_prediction_job_path(project, region, job_id_of(resource)))
        except FailedPrecondition:
            state = self.job(project, region, resource).state.name
            if state not in SUCCEEDED | FAILED:
                raise
            log.info("Batch prediction job %s already ended (%s): nothing to cancel", resource, state)

    def find_model(self, project: str, region: str, display_name: str) -> str | None:
        found = list(self.models.list_models(project_id=project, region=region,
                                             filter=f'display_name="{display_name}"'))
        return found[0].name if found else None

    def upload_model(self, project: str, region: str, request: Any) -> str:
        operation = self.models.upload_model(project_id=project, region=region, model=request)
        return self.models.wait_for_operation(operation=operation).model
