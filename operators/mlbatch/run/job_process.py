"""Run a Beam or scoring job as a child process and stream its log into the task log.

A child process keeps Beam's and the model's memory out of the task process, lets `on_kill` stop the
job, and makes the task's CPU and peak-memory figures include the job (see `resources`).
The job reports its counts through a JSON result file, not through its log.

The job lives and dies with its task:
- it runs in its own process group, which `kill()` (the task's `on_kill`) signals -- without reaping:
  the thread in `run()` is the only one that waits for the job, so a kill never ends in
  `ChildProcessError` from a second wait;
- it gets SIGKILL from the kernel when the task process dies (`PR_SET_PDEATHSIG`), e.g. `kill -9` of the
  task or of its supervisor, instead of being re-parented to init and writing on;
- a lock file next to the result file (in the run's work folder) is held by the job itself (inherited
  descriptor) and every process of the job carries its path in `MLBATCH_JOB_LOCK`; a retry that finds
  the lock held or such processes still alive stops them (TERM, then KILL) before it starts, and refuses
  to start if they survive. So two tries never write the same work folder at once. (Local jobs only: a
  retry on another machine cannot see them; remote jobs have their own re-attach/cancel path.)
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from mlbatch.errors import RemoteJobError

log = logging.getLogger(__name__)

TAIL_LINES = 40
LOCK_ENV = "MLBATCH_JOB_LOCK"
STOP_GRACE_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1


class JobProcess:
    def __init__(self, module: str, args: list[str], result_file: str, env: dict[str, str] | None = None):
        self.env = env or {}  # e.g. the storage credentials of the pipeline's connections
        self.command = [sys.executable, "-u", "-m", module, *args, "--result-file", result_file]
        self.result_file = Path(result_file)
        self.lock_file = lock_file_for(result_file)
        self._proc: subprocess.Popen | None = None
        self.peak_rss_mb = 0.0

    def run(self) -> dict:
        """Run to completion; return the job's result JSON or raise `RemoteJobError` with its last lines."""
        lock_fd = claim(self.lock_file)
        try:
            self.result_file.parent.mkdir(parents=True, exist_ok=True)
            self.result_file.unlink(missing_ok=True)
            log.info("Running: %s", " ".join(self.command))
            self._proc = subprocess.Popen(
                self.command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1", LOCK_ENV: str(self.lock_file)},
                start_new_session=True,  # its own process group: on_kill stops the whole job
                preexec_fn=_die_with_parent(os.getpid()),
                pass_fds=(lock_fd,),  # the job holds the lock for as long as it lives
            )
            self.lock_file.with_suffix(".pid").write_text(json.dumps(
                {"pid": self._proc.pid, "pgid": self._proc.pid, "parent": os.getpid(), "command": self.command}))
        finally:
            os.close(lock_fd)  # from here the job's inherited descriptor alone holds the lock
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            log.info("[job] %s", line)
        code = self._wait()
        if code != 0:
            last = "\n".join(tail)
            raise RemoteJobError(f"{self.command[3]} exited with code {code}; last lines:\n{last}")
        if not self.result_file.exists():
            raise RemoteJobError(f"{self.command[3]} finished but wrote no result file {self.result_file}")
        return json.loads(self.result_file.read_text())

    def _wait(self) -> int:
        """Reap the job (here only) with wait4 to read the peak memory of that process alone."""
        _, status, usage = os.wait4(self._proc.pid, 0)
        self._proc.returncode = os.waitstatus_to_exitcode(status)
        self.peak_rss_mb = usage.ru_maxrss / 1024  # KiB on Linux
        return self._proc.returncode

    def kill(self) -> None:
        """Stop the job's process group: TERM now, KILL after a grace period. Never waits for (reaps)
        the job: `run()` does, and it may be the very frame this was called from (SIGTERM handler)."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        log.warning("Stopping job process group %s", proc.pid)
        _signal_group(proc.pid, signal.SIGTERM)

        def escalate() -> None:
            if proc.returncode is None:
                _signal_group(proc.pid, signal.SIGKILL)

        timer = threading.Timer(STOP_GRACE_SECONDS, escalate)
        timer.daemon = True
        timer.start()


def lock_file_for(result_file: str) -> Path:
    """`<work folder>/<step>.job.lock` next to the result file (the work folder is local for local jobs)."""
    name = Path(result_file).name.removesuffix(".result.json").removesuffix(".json")
    return Path(result_file).with_name(f"{name}.job.lock")


def stop_leftover_job(result_file: str) -> None:
    """Stop a previous try's job on this work folder, if any (call before touching the folder)."""
    os.close(claim(lock_file_for(result_file)))


def claim(lock_file: Path) -> int:
    """Take the job lock of a work folder, stopping a previous try's job that still holds it.

    Returns the locked descriptor; raises `RemoteJobError` if the old job cannot be stopped."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    deadline, signum = time.monotonic() + STOP_GRACE_SECONDS, signal.SIGTERM
    warned = False
    while True:
        locked = _try_lock(fd)
        leftovers = job_processes(lock_file)
        if locked and not leftovers:
            return fd
        if not warned:
            log.warning("A previous try's job is still running on %s (processes %s): stopping it before "
                        "this try starts", lock_file.parent, leftovers or "holding the lock")
            warned = True
        for pid in leftovers:
            _signal_group(pid, signum, also_pid=True)
        if time.monotonic() > deadline:
            if signum == signal.SIGKILL:
                os.close(fd)
                raise RemoteJobError(f"a previous try's job on {lock_file.parent} survived SIGKILL "
                                     f"(processes {leftovers}); refusing to start a second one")
            deadline, signum = time.monotonic() + STOP_GRACE_SECONDS, signal.SIGKILL
        time.sleep(0.2)


def job_processes(lock_file: Path) -> list[int]:
    """Live processes (not zombies) whose environment names this job lock: the job and its children."""
    marker = b"\0" + f"{LOCK_ENV}={lock_file}".encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in b"\0" + (entry / "environ").read_bytes() + b"\0":
                found.append(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return found


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _signal_group(pid: int, signum: int, also_pid: bool = False) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
    if also_pid:  # a child that left the group
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _die_with_parent(parent_pid: int):
    """preexec_fn: the kernel sends SIGKILL to the job when the task process (the forking thread) dies."""

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec
