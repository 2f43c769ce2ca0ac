"""Job results: Beam counter totals and the small JSON file Airflow reads back.

Counts come from Beam Metrics rather than a second pass over the output,
so they cost nothing extra and include rows no file was written for.
"""
from __future__ import annotations

import json

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineState

from mlbatch_beam.arrow_io import write_bytes

NAMESPACE = "mlbatch"


def run_to_completion(pipeline, name: str):
    """Run the pipeline, wait for it, and raise unless it ended DONE; returns Beam's result."""
    result = pipeline.run()
    state = result.wait_until_finish()
    if state not in (None, PipelineState.DONE):
        raise RuntimeError(f"{name} pipeline finished in state {state}")
    return result


def counter_totals(pipeline_result, names, step: str | None = None) -> dict[str, int]:
    """Sum each named counter over all steps, or over the steps whose name contains `step`
    (committed, else attempted)."""
    totals = {name: 0 for name in names}
    for name in names:
        query = pipeline_result.metrics().query(MetricsFilter().with_name(name))
        for counter in query["counters"]:
            if step is not None and step not in counter.key.step:
                continue
            value = counter.committed if counter.committed is not None else counter.attempted
            totals[name] += int(value or 0)
    return totals


def write_result(path: str | None, result: dict) -> dict:
    """Write the result JSON (any FileSystems path) and return it."""
    if path:
        write_bytes(path, (json.dumps(result, indent=2, sort_keys=True) + "\n").encode())
    return result
