"""JSON Lines into Arrow, in large line-aligned blocks, from any binary file object.

No Beam here: the Beam jobs read through it (mlbatch_beam.arrow_io) and so does the Airflow side,
which reads the batch-prediction services' JSON Lines (mlbatch_beam.predictions) without apache-beam.
"""
from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.json as pjson

JSON_BLOCK_BYTES = 32 << 20


def parse_json_block(data: bytes) -> pa.Table:
    """Parse newline-delimited JSON; fall back to text for mixed-type columns.

    pyarrow's JSON reader rejects a column whose type changes between rows
    (e.g. a stray "x" in a numeric column). That is exactly the kind of row
    validation should reject, so on that error the block is parsed in
    Python and mixed columns become JSON text, which validation parses the
    same way it parses CSV text.
    """
    try:
        return pjson.read_json(
            io.BytesIO(data), read_options=pjson.ReadOptions(block_size=len(data) + 1))
    except pa.ArrowInvalid:
        pass
    rows = [json.loads(line) for line in data.splitlines() if line.strip()]
    names = list(dict.fromkeys(k for row in rows for k in row))
    arrays = []
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
            arrays.append(pa.array(
                [v if v is None or isinstance(v, str) else json.dumps(v) for v in values],
                pa.string()))
    return pa.Table.from_arrays(arrays, names=names)


def read_jsonl(f, batch_rows):
    """Parse a JSON Lines stream in large line-aligned blocks."""
    rest = b""
    while True:
        data = f.read(JSON_BLOCK_BYTES)
        if not data:
            break
        data = rest + data
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        if cut and data[:cut].strip():
            yield from parse_json_block(data[:cut]).to_batches(batch_rows)
    if rest.strip():
        yield from parse_json_block(rest).to_batches(batch_rows)
