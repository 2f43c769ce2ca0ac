"""Row counts as publish reconciles them, on local disk, the GCS emulator and moto S3: JSON Lines read
in blocks count exactly what line-by-line reading counted (blank lines, CRLF, no final newline, a line
across the block boundary)."""

from __future__ import annotations

import io

import pytest

from mlbatch.run.row_counts import count_json_lines, count_rows
from mlbatch.storage.layer import Storage, join


@pytest.mark.parametrize("block", [1, 7, 64, 8 << 20])
def test_json_lines_in_blocks_count_the_non_blank_lines(block):
    data = b'{"a": 1}\n\n{"a": 2}\r\n   \n{"a": 3}\r\n\r\n{"a": "x\\ny"}'
    expected = sum(1 for line in io.BytesIO(data) if line.strip())
    assert count_json_lines(io.BytesIO(data), block=block) == expected == 4


def test_count_rows_of_json_lines_on_each_store(store_root):
    storage = Storage()
    folder = join(store_root, "in")
    for i, rows in enumerate([3, 0, 50_001]):
        storage.write_bytes(join(folder, f"part-{i}.jsonl"), "".join(f'{{"id": {r}}}\n' for r in range(rows)).encode())
    storage.write_bytes(join(folder, "_SUCCESS"), b"")
    assert count_rows(folder, "jsonl", storage) == (50_004, 3)
