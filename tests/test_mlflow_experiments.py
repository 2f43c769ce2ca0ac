"""Two runs of one pipeline recording at once both find its MLflow experiment missing and both create
it: the loser must take the winner's experiment, not fail the run (seen on the live stack: three runs
triggered together, the third's record step failed with RESOURCE_ALREADY_EXISTS)."""

from __future__ import annotations

import uuid

import pytest

from mlbatch.run.mlflow_experiments import ensure_experiment


class _OtherRunCreatesFirst:
    """The session's real MLflow client, except that another run creates the experiment right after
    this one's look-up found it missing."""

    def __init__(self, client):
        self._client, self.created_by_other = client, None

    def get_experiment_by_name(self, name):
        if self.created_by_other is None:
            self.created_by_other = self._client.create_experiment(name)
            return None
        return self._client.get_experiment_by_name(name)

    def create_experiment(self, name, **kwargs):
        return self._client.create_experiment(name, **kwargs)


def test_the_run_that_loses_the_create_takes_the_winners_experiment():
    from mlflow import MlflowClient

    racing = _OtherRunCreatesFirst(MlflowClient())
    name = f"mlbatch/race_{uuid.uuid4().hex[:8]}"
    assert ensure_experiment(name, racing) == racing.created_by_other
    assert ensure_experiment(name, MlflowClient()) == racing.created_by_other


def test_other_create_errors_still_raise():
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as refused:
        ensure_experiment("", MlflowClient())  # an empty name: INVALID_PARAMETER_VALUE, not a lost race
    assert refused.value.error_code != "RESOURCE_ALREADY_EXISTS"
