"""`make up` / `make down`: the production topology as plain processes on this machine.

    python -m mlbatch.local_stack up [--db URL] [--port 8080] [--mlflow-port 5000]
    python -m mlbatch.local_stack down

Starts an MLflow tracking server and Airflow's api-server, scheduler, dag-processor and triggerer
(LocalExecutor), each in its own process group, logs and pids under `.mlbatch-up/`. The metadata
database is SQLite there by default, or the SQLAlchemy URL given (`--db` / `MLBATCH_DB_URL`, e.g.
`postgresql+psycopg2://postgres@127.0.0.1:5432/airflow`). The Fernet key, JWT secret and passwords are
generated once and kept in `.mlbatch-up/secrets.json` (mode 600). The live integration test starts the
same stack through `LocalStack`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_PROCESSES = ("api-server", "scheduler", "dag-processor", "triggerer")
SERVICE_USER = "mlbatch_slack"


@dataclass
class LocalStack:
    home: Path
    db_url: str | None = None
    port: int = 8080
    mlflow_port: int = 5000
    pipelines_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def pid_file(self) -> Path:
        return self.home / "pids.json"

    def secrets(self) -> dict[str, str]:
        path = self.home / "secrets.json"
        if path.exists():
            return json.loads(path.read_text())
        from cryptography.fernet import Fernet

        values = {"fernet_key": Fernet.generate_key().decode(), "jwt_secret": secrets.token_urlsafe(48),
                  "admin": secrets.token_urlsafe(12), SERVICE_USER: secrets.token_urlsafe(12)}
        self.home.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
        path.chmod(0o600)
        return values

    def env(self) -> dict[str, str]:
        s = self.secrets()
        passwords = self.home / "passwords.json"
        passwords.write_text(json.dumps({"admin": s["admin"], SERVICE_USER: s[SERVICE_USER]}))
        passwords.chmod(0o600)
        airflow_home = self.home / "airflow"
        db = self.db_url or f"sqlite:///{airflow_home}/airflow.db"
        env = {k: v for k, v in os.environ.items()  # the stack's own Airflow and MLflow settings only
               if not k.startswith("AIRFLOW__")
               and k not in ("MLBATCH_MLFLOW_ARTIFACT_ROOT", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        env.update({
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # mlflow, airflow
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__FERNET_KEY": s["fernet_key"],
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"admin:admin,{SERVICE_USER}:user",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API_AUTH__JWT_SECRET": s["jwt_secret"],
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db,
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow_home / "logs"),
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLBATCH_MLFLOW_UI_URL": self.mlflow_url,
            "MLBATCH_DATA_ROOT": env.get("MLBATCH_DATA_ROOT") or str(self.home / "data"),
            "MLBATCH_PIPELINES_DIR": str(self.pipelines_dir or env.get("MLBATCH_PIPELINES_DIR")
                                         or REPO / "include" / "pipelines"),
            "MLBATCH_AIRFLOW_API_URL": self.url,
            "MLBATCH_AIRFLOW_UI_URL": self.url,
            "MLBATCH_AIRFLOW_USERNAME": SERVICE_USER,
            "MLBATCH_AIRFLOW_PASSWORD": s[SERVICE_USER],
            "MLBATCH_SLACK_POLICY": env.get("MLBATCH_SLACK_POLICY") or str(REPO / "include" / "slack_policy.yaml"),
            "NO_PROXY": "*",
        })
        env.update(self.extra_env)
        return env

    def commands(self) -> dict[str, list[str]]:
        mlflow_dir = self.home / "mlflow"
        mlflow_dir.mkdir(parents=True, exist_ok=True)
        commands = {"mlflow": [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.mlflow_port),
            "--workers", "1", "--backend-store-uri", f"sqlite:///{mlflow_dir}/mlflow.db",
            "--artifacts-destination", str(mlflow_dir / "artifacts"),
        ]}
        for name in AIRFLOW_PROCESSES:
            extra = ["--host", "127.0.0.1", "--port", str(self.port)] if name == "api-server" else []
            commands[name] = [sys.executable, "-m", "airflow", name, *extra]
        return commands

    def up(self, timeout: float = 180) -> None:
        """Start MLflow, migrate the Airflow database, start Airflow; return once all are healthy."""
        if self.running():
            raise SystemExit(f"already running (pids in {self.pid_file}); `make down` first")
        try:
            self.start_mlflow()  # it needs no Airflow database: it comes up while the migration runs
            self.start_airflow()
            self.wait_healthy(timeout)
        except BaseException:
            self.down()
            raise

    def start_mlflow(self) -> None:
        self._start("mlflow")

    def start_airflow(self) -> None:
        log = self.home / "logs" / "db-migrate.log"
        migrate = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=self.env(),
                                 stdout=log.open("w"), stderr=subprocess.STDOUT)
        if migrate.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed; end of {log}:\n{log.read_text()[-3000:]}")
        for name in AIRFLOW_PROCESSES:
            self._start(name)

    def _start(self, name: str) -> None:
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        pids = json.loads(self.pid_file.read_text()) if self.pid_file.exists() else {}
        process = subprocess.Popen(self.commands()[name], env=self.env(), cwd=self.home, start_new_session=True,
                                   stdout=(logs / f"{name}.log").open("w"), stderr=subprocess.STDOUT)
        pids[name] = process.pid
        self.pid_file.write_text(json.dumps(pids))

    def wait_healthy(self, timeout: float) -> None:
        deadline, problem = time.monotonic() + timeout, "not started"
        while time.monotonic() < deadline:
            for name, pid in json.loads(self.pid_file.read_text()).items():
                if not _alive(pid):
                    log = (self.home / "logs" / f"{name}.log").read_text()[-3000:]
                    raise RuntimeError(f"{name} exited during start-up; end of its log:\n{log}")
            try:
                _get(f"{self.mlflow_url}/health")
                health = json.loads(_get(f"{self.url}/api/v2/monitor/health"))
                states = {k: (v or {}).get("status") for k, v in health.items()}
                if all(states.get(k) == "healthy" for k in ("metadatabase", "scheduler", "triggerer", "dag_processor")):
                    return
                problem = f"health {states}"
            except OSError as exc:
                problem = str(exc)
            time.sleep(1)
        raise TimeoutError(f"the stack was not healthy within {timeout:.0f} s: {problem} (logs in {self.home / 'logs'})")

    def running(self) -> bool:
        return self.pid_file.exists() and any(_alive(p) for p in json.loads(self.pid_file.read_text()).values())

    def down(self, grace: float = 20) -> None:
        if not self.pid_file.exists():
            return
        pids = json.loads(self.pid_file.read_text())
        for pid in pids.values():  # each process group we started: the process and its workers
            _killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_group_alive(p) for p in pids.values()):
            time.sleep(0.3)
        for pid in pids.values():
            _killpg(pid, signal.SIGKILL)
        self.pid_file.unlink()

    def login(self) -> tuple[str, str]:
        return "admin", self.secrets()["admin"]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _killpg(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlbatch.local_stack", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--home", type=Path, default=REPO / ".mlbatch-up")
    parser.add_argument("--db", default=os.environ.get("MLBATCH_DB_URL") or None,
                        help="SQLAlchemy URL of the Airflow metadata database (default: SQLite in --home)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("MLBATCH_UI_PORT", 8080)))
    parser.add_argument("--mlflow-port", type=int, default=int(os.environ.get("MLBATCH_MLFLOW_PORT", 5000)))
    args = parser.parse_args(argv)
    stack = LocalStack(args.home.resolve(), args.db, args.port, args.mlflow_port)
    if args.action == "down":
        stack.down()
        print("stopped")
        return 0
    started = time.monotonic()
    stack.up()
    user, password = stack.login()
    db = args.db or f"SQLite ({stack.home / 'airflow' / 'airflow.db'})"
    print(f"Airflow UI  {stack.url}   login {user} / {password}\n"
          f"MLflow      {stack.mlflow_url}\n"
          f"database    {db}, LocalExecutor; logs in {stack.home / 'logs'}\n"
          f"up in {time.monotonic() - started:.0f} s; stop with `make down`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
