"""Dataflow through the google provider's `DataflowHook` (connection, REST client, retries), plus: a
job's verdict by exact name (all pages of the `name=` filtered list), and launching a Beam program with
the apache-beam provider's BeamHook until the launcher logs the new job's id."""

from __future__ import annotations

import sys
from typing import Any

from airflow.providers.google.cloud.hooks.dataflow import DataflowHook

from mlbatch.hooks import verdict

SUCCEEDED = {"JOB_STATE_DONE"}
# Ended without (usable) output, or on its way there: a retry moves on to the next attempt's name.
FAILED = {"JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_DRAINED", "JOB_STATE_UPDATED"}
ENDING = {"JOB_STATE_CANCELLING", "JOB_STATE_DRAINING"}  # waited out before the next attempt


class DataflowJobsHook(DataflowHook):
    def __init__(self, gcp_conn_id: str = "google_cloud_default", **kwargs: Any):
        # cancel_timeout=None: ask for the cancellation, do not block (signals) waiting for it to finish.
        super().__init__(gcp_conn_id=gcp_conn_id, cancel_timeout=None, **kwargs)

    def jobs_named(self, project: str, region: str, name: str) -> list[dict]:
        """Jobs named exactly `name` (the REST `name` filter, checked again here), all pages."""
        jobs_api = self.get_conn().projects().locations().jobs()
        request = jobs_api.list(projectId=project, location=region, name=name)
        found: list[dict] = []
        while request is not None:
            response = request.execute(num_retries=self.num_retries)
            found += [j for j in response.get("jobs", []) if j.get("name") == name]
            request = jobs_api.list_next(previous_request=request, previous_response=response)
        return found

    def job_verdict(self, project: str, region: str, name: str) -> tuple[str, dict | None]:
        """The newest job with this name and its verdict (mlbatch.backends.job_names.Verdict)."""
        jobs = self.jobs_named(project, region, name)
        if not jobs:
            return "absent", None
        job = max(jobs, key=lambda j: j.get("createTime", ""))
        state = job.get("currentState", "JOB_STATE_UNKNOWN")
        return verdict(state, succeeded=SUCCEEDED, ending=ENDING, failed=FAILED), job

    @staticmethod
    def launch(module: str, variables: dict) -> str | None:
        """Run `python -m module` on DataflowRunner through BeamHook until Beam logs the new job's id;
        returns it (None when the launcher ended without logging one)."""
        from airflow.providers.apache.beam.hooks.beam import BeamHook, BeamRunnerType
        from airflow.providers.google.cloud.hooks.dataflow import (
            process_line_and_extract_dataflow_job_id_callback)

        found: list[str] = []
        BeamHook(runner=BeamRunnerType.DataflowRunner).start_python_pipeline(
            variables=variables, py_file=module, py_options=["-m"], py_interpreter=sys.executable,
            process_line_callback=process_line_and_extract_dataflow_job_id_callback(found.append),
            is_dataflow_job_id_exist_callback=lambda: bool(found))
        return found[0] if found else None
