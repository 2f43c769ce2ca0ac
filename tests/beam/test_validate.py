"""split_valid: per-row reasons for every kind of bad value, without Beam pipelines."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlbatch_beam.arrow_io import read_file_batches
from mlbatch_beam.prep import csv_column_types
from mlbatch_beam.schema import FeatureSchema
from mlbatch_beam.validate import split_valid

CSV = """id,mother_age,plurality,gestation_weeks,is_male
1,30.5,1,39,true
2,123.0,1,40,false
3,25,x,38,
4,28,2,,true
,31,1,37,false
6,,3,41,maybe
7,22,1.0,39,1
8, 19 ,2.5,36,no
"""


def _split_csv(tmp_path, schema):
    path = tmp_path / "in.csv"
    path.write_text(CSV)
    batches = list(read_file_batches(str(path), "csv", 100, csv_column_types=csv_column_types(schema)))
    assert len(batches) == 1
    return split_valid(batches[0], schema, source=str(path))


def test_csv_text_is_parsed_and_bad_rows_get_exact_reasons(tmp_path, schema):
    valid, rejected = _split_csv(tmp_path, schema)

    assert valid.schema.names == ["id", "mother_age", "plurality", "gestation_weeks", "is_male"]
    assert valid.schema.field("plurality").type == pa.int64()
    assert valid.schema.field("is_male").type == pa.bool_()
    assert valid.to_pydict() == {
        "id": [1, 7],
        "mother_age": [30.5, 22.0],
        "plurality": [1, 1],
        "gestation_weeks": [39.0, 39.0],
        "is_male": [True, True],
    }
    reasons = {r["row"]["id"]: r["reason"] for r in rejected}
    assert reasons == {
        2: "mother_age: 123.0 above max 60",
        3: "plurality: 'x' is not an int",
        4: "gestation_weeks: empty string not allowed",
        None: "id: null not allowed",
        6: "mother_age: empty string not allowed; is_male: 'maybe' is not a bool",
        8: "plurality: '2.5' is not an int",
    }
    row3 = next(r for r in rejected if r["row"]["id"] == 3)
    assert row3["row"] == {"id": 3, "mother_age": "25", "plurality": "x",
                           "gestation_weeks": "38", "is_male": ""}
    assert row3["source"].endswith("in.csv")


def test_typed_parquet_values_are_range_checked_and_cast(tmp_path, schema):
    table = pa.table({
        "id": ["a", "b", "c", "d", "e", "a"],
        "mother_age": [30.0, 11.0, float("nan"), 40.0, 33.0, 20.0],
        "plurality": [2.0, 1.0, 1.0, 3.5, 9.0, 1.0],
        "gestation_weeks": [39, 40, 41, 42, 38, 37],
        "is_male": [True, None, False, True, False, True],
    })
    pq.write_table(table, tmp_path / "in.parquet")
    batch = next(read_file_batches(str(tmp_path / "in.parquet"), "parquet", 100))

    valid, rejected = split_valid(batch, schema, "in.parquet")

    assert valid.column("id").to_pylist() == ["a"]
    assert valid.column("plurality").to_pylist() == [2]          # 2.0 -> int 2
    assert valid.column("gestation_weeks").type == pa.float64()  # int -> float
    assert [r["reason"] for r in rejected] == [
        "mother_age: 11.0 below min 12",
        "mother_age: NaN not allowed",            # NaN is a missing value
        "plurality: 3.5 is not an int",
        "plurality: 9 above max 5",
        "id: duplicate id 'a'",
    ]
    assert rejected[1]["row"]["mother_age"] == "nan"  # JSON-safe raw value


def test_missing_column_rejects_every_row(schema):
    batch = pa.RecordBatch.from_pydict({"id": [1, 2], "mother_age": [30.0, 31.0],
                                        "gestation_weeks": [39.0, 40.0], "is_male": [True, False]})
    valid, rejected = split_valid(batch, schema, "f")
    assert valid.num_rows == 0
    assert [r["reason"] for r in rejected] == ["missing column 'plurality'"] * 2


def test_mixed_type_jsonl_rejects_only_the_bad_row(tmp_path, schema):
    path = tmp_path / "in.jsonl"
    path.write_text(
        '{"id": 1, "mother_age": 30, "plurality": 1, "gestation_weeks": 39.5, "is_male": true}\n'
        '{"id": 2, "mother_age": 31, "plurality": "x", "gestation_weeks": 40, "is_male": false}\n'
        '{"id": 3, "mother_age": 32, "plurality": 2, "gestation_weeks": 41}\n')
    batch = next(read_file_batches(str(path), "jsonl", 100))
    valid, rejected = split_valid(batch, schema, "in.jsonl")
    assert valid.to_pydict()["id"] == [1, 3]
    assert valid.to_pydict()["is_male"] == [True, None]  # nullable feature, absent key
    assert [(r["row"]["id"], r["reason"]) for r in rejected] == [(2, "plurality: 'x' is not an int")]


def test_schema_round_trips_and_rejects_unknown_types(schema):
    assert FeatureSchema.from_json(schema.to_json()) == schema
    assert schema.features[0].arrow_type == pa.float64()
    with pytest.raises(ValueError, match="type 'double' is not one of"):
        FeatureSchema.from_json('{"id_column": "id", "features": [{"name": "a", "type": "double"}]}')


def test_allowed_values_and_declared_id_type():
    schema = FeatureSchema.from_json(
        '{"id_column": "key", "id_type": "int", "features": '
        '[{"name": "color", "type": "string", "allowed": ["red", "blue"]}]}')
    batch = pa.RecordBatch.from_pydict({"key": ["1", "2", "x"], "color": ["red", "green", "blue"]})
    valid, rejected = split_valid(batch, schema)
    assert valid.to_pydict() == {"key": [1], "color": ["red"]}
    assert [r["reason"] for r in rejected] == [
        "color: 'green' not in allowed ['red', 'blue']", "key: 'x' is not an int"]
