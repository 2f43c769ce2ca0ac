"""Summary statistics and a histogram of one run's predictions, for the MLflow record.

Streamed by record batch over the files (any store), in two passes over the one column: moments and
range first, then a fine histogram (4096 bins) from which the quantiles are read. Memory stays bounded
whatever the partition size; quantiles are exact to one fine bin (range / 4096).
"""

from __future__ import annotations

from collections.abc import Iterator

from mlbatch.storage.layer import Storage

HISTOGRAM_BINS = 40
FINE_BINS = 4096
QUANTILES = {"p01": 0.01, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p99": 0.99}


def prediction_stats(files: list[str], fmt: str, column: str, storage: Storage | None = None) -> dict:
    import numpy as np

    storage = storage or Storage()
    count = finite = 0
    total = total_sq = 0.0
    low, high = np.inf, -np.inf
    for values in _batches(storage, files, fmt, column):
        ok = values[np.isfinite(values)]
        count, finite = count + values.size, finite + ok.size
        if ok.size:
            total += float(ok.sum())
            total_sq += float(np.square(ok).sum())
            low, high = min(low, float(ok.min())), max(high, float(ok.max()))
    if count == 0:
        return {"count": 0}
    stats = {"count": count, "non_finite": count - finite}
    if finite == 0:
        return stats
    mean = total / finite
    fine = np.zeros(FINE_BINS, dtype=np.int64)
    edges = np.linspace(low, high if high > low else low + 1.0, FINE_BINS + 1)
    for values in _batches(storage, files, fmt, column):
        fine += np.histogram(values[np.isfinite(values)], bins=edges)[0]
    cumulative = np.cumsum(fine)
    for key, q in QUANTILES.items():
        i = int(np.searchsorted(cumulative, q * finite))
        stats[key] = float((edges[i] + edges[i + 1]) / 2)
    coarse_edges = np.linspace(edges[0], edges[-1], HISTOGRAM_BINS + 1)
    coarse = np.histogram((edges[:-1] + edges[1:]) / 2, bins=coarse_edges, weights=fine)[0]
    stats.update(mean=mean, std=float(np.sqrt(max(total_sq / finite - mean * mean, 0.0))), min=low, max=high,
                 histogram={"counts": [int(c) for c in coarse],
                            "edges": coarse_edges.tolist()})
    return stats


def _batches(storage: Storage, files: list[str], fmt: str, column: str) -> Iterator:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    for uri in files:
        with storage.open(uri) as fh:
            if fmt == "parquet":
                batches = pq.ParquetFile(fh).iter_batches(columns=[column], batch_size=1 << 16)
            elif fmt == "csv":
                batches = pcsv.open_csv(fh, convert_options=pcsv.ConvertOptions(include_columns=[column]))
            else:
                batches = _jsonl_batches(fh, column)
            for batch in batches:
                yield batch.column(column).to_numpy(zero_copy_only=False).astype("float64")


def _jsonl_batches(fh, column: str, rows: int = 1 << 16) -> Iterator:
    import json

    import pyarrow as pa

    from mlbatch.storage.layer import nonblank_lines

    values: list = []
    for line in nonblank_lines(fh):
        value = json.loads(line).get(column)
        values.append(float("nan") if value is None else value)
        if len(values) == rows:
            yield pa.record_batch({column: pa.array(values, pa.float64())})
            values = []
    if values:
        yield pa.record_batch({column: pa.array(values, pa.float64())})
