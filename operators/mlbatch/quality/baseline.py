"""Where a run's statistics are and what today is compared with (docs/quality.md, "Baselines").

- Today's: the predict job writes `statistics.json` in the run's work folder (`today_uri`).
- A committed run's: publish copies that document beside the committed attempt's files and names it in
  the `_SUCCESS` record (`statistics`), so a baseline reads only committed runs.
- `baseline: {runs: N}`: the pool of the last N committed partitions of this pipeline before today's:
  the sibling folders of today's output partition whose `_SUCCESS` record names this pipeline and a
  statistics document, whose folder name sorts before today's (date order for `ds=YYYY-MM-DD`
  partitions), the N nearest.
- `baseline: {model: true}`: the document `log_model_baseline` logged to the model version's MLflow run.

Numeric columns compare on fixed bins: the edges of the newest baseline run that has some, else the
equal-mass edges of the pooled first-run sketches; the predict step hands them to the job
(`edges_args`), so today's histogram is on the same bins and the next runs carry them forward.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mlbatch.errors import StatisticsError
from mlbatch.storage.layer import Storage, join, name, parent

STATISTICS_FILE = "statistics.json"  # in the run's work folder, written by the predict job
COMMITTED_FILE = "_statistics.json"  # in the committed attempt, named by the record's `statistics`
EDGES_FILE = "statistics_edges.json"  # in the run's work folder, read by the predict job
MODEL_ARTIFACT = "quality/statistics.json"  # in the model version's MLflow run
RECORD = "_SUCCESS"  # mlbatch.run.commit.RECORD (quality sits below run: tests check they agree)
ROLES = ("features", "predictions")


@dataclass
class Statistics:
    """One run's (or a pooled baseline's) summaries by role and column, and what it is."""

    features: dict[str, Any]
    predictions: dict[str, Any]
    description: str = ""
    runs: int = 1
    rows_in: int | None = None
    rows_rejected: int | None = None
    notes: list[str] = field(default_factory=list)
    training: bool = False  # logged with the model: no per-run row count to compare

    def role(self, role: str) -> dict[str, Any]:
        return self.features if role == "features" else self.predictions


def parse(doc: Any, where: str) -> Statistics:
    """A statistics document (mlbatch_beam.quality.combine) -> summaries; a bad one names `where`."""
    from mlbatch_beam.quality import StatisticsError as JobStatisticsError
    from mlbatch_beam.quality.statistics import from_json

    if not isinstance(doc, dict) or not all(isinstance(doc.get(r, {}), dict) for r in ROLES):
        raise StatisticsError(f"{where}: not a statistics document ({{features: {{}}, predictions: {{}}}}): "
                              f"{str(doc)[:200]}")
    try:
        return Statistics(*({c: from_json(s) for c, s in doc.get(r, {}).items()} for r in ROLES))
    except JobStatisticsError as exc:
        raise StatisticsError(f"{where}: {exc}") from exc


def today_uri(paths: Any, predict_result: dict | None) -> str:
    return (predict_result or {}).get("statistics_uri") or join(paths.work, STATISTICS_FILE)


def read(storage: Storage, uri: str) -> Statistics | None:
    doc = storage.read_json(uri)
    return None if doc is None else parse(doc, uri)


def previous_runs(storage: Storage, pipeline: str, output: str, n: int) -> list[tuple[str, dict]]:
    """(partition, commit record) of the last `n` committed runs of `pipeline` before `output`."""
    output = output.rstrip("/")
    folder, today = parent(output), name(output)
    fs, path = storage.fs(join(folder, "*", RECORD))
    with storage.errors(folder, listing=True):
        fs.invalidate_cache()
        found = sorted(fs.glob(path))
    runs = []
    for record_path in found:
        partition = storage.uri(folder, record_path.rsplit("/", 1)[0])
        if name(partition) >= today:
            continue
        record = storage.read_json(join(partition, RECORD)) or {}
        if record.get("pipeline") == pipeline and record.get("statistics"):
            runs.append((partition, record))
    return runs[-n:]


def from_runs(storage: Storage, spec: Any, output: str) -> Statistics | None:
    runs = previous_runs(storage, spec.name, output, spec.quality.baseline.runs)
    if not runs:
        return None
    docs = [read(storage, record["statistics"]) for _, record in runs]
    missing = [p for (p, _), d in zip(runs, docs) if d is None]
    if missing:
        raise StatisticsError(f"{spec.name}: the commit records of {missing} name statistics that are gone")
    out = pool(docs)
    first, last = (name(p) for p in (runs[0][0], runs[-1][0]))
    out.description = (f"last {len(runs)} committed run{'s' if len(runs) > 1 else ''} "
                       f"({first}{'' if first == last else ' .. ' + last})")
    counts = [(r.get("rows_in"), r.get("rows_rejected")) for _, r in runs]
    if all(i is not None and j is not None for i, j in counts):
        out.rows_in, out.rows_rejected = sum(i for i, _ in counts), sum(j for _, j in counts)
    return out


def from_model(spec: Any, version: int | str) -> Statistics | None:
    """The statistics logged with the model version (log_model_baseline), None when it has none."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=spec.model.tracking_uri)
    run_id = client.get_model_version(spec.model.name, str(version)).run_id
    try:
        text = client.download_artifacts(run_id, MODEL_ARTIFACT) if run_id else None
    except (MlflowException, OSError):
        text = None
    if text is None:
        return None
    with open(text) as fh:
        out = parse(json.load(fh), f"model {spec.model.name} v{version} (run {run_id}) {MODEL_ARTIFACT}")
    out.description = f"model {spec.model.name} v{version}'s logged statistics"
    out.training = True
    return out


