"""Per-task resource figures (wall time, CPU time, peak memory) for the MLflow record.

CPU time includes child processes, because the Beam and scoring jobs run as children of the task
process. Peak memory is the high-water mark of this task alone: the task process is sampled while the
task runs (its lifetime `ru_maxrss` would carry earlier tasks' peaks when several tasks share one
process, as in `airflow dags test`), and a job process reports its own peak (see `job_process`).
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from typing import Iterator

SAMPLE_SECONDS = 0.05


@contextmanager
def measure() -> Iterator[dict]:
    """Yield a dict that holds wall_s, cpu_s and peak_rss_mb once the block ends.

    Code in the block may set `figures["child_peak_rss_mb"]` to fold a child's peak in."""
    import psutil

    figures: dict = {}
    process = psutil.Process()
    peak = [process.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(SAMPLE_SECONDS):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start_wall, start = time.perf_counter(), os.times()
    try:
        yield figures
    finally:
        stop.set()
        sampler.join()
        end = os.times()
        cpu = (end.user - start.user) + (end.system - start.system)
        cpu += (end.children_user - start.children_user) + (end.children_system - start.children_system)
        own_peak_mb = max(peak[0], process.memory_info().rss) / 2**20
        figures.update(
            wall_s=round(time.perf_counter() - start_wall, 3),
            cpu_s=round(cpu, 3),
            peak_rss_mb=round(max(own_peak_mb, figures.pop("child_peak_rss_mb", 0.0)), 1),
        )
