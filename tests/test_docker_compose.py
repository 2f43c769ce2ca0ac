"""docker-compose.yaml cannot run here (no Docker engine): check it statically instead."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_compose_topology_mounts_the_bundle_and_uses_known_airflow_commands():
    compose = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    services = compose["services"]
    expected = {"postgres", "redis", "mlflow", "airflow-init", "airflow-apiserver", "airflow-scheduler",
                "airflow-dag-processor", "airflow-triggerer", "airflow-worker"}
    assert expected <= set(services)
    for name, service in services.items():
        if not name.startswith("airflow-"):
            continue
        mounts = {v.split(":")[1] for v in service["volumes"] if v.startswith("./")}
        assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/include"} <= mounts, name
        for source in (v.split(":")[0] for v in service["volumes"] if v.startswith("./")):
            assert (REPO / source).is_dir(), f"{name} mounts missing {source}"
        assert service["command"][0] == "airflow"
        env = service["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"


def test_compose_commands_exist_in_the_installed_airflow_cli():
    from airflow.cli.cli_parser import get_parser

    compose = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    parser = get_parser()
    for name, service in compose["services"].items():
        if service.get("command", [None])[0] == "airflow":
            parser.parse_known_args(service["command"][1:])  # SystemExit on an unknown command


def test_the_image_installs_what_the_packages_need():
    dockerfile = (REPO / "Dockerfile").read_text()
    requirements = (REPO / "requirements.txt").read_text()
    assert "requirements.txt" in dockerfile and "operators" in dockerfile and "beam_jobs" in dockerfile
    for needed in ("apache-airflow-providers-celery==", "psycopg2-binary==", "redis==", "mlflow=="):
        assert needed in requirements


def test_slack_socket_mode_service_runs_the_entrypoint_against_the_api_server():
    import importlib.util

    compose = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    service = compose["services"]["slack-commands"]
    assert service["command"][:3] == ["python", "-m", "mlbatch.slack_commands.socket_mode"]
    assert importlib.util.find_spec(service["command"][2]) is not None
    env = service["environment"]
    assert env["MLBATCH_AIRFLOW_API_URL"] == "http://airflow-apiserver:8080"
    assert "SLACK_APP_TOKEN" in env and "MLBATCH_AIRFLOW_PASSWORD" in env
    assert env["MLBATCH_SLACK_POLICY"].startswith("/opt/airflow/include/")
    assert (REPO / "include" / env["MLBATCH_SLACK_POLICY"].removeprefix("/opt/airflow/include/")).is_file()
    assert set(service["depends_on"]) <= set(compose["services"])