def load(storage: Storage, spec: Any, output: str, model_version: int | str | None) -> Statistics | None:
    """The baseline the spec asks for; None when there is none yet."""
    if spec.quality.baseline.model:
        return from_model(spec, model_version) if model_version is not None else None
    return from_runs(storage, spec, output)


def pool(docs: list[Statistics]) -> Statistics:
    """Several runs' statistics as one baseline: per column, the runs' summaries on common edges
    merged (`mlbatch_beam.quality.statistics.pool`); a run whose column cannot join is left out, noted."""
    from mlbatch_beam.quality.statistics import pool as merge_runs

    out = Statistics({}, {}, runs=len(docs))
    for role in ROLES:
        for column in sorted({c for d in docs for c in d.role(role)}):
            summaries = [d.role(role)[column] for d in docs if column in d.role(role)]
            edges = column_edges(summaries)
            kinds = {s.kind for s in summaries}
            joined = [s for s in (on_edges(s, edges) for s in summaries) if s is not None] if (
                kinds == {"numeric"}) else summaries if len(kinds) == 1 else []
            if len(joined) < len(summaries):
                out.notes.append(f"{column}: {len(summaries) - len(joined)} baseline run(s) left out "
                                 "(another kind or other bin edges)")
            if joined:
                out.role(role)[column] = merge_runs(joined)
    return out


def column_edges(summaries: list) -> list[float] | None:
    """The edges a numeric column bins on: the newest summary's own, else the pooled sketches' quantiles."""
    from mlbatch_beam.quality.statistics import pool as merge_runs

    numeric = [s for s in summaries if s.kind == "numeric"]
    binned = [s for s in numeric if s.edges is not None]
    if binned:
        return binned[-1].edges
    return merge_runs(numeric).quantile_edges() if numeric else None


def on_edges(summary, edges: list[float] | None):
    """A numeric summary on `edges`: itself, a first run's sketch re-binned (to 0.1 %), or None."""
    from mlbatch_beam.quality.numeric import NumericSummary

    if edges is None or summary.edges == edges:
        return summary
    if summary.edges is not None:
        return None
    mass, where = summary.binned(edges)
    out = NumericSummary(summary.column, edges, summary.runs, summary.count, summary.nulls, summary.non_finite,
                         summary.min, summary.max, summary.mean, summary.m2)
    out.below, out.above = int(mass[0]), int(mass[-1])
    out.counts = [int(m) for m in mass[1:-1]]
    sums = (mass * where).tolist()
    out.below_sum, out.above_sum, out.sums = sums[0], sums[-1], sums[1:-1]
    return out


