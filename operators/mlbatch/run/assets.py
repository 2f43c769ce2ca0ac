"""Airflow assets of the pipelines: every pipeline's predictions are one asset (the outlet of `publish`),
and a spec with `wait.kind: upstream_asset` is scheduled on upstream assets instead of a clock.

One asset per pipeline, not per partition: the partition a run published travels in the asset event's
`extra` (`ds`, `partition`, row counts), and a downstream run takes its data date from there, because
asset-triggered runs have no logical date of their own. Imports only `airflow.sdk` (parse time).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset

from mlbatch.spec.models import PipelineSpec

ASSET_PREFIX = "mlbatch"


def asset_name(pipeline: str) -> str:
    """The asset name of a pipeline's predictions; downstream specs refer to it by pipeline name."""
    return f"{ASSET_PREFIX}/{pipeline}/predictions"


def output_asset(spec: PipelineSpec) -> Asset:
    return Asset(name=asset_name(spec.name), uri=dataset_uri(spec.output.uri),
                 group="mlbatch", extra={"pipeline": spec.name, "format": spec.output.format})


def dataset_uri(output_uri: str) -> str:
    """The templated partition URI without its per-run part, as an asset URI.

    `/data/preds/natality_daily/ds={{ ds }}` -> `file:///data/preds/natality_daily`;
    `gs://b/preds/{{ ds_nodash }}/` -> `gs://b/preds`."""
    root = output_uri
    if "{{" in output_uri:
        prefix = output_uri.split("{{", 1)[0]
        root = prefix if prefix.endswith("/") else prefix.rsplit("/", 1)[0]
    root = root.rstrip("/") or "/"
    if "://" not in root:
        root = "file://" + (root if root.startswith("/") else "/" + root)
    return root


def upstream_schedule(spec: PipelineSpec, pipeline_assets: dict[str, Asset] | None = None) -> Any:
    """The DAG schedule: the spec's cron/preset, or the upstream assets (all or any of them).

    `pipeline_assets` are the output assets of the pipelines loaded together with this one. A pipeline
    named here is scheduled on its concrete asset; one from elsewhere on a reference by name. Airflow
    3.3 runs a DAG for a reference too, but hands it no triggering events (the scheduler only collects
    events of concretely scheduled assets), so the data date then falls back to the run's date."""
    if spec.wait.kind != "upstream_asset":
        return spec.schedule
    refs = [_upstream_ref(item, pipeline_assets or {}) for item in spec.wait.assets]
    if len(refs) == 1:
        return refs[0]
    from airflow.sdk import AssetAll, AssetAny

    return AssetAll(*refs) if spec.wait.assets_mode == "all" else AssetAny(*refs)


def _upstream_ref(item: str, pipeline_assets: dict[str, Asset]) -> Any:
    """A pipeline name refers to that pipeline's predictions; anything with a scheme is an asset URI
    declared here (e.g. data another system produces)."""
    if "://" in item:
        return Asset(uri=item, name=item)
    if item in pipeline_assets:
        return pipeline_assets[item]
    return Asset.ref(name=asset_name(item))


def event_extra(spec: PipelineSpec, ds: str, published: dict) -> dict:
    """What a downstream pipeline needs to know about the partition just published."""
    return {
        "pipeline": spec.name,
        "ds": ds,
        "partition": published["output_uri"],
        "rows_scored": published["rows_scored"],
        "rows_rejected": published["rows_rejected"],
        # what exactly was committed: the attempt and its commit record (docs/storage.md)
        "attempt": published.get("attempt"),
        "commit_record": published.get("commit_record"),
    }


def fill_data_date(context: Any) -> str | None:
    """Give asset-triggered runs a data date (`ds`, `ds_nodash`) in `context`, so templates such as
    `{{ ds }}` work: the newest triggering event's `ds` (an upstream pipeline's partition), else the day
    the run was queued for. Runs with a logical date are left alone."""
    if context.get("ds"):
        return context["ds"]
    events = context.get("triggering_asset_events") or {}
    dated = [e for asset in events for e in events[asset] if (e.extra or {}).get("ds")]
    if dated:
        ds = str(max(dated, key=lambda e: e.timestamp).extra["ds"])
    else:
        dag_run = context.get("dag_run")
        run_after = getattr(dag_run, "run_after", None)
        if run_after is None:
            return None
        ds = run_after.strftime("%Y-%m-%d")
    context["ds"], context["ds_nodash"] = ds, ds.replace("-", "")
    return ds
