"""Spec -> Airflow DAG: wait_for_data >> resolve_model >> prep >> predict [>> quality_gate] >> publish >> record.

Imports only `airflow.sdk`, pydantic, PyYAML and the bundle's own light modules: this runs in the DAG
processor on every parse. A broken spec does not take the other pipelines down: it becomes a placeholder DAG
tagged `mlbatch-broken` whose docs and only task give the error (file, line, field, value, expectation),
logged by the dag-processor only, never into another pipeline's task log (see `build_dags`).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Param, get_parsing_context
from pydantic import ValidationError

from mlbatch.alerts.notifier import pipeline_callbacks, success_callback
from mlbatch.errors import SpecError, SpecProblem
from mlbatch.operators.predict import PredictOperator
from mlbatch.operators.prep import BeamPrepOperator
from mlbatch.operators.publish import PublishOperator
from mlbatch.operators.record import RecordRunOperator
from mlbatch.operators.resolve_model import ResolveModelOperator
from mlbatch.operators.wait_for_data import WaitForInputOperator
from mlbatch.run.assets import output_asset, upstream_schedule
from mlbatch.run.steps import PUBLISH, QUALITY_GATE, STEP_IDS
from mlbatch.spec.broken import broken_dag_id, broken_spec_dag
from mlbatch.spec.loader import load_spec
from mlbatch.spec.models import PipelineSpec, TriggerParam

log = logging.getLogger(__name__)

SPEC_ERRORS = (SpecError, ValidationError)  # what a spec can be wrong with; everything else is a bug

STEPS = tuple(zip(STEP_IDS, (WaitForInputOperator, ResolveModelOperator, BeamPrepOperator, PredictOperator,
                              PublishOperator, RecordRunOperator), strict=True))


def build_dag(spec: PipelineSpec, spec_path: Path | None = None,
              pipeline_assets: dict[str, Any] | None = None) -> DAG:
    """`pipeline_assets`: output assets of the other pipelines by name (see `assets.upstream_schedule`)."""
    t = spec.tasks
    dag = DAG(
        dag_id=spec.dag_id,
        description=(spec.description.strip().splitlines() or [""])[0][:200] or None,
        doc_md=_doc_md(spec, spec_path),
        schedule=upstream_schedule(spec, pipeline_assets),  # cron, or upstream assets (wait.kind upstream_asset)
        start_date=datetime.fromisoformat(spec.start_date),
        catchup=False,
        max_active_runs=spec.max_active_runs,
        tags=sorted({*spec.tags, "mlbatch", spec.predict.backend}),
        params=trigger_form(spec),
        default_args={
            "owner": spec.owner,
            "retries": t.retries,
            "retry_delay": timedelta(minutes=t.retry_delay_minutes),
            "execution_timeout": timedelta(minutes=t.execution_timeout_minutes),
        },
    )
    previous = None
    callbacks = pipeline_callbacks(spec)  # Slack alerts on failure (and retry, if asked), log tap
    for task_id, operator in steps(spec):
        last = task_id == STEPS[-1][0] and spec.alerts.on_success
        success = {"on_success_callback": [success_callback(spec)]} if last else {}
        task = operator(task_id=task_id, spec=spec, dag=dag, **callbacks, **success)
        if task_id == "wait_for_data":  # its own clock: waiting is not running
            task.execution_timeout = timedelta(minutes=spec.wait.timeout_minutes + 5)
        if previous is not None:
            previous >> task
        previous = task
    return dag


def steps(spec: PipelineSpec) -> list[tuple[str, Any]]:
    """The steps of this spec's DAG: `STEPS`, with the quality gate before publish when the spec has a
    `quality:` block (imported only then: it brings the standard provider's HITL operator)."""
    if getattr(spec, "quality", None) is None:
        return list(STEPS)
    from mlbatch.operators.quality_gate import QualityGateOperator

    at = STEP_IDS.index(PUBLISH)
    return [*STEPS[:at], (QUALITY_GATE, QualityGateOperator), *STEPS[at:]]


def trigger_form(spec: PipelineSpec) -> dict[str, Param]:
    """Trigger-form fields from `trigger_params`: typed, with allowed values, defaulting to the spec.

    Airflow validates these JSON-schema params on every trigger (UI form and REST API)."""
    return {key: _param(spec, key, p) for key, p in spec.trigger_params.items()}


def _param(spec: PipelineSpec, key: str, p: TriggerParam) -> Param:
    """Titled by the parameter name that REST and Slack use; the spec path goes in the description."""
    schema: dict[str, Any] = {"type": [p.type, "null"] if p.field == "ds" else p.type}
    if p.enum is not None:
        schema["enum"] = list(p.enum) + ([None] if p.field == "ds" else [])
    if p.format:
        schema["format"] = p.format
    default = None if p.field == "ds" else _value_at(spec, p.field)
    target = "the data date `ds`" if p.field == "ds" else f"spec field `{p.field}`"
    description = f"{p.description + ' ' if p.description else ''}Overrides {target}."
    return Param(default, description=description, title=key, **schema)


def _value_at(spec: PipelineSpec, dotted: str) -> Any:
    node: Any = spec
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def build_dags(pipelines_dir: str | Path) -> dict[str, DAG]:
    """One DAG per `*.yaml` in `pipelines_dir`. A spec error (`SPEC_ERRORS`) stays with its spec: it
    becomes a placeholder DAG saying why (`mlbatch.spec.broken`), because an import error of the DAG
    file would make a live dag-processor mark every pipeline of the file stale. Anything else is a bug
    in mlbatch, not in the spec, and is raised as itself (an import error with its traceback).

    A worker parses this file again to run one task, under Airflow's parsing context (the DAG id it
    needs, `airflow.sdk.get_parsing_context`; the dag-processor parses without one). Then only that
    DAG is built, and broken specs are not logged: their errors belong to their placeholder DAG and the
    dag-processor's log, not to every other pipeline's task log. Every spec is still loaded, so names,
    duplicates and upstream assets are decided exactly as in the dag-processor."""
    wanted = get_parsing_context().dag_id  # None in the dag-processor (and in DagBag, dag.test, ...)
    dags: dict[str, Any] = {}
    broken: dict[str, tuple[Path, str]] = {}
    specs: dict[str, tuple[Path, PipelineSpec]] = {}
    for path in sorted(Path(pipelines_dir).glob("*.yaml")):
        try:
            spec = load_spec(path)
            if spec.dag_id in specs:
                other = specs[spec.dag_id][0].name
                raise SpecError(path, [SpecProblem("name", spec.name, f"a name no other spec uses ({other} does)")])
            specs[spec.dag_id] = (path, spec)
        except SPEC_ERRORS as exc:
            broken[broken_dag_id(path)] = (path, _describe(path, exc))
    known = {spec.name: output_asset(spec) for _, spec in specs.values()}  # for upstream_asset waits
    ours = specs.keys() | broken.keys() | {f"{d}__broken" for d in broken}
    only = wanted if wanted in ours else None  # a DAG id of another file: build all, as without one
    valid: set[str] = set()
    for dag_id, (path, spec) in specs.items():
        if only is not None and dag_id != only:
            valid.add(dag_id)  # not built in this task process; the dag-processor builds it
            continue
        try:
            dags[dag_id] = build_dag(spec, path, pipeline_assets=known)
            valid.add(dag_id)
        except SPEC_ERRORS as exc:
            broken[dag_id] = (path, _describe(path, exc))
    for dag_id, (path, error) in broken.items():
        if wanted is None:  # the dag-processor: its log for this file is where parse errors go
            log.error("Pipeline spec cannot be loaded (placeholder DAG %s): %s", dag_id, error)
        if dag_id in valid:
            dag_id = f"{dag_id}__broken"
        if only is None or dag_id == only:
            dags[dag_id] = broken_spec_dag(path, error, dag_id)
    return dags


def _describe(path: Path, exc: Exception) -> str:
    text = str(exc)
    return text if isinstance(exc, SpecError) or str(path) in text else f"{path}: {type(exc).__name__}: {text}"


def _doc_md(spec: PipelineSpec, spec_path: Path | None) -> str:
    features = ", ".join(f"`{f.name}` ({f.type})" for f in spec.input.features)
    model = f"`{spec.model.name}` " + (f"alias `{spec.model.alias}`" if spec.model.alias
                                       else f"version {spec.model.version}")
    return "\n".join([
        f"# {spec.name}",
        spec.description.strip(),
        "",
        "| | |",
        "|---|---|",
        f"| spec | `{spec_path or '-'}` |",
        f"| owner | {spec.owner} |",
        f"| model | {model} (pinned to a version once per run) |",
        f"| input | `{spec.input.uri}` ({spec.input.format}); id `{spec.input.id_column}` |",
        f"| features | {features} |",
        f"| backend | `{spec.predict.backend}` |",
        f"| output | `{spec.output.uri}` ({spec.output.format}), column `{spec.output.prediction_column}` |",
        f"| alerts | {spec.alerts.slack_channel or '-'} {spec.alerts.mention or ''} |",
        "",
        "Steps: " + " -> ".join(task_id for task_id, _ in steps(spec)) + ".",
    ])
