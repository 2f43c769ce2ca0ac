"""Read and write files as Arrow record batches inside a Beam pipeline.

Files are opened through Beam's ``FileSystems`` so the same code reads
local paths in tests and ``gs://`` paths on Dataflow. Each element is a
``pyarrow.RecordBatch`` of up to ``batch_rows`` rows, never a single row.

Each batch carries where it came from in its schema metadata (``source`` =
file path, ``piece`` = file + row group + batch number). Writers use the
piece to name output files, so a retried bundle overwrites its own file
instead of adding a duplicate.

Why one module of this length: readers set and writers read the same origin metadata, the contract that
makes retried bundles idempotent, so both halves are read together.
"""
from __future__ import annotations

import hashlib
import json
import uuid

import apache_beam as beam
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from mlbatch_beam.jsonl import read_jsonl

INPUT_FORMATS = ("parquet", "csv", "jsonl")
OUTPUT_FORMATS = ("parquet", "csv", "jsonl")
EXTENSIONS = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}

SOURCE_KEY = b"mlbatch.source"
PIECE_KEY = b"mlbatch.piece"

_CSV_BLOCK_BYTES = 8 << 20


# --- batch origin metadata -------------------------------------------------

def with_origin(batch: pa.RecordBatch, source: str, piece: str) -> pa.RecordBatch:
    """Tag a batch with the file (and piece of it) it was read from."""
    metadata = dict(batch.schema.metadata or {})
    metadata.update({SOURCE_KEY: source.encode(), PIECE_KEY: piece.encode()})
    return batch.replace_schema_metadata(metadata)


def source_of(batch: pa.RecordBatch | pa.Table) -> str:
    return (batch.schema.metadata or {}).get(SOURCE_KEY, b"").decode()


def piece_of(batch: pa.RecordBatch | pa.Table) -> str:
    return (batch.schema.metadata or {}).get(PIECE_KEY, b"").decode()


def without_origin(table: pa.Table) -> pa.Table:
    metadata = {k: v for k, v in (table.schema.metadata or {}).items()
                if k not in (SOURCE_KEY, PIECE_KEY)}
    return table.replace_schema_metadata(metadata or None)


# --- matching ----------------------------------------------------------------

def match_paths(file_pattern: str | list[str]) -> list[str]:
    """Paths matching a pattern, or any of several (sorted, once each); raises if a pattern matches nothing.

    An empty match is an error, not a silent zero-row success: a typo in
    the input path must fail the job.
    """
    return sorted(matched_sizes(file_pattern))


def matched_sizes(file_pattern: str | list[str]) -> dict[str, int]:
    """match_paths with each file's size, from the same one listing per pattern."""
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    found: dict[str, int] = {}
    for pattern in patterns:
        try:
            metadata = FileSystems.match([pattern])[0].metadata_list
        except BeamIOError as exc:  # e.g. a missing plain path or an unreadable bucket
            raise FileNotFoundError(f"No input files match pattern {pattern!r}: {exc}") from exc
        if not metadata:
            raise FileNotFoundError(f"No input files match pattern {pattern!r}")
        found.update((m.path, m.size_in_bytes) for m in metadata if m.size_in_bytes > 0)
    return found


# --- reading ------------------------------------------------------------------

def _rechunk(batches, batch_rows):
    """Regroup small batches (CSV blocks) into batches of up to batch_rows rows."""
    pending, pending_rows = [], 0
    for batch in batches:
        pending.append(batch)
        pending_rows += batch.num_rows
        if pending_rows >= batch_rows:
            combined = pa.Table.from_batches(pending).combine_chunks().to_batches(batch_rows)
            pending = [combined[-1]] if combined[-1].num_rows < batch_rows else []
            pending_rows = sum(b.num_rows for b in pending)
            yield from (b for b in combined if b.num_rows == batch_rows)
    if pending_rows:
        yield from pa.Table.from_batches(pending).combine_chunks().to_batches(batch_rows)


