"""Count rows in files, independently of the jobs that wrote them, on any store.

`publish` reconciles these counts (rows in = rows scored + rows rejected) instead of trusting the jobs'
own counters, so a job that silently drops rows cannot pass. Parquet files are counted from their
footers; CSV and JSON Lines are streamed (bounded memory, nothing downloaded whole); JSON Lines in large
blocks (`storage.nonblank_lines`).
"""

from __future__ import annotations

from mlbatch.storage.layer import Storage, nonblank_lines

# mlbatch_beam.endpoint_score's dead letters for the rows the endpoint did not score (beside prep's rejected)
ENDPOINT_FAILED_FILES = "endpoint-failed-*.jsonl"


def count_rows(pattern: str, fmt: str, storage: Storage | None = None) -> tuple[int, int]:
    """Return (rows, files) over the data files matching `pattern` (a glob or a folder)."""
    storage = storage or Storage()
    files = storage.files(pattern)
    return sum(count_file(storage, uri, fmt) for uri in files), len(files)


def count_file(storage: Storage, uri: str, fmt: str) -> int:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with storage.open(uri) as fh:
            return pq.ParquetFile(fh).metadata.num_rows
    if fmt == "csv":
        import pyarrow.csv as pcsv

        with storage.open(uri) as fh:
            return sum(batch.num_rows for batch in pcsv.open_csv(fh))
    if fmt == "jsonl":
        with storage.open(uri) as fh:
            return count_json_lines(fh)
    raise ValueError(f"unknown format {fmt!r} for {uri}")


def count_json_lines(fh, block: int = 8 << 20) -> int:
    """Rows of a JSON Lines file: its non-blank lines."""
    return sum(1 for _ in nonblank_lines(fh, block))
