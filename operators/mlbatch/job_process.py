"""Run a Beam or scoring job as a child process and stream its log into the task log.

A child process keeps Beam's and the model's memory out of the task process, lets `on_kill` stop the
job, and makes the task's CPU and peak-memory figures include the job (see `resources`).
The job reports its counts through a JSON result file, not through its log.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections import deque
from pathlib import Path

from mlbatch.errors import RemoteJobError

log = logging.getLogger(__name__)

TAIL_LINES = 40


class JobProcess:
    def __init__(self, module: str, args: list[str], result_file: str):
        self.command = [sys.executable, "-u", "-m", module, *args, "--result-file", result_file]
        self.result_file = Path(result_file)
        self._proc: subprocess.Popen | None = None
        self.peak_rss_mb = 0.0

    def run(self) -> dict:
        """Run to completion; return the job's result JSON or raise `RemoteJobError` with its last lines."""
        self.result_file.unlink(missing_ok=True)
        log.info("Running: %s", " ".join(self.command))
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._proc = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # so on_kill can stop the job's whole process group
        )
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
        """Reap the job with wait4 to read the peak memory of that process alone."""
        _, status, usage = os.wait4(self._proc.pid, 0)
        self._proc.returncode = os.waitstatus_to_exitcode(status)
        self.peak_rss_mb = usage.ru_maxrss / 1024  # KiB on Linux
        return self._proc.returncode

    def kill(self) -> None:
        if self._proc and self._proc.poll() is None:
            log.warning("Stopping job process group %s", self._proc.pid)
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
