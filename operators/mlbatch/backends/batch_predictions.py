"""The end of the predict step for the backends whose service scores files (`local`, `sagemaker`,
`vertex`): the service's output (`mlbatch_beam.predictions`: Vertex result lines, SageMaker `.out`
answers joined to the prepared files' ids) read once, table by table, into the run's output staging
folder in the spec's output format, and, in that same read, the quality gate's prediction statistics
(the `RunStatistics` summaries, `mlbatch_beam.quality.statistics.add_columns`).

Why here and not in publish: the gate runs between predict and publish, and the issue asks for the
statistics in the pass that reads the predictions, with no second read. The document the gate reads
(`statistics.json` in the run's work folder) gets the predictions beside prep's feature statistics;
publish then reconciles and commits the staged files as it does the Beam jobs' output.

Shared by those three backends' `result` (modules of one package compose each other); publish calls it
too for a predict result that staged nothing (a predict step that ran before this module existed).
Light to import: pyarrow and the readers load inside the functions.
"""

from __future__ import annotations

import json
from typing import Any

from mlbatch.errors import StatisticsError
from mlbatch.quality.baseline import EDGES_FILE, STATISTICS_FILE, edges_args
from mlbatch.storage.layer import Storage, join, write_table


def stage_batch_predictions(spec: Any, paths: Any, raw: str, model_version: int | str | None,
                            statistics: bool = True, storage: Storage | None = None) -> dict:
    """Join the service's files under `raw` to their ids and write them to `paths.output_staging`
    (emptied first: a retry starts clean). With a `quality:` block (and `statistics`), the predictions'
    summaries go into the run's statistics document. Returns the predict result's fields:
    `output_uri`, `staged_files`, `rows_staged` and, with statistics, `statistics_uri`."""
    from mlbatch_beam.outputs import PredictionOutput
    from mlbatch_beam.predictions import read_batch_predictions
    from mlbatch_beam.quality.statistics import add_columns

    storage = storage or Storage.for_spec(spec)
    staging = paths.output_staging
    storage.rm(staging)
    flavor = spec.predict.local.flavor if spec.predict.backend == "local" else spec.predict.backend
    id_column = spec.input.id_column
    tables = read_batch_predictions(storage, raw, flavor, id_column=id_column, input_dir=paths.prepared,
                                    output=PredictionOutput.from_json(spec.output.prediction_output()))
    gated = statistics and getattr(spec, "quality", None) is not None
    edges = job_edges(storage, spec, paths, model_version) if gated else {}
    summaries: dict = {}
    files = rows = 0
    for table in tables:
        write_table(storage, table, join(staging, f"part-{files:05d}.{spec.output.format}"), spec.output.format)
        files, rows = files + 1, rows + table.num_rows
        if gated:  # the published columns, as the Beam jobs summarise their scored batches
            for batch in table.to_batches():
                add_columns(summaries, batch, [c for c in table.column_names if c != id_column], edges)
    out = {"output_uri": staging, "staged_files": files, "rows_staged": rows}
    if gated:
        out["statistics_uri"] = add_predictions(storage, paths, summaries)
    return out


def job_edges(storage: Storage, spec: Any, paths: Any, model_version: int | str | None) -> dict:
    """The baseline's bin edges, as prep's job got them (`statistics_edges.json` in the work folder,
    which prep wrote for every role); written now if prep did not (e.g. a spec given `quality:` since)."""
    uri = join(paths.work, EDGES_FILE)
    if not storage.exists(uri):
        edges_args(storage, spec, paths, model_version)
    edges = storage.read_json(uri)
    if not isinstance(edges, dict) or not all(isinstance(v, list) for v in edges.values()):
        raise StatisticsError(f"{uri}: bin edges must be a JSON object {{column: [edges]}}, got {str(edges)[:200]}")
    return edges


def add_predictions(storage: Storage, paths: Any, summaries: dict) -> str:
    """The run's statistics document with `summaries` as its predictions: prep's features kept, any
    predictions of an earlier try replaced; the layout of `mlbatch_beam.quality.combine.document_bytes`
    (not imported: it loads Beam). Returns its URI."""
    from mlbatch_beam.quality.batches import VERSION

    uri = join(paths.work, STATISTICS_FILE)
    doc = storage.read_json(uri) or {}
    if not isinstance(doc, dict) or not isinstance(doc.get("features", {}), dict):
        raise StatisticsError(f"{uri}: not a statistics document ({{features: {{}}, predictions: {{}}}}): "
                              f"{str(doc)[:200]}")
    predictions = {name: s.to_json() for name, s in sorted(summaries.items())}
    document = {"version": VERSION, "features": doc.get("features", {}), "predictions": predictions}
    storage.write_bytes(uri, (json.dumps(document, sort_keys=True) + "\n").encode())
    return uri