def read_file_batches(path, fmt, batch_rows, row_group=None, csv_column_types=None):
    """Yield RecordBatches of one file (or one parquet row group).

    A file that cannot be parsed at all fails the job with its path in the
    message; row-level problems are left to validation.
    """
    if fmt not in INPUT_FORMATS:
        raise ValueError(f"unknown input format {fmt!r}; expected one of {INPUT_FORMATS}")
    try:
        yield from _read(path, fmt, batch_rows, row_group, csv_column_types)
    except (pa.ArrowException, ValueError) as exc:
        raise ValueError(f"cannot read {path} as {fmt}: {exc}") from exc


def _read(path, fmt, batch_rows, row_group, csv_column_types):
    if fmt == "parquet":
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            parquet = pq.ParquetFile(f)
            groups = None if row_group is None else [row_group]
            yield from parquet.iter_batches(batch_size=batch_rows, row_groups=groups)
    elif fmt == "csv":
        with FileSystems.open(path) as f:
            reader = pcsv.open_csv(
                f,
                read_options=pcsv.ReadOptions(block_size=_CSV_BLOCK_BYTES),
                # Text columns keep their text ("", "NaN", "NULL"...): validation decides, by the
                # same rules as for parquet and JSON, and the dead letter shows the text as it was.
                convert_options=pcsv.ConvertOptions(
                    column_types=csv_column_types or {},
                    strings_can_be_null=False, quoted_strings_can_be_null=False),
            )
            yield from _rechunk(reader, batch_rows)
    else:
        with FileSystems.open(path) as f:
            yield from read_jsonl(f, batch_rows)


def _row_groups(path) -> int:
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return pq.ParquetFile(f).num_row_groups
    except pa.ArrowException as exc:
        raise ValueError(f"cannot read {path} as parquet: {exc}") from exc


class _MatchPieces(beam.DoFn):
    """Expand a pattern into (path, row_group) pieces; parquet splits by row group."""

    def __init__(self, fmt):
        self._fmt = fmt

    def process(self, file_pattern):
        for path in match_paths(file_pattern):
            if self._fmt == "parquet":
                for group in range(_row_groups(path)):
                    yield path, group
            else:
                yield path, None


class _ReadPiece(beam.DoFn):
    def __init__(self, fmt, batch_rows, csv_column_types):
        self._fmt = fmt
        self._batch_rows = batch_rows
        self._csv_column_types = csv_column_types

    def process(self, piece):
        path, group = piece
        batches = read_file_batches(
            path, self._fmt, self._batch_rows, group, self._csv_column_types)
        for number, batch in enumerate(batches):
            if batch.num_rows:
                yield with_origin(batch, path, f"{path}#{group}#{number}")


class ReadArrowBatches(beam.PTransform):
    """Read files matching a pattern as RecordBatches of at most batch_rows.

    The pattern is expanded into pieces (a parquet row group, or a whole
    CSV / JSON Lines file) and reshuffled before reading, so the expensive
    read is spread across workers instead of fused onto the one that
    matched the pattern.

    ``csv_column_types`` forces CSV columns to a type (validation passes
    ``string`` so a bad value rejects one row instead of failing the file).
    """

    def __init__(self, file_pattern: str | list[str], fmt: str, batch_rows: int = 65536,
                 csv_column_types: dict[str, pa.DataType] | None = None):
        super().__init__()
        if fmt not in INPUT_FORMATS:
            raise ValueError(f"unknown input format {fmt!r}; expected one of {INPUT_FORMATS}")
        if batch_rows < 1:
            raise ValueError("batch_rows must be positive")
        self._pattern = file_pattern
        self._fmt = fmt
        self._batch_rows = batch_rows
        self._csv_column_types = csv_column_types

    def expand(self, pbegin):
        return (
            pbegin
            | "Pattern" >> beam.Create([self._pattern])  # one element: a pattern, or a list of them
            | "MatchPieces" >> beam.ParDo(_MatchPieces(self._fmt))
            | "SpreadPieces" >> beam.Reshuffle()
            | "ReadPieces" >> beam.ParDo(
                _ReadPiece(self._fmt, self._batch_rows, self._csv_column_types))
        )


# --- writing ------------------------------------------------------------------

