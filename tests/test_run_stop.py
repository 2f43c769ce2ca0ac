"""Stopping `mlbatch run` stops the run: SIGTERM to `mlbatch run` while a job process of the run is
running leaves no process of the run behind (`airflow dags test`, its task's job process, the job's
workers). The new user's setup of tests/test_new_pipeline.py: `mlbatch new`, then `mlbatch run`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

from test_new_pipeline import DATE, MLBATCH, mlbatch, workdir  # noqa: F401  (workdir: the fixture)

from mlbatch.local import processes as procs
from mlbatch.run.job_process import LOCK_ENV


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class RunTree:
    """Every process seen below `mlbatch run` (descendants, sampled every 50 ms, and any process whose
    environment names the working folder: a job re-parented to init is no descendant any more)."""

    def __init__(self, root_pid: int, folder: Path):
        self.root_pid, self.folder = root_pid, str(folder).encode()
        self.seen: dict[tuple[int, int], str] = {}
        self.jobs: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.sample()

    def sample(self) -> None:
        table = procs.table()
        found = procs.descendants({self.root_pid}, table)
        found |= {pid: p for pid, p in table.items() if pid != os.getpid() and self.folder in _environ(pid)}
        for pid, p in found.items():
            self.seen.setdefault((pid, p.start), _cmdline(pid))
            if f"{LOCK_ENV}=".encode() in _environ(pid):
                self.jobs.add(pid)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def alive(self) -> dict[int, str]:
        return {pid: cmd for (pid, start), cmd in self.seen.items() if procs.alive(pid, start)}


def wait_for(predicate, timeout: float, every: float = 0.05):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := predicate()):
            return value
        time.sleep(every)
    return None


def test_sigterm_to_mlbatch_run_stops_airflow_and_the_job(workdir):  # noqa: F811
    if not (workdir / "include" / "pipelines" / "churn_daily.yaml").exists():
        made = mlbatch(workdir, "new", "churn_daily", "--model", "churn@champion", "--input", f"data/customers/ds={DATE}")
        assert made.returncode == 0, made.stderr
    clean = {"PATH": os.environ["PATH"], "HOME": str(workdir / "home")}
    run = subprocess.Popen([MLBATCH, "run", "churn_daily", "--date", DATE], cwd=workdir, env=clean,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tree = RunTree(run.pid, workdir)
    try:
        job = wait_for(lambda: tree.jobs and [pid for pid in tree.jobs if procs.alive(pid)], timeout=400)
        assert job, f"no job process started; mlbatch run exited {run.poll()}; seen {list(tree.seen.values())}"
        airflow = [pid for (pid, _), cmd in tree.seen.items() if "dags test" in cmd]
        assert airflow and procs.alive(airflow[0])
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=120)
        tree.sample()
    finally:
        tree.stop()
        if run.poll() is None:
            run.kill()
    assert not tree.alive(), tree.alive()
    assert run.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "STOPPED by SIGTERM" in out, out[-3000:]
    assert len(tree.seen) >= 3, tree.seen  # mlbatch run, airflow dags test, the job (and its workers)
