"""What every pipeline step shares: the spec with this run's trigger overrides, rendered paths,
resource figures pushed to XCom for the `record` step, the check of the run's conf keys, and the retry
policy that fails at once on what a retry cannot fix (`mlbatch.operators.fail_fast`)."""

from __future__ import annotations

from datetime import timedelta
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from mlbatch.run.assets import fill_data_date
from mlbatch.spec.trigger_conf import check_conf_keys
from mlbatch.operators.fail_fast import FAIL_FAST
from mlbatch.run.resources import measure
from mlbatch.run.paths import RunPaths, default_dead_letter, default_work_root, run_key
from mlbatch.spec.models import PipelineSpec
from mlbatch.spec.loader import with_overrides
from mlbatch.run.staged_files import note_run
from mlbatch.storage.layer import Storage

RESOURCES_KEY = "resources"


class PipelineStepOperator(BaseOperator):
    """Base of the pipeline steps. Subclasses implement `run(context, spec, paths)`.

    :param spec: the validated pipeline spec this DAG was built from.
    """

    ui_color = "#e8f0fe"
    uses_work_folder = False  # steps that write into the run's work folder note the run there first
    last_result: Any = None  # this try's return value, read by the extra links at the end of the try
    # Where this run reads and writes: the spec's templates in the DAG, what the run used once rendered
    # (the UI's "Rendered Template" view).
    template_fields: Sequence[str] = ("input_uri", "input_marker", "output_uri", "dead_letter_uri", "work_folder")

    def __init__(self, *, spec: PipelineSpec, **kwargs: Any):
        kwargs.setdefault("retry_policy", FAIL_FAST)  # errors a retry cannot fix fail at once
        super().__init__(**kwargs)
        self.spec = spec
        self.input_uri, self.input_marker = spec.input.uri, spec.input.marker or ""
        self.output_uri, self.dead_letter_uri = spec.output.uri, spec.output.dead_letter_uri or ""
        self.work_folder = spec.output.work_uri or ""

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Airflow renders template fields before `execute`. Ours depend on this run's trigger overrides
        and data date (a scheduled run scores the day before, a `date` param or an asset event names
        it), so they are set from `run_paths`, the one renderer every step uses; a subclass's own
        fields are then rendered by Airflow as usual. Rendering comes first in a try, so the run's conf
        is checked here (and again in `execute`, for callers that do not render)."""
        check_run_conf(self.spec, context)
        spec = effective_spec(self.spec, context["params"])
        fill_data_date(context)
        paths = self.run_paths(context, spec)
        self.input_uri, self.input_marker = paths.input_pattern, paths.marker or ""
        self.output_uri, self.dead_letter_uri, self.work_folder = paths.output, paths.dead_letter, paths.work
        super().render_template_fields(context, jinja_env)

    def execute(self, context: Any) -> Any:
        check_run_conf(self.spec, context)
        spec = effective_spec(self.spec, context["params"])
        fill_data_date(context)  # asset-triggered runs have no logical date: take it from the asset event
        paths = self.run_paths(context, spec)
        if self.uses_work_folder:
            note_run(Storage.for_spec(spec), paths, self.dag_id, context["run_id"])
        with measure() as figures:
            result = self.last_result = self.run(context, spec, paths)
            job = getattr(self, "_job", None)  # steps that ran a job process report its peak too
            if job is not None:
                figures["child_peak_rss_mb"] = job.peak_rss_mb
        self.log.info("Resources of %s: %s", self.task_id, figures)
        context["ti"].xcom_push(key=RESOURCES_KEY, value=figures)
        return result

    def run(self, context: Any, spec: PipelineSpec, paths: RunPaths) -> Any:
        raise NotImplementedError

    def run_paths(self, context: Any, spec: PipelineSpec) -> RunPaths:
        render = self._renderer(context, spec)
        output = render(spec.output.uri).rstrip("/")
        work_root = render(spec.output.work_uri) if spec.output.work_uri else default_work_root(output)
        return RunPaths(
            input_pattern=render(spec.input.uri),
            marker=render(spec.input.marker) if spec.input.marker else None,
            output=output,
            dead_letter=render(spec.output.dead_letter_uri) if spec.output.dead_letter_uri
            else default_dead_letter(output),
            work=f"{work_root.rstrip('/')}/{spec.name}/{run_key(context['run_id'])}",
        )

    def _renderer(self, context: Any, spec: PipelineSpec):
        values = dict(context)
        data_date = data_date_override(spec, context["params"]) or scheduled_data_date(spec, context)
        if data_date:
            values.update(ds=data_date, ds_nodash=data_date.replace("-", ""))
        env = self.get_template_env()
        return lambda template: env.from_string(template).render(**values)


def check_run_conf(spec: PipelineSpec, context: Any) -> None:
    """A run's conf may hold only the pipeline's trigger params: Airflow accepts any extra key (REST,
    UI JSON) and would silently ignore it, so the run fails at its first task with `TriggerConfError`
    naming the unknown keys and the valid ones -- the rule Slack and `mlbatch run` apply before they
    trigger (`mlbatch.spec.trigger_conf.check_conf_keys`)."""
    conf = getattr(context.get("dag_run"), "conf", None) or {}
    check_conf_keys(spec.name, spec.trigger_params, conf)


def effective_spec(spec: PipelineSpec, params: Any) -> PipelineSpec:
    """The spec with the manual-trigger overrides of this run applied (validated again)."""
    overrides = {
        p.field: params[key]
        for key, p in spec.trigger_params.items()
        if p.field != "ds" and params.get(key) is not None
    }
    return with_overrides(spec, overrides, source=f"trigger params of {spec.name}")


def scheduled_data_date(spec: PipelineSpec, context: Any) -> str | None:
    """The day a scheduled run scores: `run_after + scheduled_data_date_offset_days`.

    Airflow 3's cron timetables make a `@daily` run's logical date the day that just started; a daily
    producer writes a day once it is over, so by default (-1) a run due at 2026-11-21T00:00 scores
    2026-11-20. `run_after` is the due time under both cron timetable flavours, so the rule does not
    depend on `[scheduler] create_cron_data_intervals`. Other runs (manual, REST, Slack, assets): None."""
    dag_run = context.get("dag_run")
    run_after = getattr(dag_run, "run_after", None)
    if getattr(dag_run, "run_type", None) != "scheduled" or run_after is None:
        return None
    return (run_after + timedelta(days=spec.scheduled_data_date_offset_days)).strftime("%Y-%m-%d")


def data_date_override(spec: PipelineSpec, params: Any) -> str | None:
    for key, p in spec.trigger_params.items():
        if p.field == "ds" and params.get(key):
            return str(params[key])
    return None
