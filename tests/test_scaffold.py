"""`mlbatch new` inference on real files and real MLflow signatures (no registry, no Airflow): fast."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

from mlbatch.local.infer import (
    ScaffoldError, choose_id_column, describe_sample, feature_columns, input_files, parse_model, read_sample_files,
    templated,
)

SIGNATURE = ModelSignature(inputs=Schema([ColSpec("double", "amount"), ColSpec("string", "country"),
                                          ColSpec("long", "items", required=False)]))
SAMPLE = pa.table({"order_id": [1, 2, 3, 4], "amount": [9.5, 120.0, None, 3.25], "country": ["de", "fr", "de", "it"],
                   "items": [1, 3, 2, None], "label": [0, 1, 0, 1]})


def test_features_follow_the_signature_and_ids_are_found():
    notes: list[str] = []
    columns = feature_columns(SIGNATURE, SAMPLE, notes)
    assert [(c.name, c.type, c.nullable) for c in columns] == [
        ("amount", "float", False), ("country", "string", False), ("items", "int", True)]
    assert choose_id_column(SAMPLE, [c.name for c in columns], None, notes) == "order_id"
    assert any("label" in n for n in notes)  # the column the model does not read is pointed out
    for column in columns:
        describe_sample(column, SAMPLE.column(column.name), SAMPLE.num_rows)
    amount, country, items = columns
    assert amount.suggestions == ["min: 3.25", "max: 120.0"] and "1 of 4 sample rows are null" in amount.notes[0]
    assert country.suggestions == ['allowed: ["de", "fr", "it"]']
    assert items.notes[0] == "1 of 4 sample rows are null"  # nullable per the signature: no warning


def test_what_cannot_be_inferred_is_refused_or_said():
    with pytest.raises(ScaffoldError, match="reads columns the input lacks: amount"):
        feature_columns(SIGNATURE, SAMPLE.drop_columns(["amount"]), [])
    no_id = SAMPLE.select(["amount", "country", "items"])
    with pytest.raises(ScaffoldError, match="Pass --id-column"):
        choose_id_column(no_id, ["amount", "country", "items"], None, [])
    notes: list[str] = []
    tensor = ModelSignature(inputs=Schema([TensorSpec(__import__("numpy").dtype("float64"), (-1, 3))]))
    assert [c.name for c in feature_columns(tensor, SAMPLE, notes)][:2] == ["order_id", "amount"]
    assert "tensor" in notes[0]
    with pytest.raises(ScaffoldError, match="expected MODEL@ALIAS"):
        parse_model("churn")
    assert parse_model("models:/churn@champion") == ("churn", "champion", None)
    assert parse_model("churn/3") == ("churn", None, 3)


def test_inputs_of_each_format(tmp_path):
    day = tmp_path / "orders" / "ds=2026-11-20"
    day.mkdir(parents=True)
    pq.write_table(SAMPLE, day / "part-0.parquet")
    pq.write_table(SAMPLE, day / "part-1.parquet")
    (day / "_SUCCESS").write_text("")
    pattern, files, fmt = input_files(str(day))
    assert (pattern, fmt, len(files)) == (f"{day}/*.parquet", "parquet", 2)
    assert read_sample_files(files, fmt).num_rows == 8  # the sample spans files
    assert templated(pattern) == (f"{tmp_path}/orders/ds={{{{ ds }}}}/*.parquet", "2026-11-20")

    rows = SAMPLE.to_pylist()
    (tmp_path / "orders.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "orders.csv").write_text("order_id,amount\n1,2.5\n2,\n")
    assert read_sample_files([str(tmp_path / "orders.jsonl")], "jsonl").column("country").to_pylist() == \
        ["de", "fr", "de", "it"]
    assert read_sample_files([str(tmp_path / "orders.csv")], "csv").column("amount").null_count == 1
    (day / "extra.csv").write_text("a\n1\n")
    with pytest.raises(ScaffoldError, match="mixes formats"):
        input_files(str(day))
    with pytest.raises(ScaffoldError, match="no such file"):
        input_files(str(tmp_path / "missing.parquet"))
