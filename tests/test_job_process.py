"""A task's job process lives and dies with its task: real processes, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mlbatch.errors import RemoteJobError
from mlbatch.run.job_process import JobProcess, job_processes, lock_file_for, stop_leftover_job

SLEEPER = """
import argparse, os, pathlib, signal, time
p = argparse.ArgumentParser(); p.add_argument("--pid-file"); p.add_argument("--result-file"); a = p.parse_args()
def stopped(signum, frame):  # note which signal stopped it (a SIGKILL leaves no note), then die of it
    pathlib.Path(a.pid_file + ".signal").write_text(signal.Signals(signum).name)
    signal.signal(signum, signal.SIG_DFL); os.kill(os.getpid(), signum)
signal.signal(signal.SIGTERM, stopped)
pathlib.Path(a.pid_file).write_text(str(os.getpid())); print("started", flush=True); time.sleep(120)
"""
TASK = """
import sys
from mlbatch.run.job_process import JobProcess
JobProcess("mlbatch_test_sleeper", ["--pid-file", sys.argv[1]], sys.argv[2]).run()
"""


@pytest.fixture
def sleeper(tmp_path, monkeypatch):
    (tmp_path / "mlbatch_test_sleeper.py").write_text(SLEEPER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    work = tmp_path / "_work" / "run1"
    work.mkdir(parents=True)
    return {"pid_file": tmp_path / "job.pid", "result_file": str(work / "predict.result.json")}


def wait_for(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_on_kill_from_the_signal_handler_stops_the_job_without_a_second_reap(sleeper):
    """Airflow calls on_kill from the task's SIGTERM handler, in the frame that waits for the job."""
    job = JobProcess("mlbatch_test_sleeper", ["--pid-file", str(sleeper["pid_file"])], sleeper["result_file"])
    previous = signal.signal(signal.SIGALRM, lambda *_: job.kill())
    signal.alarm(2)
    try:
        with pytest.raises(RemoteJobError, match="exited with code -15"):  # not ChildProcessError
            job.run()
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert not alive(int(sleeper["pid_file"].read_text()))
    assert job_processes(lock_file_for(sleeper["result_file"])) == []


def test_job_dies_with_its_task_process(sleeper):
    task = subprocess.Popen([sys.executable, "-c", TASK, str(sleeper["pid_file"]), sleeper["result_file"]])
    job_pid = int(wait_for(lambda: sleeper["pid_file"].exists() and sleeper["pid_file"].read_text()))
    assert alive(job_pid)
    os.kill(task.pid, signal.SIGKILL)  # kill -9 of the task: no on_kill runs
    task.wait()
    wait_for(lambda: not alive(job_pid), timeout=5)


def test_a_retry_stops_the_previous_tries_job_before_it_starts(sleeper):
    """The old try's task hangs (stopped), its job runs on: the retry must not overlap with it."""
    task = subprocess.Popen([sys.executable, "-c", TASK, str(sleeper["pid_file"]), sleeper["result_file"]])
    try:
        job_pid = int(wait_for(lambda: sleeper["pid_file"].exists() and sleeper["pid_file"].read_text()))
        os.kill(task.pid, signal.SIGSTOP)
        assert job_processes(lock_file_for(sleeper["result_file"])) == [job_pid]
        stop_leftover_job(sleeper["result_file"])
        assert not alive(job_pid)
        # stopped by the polite SIGTERM, not by the SIGKILL that follows a grace period it ignored
        assert Path(f"{sleeper['pid_file']}.signal").read_text() == "SIGTERM"
        stop_leftover_job(sleeper["result_file"])  # nothing left: returns at once
    finally:
        os.kill(task.pid, signal.SIGKILL)
        task.wait()


def test_lock_file_lives_in_the_work_folder():
    assert lock_file_for("/data/_work/p/run1/prep.result.json") == Path("/data/_work/p/run1/prep.job.lock")


def test_job_process_module_has_no_heavy_imports():
    code = textwrap.dedent("""
        import sys, mlbatch.run.job_process
        print([m for m in ("apache_beam", "mlflow", "pyarrow") if m in sys.modules])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