def edges_args(storage: Storage, spec: Any, paths: Any, model_version: int | str | None) -> list[str]:
    """The predict job's statistics arguments: where to write today's document and the baseline's bin
    edges ({column: edges}, written to the work folder). None without a `quality:` block."""
    if getattr(spec, "quality", None) is None:
        return []
    baseline = load(storage, spec, paths.output, model_version)
    edges = {} if baseline is None else {
        c: column_edges([s]) for role in ROLES for c, s in baseline.role(role).items() if s.kind == "numeric"}
    uri = join(paths.work, EDGES_FILE)
    storage.write_bytes(uri, json.dumps({c: e for c, e in edges.items() if e}).encode())
    return ["--statistics-file", join(paths.work, STATISTICS_FILE), "--statistics-edges", uri]


def log_model_baseline(frame, model_name: str, version: int | str | None = None, run_id: str | None = None,
                       predictions: list[str] | tuple[str, ...] = (), tracking_uri: str | None = None) -> str:
    """Log the statistics of `frame` (a pandas DataFrame: the features the model was trained or
    validated on, and its `predictions` columns) with a model version's MLflow run, for
    `quality.baseline.model: true`. Give the version (its run is looked up) or the run id; returns
    the run id. Numeric columns keep a quantile sketch: the gate bins them on its quantiles."""
    import pyarrow as pa
    from mlflow import MlflowClient

    from mlbatch_beam.quality.combine import document_bytes, kind_of
    from mlbatch_beam.quality.statistics import summary

    client = MlflowClient(tracking_uri=tracking_uri)
    if (version is None) == (run_id is None):
        raise ValueError("log_model_baseline: give exactly one of version or run_id")
    if run_id is None:
        run_id = client.get_model_version(model_name, str(version)).run_id
        if not run_id:
            raise ValueError(f"model {model_name} v{version} has no MLflow run to log its statistics with")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sides: dict[str, dict] = {"features": {}, "predictions": {}}
    for column in table.column_names:
        values = table.column(column)
        side = "predictions" if column in predictions else "features"
        sides[side][column] = summary(column, kind_of(values.type)).add_batch(values).to_json()
    client.log_text(run_id, document_bytes(sides).decode(), MODEL_ARTIFACT)
    return run_id


def sidecars(storage: Storage, spec: Any, paths: Any, predict_result: dict | None) -> dict:
    """Today's statistics to keep with the committed attempt (`mlbatch.run.commit.commit`'s sidecars,
    recorded as the record's `statistics`); none when the job wrote none."""
    if getattr(spec, "quality", None) is None:
        return {}
    uri = today_uri(paths, predict_result)
    try:
        return {"statistics": (COMMITTED_FILE, storage.read_bytes(uri))}
    except FileNotFoundError:
        return {}


def log_run_statistics(client: Any, run_id: str, storage: Storage, uri: str) -> None:
    """The committed run's statistics in its MLflow run: the document (artifact `MODEL_ARTIFACT`, the
    same path a model's baseline uses) and per column its null fraction and, when numeric, its mean."""
    import time

    from mlflow.entities import Metric

    text = storage.read_bytes(uri).decode()
    stats, now = parse(json.loads(text), uri), int(time.time() * 1000)
    client.log_text(run_id, text, MODEL_ARTIFACT)
    metrics = []
    for role in ROLES:
        for column, s in stats.role(role).items():
            if s.count:
                metrics.append(Metric(f"quality.{column}.null_fraction", s.nulls / s.count, now, 0))
            if s.kind == "numeric" and s.finite:
                metrics.append(Metric(f"quality.{column}.mean", s.mean, now, 0))
    client.log_batch(run_id, metrics=metrics)
