"""ReadArrowBatches / WriteArrowBatches on real files with FnApiRunner."""
import glob
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that

from mlbatch_beam.arrow_io import (
    ReadArrowBatches, WriteArrowBatches, match_paths, read_file_batches, source_of, table_to_jsonl,
)


def _batches_cover(expected_ids, batch_rows):
    def check(batches):
        assert all(isinstance(b, pa.RecordBatch) for b in batches)
        assert all(0 < b.num_rows <= batch_rows for b in batches)
        ids = sorted(i for b in batches for i in b.column("id").to_pylist())
        assert ids == sorted(expected_ids)
        assert all(source_of(b) for b in batches)
    return check


def test_read_three_formats_and_write_three_formats(tmp_path, make_frame):
    parquet_frame = make_frame(1000, seed=1)
    pq.write_table(pa.Table.from_pandas(parquet_frame.iloc[:600], preserve_index=False),
                   tmp_path / "a.parquet", row_group_size=250)          # 3 row groups
    pq.write_table(pa.Table.from_pandas(parquet_frame.iloc[600:], preserve_index=False),
                   tmp_path / "b.parquet", row_group_size=250)          # 2 row groups
    csv_frame = make_frame(700, seed=2, start_id=5000)
    csv_frame.to_csv(tmp_path / "in.csv", index=False)
    json_frame = make_frame(300, seed=3, start_id=9000)
    (tmp_path / "in.jsonl").write_bytes(table_to_jsonl(pa.Table.from_pandas(json_frame)))

    with BeamTestPipeline(runner="FnApiRunner") as p:
        from_parquet = p | "Parquet" >> ReadArrowBatches(str(tmp_path / "*.parquet"), "parquet", 200)
        from_csv = p | "Csv" >> ReadArrowBatches(str(tmp_path / "*.csv"), "csv", 200)
        from_json = p | "Json" >> ReadArrowBatches(str(tmp_path / "in.jsonl"), "jsonl", 200)
        assert_that(from_parquet, _batches_cover(parquet_frame.id, 200), label="CheckParquet")
        assert_that(from_csv, _batches_cover(csv_frame.id, 200), label="CheckCsv")
        assert_that(from_json, _batches_cover(json_frame.id, 200), label="CheckJson")
        for fmt in ("parquet", "csv", "jsonl"):
            _ = from_parquet | f"Write{fmt}" >> WriteArrowBatches(str(tmp_path / "out" / fmt), fmt)

    parquet_files = glob.glob(str(tmp_path / "out/parquet/part-*.parquet"))
    assert len(parquet_files) == 8  # row groups 250,250,100 | 250,150 -> 200-row batches per group
    written = pd.concat([pd.read_parquet(f) for f in parquet_files]).sort_values("id")
    pd.testing.assert_frame_equal(written.reset_index(drop=True), parquet_frame)

    csv_written = pd.concat(pd.read_csv(f) for f in glob.glob(str(tmp_path / "out/csv/*.csv")))
    assert sorted(csv_written.id) == list(parquet_frame.id)

    lines = [json.loads(line) for f in glob.glob(str(tmp_path / "out/jsonl/*.jsonl"))
             for line in open(f)]
    assert len(lines) == 1000
    assert set(lines[0]) == {"id", "mother_age", "plurality", "gestation_weeks", "is_male"}
    assert isinstance(lines[0]["plurality"], int) and isinstance(lines[0]["is_male"], bool)


def test_empty_match_is_a_clear_error(tmp_path):
    pattern = str(tmp_path / "nothing-*.parquet")
    with pytest.raises(FileNotFoundError, match="No input files match pattern .*nothing-"):
        match_paths(pattern)
    with pytest.raises(Exception, match="No input files match pattern .*nothing-"):
        with BeamTestPipeline(runner="FnApiRunner") as p:
            _ = p | ReadArrowBatches(pattern, "parquet", 100)


def test_unreadable_file_error_names_the_file(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="cannot read .*bad.parquet as parquet"):
        list(read_file_batches(str(tmp_path / "bad.parquet"), "parquet", 100))
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n{"id": \n')
    with pytest.raises(ValueError, match="cannot read .*bad.jsonl as jsonl"):
        list(read_file_batches(str(tmp_path / "bad.jsonl"), "jsonl", 100))
