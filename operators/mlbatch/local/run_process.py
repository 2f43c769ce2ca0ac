"""The `airflow dags test` process of one `mlbatch run`, and stopping it with everything it started.

Stopping `mlbatch run` (SIGTERM, Ctrl-C, SIGHUP) stops the run: `airflow dags test` runs in its own
session and gets SIGTERM (its task's `on_kill` stops the job), SIGKILL after `STOP_GRACE_SECONDS` (or
at a second Ctrl-C); then every process left of the run -- found by the run's marker in the
environment (`MLBATCH_RUN_ID`, inherited by the job processes, which start their own session) or by the
session -- is stopped the same way. If `mlbatch run` itself is killed, the kernel sends SIGTERM to
`airflow dags test` (PR_SET_PDEATHSIG) and its job processes die with it (`mlbatch.run.job_process`).
"""

from __future__ import annotations

import signal
import subprocess
import threading
import uuid

from mlbatch.local import processes as procs

RUN_MARKER = "MLBATCH_RUN_ID"  # in the environment of every process of one `mlbatch run`
STOP_GRACE_SECONDS = 20.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def watched(command: list[str], env: dict[str, str], sink, watcher) -> tuple[int, RunStopper]:
    """Run `airflow dags test` in its own session, marked, its output to the log and the display; stop
    it and its job processes on a stop signal. (exit status, the stopper that says whether it stopped)."""
    marker = f"{RUN_MARKER}={uuid.uuid4().hex}"
    proc = subprocess.Popen(command, env={**env, RUN_MARKER: marker.split("=", 1)[1]}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=procs.die_with_parent(signal.SIGTERM))
    stopper = RunStopper(proc, marker)
    with stopper.on_signals():
        for line in proc.stdout:
            sink.write(line)
            watcher.feed(line)
        code = proc.wait()
        stopper.leftovers()
    return code, stopper


class RunStopper:
    """Stops one `airflow dags test` and everything it started when `mlbatch run` is told to stop."""

    def __init__(self, proc: subprocess.Popen, marker: str):
        self.proc, self.marker = proc, marker
        self.session = {proc.pid: procs.start_ticks(proc.pid)}
        self.signum: int | None = None
        self._lock = threading.Lock()

    def on_signals(self):
        """Context: SIGTERM, SIGINT and SIGHUP stop the run instead of this process."""
        import contextlib

        @contextlib.contextmanager
        def installed():
            previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
            try:
                yield self
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

        return installed()

    def run_processes(self) -> dict[int, procs.Proc]:
        """The live processes of this run: its session (`airflow dags test` and what did not setsid) and
        every process carrying the run's marker (the job processes and their workers)."""
        table = procs.table()
        return procs.in_sessions(self.session, table) | procs.marked(self.marker, table)

    def _on_signal(self, signum, frame) -> None:
        with self._lock:
            first = self.signum is None
            self.signum = self.signum or signum
        if first:
            procs.signal_group(self.proc.pid, signal.SIGTERM)
            timer = threading.Timer(STOP_GRACE_SECONDS, self.kill)
            timer.daemon = True
            timer.start()
        else:  # asked again (a second Ctrl-C): no more waiting
            self.kill()

    def kill(self) -> None:
        procs.signal_group(self.proc.pid, signal.SIGKILL)
        for pid in self.run_processes():
            procs.signal_pid(pid, signal.SIGKILL)

    def leftovers(self) -> None:
        """After `airflow dags test` ended: stop what is left of the run (SIGTERM, SIGKILL after the grace)."""
        left = self.run_processes()
        if left:
            procs.terminate(set(left), STOP_GRACE_SECONDS)
