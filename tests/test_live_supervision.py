"""The local stack heals itself, live: `make up`'s supervised processes on their own PostgreSQL database;
during one run of natality_daily, `kill -9` of the dag-processor, the triggerer and the api-server
(while wait_for_data is deferred) and of the scheduler (while prep's Beam job runs). Each is restarted
by the supervisor; the scheduler's LocalExecutor workers, task process, job process and log server go
with it (the new scheduler binds the log port again); the run completes and publishes once; `down`
(called while a second run's job runs) returns once the task and its job are gone and leaves no
process of the stack and no port bound.

Restart times are measured and written to `.test-output/live_supervision/timings.json`, never asserted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from slack_support import free_port
from test_live_deployment import DATE, PG, PIPELINE, Live, _job_process, _register_model, wait_until

REPO = Path(__file__).resolve().parents[1]
OUTPUT = Path(os.environ.get("MLBATCH_TEST_OUTPUT") or REPO / ".test-output") / "live_supervision"
ROWS = 10_000
TIMINGS: dict[str, float] = {}


class Sampler:
    """Every process of the stack seen while the test runs (pid, start ticks, command line), sampled
    from /proc every half second: what must all be gone after `down`."""

    def __init__(self, stack):
        self.stack, self.seen, self._stop = stack, {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.sample()

    def sample(self) -> None:
        for pid, p in self.stack.stack_processes().items():
            self.seen.setdefault((pid, p.start), _cmdline(pid))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def alive(self) -> dict[int, str]:
        from mlbatch.local import processes as procs

        return {pid: cmd for (pid, start), cmd in self.seen.items() if procs.alive(pid, start)}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    import psycopg2

    from mlbatch.local.stack import LocalStack

    started = time.monotonic()
    root = tmp_path_factory.mktemp("supervised")
    database = f"mlbatch_sup_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{database}"')
    pipelines = root / "pipelines"
    pipelines.mkdir()
    spec = yaml.safe_load((REPO / "include" / "pipelines" / f"{PIPELINE}.yaml").read_text())
    spec["schedule"] = None
    spec["tasks"]["retry_delay_minutes"] = 0.05  # the retry of the task the scheduler's death stopped
    spec["wait"]["poke_seconds"] = 2
    (pipelines / f"{PIPELINE}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    stack = LocalStack(root / "stack", f"{PG}/{database}", free_port(), free_port(), pipelines,
                       log_port=free_port(), trigger_log_port=free_port(), extra_env={
                           "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                           "MLBATCH_DATA_ROOT": str(root / "data"),
                           "MLBATCH_ENV": "dev",
                       })
    try:
        stack.start()
        registering = _register_model(stack)
        stack.wait_healthy(240)
        assert registering.wait(180) == 0, (stack.home / "logs" / "register-model.log").read_text()[-3000:]
        TIMINGS["stack up + model registered"] = time.monotonic() - started
        yield Live(stack, root, None)
    finally:
        stack.down(grace=10)
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()
        TIMINGS["whole module"] = time.monotonic() - started
        OUTPUT.mkdir(parents=True, exist_ok=True)
        (OUTPUT / "timings.json").write_text(json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}, indent=2))
        shutil.copy(stack.home / "logs" / "supervisor.log", OUTPUT / "supervisor.log")
        print("live supervision timings:", json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}))


def tolerant(predicate):
    """A predicate that asks the api-server, answering None while it is slow or restarting (the
    machine is shared: a 30 s read timeout happens under load)."""
    import httpx

    def ask():
        try:
            return predicate()
        except (httpx.TransportError, ValueError, KeyError):
            return None

    return ask


def kill_and_wait_restart(live: Live, name: str) -> int:
    """kill -9 the process; wait for the supervisor's new one; return its pid (time measured)."""
    stack = live.stack
    old = stack.pids()[name]
    killed_at = time.monotonic()
    os.kill(old, signal.SIGKILL)
    new = wait_until(f"{name} restarted", lambda: (p := stack.pids().get(name)) not in (None, old) and p,
                     timeout=120, every=0.1)
    TIMINGS[f"{name}: kill -9 -> new process"] = time.monotonic() - killed_at
    assert stack.process_states()[name]["restarts"] >= 1
    return new


def health_after(live: Live, component: str, since: float) -> bool:
    """The api-server reports a heartbeat of `component` newer than `since` (epoch seconds)."""
    import datetime as dt

    try:
        health = live.api("GET", "/api/v2/monitor/health").json()
    except Exception:  # the api-server itself restarting
        return False
    beat = (health.get(component) or {}).get(f"latest_{component}_heartbeat")
    return bool(beat) and dt.datetime.fromisoformat(beat).timestamp() > since


