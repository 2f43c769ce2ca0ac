"""A broken pipeline spec becomes a placeholder DAG that says why it cannot run.

Why not an import error: a live dag-processor that records an import error for a DAG file marks EVERY
DAG of that file stale (airflow/dag_processing/collection.py `_update_import_errors`), so one bad YAML
would hide all pipelines. The placeholder keeps the pipeline's DAG id (the spec's file name), so the
pipeline stays visible where users look for it, tagged `mlbatch-broken`, without a schedule, with the
error in its docs and in the log of its only task, which fails if the DAG is triggered anyway.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, BaseOperator

from mlbatch.errors import BrokenSpecError

BROKEN_TAG = "mlbatch-broken"
BROKEN_TASK_ID = "spec_error"


class BrokenSpecOperator(BaseOperator):
    """Fails with the spec's load error: a run of a broken pipeline must not look like anything else."""

    ui_color = "#f4a6a6"

    def __init__(self, *, spec_path: str, error: str, **kwargs):
        super().__init__(**kwargs)
        self.spec_path, self.error = spec_path, error

    def execute(self, context):
        raise BrokenSpecError(f"pipeline spec {self.spec_path} cannot be loaded; fix it and let the "
                              f"DAG processor re-parse it:\n{self.error}")


def broken_dag_id(path: Path) -> str:
    """The DAG id the pipeline would have had: its file name (a valid spec's `name` equals it)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem) or "unnamed_spec"


def broken_spec_dag(path: Path, error: str, dag_id: str | None = None) -> DAG:
    first = error.strip().splitlines()[0] if error.strip() else "unknown error"
    dag = DAG(
        dag_id=dag_id or broken_dag_id(path),
        description=f"BROKEN SPEC, cannot run: {first}"[:200],
        doc_md="\n".join([
            f"# Broken pipeline spec `{path.name}`",
            "This pipeline cannot run until its spec is fixed; every other pipeline is unaffected.",
            f"Check it with `mlbatch validate {path}`.",
            "",
            "```",
            error.strip(),
            "```",
        ]),
        schedule=None,
        start_date=datetime(2026, 1, 1),
        catchup=False,
        is_paused_upon_creation=True,
        max_active_runs=1,
        tags=["mlbatch", BROKEN_TAG],
        default_args={"retries": 0},
    )
    BrokenSpecOperator(task_id=BROKEN_TASK_ID, spec_path=str(path), error=error.strip(), dag=dag)
    return dag
