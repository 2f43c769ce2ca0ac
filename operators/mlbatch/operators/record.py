"""record: one MLflow run per DAG run, in the experiment `mlbatch/<pipeline>`.

It holds what a reviewer needs to compare runs: the pinned model version, input/output URIs, row
counts, each step's wall time, CPU time and peak memory, prediction statistics and a histogram.
A retry of this task updates the same MLflow run (same `airflow.run_id` and published result); a rerun
of the DAG run that published a different result (another model version, other input) gets its own
MLflow run, tagged `mlbatch.attempt` and linked to the previous one by `mlbatch.previous_run_id`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mlbatch.operators.base import RESOURCES_KEY, PipelineStepOperator
from mlbatch.operators.links import MlflowRunLink
from mlbatch.quality.baseline import log_run_statistics
from mlbatch.run.mlflow_experiments import ensure_experiment
from mlbatch.run.paths import RunPaths
from mlbatch.run.steps import PREDICT, PUBLISH, RECORD, RESOLVE_MODEL, STEP_IDS
from mlbatch.spec.models import PipelineSpec
from mlbatch.storage.layer import Storage

MEASURED_STEPS = STEP_IDS[:STEP_IDS.index(RECORD)]  # every step before this one


class RecordRunOperator(PipelineStepOperator):
    operator_extra_links = (MlflowRunLink(),)
    ui_color = "#fef7e0"

    def run(self, context: Any, spec: PipelineSpec, paths: RunPaths) -> dict:
        import time

        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param

        # The spec's tracking server through a client of its own: MLflow's process-wide setting (and the
        # MLFLOW_TRACKING_URI it exports) stays as it was for whatever else runs in this process.
        client = MlflowClient(tracking_uri=spec.model.tracking_uri)
        ti = context["ti"]
        model = ti.xcom_pull(task_ids=RESOLVE_MODEL)
        published = ti.xcom_pull(task_ids=PUBLISH)
        predicted = ti.xcom_pull(task_ids=PREDICT) or {}
        experiment = f"mlbatch/{spec.name}"
        experiment_id = ensure_experiment(experiment, client)
        version = int(predicted.get("model_version") or model["version"])  # what produced the rows
        params = {
            "model_uri": f"models:/{model['name']}/{version}",
            "model_alias": model["alias"],
            "model_version": version,
            "model_source_run_id": model["source_run_id"],
            "backend": spec.predict.backend,
            "input_uri": published["input_uri"],
            "output_uri": published["output_uri"],
            "dead_letter_uri": published["dead_letter_uri"],
            "logical_date": context["ds"],
        }
        if predicted.get("served_version"):  # backend endpoint: how the served version was learnt
            params["endpoint_served_version"] = predicted["served_version"]
        gate = {k: published[k] for k in ("quality", "approved_by", "approval_reason") if published.get(k) is not None}
        params.update({f"quality_gate.{k}": v for k, v in gate.items()})  # the gate's verdict and approver
        mlflow_run_id = _mlflow_run(client, experiment_id, context, spec, model, version, params, published)
        try:
            now = int(time.time() * 1000)
            client.log_batch(mlflow_run_id, params=[Param(k, str(v)) for k, v in params.items()],
                             metrics=[Metric(k, float(v), now, 0)
                                      for k, v in _metrics(ti, published, predicted).items()])
            _log_artifacts(client, mlflow_run_id, spec, model, published, predicted)
            if published.get("statistics"):  # the committed run's column statistics (the quality gate's)
                log_run_statistics(client, mlflow_run_id, Storage.for_spec(spec), published["statistics"])
        except BaseException:
            client.set_terminated(mlflow_run_id, status="FAILED")
            raise
        client.set_terminated(mlflow_run_id)
        self.log.info("MLflow run %s in experiment %s", mlflow_run_id, experiment)
        return {"mlflow_run_id": mlflow_run_id, "experiment": experiment,
                "experiment_id": experiment_id, "tracking_uri": client.tracking_uri}


def _mlflow_run(client: Any, experiment_id: str, context: Any, spec: PipelineSpec, model: dict, version: int,
                params: dict, published: dict) -> str:
    """The MLflow run of this result: a retry of record reuses the run it started (same attempt key);
    a rerun that published anew gets its own run, tagged with the one it follows."""
    run_id = context["run_id"]
    attempt_key = _attempt_key(params, published)
    earlier = client.search_runs(
        [experiment_id], filter_string=f"tags.`airflow.run_id` = '{run_id}'", max_results=100,
        order_by=["attributes.start_time ASC"])
    same = [r for r in earlier if r.data.tags.get("mlbatch.attempt_key") == attempt_key]
    if same:
        client.update_run(same[0].info.run_id, status="RUNNING")
        return same[0].info.run_id
    tags = {
        "airflow.dag_id": context["dag"].dag_id,
        "airflow.run_id": run_id,
        "pipeline": spec.name,
        "backend": spec.predict.backend,
        "model.name": model["name"],
        "model.version": str(version),
        "mlbatch.attempt_key": attempt_key,
    }
    if published.get("approved_by"):
        tags["mlbatch.approved_by"] = published["approved_by"]
    if earlier:
        tags["mlbatch.attempt"] = str(len(earlier) + 1)
        tags["mlbatch.previous_run_id"] = earlier[-1].info.run_id
    created = client.create_run(experiment_id, run_name=f"{spec.name} {context['ds']}", tags=tags)
    return created.info.run_id


def _metrics(ti: Any, published: dict, predicted: dict) -> dict[str, float]:
    """Row counts, the prediction statistics, and each step's wall/CPU/peak memory."""
    metrics = {k: published[k] for k in ("rows_in", "rows_scored", "rows_rejected", "rows_failed") if k in published}
    for key, value in published["stats"].items():
        if isinstance(value, (int, float)):
            metrics[f"prediction_{key}"] = value
    for step in MEASURED_STEPS:
        for key, value in (ti.xcom_pull(task_ids=step, key=RESOURCES_KEY) or {}).items():
            metrics[f"{step}.{key}"] = value
    for key in ("model_loads", "requests", "retries"):  # the endpoint job counts its requests
        if key in predicted:
            metrics[f"predict.{key}"] = predicted[key]
    return metrics


