"""publish: reconcile row counts, then commit the output and dead-letter partitions as one run.

Rows in (counted in the input files) must equal rows scored (counted in the output) plus rows rejected
(counted in the dead letters); otherwise the task fails, says by how much, and publishes nothing.
Every backend's predict step leaves its rows staged in the spec's output format (the batch-prediction
services' files are joined to their ids at the end of predict: mlbatch.backends.batch_predictions).
Everything goes through the storage layer: input, staging and output may be local, gs:// or s3://.
The commit protocol (mlbatch.run.commit, docs/storage.md) makes the run visible in one write.
"""

from __future__ import annotations

from typing import Any

from mlbatch.errors import CountMismatchError, TooManyRejectedError
from mlbatch.operators.base import PipelineStepOperator
from mlbatch.quality.baseline import sidecars
from mlbatch.run.assets import event_extra, output_asset
from mlbatch.run.commit import Partition, commit, new_attempt
from mlbatch.run.paths import RunPaths, run_key
from mlbatch.run.prediction_stats import prediction_stats
from mlbatch.run.row_counts import ENDPOINT_FAILED_FILES, count_rows
from mlbatch.run.staged_files import clean_up_after_commit, sweep_abandoned_runs
from mlbatch.run.steps import PREDICT, PREP, QUALITY_GATE, RESOLVE_MODEL
from mlbatch.spec.models import PipelineSpec
from mlbatch.storage.layer import Storage, join


class PublishOperator(PipelineStepOperator):
    ui_color = "#e0f7fa"

    def __init__(self, *, spec: PipelineSpec, **kwargs: Any):
        kwargs.setdefault("outlets", [output_asset(spec)])  # the pipeline's predictions, as an asset
        super().__init__(spec=spec, **kwargs)

    def run(self, context: Any, spec: PipelineSpec, paths: RunPaths) -> dict:
        storage = Storage.for_spec(spec)
        model = context["ti"].xcom_pull(task_ids=RESOLVE_MODEL)
        output_staging, rejected_staging = self._staged(context, storage, spec, paths)
        counts = self._reconcile(storage, spec, paths, output_staging, rejected_staging)
        version = produced_by(context, model)  # the version that produced the rows, as predict found it
        stats = published_stats(storage, spec, output_staging)
        gate = gate_facts(context)
        statistics = sidecars(storage, spec, paths, context["ti"].xcom_pull(task_ids=PREDICT))  # quality gate's
        record = commit(
            storage, Partition(paths.output, output_staging), Partition(paths.dead_letter, rejected_staging),
            new_attempt(run_key(context["run_id"])),
            {**counts, "pipeline": spec.name, "run_id": context["run_id"],
             "model": model["uri"] if version == model["version"] else f"models:/{model['name']}/{version}",
             **served_by(context),
             "model_version": version, "input": paths.input_pattern, "format": spec.output.format,
             **gate},
            sidecars=statistics,
        )
        self.log.info("Committed attempt %s: %s (%d rows in %d files) and %s (%d rows)", record["attempt"],
                      paths.output, counts["rows_scored"], len(record["files"]), paths.dead_letter,
                      counts["rows_rejected"])
        self._clean_up(context, storage, spec, paths, [output_staging, rejected_staging])
        published = {**counts, "output_uri": paths.output, "dead_letter_uri": paths.dead_letter,
                     "input_uri": paths.input_pattern, "stats": stats, "attempt": record["attempt"],
                     "commit_record": join(paths.output, "_SUCCESS"), "files": len(record["files"]), **gate,
                     **({"statistics": record["statistics"]} if "statistics" in record else {})}
        self._asset_event(context, spec, published)
        return published

    def _staged(self, context: Any, storage: Storage, spec: PipelineSpec, paths: RunPaths) -> tuple[str, str]:
        """Where the jobs left their files (the run's work folder, or a cloud job's own output prefix):
        (scored rows in the spec's output format, rejected rows)."""
        ti = context["ti"]
        prep = ti.xcom_pull(task_ids=PREP) or {}
        predicted = ti.xcom_pull(task_ids=PREDICT) or {}
        output_staging = predicted.get("output_uri") or paths.output_staging
        # the dead letters of a Dataflow job: prep's, or the endpoint job's (prep runs inside it)
        rejected_staging = prep.get("rejected_uri") or predicted.get("rejected_uri") or paths.rejected_staging
        if spec.predict.backend not in ("dataflow", "endpoint") and not predicted.get("output_uri"):
            # a batch service's files that predict did not stage (a predict step from before it did)
            output_staging = self._convert_batch_predictions(
                storage, spec, predicted.get("raw_predictions_uri") or paths.raw_predictions, paths)
        return output_staging, rejected_staging

    def _reconcile(self, storage: Storage, spec: PipelineSpec, paths: RunPaths, output_staging: str,
                   rejected_staging: str) -> dict:
        """Rows in, scored and rejected; raises unless in = scored + rejected and the rejected share is
        within `prep.max_rejected_fraction`."""
        rows_in, files_in = count_rows(paths.input_pattern, spec.input.format, storage)
        rows_scored, _ = count_rows(output_staging, spec.output.format, storage)
        rows_rejected, _ = count_rows(rejected_staging, "jsonl", storage)  # all dead letters
        counts = {"rows_in": rows_in, "rows_scored": rows_scored, "rows_rejected": rows_rejected}
        if spec.predict.backend == "endpoint":  # in = scored + rejected (prep's rules) + failed (the endpoint's)
            rows_failed, _ = count_rows(join(rejected_staging, ENDPOINT_FAILED_FILES), "jsonl", storage)
            counts.update(rows_rejected=rows_rejected - rows_failed, rows_failed=rows_failed)
        failed = f" ({counts['rows_failed']} of them failed at the endpoint)" if counts.get("rows_failed") else ""
        self.log.info("Reconciliation over %d input files: %s", files_in, counts)
        missing = rows_in - rows_scored - rows_rejected
        if missing:
            raise CountMismatchError(
                f"{spec.name}: rows in ({rows_in}) != rows scored ({rows_scored}) + rows rejected "
                f"({rows_rejected}): {abs(missing)} rows {'missing' if missing > 0 else 'too many'}; "
                f"nothing was published (staging kept at {output_staging} and {rejected_staging})"
            )
        if rows_in and rows_rejected / rows_in > spec.prep.max_rejected_fraction:
            raise TooManyRejectedError(
                f"{spec.name}: {rows_rejected} of {rows_in} rows rejected{failed} "
                f"({rows_rejected / rows_in:.2%}) > prep.max_rejected_fraction "
                f"{spec.prep.max_rejected_fraction:.2%}; see {rejected_staging}; nothing was published"
            )
        return counts

    def _clean_up(self, context: Any, storage: Storage, spec: PipelineSpec, paths: RunPaths,
                  staged: list[str]) -> None:
        """After the commit: this run's staged files, and the work folders of runs that are over."""
        cleaned = clean_up_after_commit(storage, spec, context["run_id"], paths, staged)
        self.log.info("Staged files: %s", cleaned)
        swept = sweep_abandoned_runs(storage, spec, paths, airflow_run_state)
        if swept:
            self.log.info("Removed the work folders of %d runs that are over: %s", len(swept), swept)

    def _asset_event(self, context: Any, spec: PipelineSpec, published: dict) -> None:
        """Say which partition (and which committed attempt) this run published in the asset event:
        downstream pipelines scheduled on this asset take their data date (`ds`) and input from it."""
        ds = self._renderer(context, spec)("{{ ds }}")
        for asset in self.outlets:
            context["outlet_events"][asset].extra.update(event_extra(spec, ds, published))

    def _convert_batch_predictions(self, storage: Storage, spec: PipelineSpec, raw: str,
                                   paths: RunPaths) -> str:
        """Batch-prediction results (Vertex/SageMaker files) -> the spec's output format in the run's
        output staging folder, as predict stages them (`mlbatch.backends.batch_predictions`); no
        statistics: the gate has already run. Returns that folder."""
        from mlbatch.backends.batch_predictions import stage_batch_predictions

        self.log.info("Predict staged no output: joining the batch predictions under %s now", raw)
        return stage_batch_predictions(spec, paths, raw, None, statistics=False, storage=storage)["output_uri"]


