"""Progress lines for someone watching a terminal: `mlbatch run` sums them into a progress bar.

A line is `mlbatch-progress <what> +<rows>`: an increment, so several worker processes can report
independently and the reader adds them up. Nothing is printed unless `MLBATCH_PROGRESS` is set (by
`mlbatch run`), so scheduled runs and Dataflow workers keep their logs as they are. Lines are
throttled to a few per second per process.
"""
from __future__ import annotations

import os
import time

ENV = "MLBATCH_PROGRESS"
PREFIX = "mlbatch-progress"
_EVERY_S = 0.5


class ProgressReporter:
    """Counts rows for one kind of work (`read`, `scored`) and prints the increments now and then."""

    def __init__(self, what: str):
        self.what = what
        self._pending = 0
        self._last = 0.0

    def add(self, rows: int) -> None:
        if not os.environ.get(ENV):
            return
        self._pending += rows
        now = time.monotonic()
        if now - self._last >= _EVERY_S:
            self.flush()
            self._last = now

    def flush(self) -> None:
        if self._pending:
            print(f"{PREFIX} {self.what} +{self._pending}", flush=True)
            self._pending = 0
