"""Shared fixtures for the Beam job tests: a small natality-like data set
and a real MLflow model registered in a throwaway SQLite tracking store."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from mlbatch_beam.schema import FeatureSchema
from mlflow_uris import mlflow_pointed_at as _mlflow_pointed_at

FEATURES = ["mother_age", "plurality", "gestation_weeks"]

SCHEMA_JSON = """{
  "id_column": "id",
  "features": [
    {"name": "mother_age", "type": "float", "min": 12, "max": 60},
    {"name": "plurality", "type": "int", "min": 1, "max": 5},
    {"name": "gestation_weeks", "type": "float"},
    {"name": "is_male", "type": "bool", "nullable": true}
  ]
}"""


def make_frame(rows: int, seed: int = 0, start_id: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "id": np.arange(start_id, start_id + rows, dtype="int64"),
        "mother_age": rng.uniform(16, 45, rows).round(1),
        "plurality": rng.integers(1, 4, rows),
        "gestation_weeks": rng.uniform(30, 42, rows).round(1),
        "is_male": rng.integers(0, 2, rows).astype(bool),
    })


# Helpers are served as fixtures (not imported from conftest) so these tests
# keep working whatever import mode or other conftest files the repo adds.
@pytest.fixture(scope="session", name="make_frame")
def make_frame_fixture():
    return make_frame


@pytest.fixture(scope="session")
def features() -> list:
    return list(FEATURES)


@pytest.fixture(scope="session")
def schema_json() -> str:
    return SCHEMA_JSON


@pytest.fixture(scope="session")
def schema() -> FeatureSchema:
    return FeatureSchema.from_json(SCHEMA_JSON)


@dataclass
class RegisteredModel:
    uri: str               # models:/natality/1
    artifact_uri: str      # direct file:// URI of the same model
    tracking_uri: str
    sklearn_model: object
    features: list

    def expected(self, frame: pd.DataFrame) -> np.ndarray:
        return self.sklearn_model.predict(frame[self.features])


@pytest.fixture(scope="session")
def _beam_registry(tmp_path_factory) -> RegisteredModel:
    """A LinearRegression logged and registered as models:/natality/1 in a registry of its own.

    MLflow's tracking and registry URIs are process-wide and exported to every subprocess (its
    set_*_uri functions write MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI), so they are restored as soon
    as the model is registered: left set, they would send every later test's model lookups, and the
    live stacks started from them, to this registry."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression

    tmp = tmp_path_factory.mktemp("mlflow")
    tracking_uri = f"sqlite:///{tmp}/mlflow.db"
    train = make_frame(500, seed=42)
    X = train[FEATURES]
    y = 3.0 + 0.05 * X["mother_age"] - 0.4 * X["plurality"] + 0.1 * X["gestation_weeks"]
    model = LinearRegression().fit(X, y)
    with _mlflow_pointed_at(tracking_uri), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's own deprecation / pickle-format hints
        experiment = mlflow.create_experiment(
            "beam-tests", artifact_location=(tmp / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            mlflow.sklearn.log_model(
                model, name="model", serialization_format="cloudpickle",
                signature=infer_signature(X, model.predict(X)),
                registered_model_name="natality",
                pip_requirements=["scikit-learn"])  # skips slow requirement inference
        artifact_uri = mlflow.MlflowClient().get_model_version_download_uri("natality", "1")
    return RegisteredModel("models:/natality/1", artifact_uri, tracking_uri, model, FEATURES)


@pytest.fixture
def mlflow_model(_beam_registry) -> RegisteredModel:
    """The beam tests' model, with MLflow (this process and its subprocesses) pointed at its registry
    for the duration of one test."""
    with _mlflow_pointed_at(_beam_registry.tracking_uri):
        yield _beam_registry
