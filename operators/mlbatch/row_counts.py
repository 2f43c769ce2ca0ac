"""Count rows in files, independently of the jobs that wrote them.

`publish` reconciles these counts (rows in = rows scored + rows rejected) instead of trusting the jobs'
own counters, so a job that silently drops rows cannot pass.
"""

from __future__ import annotations

import glob
from pathlib import Path


def count_rows(pattern: str, fmt: str) -> tuple[int, int]:
    """Return (rows, files) over every file matching `pattern` (a glob), skipping `_`-prefixed files."""
    files = [p for p in sorted(glob.glob(pattern)) if not Path(p).name.startswith(("_", "."))]
    files = [p for p in files if Path(p).is_file()]
    return sum(_count_file(Path(p), fmt) for p in files), len(files)


def _count_file(path: Path, fmt: str) -> int:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if fmt == "csv":
        import pyarrow.csv as pcsv

        reader = pcsv.open_csv(path)
        return sum(batch.num_rows for batch in reader)
    if fmt == "jsonl":
        with path.open("rb") as fh:
            return sum(1 for line in fh if line.strip())
    raise ValueError(f"unknown format {fmt!r} for {path}")