def table_to_jsonl(table: pa.Table) -> bytes:
    """One flat JSON object per line (pandas' C writer, no per-row Python)."""
    if table.num_rows == 0:
        return b""
    frame = table.to_pandas(types_mapper=pd.ArrowDtype)
    # double_precision=15 is pandas' maximum (default 10 would round values).
    text = frame.to_json(orient="records", lines=True, date_format="iso",
                         double_precision=15, force_ascii=False)
    return (text if text.endswith("\n") else text + "\n").encode()


def encode_table(table: pa.Table, fmt: str) -> bytes:
    """Serialise a table to the bytes of one file in the given format."""
    table = without_origin(table)
    if fmt == "jsonl":
        return table_to_jsonl(table)
    sink = pa.BufferOutputStream()
    if fmt == "parquet":
        pq.write_table(table, sink)
    elif fmt == "csv":
        pcsv.write_csv(table, sink)
    else:
        raise ValueError(f"unknown output format {fmt!r}; expected one of {OUTPUT_FORMATS}")
    return sink.getvalue().to_pybytes()


def write_bytes(path: str, data: bytes) -> None:
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)


def write_table(table: pa.Table | pa.RecordBatch, path: str, fmt: str) -> str:
    """Write one table to one file (any FileSystems path)."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    write_bytes(path, encode_table(table, fmt))
    return path


def output_file_name(batch, prefix: str, fmt: str) -> str:
    """A name that is stable for a given input piece, random otherwise."""
    piece = piece_of(batch)
    token = hashlib.sha1(piece.encode()).hexdigest()[:20] if piece else uuid.uuid4().hex
    return f"{prefix}-{token}.{EXTENSIONS[fmt]}"


class _WriteBatch(beam.DoFn):
    def __init__(self, output_dir, fmt, prefix):
        self._output_dir = output_dir
        self._fmt = fmt
        self._prefix = prefix

    def process(self, batch):
        if batch.num_rows == 0:
            return
        path = FileSystems.join(self._output_dir, output_file_name(batch, self._prefix, self._fmt))
        yield write_table(batch, path, self._fmt)


class WriteArrowBatches(beam.PTransform):
    """Write each batch to its own file in output_dir; outputs the file paths.

    One file per batch keeps writing embarrassingly parallel and needs no
    finalisation step; the caller writes into a fresh staging directory.
    """

    def __init__(self, output_dir: str, fmt: str, prefix: str = "part"):
        super().__init__()
        if fmt not in OUTPUT_FORMATS:
            raise ValueError(f"unknown output format {fmt!r}; expected one of {OUTPUT_FORMATS}")
        self._output_dir = output_dir
        self._fmt = fmt
        self._prefix = prefix

    def expand(self, batches):
        return batches | "WriteFiles" >> beam.ParDo(
            _WriteBatch(self._output_dir, self._fmt, self._prefix))


class _WriteDeadLetters(beam.DoFn):
    def __init__(self, dead_letter_dir, prefix):
        self._dir = dead_letter_dir
        self._prefix = prefix

    def process(self, piece_and_rows):
        piece, rows = piece_and_rows
        token = hashlib.sha1(piece.encode()).hexdigest()[:20] if piece else uuid.uuid4().hex
        lines = "".join(json.dumps(row, default=str) + "\n" for row in rows)
        path = FileSystems.join(self._dir, f"{self._prefix}-{token}.jsonl")
        write_bytes(path, lines.encode())
        yield path


class DeadLetterWrite(beam.PTransform):
    """Write each input batch's rejected rows, (piece, [dicts]), as one JSON Lines file.

    The file is named after the batch's piece (file + row group + batch
    number), like the valid output: a retried bundle rewrites the same file
    instead of adding a second copy of its rejected rows.
    """

    def __init__(self, dead_letter_dir: str, prefix: str = "rejected"):
        super().__init__()
        self._dir = dead_letter_dir
        self._prefix = prefix

    def expand(self, pieces):
        return pieces | "WriteFiles" >> beam.ParDo(_WriteDeadLetters(self._dir, self._prefix))
