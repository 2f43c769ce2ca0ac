"""Create MLflow experiments with a predictable artifact location.

With a database tracking URI, MLflow otherwise puts artifacts under `./mlruns` of whatever folder the
process happens to run in (an Airflow worker's, say). `MLBATCH_MLFLOW_ARTIFACT_ROOT` pins it.
"""

from __future__ import annotations

import os

ARTIFACT_ROOT_ENV = "MLBATCH_MLFLOW_ARTIFACT_ROOT"


def ensure_experiment(name: str, client=None) -> str:
    """Return the id of experiment `name`, creating it if needed (through `client`, an MlflowClient,
    when given: its tracking server rather than the process-wide one). Two runs recording at once may
    both find it missing: the one whose create loses (RESOURCE_ALREADY_EXISTS) takes the winner's."""
    import mlflow
    from mlflow.exceptions import MlflowException

    api = client or mlflow
    found = api.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    root = os.environ.get(ARTIFACT_ROOT_ENV)
    location = f"{root.rstrip('/')}/{name.replace('/', '_')}" if root else None
    try:
        return api.create_experiment(name, artifact_location=location)
    except MlflowException as lost:
        if lost.error_code != "RESOURCE_ALREADY_EXISTS" or not (found := api.get_experiment_by_name(name)):
            raise
        return found.experiment_id