def _log_artifacts(client: Any, mlflow_run_id: str, spec: PipelineSpec, model: dict, published: dict,
                   predicted: dict) -> None:
    """The prediction histogram (SVG) and the whole run summary (JSON)."""
    with tempfile.TemporaryDirectory() as tmp:
        plot = _histogram_svg(published["stats"], spec, Path(tmp) / "prediction_histogram.svg")
        if plot:
            client.log_artifact(mlflow_run_id, str(plot))
        summary = Path(tmp) / "run_summary.json"
        summary.write_text(json.dumps({"model": model, "publish": published, "predict": predicted},
                                      indent=2, default=str))
        client.log_artifact(mlflow_run_id, str(summary))


def _attempt_key(params: dict, published: dict) -> str:
    """Same published result -> same key (record's retries update one MLflow run); a rerun that
    published something else gets its own run, as MLflow params cannot change."""
    import hashlib
    import json

    counts = {k: published.get(k) for k in ("rows_in", "rows_scored", "rows_rejected")}
    return hashlib.sha256(json.dumps([params, counts], sort_keys=True, default=str).encode()).hexdigest()[:16]


def _histogram_svg(stats: dict, spec: PipelineSpec, path: Path) -> Path | None:
    hist = stats.get("histogram")
    if not hist:
        return None
    from mlbatch.run.histogram_svg import histogram_svg

    title = f"{spec.name}: {stats['count']:,} predictions (mean {stats['mean']:.3f})"
    path.write_text(histogram_svg(hist["counts"], hist["edges"], title, spec.output.prediction_column))
    return path
