"""resolve_model: turn the spec's MLflow alias into one pinned model version for the whole run.

Later steps read the version from this task's XCom, never the alias, so moving `champion` while a run
is in flight cannot mix two models in one output partition.
"""

from __future__ import annotations

from typing import Any

from mlbatch.links import MlflowModelVersionLink
from mlbatch.operators.base import PipelineStepOperator
from mlbatch.run_paths import RunPaths
from mlbatch.spec import PipelineSpec


class ResolveModelOperator(PipelineStepOperator):
    operator_extra_links = (MlflowModelVersionLink(),)
    ui_color = "#e6f4ea"

    def run(self, context: Any, spec: PipelineSpec, paths: RunPaths) -> dict:
        import mlflow
        from mlflow import MlflowClient

        ref = spec.model
        client = MlflowClient(tracking_uri=ref.tracking_uri)
        if ref.alias:
            version = client.get_model_version_by_alias(ref.name, ref.alias)
        else:
            version = client.get_model_version(ref.name, str(ref.version))
        pinned = {
            "name": ref.name,
            "alias": ref.alias,
            "version": int(version.version),
            "uri": f"models:/{ref.name}/{version.version}",
            "artifact_uri": client.get_model_version_download_uri(ref.name, version.version),
            "source_run_id": version.run_id,
            "tracking_uri": ref.tracking_uri or mlflow.get_tracking_uri(),
        }
        self.log.info("Pinned %s (alias %s) for run %s", pinned["uri"], ref.alias, context["run_id"])
        return pinned