def test_kill_9_of_each_process_during_a_run(live):
    from mlbatch.local import processes as procs

    stack = live.stack
    with Sampler(stack) as sampler:
        wait_until("the pipeline parsed", tolerant(lambda: PIPELINE in live.dags()), timeout=120)
        assert live.api("PATCH", f"/api/v2/dags/{PIPELINE}", json={"is_paused": False}).status_code == 200
        path = f"/api/v2/dags/{PIPELINE}/dagRuns"
        response = live.api("POST", path, json={"logical_date": None, "conf": {"date": DATE, "backend": "local"}})
        assert response.status_code == 200, response.text
        run_id = response.json()["dag_run_id"]
        run_started = time.monotonic()
        wait_until("wait_for_data deferred on the triggerer",
                   tolerant(lambda: (t := live.task(run_id, "wait_for_data")).get("state") == "deferred"
                            and t.get("triggerer_job")), timeout=180)

        # the dag-processor, the triggerer (holding the deferred sensor) and the api-server
        for name, component in (("dag-processor", "dag_processor"), ("triggerer", "triggerer")):
            since = time.time()
            killed_at = time.monotonic()
            kill_and_wait_restart(live, name)
            wait_until(f"{name} heartbeating again", lambda: health_after(live, component, since), timeout=120)
            TIMINGS[f"{name}: kill -9 -> heartbeat"] = time.monotonic() - killed_at
        killed_at = time.monotonic()
        kill_and_wait_restart(live, "api-server")
        wait_until("the api-server answering", lambda: health_after(live, "scheduler", 0), timeout=180)
        TIMINGS["api-server: kill -9 -> answering"] = time.monotonic() - killed_at
        import httpx  # its execution API, built on the first request (the supervisor's warm-up), before tasks call it

        wait_until("the execution API", tolerant(lambda: httpx.get(f"{live.url}/execution/health", timeout=10)
                                                   .status_code == 200), timeout=300, every=1)
        TIMINGS["api-server: kill -9 -> execution API answering"] = time.monotonic() - killed_at
        assert wait_until("wait_for_data", tolerant(lambda: live.task(run_id, "wait_for_data")))["state"] == "deferred"

        from mlbatch.local.demo.natality import write_partition

        write_partition(live.root / "data" / "natality" / f"ds={DATE}", ROWS, files=2, seed=5, row_group_rows=5_000)

        # the scheduler, while prep's Beam job runs: its workers, the task, the job and the log server go too
        job_pid, task_pid = wait_until("prep's job process", lambda: _job_process("prep.job.lock", live.root),
                                       timeout=300, every=0.05)
        scheduler = stack.pids()["scheduler"]
        table = procs.table()
        group = set(procs.group(scheduler, table))
        server = [pid for pid in group if "serve-logs" in _cmdline(pid)]
        assert server and procs.listening(stack.log_port), group
        left_behind = group | {task_pid, job_pid}
        killed_at = time.monotonic()
        new_scheduler = kill_and_wait_restart(live, "scheduler")
        assert not [pid for pid in left_behind if procs.alive(pid)]  # gone before the restart
        wait_until("the new scheduler's log server", lambda: procs.listening(stack.log_port)
                   and [pid for pid in procs.group(new_scheduler) if "serve-logs" in _cmdline(pid)], timeout=120)
        TIMINGS["scheduler: kill -9 -> log port bound again"] = time.monotonic() - killed_at

        try:
            final = wait_until("the run to finish", tolerant(
                lambda: (r := live.run(run_id))["state"] in ("success", "failed") and r), timeout=480, every=1)
        finally:
            tasks = live.api("GET", f"{path}/{run_id}/taskInstances").json()["task_instances"]
            states = {t["task_id"]: (t["state"], t["try_number"]) for t in tasks}
        TIMINGS["run: trigger -> success"] = time.monotonic() - run_started
        assert final["state"] == "success", states
        assert states["prep"] == ("success", 2), states  # the try the scheduler's death stopped, then its retry
        assert states["publish"] == ("success", 1), states

        # published once, by this run, every file it names there
        output = live.root / "data" / "predictions" / PIPELINE / f"ds={DATE}"
        record = json.loads((output / "_SUCCESS").read_text())
        assert record["run_id"] == run_id
        assert record["rows_in"] == ROWS == record["rows_scored"] + record["rows_rejected"]
        assert all(Path(f.replace("file://", "")).exists() for f in record["files"])
        assert len(list((output / "_attempts").iterdir())) == 1
        events = live.api("GET", "/api/v2/assets/events", params={"source_run_id": run_id}).json()
        assert events["total_entries"] == 1, events

        # `down` while a second run's prep job runs: it returns only once the task and its job are gone
        response = live.api("POST", path, json={"logical_date": None, "conf": {"date": DATE, "backend": "local"}})
        assert response.status_code == 200, response.text
        job_pid, task_pid = wait_until("the second run's prep job", lambda: _job_process("prep.job.lock", live.root),
                                       timeout=300, every=0.05)
        ports = {"api-server": stack.port, "mlflow": stack.mlflow_port, "log server": stack.log_port,
                 "triggerer's log server": stack.trigger_log_port}
        stopping = time.monotonic()
        stack.down(grace=10)
        TIMINGS["down (a task's job running)"] = time.monotonic() - stopping
        assert not procs.alive(job_pid) and not procs.alive(task_pid)
        sampler.sample()
    assert len(sampler.seen) > 20  # the sampler saw the stack (workers, tasks, jobs, restarts)
    assert not sampler.alive(), sampler.alive()
    assert not stack.stack_processes()
    assert not _processes_naming(live.root), _processes_naming(live.root)
    assert not [name for name, port in ports.items() if procs.listening(port)]
    log = (stack.home / "logs" / "supervisor.log").read_text()
    for name in ("dag-processor", "triggerer", "api-server", "scheduler"):
        assert re.search(rf"{name}: process \d+ died \(killed by SIGKILL\)", log), log
    assert "GIVING UP" not in log


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _processes_naming(root: Path) -> dict[int, str]:
    """Processes whose command line or (readable) environment names the test's folder."""
    found = {}
    needle = str(root).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes() or needle in (entry / "environ").read_bytes():
                found[int(entry.name)] = _cmdline(int(entry.name))
        except OSError:
            continue
    return found
