"""Operator extra links: the remote job's console page, the run's MLflow run, the pinned model version.

Airflow 3 computes a link once, at the end of the try, in the task process (`finalize` calls `get_link`
with the operator that ran and stores the URL in XCom for the API server). So the links read what this
try's operator object knows -- no XCom lookup, which would log "XCom not found" as an ERROR on every try
without a remote job -- and return "" when there is nothing to link to (the UI hides empty links).
Registered with Airflow by plugins/mlbatch_links.py. Light imports only: the DAG processor loads it.

The console URL itself is the providers' (`DataflowJobLink`, `SageMakerTransformJobLink`,
`VertexAIBatchPredictionJobLink`, formatted by each backend into its handle). Those link classes are
not declared on the operators: importing them at DAG-parse time pulls in `airflow.providers.google.cloud`
and `airflow.providers.amazon.aws` (tests/test_dag_integrity.py), their `get_link` reads an XCom that a
try without a remote job lacks (an "XCom not found" ERROR in its log), and one step runs on whichever
backend its run chose, so it would show three links of which two are always empty. One
backend-neutral "Remote job console" link reads this try's handle instead.
"""

from __future__ import annotations

import os
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

MLFLOW_UI_ENV = "MLBATCH_MLFLOW_UI_URL"


class RemoteJobConsoleLink(BaseOperatorLink):
    name = "Remote job console"

    def get_link(self, operator, *, ti_key) -> str:
        remote = getattr(operator, "_remote", None)  # this try's handle, set when it started or re-attached a job
        return str(remote.get("console_url") or "") if isinstance(remote, dict) else ""


class MlflowRunLink(BaseOperatorLink):
    name = "MLflow run"

    def get_link(self, operator, *, ti_key) -> str:
        result = getattr(operator, "last_result", None)
        if not isinstance(result, dict) or not result.get("mlflow_run_id"):
            return ""
        ui = mlflow_ui_url(result.get("tracking_uri"))
        return f"{ui}/#/experiments/{result['experiment_id']}/runs/{result['mlflow_run_id']}" if ui else ""


class MlflowModelVersionLink(BaseOperatorLink):
    name = "MLflow model version"

    def get_link(self, operator, *, ti_key) -> str:
        result = getattr(operator, "last_result", None)
        if not isinstance(result, dict) or not result.get("version"):
            return ""
        ui = mlflow_ui_url(result.get("tracking_uri"))
        return f"{ui}/#/models/{quote(str(result['name']))}/versions/{result['version']}" if ui else ""


def mlflow_ui_url(tracking_uri: str | None) -> str:
    """`MLBATCH_MLFLOW_UI_URL` if set, else the tracking server itself when it is one (http[s])."""
    ui = os.environ.get(MLFLOW_UI_ENV) or (tracking_uri if (tracking_uri or "").startswith("http") else "")
    return ui.rstrip("/")
