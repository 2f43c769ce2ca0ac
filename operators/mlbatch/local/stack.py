"""`make up` / `make down`: the production topology as plain processes on this machine, supervised.

    python -m mlbatch.local.stack up [--db URL] [--port 8080] [--mlflow-port 5000] [--log-port 8793]
    python -m mlbatch.local.stack down

`up` starts a small supervisor of our own (`mlbatch.local.supervisor`), detached, which starts an MLflow
tracking server, migrates the Airflow database, starts Airflow's api-server, scheduler, dag-processor
and triggerer (LocalExecutor) and the alert flusher, each in its own process group, and restarts any of
them that dies (with backoff; it gives up on one that keeps dying fast, with a `GIVING UP` line in
`.mlbatch-up/logs/supervisor.log`). `up` on a running or half-running stack starts only what is
missing. `down` stops the supervisor, which stops everything and waits for the task processes and
their job processes; `down` returns once no process of the stack is left. Logs, `pids.json` and the
supervisor's plan live under `.mlbatch-up/`.

The metadata database is SQLite there by default, or the SQLAlchemy URL given (`--db` /
`MLBATCH_DB_URL`, e.g. `postgresql+psycopg2://postgres@127.0.0.1:5432/airflow`). The Fernet key, JWT
secret and passwords are generated once and kept in `.mlbatch-up/secrets.json` (mode 600). The live
integration tests start the same stack through `LocalStack`.

Why one module of this length: `LocalStack` is one object (environment, secrets, plan, start, health
wait, stop) that `make up`/`make down` and the live tests share.
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
from functools import lru_cache
from pathlib import Path

from mlbatch.local import processes as procs

REPO = Path(__file__).resolve().parents[3]
AIRFLOW_PROCESSES = ("api-server", "scheduler", "dag-processor", "triggerer")
ALERT_FLUSHER = "alert-flusher"
SERVICE_USER = "mlbatch_slack"
MARKER_ENV = "MLBATCH_STACK_HOME"  # in the environment of every process of a stack, descendants included


@dataclass
class LocalStack:
    home: Path
    db_url: str | None = None
    port: int = 8080
    mlflow_port: int = 5000
    pipelines_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    log_port: int = 8793  # the scheduler's log server (LocalExecutor task logs)
    trigger_log_port: int = 8794  # the triggerer's log server
    restart: dict[str, float] = field(default_factory=dict)  # supervisor backoff (mlbatch.local.supervisor)
    grace: float = 20  # seconds a process group gets between SIGTERM and SIGKILL

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def pid_file(self) -> Path:
        """Written by the supervisor: its own pid and each process's pid, start time, state, restarts."""
        return self.home / "pids.json"

    @property
    def supervisor_file(self) -> Path:
        return self.home / "supervisor.pid"

    @property
    def marker(self) -> str:
        """`NAME=VALUE` in the environment of every process of this stack (see `mlbatch.local.processes`)."""
        return f"{MARKER_ENV}={self.home}"

    def secrets(self) -> dict[str, str]:
        path = self.home / "secrets.json"
        if path.exists():
            return json.loads(path.read_text())
        from cryptography.fernet import Fernet

        values = {"fernet_key": Fernet.generate_key().decode(), "jwt_secret": secrets.token_urlsafe(48),
                  "admin": secrets.token_urlsafe(12), SERVICE_USER: secrets.token_urlsafe(12)}
        self.home.mkdir(parents=True, exist_ok=True)
        _write_private(path, json.dumps(values))
        return values

    def env(self) -> dict[str, str]:
        s = self.secrets()
        passwords = self.home / "passwords.json"
        _write_private(passwords, json.dumps({"admin": s["admin"], SERVICE_USER: s[SERVICE_USER]}))
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
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.trigger_log_port),
            # tasks queued by a scheduler that died go back to the scheduler within a minute, not 5
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "30",
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
        if alert_flusher_loops():
            commands[ALERT_FLUSHER] = [sys.executable, "-m", "mlbatch.alerts", "flush", "--loop"]
        return commands

    def plan(self) -> dict:
        """What the supervisor runs, in start order: MLflow first (it needs no Airflow database, so it
        comes up while the migration runs), `airflow db migrate` once, then Airflow and the flusher."""
        commands = self.commands()
        steps = [{"name": "mlflow", "argv": commands.pop("mlflow")},
                 {"name": "db-migrate", "argv": [sys.executable, "-m", "airflow", "db", "migrate"], "once": True}]
        warm_up = {"api-server": f"{self.url}/execution/health"}  # its execution API is built on first use
        steps += [{"name": name, "argv": argv, "warm_up": warm_up.get(name)} for name, argv in commands.items()]
        return {"home": str(self.home), "marker": self.marker, "steps": steps, "grace": self.grace,
                "stop_last": ["api-server", "mlflow"], "restart": self.restart}

    def up(self, timeout: float = 300) -> str:
        """Start the stack (or what is missing of it); return once all is healthy. Returns what it did."""
        supervisor = self.supervisor_pid()
        if supervisor is not None:
            missing = sorted(set(self.commands()) - set(self.pids()))
            os.kill(supervisor, signal.SIGHUP)  # start now whatever is not running
            self.wait_healthy(timeout)
            return f"already running; started {', '.join(missing)}" if missing else "already running"
        adopted = [name for name, e in self.process_states().items() if procs.alive(e.get("pid"), e.get("start"))]
        try:
            self.start()
            self.wait_healthy(timeout)
        except BaseException:
            self.down()
            raise
        return f"started; kept the running {', '.join(adopted)}" if adopted else "started"

    def start(self) -> None:
        """Start the supervisor (detached: its own session), which starts the processes; no wait."""
        if self.supervisor_alive():
            return
        self.home.mkdir(parents=True, exist_ok=True)
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        plan = self.home / "supervisor.json"
        _write_private(plan, json.dumps(self.plan(), indent=1))
        (self.home / "stop.json").unlink(missing_ok=True)
        name, value = self.marker.split("=", 1)
        with (logs / "supervisor.log").open("a") as out:
            process = subprocess.Popen([sys.executable, "-m", "mlbatch.local.supervisor", str(plan)],
                                       env={**self.env(), name: value}, cwd=self.home, stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.supervisor_file.write_text(json.dumps({"pid": process.pid, "start": procs.start_ticks(process.pid)}))

    # kept for callers that register a model while Airflow starts: the supervisor starts MLflow first
    start_mlflow = start

    def start_airflow(self) -> None:
        self.start()

    def supervisor_pid(self) -> int | None:
        try:
            entry = json.loads(self.supervisor_file.read_text())
        except (OSError, ValueError):
            return None
        return entry["pid"] if procs.alive(entry.get("pid"), entry.get("start")) else None

    def supervisor_alive(self) -> bool:
        return self.supervisor_pid() is not None

    def process_states(self) -> dict[str, dict]:
        """name -> {"pid", "start", "state", "restarts"} as the supervisor last wrote them."""
        try:
            entries = json.loads(self.pid_file.read_text()).get("processes", {})
        except (OSError, ValueError, AttributeError):
            return {}
        return {k: v for k, v in entries.items() if isinstance(v, dict)}

    def pids(self) -> dict[str, int]:
        """name -> pid of each process of the stack that runs now."""
        return {name: e["pid"] for name, e in self.process_states().items()
                if e.get("state") == "running" and procs.alive(e.get("pid"), e.get("start"))}

    def stack_processes(self) -> dict[int, procs.Proc]:
        """Every live process of this stack: the supervisor, its processes and all their descendants
        (the supervisors' sessions, the marker in the environment; see `mlbatch.local.processes`)."""
        sessions = {}
        for path in (self.supervisor_file, self.pid_file):
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if path == self.supervisor_file:
                sessions[saved["pid"]] = saved.get("start")
            elif isinstance(saved.get("sessions"), dict):
                sessions.update({int(k): v for k, v in saved["sessions"].items()})
        table = procs.table()
        found = procs.in_sessions(sessions, table) | procs.marked(self.marker, table)
        supervisor = self.supervisor_pid()
        if supervisor is not None:
            found |= procs.descendants({supervisor}, table) | {supervisor: table[supervisor]}
        return found

    def wait_healthy(self, timeout: float) -> None:
        deadline, problem = time.monotonic() + timeout, "not started"
        while time.monotonic() < deadline:
            if not self.supervisor_alive():
                log = (self.home / "logs" / "supervisor.log").read_text()[-3000:]
                raise RuntimeError(f"the supervisor exited during start-up; end of its log:\n{log}")
            for name, entry in self.process_states().items():
                if entry.get("state") == "gave-up":
                    log = (self.home / "logs" / f"{name}.log").read_text()[-3000:]
                    raise RuntimeError(f"{name} keeps dying during start-up (the supervisor gave up on it); "
                                       f"end of its log:\n{log}")
            try:
                _get(f"{self.mlflow_url}/health")
                _get(f"{self.url}/execution/health")  # built on its first request (the supervisor's warm-up)
                health = json.loads(_get(f"{self.url}/api/v2/monitor/health"))
                states = {k: (v or {}).get("status") for k, v in health.items()}
                running = self.pids()
                if all(states.get(k) == "healthy" for k in ("metadatabase", "scheduler", "triggerer", "dag_processor")) \
                        and set(running) >= set(self.commands()):
                    return
                problem = f"health {states}, running {sorted(running)}"
            except OSError as exc:
                problem = str(exc)
            time.sleep(1)
        raise TimeoutError(f"the stack was not healthy within {timeout:.0f} s: {problem} (logs in {self.home / 'logs'})")

    def running(self) -> bool:
        return self.supervisor_alive() or bool(self.stack_processes())

    def down(self, grace: float | None = None) -> None:
        """Stop everything and return once no process of the stack is left (task processes and their
        job processes included: the supervisor waits for them, SIGKILL after `grace` per phase)."""
        grace = self.grace if grace is None else grace
        if self.home.exists():
            (self.home / "stop.json").write_text(json.dumps({"grace": grace}))
        supervisor = self.supervisor_pid()
        if supervisor is not None:
            os.kill(supervisor, signal.SIGTERM)
            deadline = time.monotonic() + 3 * grace + 30
            while procs.alive(supervisor) and time.monotonic() < deadline:
                time.sleep(0.2)
            if procs.alive(supervisor):
                os.kill(supervisor, signal.SIGKILL)
        else:  # no supervisor (killed, or a stack of an older version): stop what is left directly
            self._stop_unsupervised(grace)
        left = self.stack_processes()
        if left:
            procs.terminate(set(left), grace)
        deadline = time.monotonic() + 10
        while self.stack_processes() and time.monotonic() < deadline:
            time.sleep(0.2)
        for path in (self.supervisor_file, self.home / "stop.json"):
            path.unlink(missing_ok=True)

    def _stop_unsupervised(self, grace: float) -> None:
        """What the supervisor's stop does, from outside: the scheduler, dag-processor, triggerer and
        flusher first (and whatever task and job processes they leave), the api-server and MLflow last."""
        try:
            entries = json.loads(self.pid_file.read_text())
        except (OSError, ValueError):
            entries = {}
        entries = entries.get("processes", entries)  # an older stack wrote {name: pid}
        leaders = {name: e.get("pid") if isinstance(e, dict) else e for name, e in entries.items()}
        last = {pid for name, pid in leaders.items() if name in ("api-server", "mlflow") and procs.alive(pid)}
        first = {pid for name, pid in leaders.items() if name not in ("api-server", "mlflow") and procs.alive(pid)}
        procs.terminate(first, grace)
        procs.terminate({p.pid for p in self.stack_processes().values() if p.pgid not in last}, grace)
        procs.terminate(last, grace)

    def login(self) -> tuple[str, str]:
        return "admin", self.secrets()["admin"]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (secrets), never readable by others, not even briefly."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


@lru_cache(maxsize=1)
def alert_flusher_loops() -> bool:
    """Whether `python -m mlbatch.alerts flush --loop` exists in this installation (the flusher that
    retries pending alerts on its own); without it the stack runs without a flusher."""
    try:
        out = subprocess.run([sys.executable, "-m", "mlbatch.alerts", "--help"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--loop" in out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlbatch.local.stack", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--home", type=Path, default=REPO / ".mlbatch-up")
    parser.add_argument("--db", default=os.environ.get("MLBATCH_DB_URL") or None,
                        help="SQLAlchemy URL of the Airflow metadata database (default: SQLite in --home)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("MLBATCH_UI_PORT", 8080)))
    parser.add_argument("--mlflow-port", type=int, default=int(os.environ.get("MLBATCH_MLFLOW_PORT", 5000)))
    parser.add_argument("--log-port", type=int, default=int(os.environ.get("MLBATCH_LOG_PORT", 8793)),
                        help="the scheduler's task log server (the triggerer's: the next port)")
    args = parser.parse_args(argv)
    stack = LocalStack(args.home.resolve(), args.db, args.port, args.mlflow_port, log_port=args.log_port,
                       trigger_log_port=args.log_port + 1)
    if args.action == "down":
        started, before = time.monotonic(), len(stack.stack_processes())
        stack.down()
        print(f"stopped ({before} processes, task and job processes included) in {time.monotonic() - started:.0f} s"
              if before else "not running")
        return 0
    started = time.monotonic()
    did = stack.up()
    user, password = stack.login()
    db = args.db or f"SQLite ({stack.home / 'airflow' / 'airflow.db'})"
    print(f"Airflow UI  {stack.url}   login {user} / {password}\n"
          f"MLflow      {stack.mlflow_url}\n"
          f"database    {db}, LocalExecutor; logs in {stack.home / 'logs'}\n"
          f"supervisor  pid {stack.supervisor_pid()} restarts what dies (log: {stack.home / 'logs' / 'supervisor.log'})"
          + ("" if ALERT_FLUSHER in stack.commands() else "; no alert flusher (mlbatch.alerts has no --loop)") + "\n"
          f"{did} in {time.monotonic() - started:.0f} s; stop with `make down`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
