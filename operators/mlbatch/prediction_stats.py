"""Summary statistics and a histogram of one run's predictions, for the MLflow record."""

from __future__ import annotations

import glob
from pathlib import Path

HISTOGRAM_BINS = 40


def prediction_stats(folder: str, fmt: str, column: str) -> dict:
    import numpy as np

    values = _read_column(folder, fmt, column)
    if values.size == 0:
        return {"count": 0}
    finite = values[np.isfinite(values)]
    counts, edges = np.histogram(finite, bins=HISTOGRAM_BINS)
    q = np.quantile(finite, [0.01, 0.25, 0.5, 0.75, 0.99]) if finite.size else [float("nan")] * 5
    return {
        "count": int(values.size),
        "non_finite": int(values.size - finite.size),
        "mean": float(finite.mean()), "std": float(finite.std()),
        "min": float(finite.min()), "max": float(finite.max()),
        "p01": float(q[0]), "p25": float(q[1]), "p50": float(q[2]), "p75": float(q[3]), "p99": float(q[4]),
        "histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
    }


def _read_column(folder: str, fmt: str, column: str):
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    chunks = []
    for path in sorted(glob.glob(f"{folder}/*")):
        if Path(path).name.startswith(("_", ".")):
            continue
        if fmt == "parquet":
            table = pq.read_table(path, columns=[column])
        elif fmt == "csv":
            table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(include_columns=[column]))
        else:
            table = pjson.read_json(path)
        chunks.append(table.column(column).to_numpy(zero_copy_only=False).astype("float64"))
    return np.concatenate(chunks) if chunks else np.array([], dtype="float64")
