"""A small process supervisor: the local stack's processes (`make up`) restarted when they die.

    python -m mlbatch.local.supervisor PLAN.json

`mlbatch.local.stack` writes the plan and starts this detached (its own session, output to
`<home>/logs/supervisor.log`); `make down` sends it SIGTERM. The plan names, in start order, the
processes to keep running and the one-off steps to run between them (`airflow db migrate` after MLflow,
before Airflow):

    {"home": ".mlbatch-up", "marker": "MLBATCH_STACK_HOME=/abs/.mlbatch-up",
     "steps": [{"name": "mlflow", "argv": [...]}, {"name": "db-migrate", "argv": [...], "once": true}, ...],
     "stop_last": ["api-server", "mlflow"], "grace": 20,
     "restart": {"first_delay": 1, "max_delay": 60, "fast_seconds": 30, "give_up_after": 5}}

What it guarantees:
- **Restart with backoff.** A process that dies is restarted after 1, 2, 4 ... s (at most `max_delay`)
  when it keeps dying within `fast_seconds` of its start; one that ran longer restarts after
  `first_delay`. After `give_up_after` fast deaths in a row it gives up on it with a `GIVING UP` line
  in its log; SIGHUP (`make up` again) starts every process that is not running, at once.
- **No child outlives its parent.** Each process leads its own process group (in the supervisor's
  session; the supervisor is a child subreaper, so orphans are re-parented to it). When a leader dies, its
  group gets SIGTERM (the scheduler's LocalExecutor workers forward it to their task processes, whose
  `on_kill` stops their jobs, so the tasks fail and retry instead of running on unsupervised), then
  SIGKILL once nothing the group started outside it is left or after `grace`; the process is
  restarted only when its old group is gone (so the new scheduler can bind the log server's port).
  The stack's processes are those of the supervisor's session (and of an earlier supervisor's, for
  adopted processes) plus those whose environment carries `marker` (job processes start their own
  session; see `mlbatch.local.processes`). One whose parent is not of the stack (re-parented to this
  supervisor or to init) is an orphan and is stopped (SIGTERM, SIGKILL after `grace`).
- **Warm-up.** A step may name a `warm_up` URL: after each start the supervisor requests it until it
  answers (the api-server builds its execution API on the first request, a CPU-heavy step that
  blocks every other request meanwhile: better done before a task's first call than during it).
- **Adoption.** Processes of an earlier supervisor that are still alive (`pids.json`: pid and start
  time) are kept and watched, not started twice: a second `make up` on a half-running stack starts
  only what is missing.
- **Stop (SIGTERM/SIGINT).** First every process but `stop_last` (scheduler, dag-processor, triggerer,
  alert flusher): SIGTERM to their groups, then it waits until their task processes and those tasks'
  job processes are gone (the api-server stays up meanwhile, so the tasks can report their state), at
  most `grace` s before SIGKILL; then `stop_last`, one after the other; then any marked process left gets
  SIGKILL. It exits when no marked process is left.

State for other programs: `<home>/pids.json` ({"supervisor": {...}, "processes": {name: {"pid",
"start", "state", "restarts"}}, "sessions": {id: leader start}}, rewritten on every change), one
log per process in `<home>/logs/`
(appended to across restarts).

Why one module of this length: it is one state machine (start, reap, restart, sweep, stop) run as its
own detached program, whose methods share the `Supervisor`'s state; a tenth of it is this
specification.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from mlbatch.local import processes as procs

RESTART_DEFAULTS = {"first_delay": 1.0, "max_delay": 60.0, "fast_seconds": 30.0, "give_up_after": 5}
SWEEP_SECONDS = 2.0
POLL_SECONDS = 0.2


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


@dataclass
class Process:
    name: str
    argv: list[str]
    warm_up: str | None = None
    state: str = "pending"  # pending, running, cleaning, waiting, gave-up, stopped
    pid: int | None = None
    start: int | None = None  # start ticks (identity with the pid)
    started_at: float = 0.0
    adopted: bool = False
    popen: subprocess.Popen | None = None
    restarts: int = 0
    fast_deaths: int = 0
    died_at: float = 0.0
    until: float = 0.0  # cleaning: SIGKILL deadline; waiting: restart time
    killed: bool = False
    left_behind: dict[int, int] = field(default_factory=dict)  # cleaning: pid -> start of what it started
    last_exit: str = ""


@dataclass
class Supervisor:
    plan_path: Path
    plan: dict = field(init=False)

    def __post_init__(self) -> None:
        self.plan = json.loads(Path(self.plan_path).read_text())
        self.home = Path(self.plan["home"])
        self.logs = self.home / "logs"
        self.marker = self.plan["marker"]
        self.grace = float(self.plan.get("grace", 20))
        self.restart = {**RESTART_DEFAULTS, **self.plan.get("restart", {})}
        self.steps = self.plan["steps"]
        self.processes = {s["name"]: Process(s["name"], s["argv"], s.get("warm_up"))
                          for s in self.steps if not s.get("once")}
        self.stop_last = [n for n in self.plan.get("stop_last", []) if n in self.processes]
        self.pending = [s["name"] for s in self.steps]  # the start sequence still to go
        self.once: dict[str, subprocess.Popen] = {}  # one-off steps running or done
        self.own: set[int] = set()  # pids of every child started here (one-off steps included)
        self.statuses: dict[int, int] = {}  # reaped children: pid -> wait status
        self.orphans: dict[int, tuple[int, float]] = {}  # pid -> (start ticks, first seen)
        self.sessions: dict[int, int] = {}  # session id -> start ticks of its leader (us, earlier supervisors)
        self.stopping = False
        self.wake = False
        self.next_sweep = 0.0
        self.exit_code = 0

    # ---- the loop -------------------------------------------------------------------------------
    def run(self) -> int:
        if os.getsid(0) != os.getpid():
            try:
                os.setsid()
            except OSError:
                print("mlbatch.local.supervisor must lead its own session: start it with setsid / "
                      "start_new_session (mlbatch.local.stack does)", file=sys.stderr)
                return 2
        self.sessions[os.getpid()] = procs.start_ticks(os.getpid())
        os.environ[self.marker.split("=", 1)[0]] = self.marker.split("=", 1)[1]  # inherited by all
        procs.become_subreaper()
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_wake)
        self.logs.mkdir(parents=True, exist_ok=True)
        log(f"supervisor started (pid {os.getpid()}), home {self.home}")
        self.adopt()
        self.save()
        while not self.stopping:
            self.tick()
            time.sleep(POLL_SECONDS)
        self.stop_all()
        return self.exit_code

    def tick(self) -> None:
        now = time.monotonic()
        self.reap()
        if self.wake:
            self.wake = False
            self.start_missing()
        for p in self.processes.values():
            if p.state == "running" and self.dead(p):
                self.on_death(p)
            elif p.state == "cleaning":
                self.clean(p)
            elif p.state == "waiting" and now >= p.until:
                self.spawn(p)
        self.advance()
        if now >= self.next_sweep:
            self.next_sweep = now + SWEEP_SECONDS
            self.sweep()

    def _on_stop(self, signum, frame) -> None:
        self.stopping = True

    def _on_wake(self, signum, frame) -> None:
        self.wake = True

    # ---- start ----------------------------------------------------------------------------------
    def adopt(self) -> None:
        """Keep the processes of an earlier supervisor that still run (same pid and start time)."""
        try:
            saved = json.loads((self.home / "pids.json").read_text())
        except (OSError, ValueError):
            return
        earlier = saved.get("processes", {})
        for sid, start in saved.get("sessions", {}).items():
            if int(sid) != os.getpid() and procs.in_sessions({int(sid): start}):
                self.sessions[int(sid)] = start  # an earlier supervisor's session still has processes
        for name, entry in earlier.items():
            p = self.processes.get(name)
            if p is None or not isinstance(entry, dict) or not procs.alive(entry.get("pid"), entry.get("start")):
                continue
            p.pid, p.start, p.state, p.adopted = entry["pid"], entry["start"], "running", True
            p.started_at, p.restarts = time.monotonic(), entry.get("restarts", 0)
            log(f"{name}: adopted the running process {p.pid} of an earlier supervisor")

    def advance(self) -> None:
        """The start sequence: processes in order, one-off steps run to completion where they stand."""
        while self.pending and not self.stopping:
            name = self.pending[0]
            if name in self.processes:
                if self.processes[name].state == "pending":
                    self.spawn(self.processes[name])
                self.pending.pop(0)
                continue
            step = next(s for s in self.steps if s["name"] == name)
            if name not in self.once:
                self.once[name] = self.popen(name, step["argv"], mode="w")
                log(f"{name}: running (pid {self.once[name].pid})")
                return
            popen = self.once[name]
            if popen.pid not in self.statuses:
                return
            status = self.statuses[popen.pid]
            if os.waitstatus_to_exitcode(status) != 0:
                log(f"FAILED: {name} ended with {describe_status(status)}; see {self.logs / (name + '.log')}. "
                    "Stopping the stack")
                self.exit_code, self.stopping = 1, True
                return
            log(f"{name}: done")
            self.pending.pop(0)

    def start_missing(self) -> None:
        """SIGHUP (`make up` on a running stack): start now every process that is not running."""
        for p in self.processes.values():
            if p.state in ("waiting", "gave-up", "stopped"):
                log(f"{p.name}: starting it now (asked to start what is missing)")
                p.fast_deaths = 0
                self.spawn(p)

    def popen(self, name: str, argv: list[str], mode: str = "a") -> subprocess.Popen:
        out = (self.logs / f"{name}.log").open(mode)
        out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} started by the supervisor: {' '.join(argv)}\n")
        out.flush()
        try:
            popen = subprocess.Popen(argv, cwd=self.home, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, process_group=0)  # own group, our session
        finally:
            out.close()
        self.own.add(popen.pid)
        return popen

    def spawn(self, p: Process) -> None:
        try:
            p.popen = self.popen(p.name, p.argv)
        except OSError as exc:
            p.popen, p.pid = None, None
            log(f"{p.name}: could not start: {exc}")
            self.on_death(p, started=False)
            return
        p.pid, p.start, p.adopted = p.popen.pid, procs.start_ticks(p.popen.pid), False
        p.state, p.started_at, p.killed = "running", time.monotonic(), False
        log(f"{p.name}: started (pid {p.pid}{f', restart {p.restarts}' if p.restarts else ''})")
        self.save()
        if p.warm_up:
            threading.Thread(target=self._warm_up, args=(p, p.pid), daemon=True).start()

    def _warm_up(self, p: Process, pid: int, timeout: float = 600) -> None:
        """Request `p.warm_up` until it answers (any HTTP status), while `pid` is still `p`'s process."""
        started = time.monotonic()
        while p.pid == pid and p.state == "running" and not self.stopping and time.monotonic() - started < timeout:
            try:
                urllib.request.urlopen(p.warm_up, timeout=300).close()
            except urllib.error.HTTPError:
                pass
            except OSError:
                time.sleep(1)
                continue
            log(f"{p.name}: warmed up ({p.warm_up} answered {time.monotonic() - started:.0f} s after the start)")
            return

    # ---- death and cleanup ----------------------------------------------------------------------
    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.own:
                self.statuses[pid] = status

    def dead(self, p: Process) -> bool:
        """Our child: once reaped (a multi-threaded process shows as a zombie before it can be reaped);
        an adopted process: once /proc says so."""
        if p.popen is not None:
            return p.pid in self.statuses
        return not procs.alive(p.pid, p.start)

    def on_death(self, p: Process, started: bool = True) -> None:
        now = time.monotonic()
        lived = now - p.started_at
        if started:
            status = self.statuses.pop(p.pid, None)
            if p.popen is not None and status is not None:
                p.popen.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
            p.last_exit = (describe_status(status) if status is not None
                           else "exit status unknown: adopted, not our child")
            log(f"{p.name}: process {p.pid} died ({p.last_exit}) after {lived:.0f} s; stopping what it "
                f"started (process group {p.pid})")
            procs.signal_group(p.pid, signal.SIGTERM)
            table = procs.table()
            members = procs.group(p.pid, table)
            p.left_behind = {q.pid: q.start for q in (members | procs.descendants(set(members), table)).values()}
        p.fast_deaths = p.fast_deaths + 1 if lived < self.restart["fast_seconds"] else 1
        p.state, p.died_at, p.until, p.killed = "cleaning", now, now + self.grace, False
        self.save()

    def clean(self, p: Process) -> None:
        """A dead leader: SIGKILL to its group once the group started nothing outside it that still runs
        (task processes), or at the deadline; restart (after the backoff) or give up only when nothing
        it started is left, its task processes' jobs included (orphans: the sweep stops them too)."""
        table = procs.table()
        members = procs.group(p.pid, table) if p.pid else {}
        below = procs.descendants(set(members), table)
        left = set(members) | set(below) | {pid for pid, start in p.left_behind.items()
                                            if pid in table and table[pid].start == start}
        late = time.monotonic() >= p.until
        if members and not p.killed and (not set(below) - set(members) or late):
            log(f"{p.name}: SIGKILL to what is left of process group {p.pid}: {sorted(members)}")
            procs.signal_group(p.pid, signal.SIGKILL)
            p.killed = True
        if late and left - set(members):
            log(f"{p.name}: SIGKILL after {self.grace:.0f} s to the processes it left: {sorted(left - set(members))}")
            for pid in left - set(members):
                procs.signal_pid(pid, signal.SIGKILL)
            p.until = time.monotonic() + self.grace
        if left:
            return
        if p.pid:
            log(f"{p.name}: all it started is gone {time.monotonic() - p.died_at:.1f} s after it died")
        p.left_behind = {}
        if self.stopping:
            p.state = "stopped"
        elif p.fast_deaths >= self.restart["give_up_after"]:
            p.state = "gave-up"
            log(f"GIVING UP on {p.name}: it died {p.fast_deaths} times in a row within "
                f"{self.restart['fast_seconds']:.0f} s of starting (last: {p.last_exit}); see "
                f"{self.logs / (p.name + '.log')}. Fix it, then `make up` starts it again")
        else:
            delay = min(self.restart["first_delay"] * 2 ** (p.fast_deaths - 1), self.restart["max_delay"])
            p.state, p.until = "waiting", time.monotonic() + delay
            p.restarts += 1
            log(f"{p.name}: restarting in {delay:.1f} s (fast death {p.fast_deaths} of "
                f"{self.restart['give_up_after']} before giving up)")
        self.save()

    def leaders(self) -> set[int]:
        return {p.pid for p in self.processes.values() if p.pid and p.state == "running"}

    def members(self, table: dict[int, procs.Proc] | None = None) -> dict[int, procs.Proc]:
        """Every live process of the stack but the supervisor itself."""
        table = procs.table() if table is None else table
        found = procs.in_sessions(self.sessions, table) | procs.marked(self.marker, table)
        return found | procs.descendants({os.getpid()}, table)

    def sweep(self) -> None:
        """Stop orphans: processes of the stack whose parent is not (re-parented to us or to init).
        Leaders, one-off steps and members of groups being cleaned are left out."""
        table = procs.table()
        stack = self.members(table)
        me, leaders = os.getpid(), self.leaders()
        cleaning = {p.pid for p in self.processes.values() if p.state == "cleaning"}
        now = time.monotonic()
        found = set()
        for pid, p in stack.items():
            if pid in leaders or pid in self.own or p.pgid in cleaning:
                continue
            if p.ppid == me or p.ppid not in stack:
                found.add(pid)
        for pid in found:
            start, seen = self.orphans.get(pid, (table[pid].start, 0.0))
            if start != table[pid].start:
                seen = 0.0
            if not seen:
                log(f"orphan process {pid} ({_cmdline(pid)[:120]}): SIGTERM")
                procs.signal_pid(pid, signal.SIGTERM)
                self.orphans[pid] = (table[pid].start, now)
            elif now - seen > self.grace:
                log(f"orphan process {pid} still alive {self.grace:.0f} s after SIGTERM: SIGKILL")
                procs.signal_pid(pid, signal.SIGKILL)
        self.orphans = {pid: v for pid, v in self.orphans.items() if pid in found}

    # ---- stop -----------------------------------------------------------------------------------
    def stop_all(self) -> None:
        grace = self._stop_grace()
        log(f"stopping (grace {grace:.0f} s per phase)")
        first = [p for p in self.processes.values() if p.name not in self.stop_last]
        last = [self.processes[n] for n in self.stop_last]
        self._stop(first, grace, keep=last)
        for p in last:
            self._stop([p], grace, keep=[q for q in last if q is not p and q.state == "running"])
        left = self.members()
        if left:
            log(f"SIGKILL to the stack's processes still alive: {sorted(left)}")
            for pid in left:
                procs.signal_pid(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.members() and time.monotonic() < deadline:
            self.reap()
            time.sleep(POLL_SECONDS)
        self.reap()
        for p in self.processes.values():
            if p.state != "gave-up":
                p.state = "stopped"
        self.save()
        log("stopped")

    def _stop_grace(self) -> float:
        try:
            return float(json.loads((self.home / "stop.json").read_text())["grace"])
        except (OSError, ValueError, KeyError, TypeError):
            return self.grace

    def _stop(self, stopping: list[Process], grace: float, keep: list[Process]) -> None:
        """SIGTERM the groups of `stopping`, wait until no marked process is left outside the groups of
        `keep` (task and job processes included), SIGKILL the rest after `grace`."""
        for popen in self.once.values():  # a one-off step still running (stopped during start-up)
            if popen.pid not in self.statuses:
                procs.signal_group(popen.pid, signal.SIGTERM)
        for p in stopping:
            if p.pid and p.state in ("running", "cleaning"):
                log(f"{p.name}: SIGTERM to process group {p.pid}")
                procs.signal_group(p.pid, signal.SIGTERM)
        kept = {p.pid for p in keep if p.pid}
        started = time.monotonic()

        def remaining() -> dict[int, procs.Proc]:
            return {pid: q for pid, q in self.members().items() if q.pgid not in kept}

        while (left := remaining()) and time.monotonic() - started < grace:
            self.reap()
            for p in stopping:  # a leader that exited: SIGKILL its idle leftovers once its tasks are gone
                if p.state == "running" and self.dead(p):
                    self.on_death(p)
                elif p.state == "cleaning":
                    self.clean(p)
            if time.monotonic() >= self.next_sweep:  # orphans (a task's job whose task exited)
                self.next_sweep = time.monotonic() + SWEEP_SECONDS
                self.sweep()
            time.sleep(POLL_SECONDS)
        if left:
            log(f"SIGKILL after {grace:.0f} s to {sorted(left)} (groups {sorted({q.pgid for q in left.values()})})")
            for q in left.values():
                procs.signal_group(q.pgid, signal.SIGKILL)
                procs.signal_pid(q.pid, signal.SIGKILL)
        self.reap()
        for p in stopping:
            p.state = "stopped" if p.state != "gave-up" else p.state
        if stopping:
            log(f"{', '.join(p.name for p in stopping)}: stopped in {time.monotonic() - started:.1f} s")

    # ---- state for others -----------------------------------------------------------------------
    def save(self) -> None:
        state = {"supervisor": {"pid": os.getpid(), "start": procs.start_ticks(os.getpid())},
                 "sessions": {str(sid): start for sid, start in self.sessions.items()},
                 "processes": {p.name: {"pid": p.pid if p.state in ("running", "cleaning") else None,
                                        "start": p.start if p.state in ("running", "cleaning") else None,
                                        "state": p.state, "restarts": p.restarts}
                               for p in self.processes.values()}}
        tmp = self.home / "pids.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.home / "pids.json")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mlbatch.local.supervisor PLAN.json", file=sys.stderr)
        return 2
    return Supervisor(Path(args[0])).run()


if __name__ == "__main__":
    sys.exit(main())
