"""Processes on this machine, read from /proc: who is alive, in which group and session, with which marker.

The local stack's supervisor (`mlbatch.local.supervisor`) and `mlbatch run` (`mlbatch.local.run_process`) use these
to leave no process behind. "Everything that belongs to this stack / this run" is found two ways,
because each alone misses some:
- the session: the supervisor (or `mlbatch run`'s Airflow process) leads its own session, and what it
  starts stays in it (process groups are per process, the session is kept) -- except what calls
  setsid itself, such as our job processes (`mlbatch.run.job_process`);
- a marker in the environment (`NAME=VALUE`), inherited by every descendant, job processes included
  -- except where `setproctitle` overwrote the environment area /proc shows (Airflow's task, worker
  and log-server processes do).
Linux only (as the rest of the local tooling).
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    sid: int
    start: int  # start time in clock ticks since boot: (pid, start) names one process, pids get reused
    state: str


def read(pid: int) -> Proc | None:
    """The process `pid` from /proc/<pid>/stat, None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return Proc(pid, int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]), fields[0])


def table() -> dict[int, Proc]:
    """Every live process (zombies left out)."""
    procs = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (p := read(int(entry.name))) is not None and p.state != "Z":
            procs[p.pid] = p
    return procs


def alive(pid: int | None, start: int | None = None) -> bool:
    """`pid` runs (not a zombie) and, if `start` is given, is still the process that started then."""
    if not pid:
        return False
    p = read(pid)
    return p is not None and p.state != "Z" and (start is None or p.start == start)


def start_ticks(pid: int) -> int | None:
    p = read(pid)
    return p.start if p else None


def has_env(pid: int, entry: str) -> bool:
    """Whether the environment of `pid` holds exactly `NAME=VALUE` (False if unreadable)."""
    try:
        return f"\0{entry}\0".encode() in b"\0" + Path(f"/proc/{pid}/environ").read_bytes() + b"\0"
    except OSError:
        return False


def marked(entry: str, procs: dict[int, Proc] | None = None) -> dict[int, Proc]:
    """The live processes whose environment holds `NAME=VALUE` (this process left out)."""
    procs = table() if procs is None else procs
    return {pid: p for pid, p in procs.items() if pid != os.getpid() and has_env(pid, entry)}


def in_sessions(sessions: dict[int, int], procs: dict[int, Proc] | None = None) -> dict[int, Proc]:
    """The live processes of the sessions `{session id: start ticks of its leader}`. A session counts
    while its leader is that same process or gone (no pid is reused while a session of that id has
    members, so members of a session whose leader is gone are the old session's)."""
    procs = table() if procs is None else procs
    valid = {sid for sid, start in sessions.items() if sid not in procs or procs[sid].start == start}
    return {pid: p for pid, p in procs.items() if p.sid in valid and pid != os.getpid()}


def group(pgid: int, procs: dict[int, Proc] | None = None) -> dict[int, Proc]:
    """The live members of process group `pgid`."""
    procs = table() if procs is None else procs
    return {pid: p for pid, p in procs.items() if p.pgid == pgid}


def descendants(roots: set[int], procs: dict[int, Proc]) -> dict[int, Proc]:
    """Every live process below `roots` (not the roots themselves)."""
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    found, todo = {}, list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found and child not in roots:
                found[child] = procs[child]
                todo.append(child)
    return found


def signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def signal_pid(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def terminate(pids: set[int] | dict, grace: float, poll: float = 0.2) -> set[int]:
    """SIGTERM `pids` (each process and, where it leads one, its group), wait up to `grace` seconds,
    SIGKILL what is left; return the pids that were still alive at the SIGKILL."""
    procs = {pid: read(pid) for pid in pids}
    procs = {pid: p for pid, p in procs.items() if p is not None and p.state != "Z"}
    for p in procs.values():
        signal_pid(p.pid, signal.SIGTERM)
        if p.pgid == p.pid:
            signal_group(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p.pid, p.start) for p in procs.values()):
        time.sleep(poll)
    left = {p.pid for p in procs.values() if alive(p.pid, p.start)}
    for pid in left:
        signal_pid(pid, signal.SIGKILL)
        if procs[pid].pgid == pid:
            signal_group(pid, signal.SIGKILL)
    return left


def die_with_parent(signum: int = signal.SIGTERM):
    """preexec_fn: the kernel sends `signum` to the child when the thread that started it dies
    (PR_SET_PDEATHSIG; cleared in the child's own forks, so its descendants need their own care)."""
    parent = os.getpid()

    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signum)

    return preexec


def become_subreaper() -> bool:
    """PR_SET_CHILD_SUBREAPER: orphaned descendants of this process are re-parented to it (not init),
    so it sees them (and must reap them)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except OSError:
        return False


def listening(port: int) -> bool:
    """Whether a TCP socket on this machine listens on `port` (any address, IPv4 or IPv6)."""
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                return True
    return False
