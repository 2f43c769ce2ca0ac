"""Operator extra link to the remote job's page in the AWS or Google Cloud console.

Steps that run a remote job push XCom `remote_job` with a `console_url` (see `remote_logs`); this link
reads it back, so one link class serves SageMaker, Vertex AI and Dataflow. Registered with Airflow by
plugins/mlbatch_links.py. Light imports only: the DAG processor loads it with the operators.
"""

from __future__ import annotations

from airflow.sdk import BaseOperatorLink

from mlbatch.remote_logs import REMOTE_JOB_KEY


class RemoteJobConsoleLink(BaseOperatorLink):
    name = "Remote job console"

    def get_link(self, operator, *, ti_key) -> str:
        from airflow.providers.common.compat.sdk import XCom  # what the providers' links use

        remote = XCom.get_value(ti_key=ti_key, key=REMOTE_JOB_KEY)
        return (remote or {}).get("console_url", "") if isinstance(remote, dict) else ""
