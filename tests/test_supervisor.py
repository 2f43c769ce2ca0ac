"""The local stack's supervisor (`mlbatch.local.supervisor`) on stand-in processes shaped like Airflow's:
a leader with a log server and a worker in its process group, the worker's task process in its own
group, and the task's job in its own session. Fast (no Airflow); the live stack is
tests/test_live_supervision.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlbatch.local import processes as procs

# argv: state folder, log-server port. Writes <state>/<leader pid>.json with every pid it started.
SCHEDULER = r"""
import json, os, signal, socket, subprocess, sys, time
state, port = sys.argv[1], int(sys.argv[2])
pids = {"leader": os.getpid()}
server = os.fork()
if server == 0:  # the log server: same process group, binds the port (fails while an old one holds it)
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    time.sleep(1000)
    os._exit(0)
pids["log_server"] = server
reader, writer = os.pipe()
worker = os.fork()
if worker == 0:  # an idle-after-its-task LocalExecutor worker: forwards SIGTERM to its task, else ignores it
    task = subprocess.Popen([sys.executable, "-c", TASK], start_new_session=True, stdout=subprocess.PIPE, text=True)
    os.write(writer, (task.stdout.readline().strip() + " " + str(task.pid)).encode())
    signal.signal(signal.SIGTERM, lambda *a: os.kill(task.pid, signal.SIGTERM))
    task.wait()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(1000)
    os._exit(0)
job, task = os.read(reader, 100).decode().split()
pids.update(worker=worker, task=int(task), job=int(job))
open(os.path.join(state, f"{os.getpid()}.json"), "w").write(json.dumps(pids))
time.sleep(1000)
"""
# the task: starts a job in its own session that does not die with it; on SIGTERM it takes a moment
TASK = r"""
import os, signal, subprocess, sys, time
job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"], start_new_session=True)
print(job.pid, flush=True)
signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1), sys.exit(0)))
time.sleep(1000)
"""


def wait_until(what: str, predicate, timeout: float = 60, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := predicate()):
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    def __init__(self, home: Path, steps: list[dict], **plan):
        self.home = home
        self.marker = f"MLBATCH_STACK_HOME={home}"
        home.mkdir(parents=True, exist_ok=True)
        (home / "plan.json").write_text(json.dumps({
            "home": str(home), "marker": self.marker, "steps": steps, "grace": 5,
            "restart": {"first_delay": 0.2, "max_delay": 1, "fast_seconds": 3, "give_up_after": 3}, **plan}))
        (home / "logs").mkdir(exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", "mlbatch.local.supervisor", str(home / "plan.json")],
                                     stdout=(home / "logs" / "supervisor.log").open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.start = procs.start_ticks(self.proc.pid)

    def log(self) -> str:
        return (self.home / "logs" / "supervisor.log").read_text()

    def state(self, name: str) -> dict:
        try:
            return json.loads((self.home / "pids.json").read_text())["processes"][name]
        except (OSError, ValueError, KeyError):
            return {}

    def running(self, name: str, other_than: int | None = None) -> int | None:
        entry = self.state(name)
        if entry.get("state") == "running" and entry["pid"] != other_than and procs.alive(entry["pid"]):
            return entry["pid"]
        return None

    def stop(self, timeout: float = 60) -> float:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout)
        return time.monotonic() - started

    def left(self) -> dict:
        """Live processes of the supervisor's session or carrying the marker (the job: own session)."""
        return procs.in_sessions({self.proc.pid: self.start}) | procs.marked(self.marker)


