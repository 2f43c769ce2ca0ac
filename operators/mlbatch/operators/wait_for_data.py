"""wait_for_data: the run starts when its input (or its `_SUCCESS`-style marker) exists.

Deferrable: while the data is missing the task holds no worker slot; the standard provider's
FileTrigger polls in the triggerer. Object-store and upstream-DAG sensors are the sensors issue's work.
"""

from __future__ import annotations

import glob
from datetime import timedelta
from typing import Any

from mlbatch.operators.base import PipelineStepOperator
from mlbatch.run_paths import RunPaths, local_path
from mlbatch.spec import PipelineSpec


class WaitForInputOperator(PipelineStepOperator):
    ui_color = "#fff4d6"

    def run(self, context: Any, spec: PipelineSpec, paths: RunPaths) -> str:
        target = str(local_path(paths.marker or paths.input_pattern))
        if glob.glob(target):
            self.log.info("Input is there: %s", target)
            return target
        from airflow.providers.standard.triggers.file import FileTrigger

        self.log.info("Waiting for %s (timeout %s min)", target, spec.tasks.wait_timeout_minutes)
        self.defer(
            trigger=FileTrigger(filepath=target, poke_interval=spec.tasks.wait_poke_seconds),
            method_name="execute_complete",
            kwargs={"target": target},
            timeout=timedelta(minutes=spec.tasks.wait_timeout_minutes),
        )

    def execute_complete(self, context: Any, event: Any = None, target: str = "") -> str:
        if event is not True:
            raise RuntimeError(f"waiting for {target} ended without finding it: {event!r}")
        self.log.info("Input arrived: %s", target)
        return target
