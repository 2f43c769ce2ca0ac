"""publish: reconcile row counts, then commit the output and dead-letter partitions atomically.

Rows in (counted in the input files) must equal rows scored (counted in the output) plus rows rejected
(counted in the dead letters); otherwise the task fails, says by how much, and publishes nothing.
For batch-prediction backends it first turns their JSON Lines results into the spec's output format.
"""

from __future__ import annotations

from typing import Any

from mlbatch.assets import event_extra, output_asset
from mlbatch.errors import CountMismatchError, TooManyRejectedError
from mlbatch.operators.base import PipelineStepOperator
from mlbatch.partition_commit import commit_partition
from mlbatch.prediction_stats import prediction_stats
from mlbatch.row_counts import count_rows
from mlbatch.run_paths import RunPaths, empty_local_dir, local_path
from mlbatch.spec import PipelineSpec


class PublishOperator(PipelineStepOperator):
    ui_color = "#e0f7fa"

    def __init__(self, *, spec: PipelineSpec, **kwargs: Any):
        kwargs.setdefault("outlets", [output_asset(spec)])  # the pipeline's predictions, as an asset
        super().__init__(spec=spec, **kwargs)

    def run(self, context: Any, spec: PipelineSpec, paths: RunPaths) -> dict:
        import shutil

        model = context["ti"].xcom_pull(task_ids="resolve_model")
        if spec.predict.backend != "dataflow":
            self._convert_batch_predictions(spec, paths)

        out_fmt = spec.output.format
        rows_in, files_in = count_rows(str(local_path(paths.input_pattern)), spec.input.format)
        rows_scored, _ = count_rows(f"{local_path(paths.output_staging)}/*", out_fmt)
        rows_rejected, _ = count_rows(f"{local_path(paths.rejected_staging)}/*", "jsonl")
        counts = {"rows_in": rows_in, "rows_scored": rows_scored, "rows_rejected": rows_rejected}
        self.log.info("Reconciliation over %d input files: %s", files_in, counts)
        missing = rows_in - rows_scored - rows_rejected
        if missing:
            raise CountMismatchError(
                f"{spec.name}: rows in ({rows_in}) != rows scored ({rows_scored}) + rows rejected "
                f"({rows_rejected}): {abs(missing)} rows {'missing' if missing > 0 else 'too many'}; "
                f"nothing was published (staging kept at {paths.work})"
            )
        if rows_in and rows_rejected / rows_in > spec.prep.max_rejected_fraction:
            raise TooManyRejectedError(
                f"{spec.name}: {rows_rejected} of {rows_in} rows rejected "
                f"({rows_rejected / rows_in:.2%}) > prep.max_rejected_fraction "
                f"{spec.prep.max_rejected_fraction:.2%}; see {paths.rejected_staging}; nothing was published"
            )

        stats = prediction_stats(str(local_path(paths.output_staging)), out_fmt, spec.output.prediction_column)
        manifest = {
            **counts,
            "pipeline": spec.name,
            "run_id": context["run_id"],
            "model": model["uri"],
            "input": paths.input_pattern,
        }
        commit_partition(local_path(paths.rejected_staging), local_path(paths.dead_letter), manifest)
        commit_partition(local_path(paths.output_staging), local_path(paths.output), manifest)
        for scratch in (paths.prepared, paths.raw_predictions):
            shutil.rmtree(local_path(scratch), ignore_errors=True)
        self.log.info("Published %s (%d rows) and %s (%d rows)", paths.output, rows_scored,
                      paths.dead_letter, rows_rejected)
        published = {**counts, "output_uri": paths.output, "dead_letter_uri": paths.dead_letter,
                     "input_uri": paths.input_pattern, "stats": stats}
        self._asset_event(context, spec, published)
        return published

    def _asset_event(self, context: Any, spec: PipelineSpec, published: dict) -> None:
        """Say which partition this run published in the asset event: downstream pipelines scheduled on
        this asset take their data date (`ds`) and input partition from it."""
        ds = self._renderer(context, spec)("{{ ds }}")
        for asset in self.outlets:
            context["outlet_events"][asset].extra.update(event_extra(spec, ds, published))

    def _convert_batch_predictions(self, spec: PipelineSpec, paths: RunPaths) -> None:
        """Batch-prediction results (Vertex/SageMaker JSON Lines) -> the spec's output format."""
        from mlbatch_beam.predictions import read_batch_predictions, write_table

        staging = empty_local_dir(paths.output_staging)
        flavor = spec.predict.local.flavor if spec.predict.backend == "local" else spec.predict.backend
        tables = read_batch_predictions(paths.raw_predictions, flavor, id_column=spec.input.id_column,
                                        input_dir=paths.prepared)
        for i, table in enumerate(tables):
            table = table.rename_columns([spec.input.id_column, spec.output.prediction_column])
            write_table(table, str(staging / f"part-{i:05d}.{spec.output.format}"), spec.output.format)
