"""wait_for_data: the run proceeds when its input is really there and complete (spec block `wait:`).

Kinds: `object` (local/S3/GCS paths, globs, `_SUCCESS` markers; default target `input.marker`, else
`input.uri`), `bigquery_partition`, `upstream_task` (an upstream DAG or its tasks succeeded for this
run's logical date), `upstream_asset` (the DAG is scheduled on assets; nothing left to wait for here).
Every wait defers: the triggerer polls (provider triggers, or `mlbatch.triggers`), no worker slot is held.
Then `wait.checks` (rows, bytes, age) must pass; while they fail the step defers again until the next
poke. At the deadline `wait.on_timeout` decides: fail (no retry) or skip the run, with the reason.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from mlbatch.run.assets import fill_data_date
from mlbatch.errors import WaitFailedError
from mlbatch.operators.base import PipelineStepOperator, effective_spec
from mlbatch.run.paths import RunPaths
from mlbatch.spec.models import PipelineSpec
from mlbatch.triggers.deadline import TIMEOUT, DeadlineTrigger


class WaitForInputOperator(PipelineStepOperator):
    """Waits as `spec.wait` says, deferring while it waits.

    :param spec: the validated pipeline spec this DAG was built from.
    """

    ui_color = "#fff4d6"

    def run(self, context: Any, spec: PipelineSpec, paths: RunPaths) -> dict:
        self._preflight(context, spec, paths)
        deadline = _now() + timedelta(minutes=spec.wait.timeout_minutes)
        self.log.info("Waiting (kind %s) until %s at the latest", spec.wait.kind, deadline.isoformat())
        return self._proceed_or_defer(context, spec, paths, deadline, satisfied=False)

    def execute_complete(self, context: Any, event: Any = None, deadline: str = "", waiting_for: str = "",
                         satisfied: bool = False) -> dict:
        """Back from the triggerer: check the event, then look again at everything (it may have changed)."""
        if isinstance(event, dict) and event.get("status") == TIMEOUT:  # the deadline, held in the trigger
            spec, paths = self._spec_and_paths(context)
            self._timed_out(context, spec, paths)
        if not _succeeded(event):
            raise WaitFailedError(f"{self.spec.name}: waiting for {waiting_for} failed: {_message(event)}")
        self.log.info("Arrived: %s", waiting_for)
        spec, paths = self._spec_and_paths(context)
        return self._proceed_or_defer(context, spec, paths, datetime.fromisoformat(deadline),
                                      satisfied=satisfied or waiting_for != _COMPLETENESS)

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any) -> Any:
        from airflow.sdk.exceptions import TaskDeferralTimeout

        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except TaskDeferralTimeout:
            spec, paths = self._spec_and_paths(context)
            self._timed_out(context, spec, paths)

    def _preflight(self, context: Any, spec: PipelineSpec, paths: RunPaths) -> None:
        """The first task checks what every later one needs: connections, endpoints, buckets
        (mlbatch.run.preflight); a problem fails the run now, naming the connection or bucket."""
        from mlbatch.run.preflight import require_reachable

        require_reachable(spec, {
            "wait.targets": self._targets(context, spec, paths) if spec.wait.kind == "object" else [],
            "input.uri": [paths.input_pattern], "input.marker": [paths.marker] if paths.marker else [],
            "output.uri": [paths.output], "output.dead_letter_uri": [paths.dead_letter],
            "output.work_uri": [paths.work]})

    # -- the decision ---------------------------------------------------------------------------------

    def _proceed_or_defer(self, context: Any, spec: PipelineSpec, paths: RunPaths, deadline: datetime,
                          satisfied: bool) -> dict:
        wait = spec.wait
        if wait.kind == "upstream_asset":
            return self._asset_events(context)
        if not satisfied or wait.kind == "object":  # objects: cheap to look again, and all must be there
            pending = self._pending(context, spec, paths)
            if pending is not None:
                what, trigger = pending
                self._defer(context, spec, paths, trigger, deadline, what, satisfied=False)
        problems = self._incomplete(spec, paths)
        if problems:
            self.log.info("Input not complete yet: %s", "; ".join(problems))
            from airflow.providers.standard.triggers.temporal import DateTimeTrigger

            trigger = DateTimeTrigger(moment=_now() + timedelta(seconds=wait.poke_seconds))
            self._defer(context, spec, paths, trigger, deadline, _COMPLETENESS, satisfied=True)
        summary = {"kind": wait.kind, "waited_for": self._describe(context, spec, paths), "ds": context.get("ds")}
        self.log.info("Input is there and complete: %s", summary["waited_for"])
        return summary

    def _pending(self, context: Any, spec: PipelineSpec, paths: RunPaths) -> tuple[str, Any] | None:
        """(what is missing, the trigger that waits for it), or None when nothing is missing."""
        wait = spec.wait
        if wait.kind == "object":
            from mlbatch.sensors.objects import find, trigger_for

            for target in self._targets(context, spec, paths):
                if not find(target, aws_conn_id=wait.aws_conn_id, gcp_conn_id=wait.gcp_conn_id):
                    return target, trigger_for(target, poke_seconds=wait.poke_seconds,
                                               aws_conn_id=wait.aws_conn_id, gcp_conn_id=wait.gcp_conn_id)
                self.log.info("Found %s", target)
            return None
        if wait.kind == "bigquery_partition":
            partition = self._render_target(context, spec, wait.partition) if wait.partition else None
            trigger = self.bigquery_trigger(wait, partition)
            return trigger.what, trigger
        return self._upstream_task(context, spec)

    def _upstream_task(self, context: Any, spec: PipelineSpec) -> tuple[str, Any]:
        from airflow.providers.standard.triggers.external_task import WorkflowTrigger

        wait = spec.wait
        logical_date = context.get("logical_date")
        if logical_date is None:
            raise WaitFailedError(f"{spec.name}: wait.kind upstream_task matches the upstream run by logical "
                                  "date, and this run has none (triggered without one, or by an asset)")
        tasks = list(wait.task_ids) or None
        trigger = WorkflowTrigger(
            external_dag_id=wait.dag_id, logical_dates=[logical_date], external_task_ids=tasks,
            allowed_states=["success"],
            failed_states=["failed", "upstream_failed"] if tasks else ["failed"],
            skipped_states=["skipped"] if tasks else None,
            poke_interval=wait.poke_seconds,
        )
        return self._upstream_description(spec, logical_date), trigger

    def _defer(self, context: Any, spec: PipelineSpec, paths: RunPaths, trigger: Any, deadline: datetime,
               what: str, satisfied: bool) -> None:
        remaining = deadline - _now()
        if remaining.total_seconds() <= 0:
            self._timed_out(context, spec, paths)
        self.log.info("Deferring until %s (%.0f s left): %s", "complete" if satisfied else "it exists",
                      remaining.total_seconds(), what)
        # The deadline travels inside the trigger too: `dags test` runs triggers in-process and ignores
        # the deferral timeout. The triggerer's own timeout stays, a little later, as a backstop.
        self.defer(trigger=DeadlineTrigger.wrap(trigger, deadline, waiting_for=what), method_name="execute_complete",
                   timeout=remaining + timedelta(seconds=60),
                   kwargs={"deadline": deadline.isoformat(), "waiting_for": what, "satisfied": satisfied})

    def _timed_out(self, context: Any, spec: PipelineSpec, paths: RunPaths) -> None:
        """Fail (no retry: waiting again would not help) or skip the run, saying what was still missing."""
        from airflow.sdk.exceptions import AirflowSensorTimeout, AirflowSkipException

        reason = (f"{spec.name}: waited {spec.wait.timeout_minutes:g} min (wait.timeout_minutes) and the input "
                  f"is not ready: {self._still_missing(context, spec, paths)}")
        if spec.wait.on_timeout == "skip":
            self.log.warning("Skipping this run (wait.on_timeout = skip): %s", reason)
            raise AirflowSkipException(reason)
        raise AirflowSensorTimeout(reason + " (wait.on_timeout = fail). Check that the producer wrote it for this "
                                   "date where the spec looks, or raise wait.timeout_minutes")

    def _still_missing(self, context: Any, spec: PipelineSpec, paths: RunPaths) -> str:
        if spec.wait.kind == "object":
            pending = self._pending(context, spec, paths)
            if pending is not None:
                return f"{pending[0]} does not exist{_through(spec, pending[0])}"
            problems = self._incomplete(spec, paths)
            return "incomplete: " + "; ".join(problems) if problems else "it arrived just now; rerun the task"
        return f"{self._describe(context, spec, paths)} not seen"

    # -- helpers --------------------------------------------------------------------------------------

    def _spec_and_paths(self, context: Any) -> tuple[PipelineSpec, RunPaths]:
        spec = effective_spec(self.spec, context["params"])
        fill_data_date(context)
        return spec, self.run_paths(context, spec)

    @staticmethod
    def bigquery_trigger(wait: Any, partition: str | None) -> Any:
        """The trigger of a `bigquery_partition` wait for one rendered partition id (None: the table)."""
        from mlbatch.triggers.bigquery_partition import BigQueryPartitionTrigger

        project, dataset, table = wait.table.split(".")
        return BigQueryPartitionTrigger(project_id=project, dataset_id=dataset, table_id=table,
                                        partition_id=partition, gcp_conn_id=wait.gcp_conn_id,
                                        poke_seconds=wait.poke_seconds, location=wait.location)

    def _targets(self, context: Any, spec: PipelineSpec, paths: RunPaths) -> list[str]:
        if spec.wait.targets:
            return [self._render_target(context, spec, t) for t in spec.wait.targets]
        return [paths.marker or paths.input_pattern]

    def _render_target(self, context: Any, spec: PipelineSpec, template: str) -> str:
        return self._renderer(context, spec)(template)

    def _incomplete(self, spec: PipelineSpec, paths: RunPaths) -> list[str]:
        if not spec.wait.checks.any:
            return []
        from mlbatch.sensors.completeness import incomplete_reasons

        return incomplete_reasons(spec, paths.input_pattern)

    def _describe(self, context: Any, spec: PipelineSpec, paths: RunPaths) -> str:
        wait = spec.wait
        if wait.kind == "object":
            return ", ".join(self._targets(context, spec, paths))
        if wait.kind == "bigquery_partition":
            partition = self._render_target(context, spec, wait.partition) if wait.partition else None
            return f"partition {partition} of {wait.table}" if partition else f"table {wait.table}"
        if wait.kind == "upstream_task":
            return self._upstream_description(spec, context.get("logical_date"))
        return f"upstream assets ({wait.assets_mode} of): {', '.join(wait.assets)}"

    @staticmethod
    def _upstream_description(spec: PipelineSpec, logical_date: Any) -> str:
        wait = spec.wait
        what = f"tasks {', '.join(wait.task_ids)} of DAG {wait.dag_id}" if wait.task_ids else f"DAG {wait.dag_id}"
        return f"{what} succeeded for logical date {logical_date}"

    def _asset_events(self, context: Any) -> dict:
        """Scheduled on assets: the run exists because they were updated. Log which events triggered it."""
        events = context.get("triggering_asset_events") or {}
        seen = [
            {"asset": asset.name, "source": f"{e.source_dag_id}/{e.source_run_id}", "extra": dict(e.extra or {})}
            for asset in events for e in events[asset]
        ]
        for event in seen:
            self.log.info("Triggered by asset %s from %s: %s", event["asset"], event["source"], event["extra"])
        return {"kind": "upstream_asset", "events": seen, "ds": context.get("ds")}


_COMPLETENESS = "complete input (wait.checks)"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _through(spec: PipelineSpec, uri: str) -> str:
    """Which connection looked for a remote `uri`: what to check when it is there after all."""
    kind = {"s3": "aws", "gs": "gcp"}.get(uri.partition("://")[0])
    if kind is None:
        return ""
    from mlbatch.spec.connections import field_of

    field, _ = field_of(spec, "wait", f"{kind}_conn_id")
    return f" (looked for through connection {getattr(spec.wait, f'{kind}_conn_id')!r}, {field})"


def _succeeded(event: Any) -> bool:
    if event is True:  # FileTrigger, DateTimeTrigger fire with True/the moment
        return True
    if isinstance(event, datetime):
        return True
    return isinstance(event, dict) and event.get("status") == "success"


def _message(event: Any) -> str:
    if isinstance(event, dict):
        return str(event.get("message") or f"status {event.get('status')!r}")
    return repr(event)
