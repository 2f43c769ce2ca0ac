"""The steps of a run, by task id, in DAG order: the one source for the DAG factory, the steps that
read each other's XCom, the alert and the run display."""

from __future__ import annotations

WAIT_FOR_DATA = "wait_for_data"
RESOLVE_MODEL = "resolve_model"
PREP = "prep"
PREDICT = "predict"
QUALITY_GATE = "quality_gate"  # between predict and publish, only in pipelines with a `quality:` block
PUBLISH = "publish"
RECORD = "record"

STEP_IDS = (WAIT_FOR_DATA, RESOLVE_MODEL, PREP, PREDICT, PUBLISH, RECORD)
