"""`mlbatch new` inference on real files and real MLflow signatures (no registry, no Airflow): fast."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

from mlbatch.local.infer import ScaffoldError, choose_id_column, describe_sample, feature_columns, parse_model, templated
from mlbatch.local.sample import input_files, read_sample_files

SIGNATURE = ModelSignature(inputs=Schema([ColSpec("double", "amount"), ColSpec("string", "country"),
                                          ColSpec("long", "items", required=False)]))
SAMPLE = pa.table({"order_id": [1, 2, 3, 4], "amount": [9.5, 120.0, None, 3.25], "country": ["de", "fr", "de", "it"],
                   "items": [1, 3, 2, None], "label": [0, 1, 0, 1]})


def test_features_follow_the_signature_and_ids_are_found():
    notes: list[str] = []
    columns = feature_columns(SIGNATURE, SAMPLE, notes)
    assert [(c.name, c.type, c.nullable) for c in columns] == [
        ("amount", "float", False), ("country", "string", False), ("items", "int", False)]
    assert choose_id_column(SAMPLE, [c.name for c in columns], None, notes) == "order_id"
    assert any("label" in n for n in notes)  # the column the model does not read is pointed out
    for column in columns:
        describe_sample(column, SAMPLE.column(column.name), SAMPLE.num_rows)
    amount, country, items = columns
    assert amount.suggestions == ["min: 3.25", "max: 120.0"] and "1 of 4 sample rows are null" in amount.notes[0]
    assert country.suggestions == ['allowed: ["de", "fr", "it"]']
    # optional in the signature, but MLflow cannot carry a null in a long column (mlbatch.spec.type_contract)
    assert items.notes[0].startswith("optional in the signature, but not nullable here: an integer column "
                                     "cannot hold a null in MLflow")
    assert items.notes[1].startswith("1 of 4 sample rows are null: such rows go to the dead letters")


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


# --- `mlbatch new` end to end on every store, with names and values that used to break it -------------

ODD_NAMES = ["od280/od315_of_diluted_wines", "total phenols", "colour#intensity", "hue: ratio",
             "a_feature_name_that_is_much_longer_than_fifty_characters_in_all", "alcohol_%_vol", "ñame_ü_名前",
             "yes", "1st"]
DATE = "2026-11-20"


def register(model, x, *, predict_fn: str = "predict") -> str:
    """`model` logged and registered under a fresh name with alias champion; returns `name@champion`."""
    import uuid

    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from mlbatch.run.mlflow_experiments import ensure_experiment

    name = f"scaffold_{uuid.uuid4().hex[:8]}"
    with mlflow.start_run(experiment_id=ensure_experiment("scaffold_tests")):
        info = mlflow.sklearn.log_model(model, name="model", pyfunc_predict_fn=predict_fn, registered_model_name=name,
                                        signature=infer_signature(x, getattr(model, predict_fn)(x.head(20))),
                                        serialization_format="cloudpickle", pip_requirements=["scikit-learn"])
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", info.registered_model_version)
    return f"{name}@champion"


@pytest.fixture
def pipelines(tmp_path, monkeypatch):
    """`mlbatch new` writes here, not into include/pipelines."""
    monkeypatch.setenv("MLBATCH_PIPELINES_DIR", str(tmp_path / "pipelines"))
    return tmp_path / "pipelines"


def scaffold(model: str, input_uri: str, name: str = "scaffolded"):
    """`mlbatch new` as the CLI runs it: the spec text, what loads from it, and the terminal lines."""
    import yaml

    from mlbatch.local.scaffold import new_pipeline
    from mlbatch.spec.loader import load_spec

    said: list[str] = []
    path = new_pipeline(name, model, input_uri, out=said.append)
    text = path.read_text()
    return text, yaml.safe_load(text), load_spec(path), said


def test_any_column_name_makes_valid_yaml_and_a_valid_spec(pipelines, tmp_path):
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(3)
    x = pd.DataFrame({n: rng.normal(size=200) for n in ODD_NAMES})
    model = register(LinearRegression().fit(x, x.sum(axis=1)), x)
    day = tmp_path / "wine" / f"ds={DATE}"
    day.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(x.assign(id=range(200)), preserve_index=False), day / "part-0.parquet")

    text, loaded, spec, _ = scaffold(model, str(day))
    assert [f["name"] for f in loaded["input"]["features"]] == ODD_NAMES
    assert [f.name for f in spec.input.features] == ODD_NAMES and spec.input.id_column == "id"
    for line in text.splitlines():  # every comment after a value is one: a space before its `#`
        if "# signature:" in line:
            assert line.split("# signature:")[0].endswith(" "), line


def test_a_predict_proba_model_gets_kind_probabilities_that_resolve_model_accepts(pipelines, tmp_path):
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression

    from mlbatch.operators.resolve_model import check_signature

    rng = np.random.default_rng(4)
    x = pd.DataFrame({"alcohol": rng.normal(13, 1, 300), "od280/od315_of_diluted_wines": rng.normal(2.6, 0.7, 300)})
    y = np.where(x.alcohol > 13.4, "class 2", np.where(x.alcohol > 12.6, "class_1", "0"))
    model = register(LogisticRegression().fit(x, y), x, predict_fn="predict_proba")
    source = tmp_path / "wine.csv"
    x.assign(wine_id=range(300)).to_csv(source, index=False)

    text, loaded, spec, said = scaffold(model, str(source))
    assert loaded["output"]["predictions"] == {"kind": "probabilities", "classes": ["0", "class 2", "class_1"]}
    assert spec.output.prediction_columns == ["probability_0", "probability_class 2", "probability_class_1"]
    assert any("predict_proba" in line for line in said)
    name, _ = model.split("@")
    version = MlflowClient().get_model_version_by_alias(name, "champion").version
    check_signature(spec, {"uri": f"models:/{name}/{version}",
                           "artifact_uri": MlflowClient().get_model_version_download_uri(name, version)})


MIXED = [{"event_id": 1, "amount": 12.5, "channel": "web", "score": 3},
         {"event_id": 2, "amount": "abc", "channel": "shop", "score": "n/a"},
         {"event_id": 3, "amount": -1e999, "channel": 7, "score": 5},
         {"event_id": 4, "amount": "40", "channel": "web", "score": 1},
         {"event_id": 5, "amount": None, "channel": "app", "score": 2}]


def test_new_on_every_store_reads_mixed_json_lines_and_finds_the_marker(store_root, pipelines):
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LinearRegression

    from mlbatch.storage.layer import Storage

    x = pd.DataFrame({"amount": np.arange(20.0), "score": np.arange(20) % 5})
    model = register(LinearRegression().fit(x, x.amount), x)
    day = f"{store_root}/events/ds={DATE}"
    storage = Storage()
    storage.write_bytes(f"{day}/part-0.jsonl", "".join(json.dumps(r) + "\n" for r in MIXED).encode())
    storage.write_bytes(f"{day}/_SUCCESS", b"")

    text, loaded, spec, said = scaffold(model, day)
    assert loaded["input"]["marker"] == f"{store_root}/events/ds={{{{ ds }}}}/_SUCCESS" == spec.input.marker
    assert spec.input.uri == f"{store_root}/events/ds={{{{ ds }}}}/*.jsonl" and spec.input.format == "jsonl"
    assert [(f.name, f.type) for f in spec.input.features] == [("amount", "float"), ("score", "int")]
    assert "  - column amount mixes numbers and strings in the sample: inferred string" in said
    assert not any("no _SUCCESS marker" in line for line in said)
    amount = text[text.index("- name: amount"):text.index("- name: score")]
    assert "# min: 12.5\n" in amount and "# max: 40.0\n" in amount  # "abc" and -inf are not a range
    assert "2 non-null sample values are not finite numbers" in amount
    assert "inf" not in amount.replace("infinity", "") and "max: abc" not in text

    from mlbatch.local.sample import input_files

    with pytest.raises(ScaffoldError, match="no such file"):
        input_files(f"{store_root}/events/ds=2026-11-21")
    if "://" in store_root:
        missing = store_root.split("://")[0] + "://no-such-bucket-here/events"
        with pytest.raises(ScaffoldError, match="bucket 'no-such-bucket-here' does not exist"):
            input_files(missing)


@pytest.mark.parametrize("kind", ["gcs", "s3"])
def test_an_unreachable_store_is_refused_in_seconds_naming_the_endpoint(kind, monkeypatch):
    import time

    from emulators import free_port
    from stores import connect_gcs, connect_s3

    from mlbatch.local.sample import input_files

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    endpoint = type("Dead", (), {"endpoint_url": dead, "region": "us-east-1"})()
    if kind == "gcs":
        connect_gcs(endpoint, monkeypatch)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", dead)
    else:
        connect_s3(endpoint, monkeypatch)
    import airflow.sdk  # noqa: F401  (its import, seconds on a busy machine, is not the wait measured)

    started = time.perf_counter()
    with pytest.raises(ScaffoldError, match=f"storage endpoint unreachable: .*endpoint {dead}.*ConnectionRefusedError"):
        input_files(f"{'gs' if kind == 'gcs' else 's3'}://bucket/events/ds={DATE}")
    assert time.perf_counter() - started < 8  # a 3 s connect at most, not the clients' retries
