"""Per-task resource figures (wall time, CPU time, peak memory) for the MLflow record.

CPU time and peak RSS include child processes, because the Beam and scoring jobs run as children of
the task process: measuring only the task process would report near-zero for the heavy tasks.
"""

from __future__ import annotations

import os
import resource
import time
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def measure() -> Iterator[dict]:
    """Yield a dict that holds wall_s, cpu_s and peak_rss_mb once the block ends."""
    figures: dict = {}
    start_wall, start = time.perf_counter(), os.times()
    try:
        yield figures
    finally:
        end = os.times()
        cpu = (end.user - start.user) + (end.system - start.system)
        cpu += (end.children_user - start.children_user) + (end.children_system - start.children_system)
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        figures.update(
            wall_s=round(time.perf_counter() - start_wall, 3),
            cpu_s=round(cpu, 3),
            peak_rss_mb=round(max(own, children) / 1024, 1),  # ru_maxrss is in KiB on Linux
        )