@pytest.fixture
def scheduler_steps(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    port = free_port()
    script = tmp_path / "scheduler.py"
    script.write_text(f"TASK = {TASK!r}\n" + SCHEDULER)
    return state, port, [{"name": "scheduler", "argv": [sys.executable, str(script), str(state), str(port)]}]


def incarnation(state: Path, leader: int) -> dict:
    return wait_until(f"leader {leader} to start its workers",
                      lambda: (state / f"{leader}.json").exists() and json.loads((state / f"{leader}.json").read_text()))


def test_a_killed_leader_takes_its_group_and_orphans_along_and_comes_back(tmp_path, scheduler_steps):
    state, port, steps = scheduler_steps
    stack = Stack(tmp_path / "home", steps)
    try:
        first = wait_until("the scheduler", lambda: stack.running("scheduler"))
        old = incarnation(state, first)
        wait_until("the log port bound", lambda: procs.listening(port))
        os.kill(first, signal.SIGKILL)
        second = wait_until("a new scheduler", lambda: stack.running("scheduler", other_than=first), timeout=60)
        for role, pid in old.items():  # nothing of the dead leader's is left: group, task, the task's job
            assert not procs.alive(pid), (role, pid, stack.log())
        new = incarnation(state, second)  # the new log server bound the port the old one held
        assert procs.alive(new["log_server"]) and procs.listening(port)
        log = stack.log()
        assert f"scheduler: process {first} died (killed by SIGKILL)" in log
        assert f"orphan process {old['job']}" in log  # the task's job, re-parented to the supervisor
        assert stack.state("scheduler")["restarts"] == 1
        stack.stop()
        assert not stack.left()
        assert not any(procs.alive(pid) for pid in new.values())
        assert not procs.listening(port)
        assert stack.state("scheduler")["state"] == "stopped"
    finally:
        if stack.proc.poll() is None:
            stack.proc.kill()
        procs.terminate(set(stack.left()), 1)


def test_one_that_keeps_dying_is_given_up_and_sighup_starts_it_again(tmp_path):
    flag = tmp_path / "fixed"
    crasher = [sys.executable, "-c", f"import os, sys, time\nif not os.path.exists({str(flag)!r}): sys.exit(3)\n"
                                     "time.sleep(1000)"]
    stack = Stack(tmp_path / "home", [
        {"name": "setup", "argv": [sys.executable, "-c", f"open({str(tmp_path / 'setup-ran')!r}, 'w')"], "once": True},
        {"name": "crasher", "argv": crasher},
        {"name": "steady", "argv": [sys.executable, "-c", "import time; time.sleep(1000)"]},
    ])
    try:
        wait_until("the supervisor to give up", lambda: "GIVING UP on crasher" in stack.log(), timeout=60)
        assert (tmp_path / "setup-ran").exists()
        log = stack.log()
        assert log.index("setup: done") < log.index("crasher: started")
        assert "crasher: died 3 times in a row within 3 s of starting (last: exit code 3)" in log.replace(
            "GIVING UP on crasher: it died", "crasher: died")
        wait_until("pids.json to say so", lambda: stack.state("crasher").get("state") == "gave-up")
        assert stack.running("steady")
        flag.write_text("")
        stack.proc.send_signal(signal.SIGHUP)  # `make up` on a half-running stack
        wait_until("the crasher started again", lambda: stack.running("crasher"), timeout=30)
        steady = stack.running("steady")
        stack.stop()
        assert not stack.left() and not procs.alive(steady)
    finally:
        if stack.proc.poll() is None:
            stack.proc.kill()
        procs.terminate(set(stack.left()), 1)


def test_a_new_supervisor_adopts_what_still_runs(tmp_path):
    sleeper = [sys.executable, "-c", "import time; time.sleep(1000)"]
    steps = [{"name": "a", "argv": sleeper}, {"name": "b", "argv": sleeper}]
    stack = Stack(tmp_path / "home", steps)
    try:
        a = wait_until("a", lambda: stack.running("a"))
        b = wait_until("b", lambda: stack.running("b"))
        stack.proc.kill()  # the supervisor dies; its processes run on
        stack.proc.wait()
        os.kill(b, signal.SIGKILL)
        stack = Stack(tmp_path / "home", steps)
        new_b = wait_until("b started again", lambda: stack.running("b", other_than=b))
        assert stack.running("a") == a  # kept, not started twice
        assert "a: adopted the running process" in stack.log()
        os.kill(a, signal.SIGKILL)  # an adopted process is watched too
        wait_until("a started again", lambda: stack.running("a", other_than=a))
        stack.stop()
        assert not stack.left() and not procs.alive(new_b)
    finally:
        if stack.proc.poll() is None:
            stack.proc.kill()
        procs.terminate(set(stack.left()), 1)
