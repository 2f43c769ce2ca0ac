"""Test environment: a private Airflow home (SQLite), MLflow registry and data root per test session.

Environment variables are set at import time, before anything imports Airflow or MLflow, because both
read their configuration once, on first import.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest_plugins = ["emulators", "scoring_server", "stores"]

REPO = Path(__file__).resolve().parents[1]
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="mlbatch-tests-"))

os.environ.update({
    "AIRFLOW_HOME": str(_SESSION_DIR / "airflow"),
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
    # dag.test() runs the serialized DAG it just wrote; Airflow skips a write within 30 s of the last
    # one, so a test that parsed the same DAG differently moments before (another data root) would
    # run the old version.
    "AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL": "0",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_SESSION_DIR}/airflow/airflow.db",
    "MLFLOW_TRACKING_URI": f"sqlite:///{_SESSION_DIR}/mlflow.db",
    "MLBATCH_TEST_MLFLOW_URI": f"sqlite:///{_SESSION_DIR}/mlflow.db",  # what every test must leave
    "MLBATCH_MLFLOW_ARTIFACT_ROOT": str(_SESSION_DIR / "mlartifacts"),
    "MLBATCH_DATA_ROOT": str(_SESSION_DIR / "data"),
    "MLBATCH_PIPELINES_DIR": str(REPO / "include" / "pipelines"),
    "MLBATCH_ENV": "dev",
    "NO_PROXY": "*",
    # gcsfs >= 2026.10 probes each bucket over gRPC (60 s timeout) for zonal/HNS features; the emulator
    # speaks JSON/HTTP only, and on a standard bucket gcsfs falls back to this very class anyway.
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
})
(_SESSION_DIR / "airflow").mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata database (SQLite) for dag.test() runs."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _SESSION_DIR / "airflow" / "airflow.db"


@pytest.fixture(scope="session")
def registered_model() -> dict:
    """The demo's natality model, trained small and registered with alias `champion`."""
    from mlbatch.local.demo.natality import train_and_register

    version = train_and_register("natality_weight", rows=20_000)
    return {"name": "natality_weight", "version": version}


@pytest.fixture
def model(registered_model) -> dict:
    """The registered model as resolve_model pins it (its XCom), for tests that start a step directly."""
    from mlflow import MlflowClient

    name, version = registered_model["name"], registered_model["version"]
    return {"name": name, "version": version, "uri": f"models:/{name}/{version}", "alias": "champion",
            "artifact_uri": MlflowClient().get_model_version_download_uri(name, version)}


@pytest.fixture(autouse=True)
def mlflow_registry_unchanged():
    """Fail a test that leaves MLflow pointed at another registry: MLflow's set_*_uri export it to every
    later subprocess (live stacks, Beam jobs), and later tests would resolve models there."""
    yield
    import mlflow

    expected = os.environ.get("MLBATCH_TEST_MLFLOW_URI")
    found = {"MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI"),
             "MLFLOW_REGISTRY_URI": os.environ.get("MLFLOW_REGISTRY_URI", expected),
             "mlflow.get_tracking_uri()": mlflow.get_tracking_uri(),
             "mlflow.get_registry_uri()": mlflow.get_registry_uri()}
    leaked = {k: v for k, v in found.items() if v != expected}
    assert not leaked, f"the test left MLflow pointed elsewhere than {expected}: {leaked}"


@pytest.fixture(autouse=True, scope="session")
def no_internet():
    """Fail any test that tries to connect beyond this machine (tests must not reach the internet)."""
    import ipaddress
    import socket

    real_connect = socket.socket.connect

    def guarded(sock, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and host != "localhost":
            try:
                local = ipaddress.ip_address(host).is_loopback
            except ValueError:
                local = False
            if not local:
                raise ConnectionRefusedError(f"test tried to reach {address}: tests stay on this machine")
        return real_connect(sock, address)

    socket.socket.connect = guarded
    yield
    socket.socket.connect = real_connect
