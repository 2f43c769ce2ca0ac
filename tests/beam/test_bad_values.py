"""One validation for every input format: the prep job on real files (FnApiRunner) rejects non-finite
numbers, missing values and wrong types with a reason naming the column and the value, and writes its
dead letters under deterministic names (a rerun or a retried bundle rewrites, never duplicates)."""
import glob
import json
import math

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlbatch_beam import prep

INF, NAN = float("inf"), float("nan")
# id -> (mother_age, plurality, gestation_weeks, is_male), the same bad values in every format
ROWS = {
    1: (30.5, 1.0, 39.0, True),
    2: ("1e999", 1.0, 39.0, True),   # overflows a float: inf
    3: (30.0, 1.0, "-inf", False),
    4: (30.0, 2.5, 39.0, True),      # an int feature holding a float
    5: ("nan", 1.0, 40.0, False),    # NaN in a non-nullable feature
    6: (30.0, 1.0, None, True),      # missing value
    7: (99.0, 1.0, 40.0, True),      # out of range
    8: (25.0, 2.0, 38.0, None),      # nullable: fine
}
EXPECTED_RULES = {
    2: "mother_age: not a finite number",
    3: "gestation_weeks: not a finite number",
    4: "plurality: not an int",
    5: "mother_age: missing value",
    6: "gestation_weeks: missing value",
    7: "mother_age: above max 60",
}


def _number(value):
    return float(value) if isinstance(value, str) else value


def _write(tmp_path, fmt):
    path = tmp_path / f"in.{fmt}"
    if fmt == "parquet":
        columns = list(zip(*ROWS.values()))
        pq.write_table(pa.table({
            "id": list(ROWS),
            "mother_age": pa.array([_number(v) for v in columns[0]], pa.float64(), from_pandas=False),
            "plurality": pa.array(columns[1], pa.float64()),
            "gestation_weeks": pa.array([_number(v) for v in columns[2]], pa.float64()),
            "is_male": pa.array(columns[3], pa.bool_()),
        }), path)
    elif fmt == "csv":
        text = {None: "", True: "true", False: "false"}
        lines = ["id,mother_age,plurality,gestation_weeks,is_male"] + [
            ",".join([str(i)] + [text.get(v, str(v)) if not isinstance(v, float) else repr(v) for v in row])
            for i, row in ROWS.items()]
        path.write_text("\n".join(lines) + "\n")
    else:  # JSON Lines as producers write it: Python's json emits Infinity/NaN, 1e999 stays a literal
        lines = []
        for i, (age, plurality, weeks, male) in ROWS.items():
            line = json.dumps({"id": i, "mother_age": "@A", "plurality": plurality,
                               "gestation_weeks": _number(weeks), "is_male": male})
            lines.append(line.replace('"@A"', age if isinstance(age, str) and age != "nan" else
                                      json.dumps(_number(age))))
        path.write_text("\n".join(lines) + "\n")
    return path


def _run_prep(tmp_path, fmt, schema_json, input_path):
    return prep.run([
        "--input", str(input_path), "--input-format", fmt, "--schema-json", schema_json,
        "--output-dir", str(tmp_path / "out"), "--output-format", "jsonl",
        "--dead-letter-dir", str(tmp_path / "dead"), "--result-file", str(tmp_path / "result.json"),
        "--runner=FnApiRunner",
    ])


def _read_jsonl(folder):
    return [json.loads(line) for f in sorted(glob.glob(f"{folder}/*.jsonl")) for line in open(f)]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_every_format_rejects_the_same_rows_for_the_same_reasons(tmp_path, fmt, schema_json):
    result = _run_prep(tmp_path, fmt, schema_json, _write(tmp_path, fmt))

    assert (result["rows_in"], result["rows_valid"], result["rows_rejected"]) == (8, 2, 6)
    prepared = _read_jsonl(tmp_path / "out")
    assert sorted(r["id"] for r in prepared) == [1, 8]  # what a backend will see: finite, typed values
    assert all(math.isfinite(r["mother_age"]) and math.isfinite(r["gestation_weeks"]) for r in prepared)

    dead = {d["row"]["id"]: d for d in _read_jsonl(tmp_path / "dead")}
    assert {i: d["rule"] for i, d in dead.items()} == EXPECTED_RULES
    reasons = {i: d["reason"] for i, d in dead.items()}
    # each reason names the column and the value as it stood in the file
    overflow = {"csv": "'1e999'", "jsonl": "inf", "parquet": "inf"}[fmt]
    assert reasons[2] == f"mother_age: {overflow} is not a finite number"
    assert reasons[3] == "gestation_weeks: " + ("'-inf'" if fmt == "csv" else "-inf") + " is not a finite number"
    assert reasons[4] == "plurality: " + ("'2.5'" if fmt == "csv" else "2.5") + " is not an int"
    assert reasons[5] == "mother_age: " + ("'nan'" if fmt == "csv" else "NaN") + " not allowed"
    assert reasons[6] == "gestation_weeks: " + ("empty string" if fmt == "csv" else "null") + " not allowed"
    assert reasons[7] == "mother_age: 99.0 above max 60"
    assert all(d["source"].endswith(f"in.{fmt}") for d in dead.values())


def test_wrong_types_in_json_are_rejected_not_coerced(tmp_path, schema_json):
    path = tmp_path / "in.jsonl"
    path.write_text(
        '{"id": 1, "mother_age": true, "plurality": 1, "gestation_weeks": 39.0, "is_male": true}\n'
        '{"id": 2, "mother_age": 30.0, "plurality": "2", "gestation_weeks": "", "is_male": 3}\n'
        '{"id": 3, "mother_age": 30.0, "plurality": 1, "gestation_weeks": 39.0, "is_male": "yes"}\n')
    result = _run_prep(tmp_path, "jsonl", schema_json, path)
    assert (result["rows_valid"], result["rows_rejected"]) == (1, 2)
    assert [r["id"] for r in _read_jsonl(tmp_path / "out")] == [3]
    reasons = {d["row"]["id"]: d["reason"] for d in _read_jsonl(tmp_path / "dead")}
    assert reasons == {  # a mixed-type JSON column is read as JSON text: the reason quotes that text
        1: "mother_age: 'true' is not a float",
        2: "gestation_weeks: empty string not allowed; is_male: '3' is not a bool",
    }


def test_dead_letters_have_deterministic_names_so_a_rerun_never_duplicates(tmp_path, schema_json):
    path = _write(tmp_path, "parquet")
    _run_prep(tmp_path, "parquet", schema_json, path)
    first = sorted(glob.glob(str(tmp_path / "dead/*.jsonl")))
    _run_prep(tmp_path, "parquet", schema_json, path)  # same bundles again, e.g. a retried worker
    assert sorted(glob.glob(str(tmp_path / "dead/*.jsonl"))) == first
    assert len(_read_jsonl(tmp_path / "dead")) == 6
    assert len(pd.concat(pd.read_json(f, lines=True) for f in glob.glob(str(tmp_path / "out/*.jsonl")))) == 2
