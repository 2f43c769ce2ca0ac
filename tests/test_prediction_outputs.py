"""Prediction outputs (`output.predictions`): class labels, probabilities per class, the positive class's
probability and named output columns, published the same way by every backend.

Real parts only: scikit-learn classifiers (2 and 3 classes) logged to a throwaway MLflow registry; the
direct-model Beam job on real Parquet files; the `local` backend's files; the real MLflow scoring server
(`mlflow models serve`) answering what SageMaker's and Vertex's MLflow container answers, read back by
the backends' result readers; whole pipelines through `dag.test()`. Every test checks the published
values against sklearn's own predict / predict_proba.
"""

from __future__ import annotations

import json
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from mlflow_uris import mlflow_pointed_at
from mlbatch.storage.layer import Storage
from scoring_server import serve_model

REPO = Path(__file__).resolve().parents[1]
FEATURES = ["x1", "x2", "x3"]
STORE = Storage()  # local files here; publish passes the pipeline's Storage (any store)
DATE = "2026-11-21"


def rows(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"id": np.arange(1000, 1000 + n, dtype="int64")})
    for name in FEATURES:
        frame[name] = rng.normal(0, 1, n).round(3)
    return frame


def _named_model(classifier):
    import mlflow

    class LabelAndConfidence(mlflow.pyfunc.PythonModel):
        """A model with named outputs: a DataFrame of the label and its probability."""

        def __init__(self, classifier):
            self.classifier = classifier

        def predict(self, context, model_input, params=None):
            x = model_input[FEATURES]
            return pd.DataFrame({"label": self.classifier.predict(x),
                                 "confidence": self.classifier.predict_proba(x).max(axis=1)})

    return LabelAndConfidence(classifier)


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory) -> dict:
    """LogisticRegressions on 3 classes (a, b, c) and 2 (no, yes), logged to a registry of their own:
    `multi_proba` (pyfunc_predict_fn predict_proba), `multi` and `binary` (plain predict: labels),
    `named` (a pyfunc returning a DataFrame). Each entry: sklearn model, artifact URI."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    tmp = tmp_path_factory.mktemp("outputs-registry")
    uri = f"sqlite:///{tmp}/mlflow.db"
    train = rows(600, seed=1)
    x = train[FEATURES]
    score = x.x1 + 0.5 * x.x2 - 0.3 * x.x3
    multi = LogisticRegression().fit(x, np.where(score < -0.5, "a", np.where(score < 0.5, "b", "c")))
    binary = LogisticRegression().fit(x, np.where(score > 0, "yes", "no"))
    named = _named_model(multi)
    logged = {}
    with mlflow_pointed_at(uri), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        experiment = mlflow.create_experiment("outputs", artifact_location=(tmp / "artifacts").as_uri())
        for name, model, fn in (("multi_proba", multi, "predict_proba"), ("multi", multi, "predict"),
                                ("binary", binary, "predict")):
            with mlflow.start_run(experiment_id=experiment):
                mlflow.sklearn.log_model(model, name="model", pyfunc_predict_fn=fn, registered_model_name=name,
                                         signature=infer_signature(x, getattr(model, fn)(x)),
                                         pip_requirements=["scikit-learn"])
        with mlflow.start_run(experiment_id=experiment):
            mlflow.pyfunc.log_model(name="model", python_model=named, registered_model_name="named",
                                    signature=infer_signature(x, named.predict(None, x)),
                                    pip_requirements=["scikit-learn", "pandas"])
        client = mlflow.MlflowClient()
        for name in ("multi_proba", "multi", "binary", "named"):
            client.set_registered_model_alias(name, "champion", "1")
            logged[name] = client.get_model_version_download_uri(name, "1")
    return {"tracking_uri": uri, "uris": logged, "multi": multi, "binary": binary}


def expected(classifiers: dict, frame: pd.DataFrame, kind: str, model: str = "multi") -> pd.DataFrame:
    """What sklearn itself says for these rows, as the published columns, indexed by id."""
    clf = classifiers[model]
    x = frame[FEATURES]
    proba = clf.predict_proba(x)
    out = {
        "label": lambda: {"prediction": clf.predict(x)},
        "probabilities": lambda: {f"probability_{c}": proba[:, i] for i, c in enumerate(clf.classes_)},
        "positive_probability": lambda: {"prediction": proba[:, list(clf.classes_).index("c" if model == "multi"
                                                                                         else "yes")]},
        "columns": lambda: {"label": clf.predict(x), "confidence": proba.max(axis=1)},
    }[kind]()
    return pd.DataFrame(out, index=pd.Index(frame.id, name="id"))


def assert_published(table: pd.DataFrame, want: pd.DataFrame) -> None:
    got = table.set_index("id").sort_index()
    assert list(got.columns) == list(want.columns)
    want = want.sort_index()
    assert list(got.index) == list(want.index)
    for column in want.columns:
        if not pd.api.types.is_numeric_dtype(want[column]):
            assert got[column].tolist() == want[column].tolist(), column
        else:
            np.testing.assert_allclose(got[column].to_numpy(), want[column].to_numpy(), rtol=1e-12)


OUTPUTS = {  # name -> (model, PredictionOutput fields, expected kind)
    "probabilities": ("multi_proba", {"kind": "probabilities", "classes": ["a", "b", "c"]}, "probabilities"),
    "positive_of_three": ("multi_proba", {"kind": "positive_probability", "classes": ["a", "b", "c"],
                                          "positive_class": "c"}, "positive_probability"),
    "labels": ("multi", {"kind": "label"}, "label"),
    "columns": ("named", {"kind": "columns", "columns": ["label", "confidence"]}, "columns"),
}


def _prepared(folder: Path, frame: pd.DataFrame, fmt: str = "parquet") -> Path:
    folder.mkdir(parents=True)
    for i, part in enumerate((frame.iloc[:250], frame.iloc[250:])):
        if fmt == "parquet":
            pq.write_table(pa.Table.from_pandas(part, preserve_index=False), folder / f"part-{i}.parquet")
        else:
            part.to_json(folder / f"part-{i}.jsonl", orient="records", lines=True)
    return folder


# --- the direct-model Beam job ---------------------------------------------------------------------

@pytest.mark.parametrize("case", ["probabilities", "labels", "columns", "method"])
def test_direct_model_job_publishes_the_requested_columns(classifiers, tmp_path, case):
    from mlbatch_beam import score
    from mlbatch_beam.outputs import PredictionOutput

    frame = rows(400, seed=7)
    prepared = _prepared(tmp_path / "prepared", frame)
    if case == "method":  # a classifier logged with plain predict, asked for probabilities by the job
        model, fields, kind = "binary", {"kind": "positive_probability", "method": "predict_proba",
                                         "classes": ["no", "yes"], "positive_class": "yes"}, "positive_probability"
    else:
        model, fields, kind = OUTPUTS[case]
    result = score.run([
        "--input", f"{prepared}/*.parquet", "--model-uri", classifiers["uris"][model], "--id-column", "id",
        "--feature-columns", ",".join(FEATURES), "--output-dir", str(tmp_path / "out"),
        "--output-format", "parquet", "--batch-rows", "128",
        "--prediction-output", PredictionOutput(**fields).to_json(),
        "--result-file", str(tmp_path / "result.json")])
    assert result["rows_scored"] == 400
    table = pq.read_table(tmp_path / "out", partitioning=None).to_pandas()
    assert_published(table, expected(classifiers, frame, kind, "binary" if model == "binary" else "multi"))


def test_direct_model_job_refuses_classes_the_model_does_not_have(classifiers, tmp_path):
    from mlbatch_beam import score
    from mlbatch_beam.outputs import PredictionOutput

    prepared = _prepared(tmp_path / "prepared", rows(300))
    output = PredictionOutput(kind="probabilities", classes=("c", "b", "a"))  # wrong order
    with pytest.raises(Exception, match=r"classes \['c', 'b', 'a'\] differ from the model's classes \['a', 'b', 'c'\]"):
        score.run(["--input", f"{prepared}/*.parquet", "--model-uri", classifiers["uris"]["multi_proba"],
                   "--id-column", "id", "--feature-columns", ",".join(FEATURES),
                   "--output-dir", str(tmp_path / "out"), "--output-format", "parquet",
                   "--prediction-output", output.to_json(), "--result-file", str(tmp_path / "r.json")])


# --- the local backend's files, read back by the batch-prediction readers --------------------------

@pytest.mark.parametrize("flavor", ["vertex", "sagemaker"])
@pytest.mark.parametrize("case", list(OUTPUTS))
def test_local_backend_files_read_back_as_the_requested_columns(classifiers, tmp_path, flavor, case):
    from mlbatch_beam.local_predict import INPUT_FORMAT, predict_files
    from mlbatch_beam.outputs import PredictionOutput
    from mlbatch_beam.predictions import read_batch_predictions

    model, fields, kind = OUTPUTS[case]
    frame = rows(500, seed=3)
    prepared = _prepared(tmp_path / "prepared", frame, INPUT_FORMAT[flavor])
    predict_files(f"{prepared}/*", classifiers["uris"][model], "id", FEATURES, str(tmp_path / "raw"), flavor,
                  chunk_rows=200)
    tables = read_batch_predictions(STORE, str(tmp_path / "raw"), flavor, id_column="id",
                                    input_dir=str(prepared),
                                    output=PredictionOutput(**fields))
    assert_published(pa.concat_tables(list(tables)).to_pandas(), expected(classifiers, frame, kind))


# --- the real MLflow scoring server's answers --------------------------------------------------------

@pytest.fixture(scope="module")
def servers(classifiers, tmp_path_factory):
    """`mlflow models serve` on the probability model and on the named-outputs model."""
    logs = tmp_path_factory.mktemp("servers")
    with serve_model(classifiers["uris"]["multi_proba"], logs / "proba.log") as proba, \
            serve_model(classifiers["uris"]["named"], logs / "named.log") as named:
        yield {"multi_proba": proba, "named": named}


@pytest.mark.parametrize("case", ["probabilities", "positive_of_three", "columns"])
def test_sagemaker_reader_on_the_scoring_servers_answer(classifiers, servers, tmp_path, case):
    """Batch Transform's request for a prepared file (the whole Parquet file, features only) posted to the
    real server; its answer written as `<file>.out`, as the service writes it, then read back."""
    from mlbatch_beam.outputs import PredictionOutput
    from mlbatch_beam.predictions import read_batch_predictions

    model, fields, kind = OUTPUTS[case]
    frame = rows(300, seed=5)
    prepared = _prepared(tmp_path / "prepared", frame)
    (tmp_path / "out").mkdir()
    for path in sorted(prepared.glob("*.parquet")):
        body = pa.BufferOutputStream()
        pq.write_table(pq.read_table(path, columns=FEATURES), body)
        answer = servers[model].invocations(body.getvalue().to_pybytes(), "application/vnd.apache.parquet")
        assert answer.status_code == 200, answer.text
        (tmp_path / "out" / (path.name + ".out")).write_bytes(answer.content)
    tables = read_batch_predictions(STORE, str(tmp_path / "out"), "sagemaker", id_column="id",
                                    input_dir=str(prepared),
                                    output=PredictionOutput(**fields))
    assert_published(pa.concat_tables(list(tables)).to_pandas(), expected(classifiers, frame, kind))


def test_vertex_reader_on_the_scoring_servers_answer(classifiers, servers, tmp_path):
    """Vertex's request (`{"instances": [...]}` of feature objects) posted to the real server; each
    prediction written beside its key, as Vertex writes result lines, then read back."""
    from mlbatch_beam.outputs import PredictionOutput
    from mlbatch_beam.predictions import read_batch_predictions

    frame = rows(120, seed=6)
    answer = servers["multi_proba"].invocations(
        json.dumps({"instances": frame[FEATURES].to_dict(orient="records")}).encode(), "application/json")
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert len(predictions) == 120 and len(predictions[0]) == 3  # one probability per class
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "prediction.results-00000-of-00001").write_text(
        "".join(json.dumps({"key": int(k), "prediction": p}) + "\n" for k, p in zip(frame.id, predictions)))
    (tmp_path / "out" / "prediction.errors_stats-00000-of-00001").write_text("")
    tables = read_batch_predictions(STORE, str(tmp_path / "out"), "vertex", id_column="id",
                                    output=PredictionOutput(**OUTPUTS["probabilities"][1]))
    assert_published(pa.concat_tables(list(tables)).to_pandas(), expected(classifiers, frame, "probabilities"))


def test_a_model_answering_one_column_per_class_is_refused_for_one_value(classifiers, servers, tmp_path):
    from mlbatch_beam.predictions import read_batch_predictions

    frame = rows(50)
    prepared = _prepared(tmp_path / "prepared", frame)
    (tmp_path / "out").mkdir()
    for path in sorted(prepared.glob("*.parquet")):
        body = pa.BufferOutputStream()
        pq.write_table(pq.read_table(path, columns=FEATURES), body)
        answer = servers["multi_proba"].invocations(body.getvalue().to_pybytes(), "application/vnd.apache.parquet")
        (tmp_path / "out" / (path.name + ".out")).write_bytes(answer.content)
    with pytest.raises(ValueError, match="not one value per row; for one column per class set "
                                         "output.predictions.kind 'probabilities'"):
        list(read_batch_predictions(STORE, str(tmp_path / "out"), "sagemaker", id_column="id",
                                    input_dir=str(prepared)))


# --- the spec validator and resolve_model ------------------------------------------------------------

def spec_dict(tmp_path: Path, tracking_uri: str, model: str, predictions: dict, backend: str = "local",
              **predict) -> dict:
    return {
        "name": f"outputs_{model}",
        "schedule": None,
        "model": {"name": model, "alias": "champion", "tracking_uri": tracking_uri},
        "input": {"uri": f"{tmp_path}/in/ds={{{{ ds }}}}/*.parquet", "format": "parquet", "id_column": "id",
                  "features": [{"name": f, "type": "float"} for f in FEATURES]},
        "predict": {"backend": backend, "compute": {"batch_rows": 128}, **predict},
        "output": {"uri": f"{tmp_path}/predictions/ds={{{{ ds }}}}", "predictions": predictions},
        "tasks": {"retries": 0},
        "wait": {"targets": [f"{tmp_path}/in/ds={{{{ ds }}}}/*.parquet"], "timeout_minutes": 1, "poke_seconds": 1},
    }


@pytest.mark.parametrize("backend", ["local", "sagemaker", "vertex"])
def test_validator_refuses_a_method_switch_the_serving_container_cannot_do(tmp_path, backend):
    from mlbatch.spec.models import PipelineSpec

    spec = spec_dict(tmp_path, "sqlite:///x.db", "binary", {"kind": "positive_probability",
                                                            "method": "predict_proba"}, backend)
    with pytest.raises(ValueError) as refused:
        PipelineSpec.model_validate(spec)
    message = str(refused.value)
    assert "output.predictions.method 'predict_proba' needs predict.backend 'dataflow'" in message
    assert "pyfunc_predict_fn='predict_proba'" in message and "no per-request switch" in message
    PipelineSpec.model_validate({**spec, "predict": {"backend": "dataflow"}})  # the direct model can


def test_validator_refuses_the_switch_when_a_trigger_picks_the_backend(tmp_path):
    from mlbatch.spec.models import PipelineSpec
    from mlbatch.spec.loader import with_overrides

    spec = PipelineSpec.model_validate(spec_dict(
        tmp_path, "sqlite:///x.db", "binary", {"kind": "positive_probability", "method": "predict_proba"},
        "dataflow"))
    with pytest.raises(Exception, match="needs predict.backend 'dataflow'"):
        with_overrides(spec, {"predict.backend": "vertex"})


@pytest.mark.parametrize("predictions, message", [
    ({"kind": "probabilities"}, "kind 'probabilities' needs 'classes'"),
    ({"kind": "columns"}, "kind 'columns' needs 'columns'"),
    ({"kind": "label", "classes": ["a"]}, "'classes' belongs to kinds"),
    ({"kind": "positive_probability", "classes": ["no", "yes"], "positive_class": "maybe"},
     "positive_class 'maybe' is not one of classes"),
    ({"kind": "label", "method": "predict_proba"}, "returns class probabilities"),
    ({"kind": "columns", "columns": ["id"]}, "must be unique"),
])
def test_validator_names_what_is_wrong_with_output_predictions(tmp_path, predictions, message):
    from mlbatch.spec.models import PipelineSpec

    with pytest.raises(ValueError, match=message):
        PipelineSpec.model_validate(spec_dict(tmp_path, "sqlite:///x.db", "m", predictions, "dataflow"))


@pytest.mark.parametrize("model, predictions, message", [
    ("multi", {"kind": "probabilities", "classes": ["a", "b", "c"]},
     r"logged to return its `predict` \(log it with pyfunc_predict_fn='predict_proba'"),
    ("multi_proba", {"kind": "value"}, r"logged to return predict_proba \(one column per class\)"),
    ("multi_proba", {"kind": "probabilities", "classes": ["a", "b"]}, "returns 3 class columns; "
                                                                      "output.predictions.classes names 2"),
    ("named", {"kind": "columns", "columns": ["label", "score"]}, r"outputs lack \['score'\]"),
])
def test_resolve_model_checks_the_output_against_the_model(classifiers, tmp_path, model, predictions, message):
    from mlbatch.errors import ModelMismatchError
    from mlbatch.operators.resolve_model import check_signature
    from mlbatch.spec.models import PipelineSpec

    spec = PipelineSpec.model_validate(spec_dict(tmp_path, classifiers["tracking_uri"], model, predictions))
    with pytest.raises(ModelMismatchError, match=message):
        check_signature(spec, {"artifact_uri": classifiers["uris"][model], "uri": f"models:/{model}/1"})


# --- whole pipelines through dag.test(): resolve_model, prep, predict, publish -------------------

@pytest.fixture
def pipeline(airflow_db, classifiers, tmp_path, monkeypatch):
    """Write one spec into a pipelines folder of its own and its input partition; return the DAG."""
    def make(model: str, predictions: dict, backend: str, **predict):
        spec = spec_dict(tmp_path, classifiers["tracking_uri"], model, predictions, backend, **predict)
        spec["name"] = f"outputs_{backend}_{predictions['kind']}"
        folder = tmp_path / "pipelines"
        folder.mkdir(exist_ok=True)
        (folder / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec))
        monkeypatch.setenv("MLBATCH_PIPELINES_DIR", str(folder))
        frame = rows(700, seed=9)
        _prepared(tmp_path / "in" / f"ds={DATE}", frame)
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(REPO / "dags"))
        assert bag.import_errors == {}
        return bag.dags[spec["name"]], frame

    return make


def published(tmp_path: Path) -> pd.DataFrame:
    record = json.loads((tmp_path / "predictions" / f"ds={DATE}" / "_SUCCESS").read_text())
    return pq.read_table(record["files"], partitioning=None).to_pandas()


@pytest.mark.parametrize("backend, model, predictions, kind, predict", [
    ("local", "multi_proba", OUTPUTS["probabilities"][1], "probabilities", {"local": {"flavor": "sagemaker"}}),
    ("dataflow", "binary", {"kind": "positive_probability", "method": "predict_proba", "classes": ["no", "yes"],
                            "positive_class": "yes"}, "positive_probability", {}),
])
def test_pipeline_publishes_the_requested_columns(classifiers, pipeline, tmp_path, backend, model, predictions,
                                                   kind, predict):
    dag, frame = pipeline(model, predictions, backend, **predict)
    # record points MLflow at the spec's model.tracking_uri (its own process, in a deployment); here the
    # tasks run in this process, so the session's registry is put back afterwards.
    with mlflow_pointed_at(os.environ["MLBATCH_TEST_MLFLOW_URI"]):
        run = dag.test(logical_date=datetime.fromisoformat(DATE).replace(tzinfo=timezone.utc))
    assert run.state == "success"
    assert_published(published(tmp_path), expected(classifiers, frame, kind, "binary" if model == "binary" else "multi"))
