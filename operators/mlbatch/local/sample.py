"""The input sample `mlbatch new` learns from, on a local disk, gs:// or s3:// alike.

Object stores are reached through the storage layer, with the Airflow connections a pipeline uses by
default (`google_cloud_default`, `aws_default`: what a spec's `storage:` block starts from), so the
sample is read where and as the pipeline will read it. Each read is bounded (`SAMPLE_BYTES` per text
file, the first row group of a Parquet file), and a missing connection or an unreachable endpoint is
told within seconds instead of after the clients' own retries.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from mlbatch.local.infer import ScaffoldError

SAMPLE_ROWS = 10_000
SAMPLE_BYTES = 8 << 20  # of each CSV / JSON Lines file; whole lines only
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl"}


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def reachable(uri: str) -> None:
    """Refuse within seconds, in one line naming the connection and its endpoint, when the connection
    a pipeline would use for `uri` does not exist or nothing answers at its endpoint (the storage
    layer's own check, mlbatch.storage.connections), instead of after the clients' retries."""
    from mlbatch.errors import ConnectionNotFoundError, StorageError
    from mlbatch.storage.connections import check_endpoint, reach
    from mlbatch.storage.layer import Storage

    kind = "gcp" if uri.startswith("gs://") else "aws"
    conn_id = Storage().gcp_conn_id if kind == "gcp" else Storage().aws_conn_id
    try:
        check_endpoint(reach(kind, conn_id, f"storage.{kind}_conn_id", False, uri, "--input"), uri)
    except (ConnectionNotFoundError, StorageError) as exc:
        raise ScaffoldError(f"--input {uri}: {exc}") from None


def store(uri: str):
    """(fsspec filesystem, path, storage layer) for `uri`; a remote store is checked first."""
    from mlbatch.storage.layer import Storage

    if not _is_local(uri):
        reachable(uri)
    storage = Storage()
    try:
        fs, path = storage.fs(uri)
    except Exception as exc:  # a connection that cannot be built: name it and the reason
        raise ScaffoldError(f"--input {uri}: cannot open the store ({_one_line(exc)})") from None
    return fs, path, storage


def input_files(uri: str) -> tuple[str, list[str], str]:
    """(the input pattern for the spec, matching data files, format) for a file, folder or glob."""
    if _is_local(uri):
        uri = str(Path(uri.removeprefix("file://")).expanduser().resolve())
    fs, path, storage = store(uri)
    try:
        data, pattern = _listed(fs, path, uri)
    except ScaffoldError:
        raise
    except Exception as exc:  # the store answered with an error: one line, naming what was asked
        raise ScaffoldError(f"--input {uri}: listing failed: {_one_line(exc)}") from None
    suffix = Path(data[0]).suffix
    if suffix not in FORMATS:
        raise ScaffoldError(f"--input {uri}: cannot tell the format of {data[0]} from its name; "
                            "expected .parquet, .csv or .jsonl")
    files = data if _is_local(uri) else [storage.uri(uri, p) for p in data]
    return pattern, files, FORMATS[suffix]


def _listed(fs, path: str, uri: str) -> tuple[list[str], str]:
    fs.invalidate_cache()
    if fs.isdir(path):
        data = [p for p in sorted(fs.ls(path, detail=False))
                if not Path(p).name.startswith(("_", ".")) and Path(p).suffix in FORMATS]
        suffixes = sorted({Path(p).suffix for p in data})
        if not data:
            raise ScaffoldError(f"--input {uri}: the folder holds no .parquet, .csv or .jsonl files")
        if len({FORMATS[s] for s in suffixes}) > 1:
            raise ScaffoldError(f"--input {uri}: the folder mixes formats ({', '.join(suffixes)}); "
                                "point --input at a glob of one kind")
        return data, f"{uri.rstrip('/')}/*{suffixes[0]}" if len(suffixes) == 1 else f"{uri.rstrip('/')}/*"
    data = sorted(fs.glob(path)) if any(c in path for c in "*?[") else ([path] if fs.exists(path) else [])
    if not data:
        bucket = "" if _is_local(uri) else path.split("/", 1)[0]
        if bucket and not fs.exists(bucket):
            raise ScaffoldError(f"--input {uri}: bucket {bucket!r} does not exist on {uri.split(':')[0]}:// "
                                "(as the pipeline's default connection sees it); check the name or create it")
        raise ScaffoldError(f"--input {uri}: no such file (or nothing matches)")
    return data, uri


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def marker_of(first_file: str) -> str | None:
    """The `_SUCCESS` next to the input's first file, on its store, if there is one."""
    from mlbatch.storage.layer import Storage, join, parent

    success = join(parent(first_file), "_SUCCESS")
    return success if Storage().exists(success) else None


def read_sample(path: str, fmt: str, rows: int = SAMPLE_ROWS, notes: list[str] | None = None):
    """The first `rows` rows of one data file as a pyarrow Table (Parquet: of its first row group;
    CSV and JSON Lines: of its first `SAMPLE_BYTES`)."""
    import pyarrow as pa

    from mlbatch.storage.layer import Storage

    try:
        with Storage().open(path) as f:
            if fmt == "parquet":
                import pyarrow.parquet as pq

                batch = next(pq.ParquetFile(f).iter_batches(batch_size=rows), None)
                return pa.Table.from_batches([batch]) if batch is not None else pa.table({})
            head = _whole_lines(f.read(SAMPLE_BYTES))
    except FileNotFoundError:
        raise ScaffoldError(f"{path}: no such file") from None
    if fmt == "csv":
        import pyarrow.csv as pacsv

        return pacsv.read_csv(io.BytesIO(head)).slice(0, rows)
    return jsonl_table(head.splitlines()[:rows], path, [] if notes is None else notes)


def _whole_lines(head: bytes) -> bytes:
    """`head` up to its last line break (all of it when it is the whole file or one long line)."""
    if len(head) < SAMPLE_BYTES or b"\n" not in head:
        return head
    return head[: head.rindex(b"\n") + 1]


def jsonl_table(lines: list[bytes], path: str, notes: list[str]):
    """JSON Lines as a table, one type per column: a column mixing numbers and strings (valid input:
    prep reads each value as the spec's type, rejecting what does not fit) becomes string, said in
    `notes`; pyarrow's reader refuses such a column outright."""
    import pyarrow as pa

    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ScaffoldError(f"{path}: line {number} is not JSON ({exc.msg})") from None
        if not isinstance(records[-1], dict):
            raise ScaffoldError(f"{path}: line {number} is not a JSON object")
    names = list(dict.fromkeys(k for r in records for k in r))
    columns = {}
    for name in names:
        values = [r.get(name) for r in records]
        kind = _json_kind(values)
        if kind == "mixed":
            notes.append(f"column {name} mixes numbers and strings in the sample: inferred string")
            values = [v if v is None or isinstance(v, str) else json.dumps(v) for v in values]
        columns[name] = pa.array(values, type={"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(),
                                               "string": pa.string(), "mixed": pa.string()}.get(kind))
    return pa.table(columns)


def _json_kind(values: list[Any]) -> str | None:
    """bool, int, float, string, or mixed (numbers or booleans next to strings, or nested values)."""
    kinds = {"bool" if isinstance(v, bool) else "int" if isinstance(v, int) else "float" if isinstance(v, float)
             else "string" if isinstance(v, str) else "other" for v in values if v is not None}
    if not kinds:
        return None
    if len(kinds) == 1 and "other" not in kinds:
        return kinds.pop()
    if kinds == {"int", "float"}:
        return "float"
    return "mixed"


def read_sample_files(files: list[str], fmt: str, rows: int = SAMPLE_ROWS, notes: list[str] | None = None):
    """Up to `rows` rows from the first files (so a small first file does not make a small sample)."""
    import pyarrow as pa

    tables, count = [], 0
    for path in files[:20]:
        table = read_sample(path, fmt, rows - count, notes)
        if tables and table.schema != tables[0].schema:
            break  # files that disagree on types: the first file decides
        tables.append(table)
        count += table.num_rows
        if count >= rows:
            break
    return pa.concat_tables(tables)


def finite_numbers(values) -> list[float]:
    """The values of an Arrow column that are finite numbers (numeric text included): what a range
    suggestion may be made from."""
    found = []
    for value in values.to_pylist():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            found.append(value)
    return found
