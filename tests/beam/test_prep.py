"""PrepareInput transform and the prep CLI end to end."""
import glob
import json
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from mlbatch_beam import prep
from mlbatch_beam.arrow_io import with_origin


def _frame_with_bad_rows(make_frame, rows=1000):
    frame = make_frame(rows, seed=7)
    frame.loc[10, "mother_age"] = 123.0
    frame.loc[20, "gestation_weeks"] = np.nan
    frame.loc[30, "plurality"] = 0
    return frame


def test_prepare_input_tags_valid_batches_and_rejected_rows(schema, make_frame):
    batch = pa.RecordBatch.from_pandas(_frame_with_bad_rows(make_frame), preserve_index=False)
    batch = with_origin(batch, "mem://input", "mem://input#0#0")
    with BeamTestPipeline(runner="FnApiRunner") as p:
        out = p | beam.Create([batch]) | prep.PrepareInput(schema)
        assert_that(out.valid | beam.Map(lambda b: b.num_rows), equal_to([997]), label="Valid")
        assert_that(out.rejected | beam.Map(lambda piece_rows: piece_rows[0]),
                    equal_to(["mem://input#0#0"]), label="OneRejectGroupPerBatch")
        assert_that(
            out.rejected | beam.FlatMap(
                lambda piece_rows: [(r["row"]["id"], r["reason"], r["source"]) for r in piece_rows[1]]),
            equal_to([
                (10, "mother_age: 123.0 above max 60", "mem://input"),
                (20, "gestation_weeks: null not allowed", "mem://input"),
                (30, "plurality: 0 below min 1", "mem://input"),
            ]),
            label="Rejected")


def _dead_letters(directory):
    return [json.loads(line) for f in glob.glob(f"{directory}/*.jsonl") for line in open(f)]


def test_prep_cli_parquet_to_parquet(tmp_path, make_frame, schema_json):
    frame = _frame_with_bad_rows(make_frame, 3000)
    frame.loc[40, "id"] = None  # id becomes float with a NaN -> null id
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table.slice(0, 1500), tmp_path / "in-0.parquet", row_group_size=500)
    pq.write_table(table.slice(1500), tmp_path / "in-1.parquet", row_group_size=500)

    result = prep.run([
        "--input", str(tmp_path / "in-*.parquet"), "--input-format", "parquet",
        "--schema-json", schema_json,
        "--output-dir", str(tmp_path / "out"), "--output-format", "parquet",
        "--dead-letter-dir", str(tmp_path / "dead"),
        "--result-file", str(tmp_path / "result.json"), "--batch-rows", "400",
        "--runner=FnApiRunner",
    ])

    assert result == json.loads((tmp_path / "result.json").read_text())
    assert result["rows_in"] == 3000
    assert result["rows_rejected"] == 4
    assert result["rows_in"] == result["rows_valid"] + result["rows_rejected"]
    assert result["output_dir"] == str(tmp_path / "out")
    assert result["dead_letter_dir"] == str(tmp_path / "dead")

    out = pd.read_parquet(tmp_path / "out")
    assert len(out) == result["rows_valid"]
    assert list(out.columns) == ["id", "mother_age", "plurality", "gestation_weeks", "is_male"]
    assert str(out.plurality.dtype) == "int64" and str(out.is_male.dtype) == "bool"

    dead = _dead_letters(tmp_path / "dead")
    assert len(dead) == result["rows_rejected"]
    assert {d["reason"] for d in dead} == {
        "mother_age: 123.0 above max 60", "gestation_weeks: null not allowed",
        "plurality: 0 below min 1", "id: null not allowed"}
    assert all(d["source"].endswith(".parquet") for d in dead)


def test_prep_cli_csv_to_jsonl_in_a_subprocess_with_two_workers(tmp_path, make_frame, schema_json):
    frame = make_frame(2000, seed=9)
    frame["plurality"] = frame["plurality"].astype(object)
    frame.loc[5, "plurality"] = "x"
    frame.to_csv(tmp_path / "in.csv", index=False)

    subprocess.run([
        sys.executable, "-m", "mlbatch_beam.prep",
        "--input", str(tmp_path / "in.csv"), "--input-format", "csv",
        "--schema-json", schema_json,
        "--output-dir", str(tmp_path / "out"), "--output-format", "jsonl",
        "--dead-letter-dir", str(tmp_path / "dead"),
        "--result-file", str(tmp_path / "result.json"), "--batch-rows", "500",
        "--direct_running_mode=multi_processing", "--direct_num_workers=2",
    ], check=True, capture_output=True, timeout=120)

    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["rows_in"], result["rows_valid"], result["rows_rejected"]) == (2000, 1999, 1)
    lines = [json.loads(line) for f in glob.glob(str(tmp_path / "out/*.jsonl")) for line in open(f)]
    assert len(lines) == 1999
    assert set(lines[0]) == {"id", "mother_age", "plurality", "gestation_weeks", "is_male"}
    assert isinstance(lines[0]["plurality"], int)
    assert _dead_letters(tmp_path / "dead")[0]["reason"] == "plurality: 'x' is not an int"


def test_prep_cli_empty_input_fails_naming_the_pattern(tmp_path, schema_json):
    with pytest.raises(FileNotFoundError, match="nope/\\*.csv"):
        prep.run([
            "--input", str(tmp_path / "nope/*.csv"), "--input-format", "csv",
            "--schema-json", schema_json, "--output-dir", str(tmp_path / "out"),
            "--output-format", "jsonl", "--dead-letter-dir", str(tmp_path / "dead"),
            "--result-file", str(tmp_path / "result.json"),
        ])
    assert not (tmp_path / "result.json").exists()