def published_stats(storage: Storage, spec: PipelineSpec, staging: str) -> dict:
    """Statistics of the one numeric prediction column (kinds value and positive_probability); other
    kinds (labels, one column per class, named outputs) just name their columns."""
    kind = spec.output.predictions.kind
    if kind not in ("value", "positive_probability"):
        return {"kind": kind, "columns": spec.output.prediction_columns}
    return prediction_stats(storage.files(staging), spec.output.format, spec.output.prediction_column, storage)


def airflow_run_state(dag_id: str, run_id: str) -> str | None:
    """A run's state as Airflow's execution API tells a task (None: no such run, e.g. deleted)."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    if not RuntimeTaskInstance.get_dr_count(dag_id, run_ids=[run_id]):
        return None
    state = RuntimeTaskInstance.get_dagrun_state(dag_id, run_id)
    return str(getattr(state, "value", state))


def served_by(context: Any) -> dict:
    """Backend endpoint: how predict learnt the version the endpoint serves, for the commit record."""
    predicted = context["ti"].xcom_pull(task_ids=PREDICT) or {}
    return {"served_version": predicted["served_version"]} if predicted.get("served_version") else {}


def produced_by(context: Any, model: dict) -> int:
    """The model version predict reports for its rows (read from the remote job), else the pinned one."""
    predicted = context["ti"].xcom_pull(task_ids=PREDICT) or {}
    return int(predicted.get("model_version") or model["version"])


def gate_facts(context: Any) -> dict:
    """What the quality gate decided, for the commit record: the verdict's level, and who approved a
    held run (a Slack user or an Airflow user) with their reason. Nothing when the DAG has no gate."""
    if QUALITY_GATE not in getattr(context.get("dag"), "task_ids", ()):
        return {}
    gate = context["ti"].xcom_pull(task_ids=QUALITY_GATE) or {}
    facts = {"quality": gate.get("level")}
    if gate.get("approved_by"):
        facts.update(approved_by=gate["approved_by"], approval_reason=gate.get("reason") or "")
    return facts
