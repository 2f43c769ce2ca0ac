"""The local prediction backend writes cloud shapes that read back into [id, prediction]."""
import json
import os

import numpy as np
import pyarrow as pa
import pytest

from mlbatch_beam import local_predict
from mlbatch_beam.arrow_io import table_to_jsonl
from mlbatch_beam.predictions import read_batch_predictions

from mlbatch.storage.layer import Storage

STORE = Storage()  # local files; publish passes the pipeline's Storage (any store)


@pytest.fixture
def prepared(tmp_path, make_frame, features):
    """Two prepared files in each format, as the prep job writes them (JSON Lines for Vertex,
    Parquet for SageMaker)."""
    import pyarrow.parquet as pq

    frame = make_frame(900, seed=21)[["id"] + features]
    table = pa.Table.from_pandas(frame, preserve_index=False)
    (tmp_path / "prepared").mkdir()
    for name, part in (("part-a", table.slice(0, 500)), ("part-b", table.slice(500))):
        (tmp_path / f"prepared/{name}.jsonl").write_bytes(table_to_jsonl(part))
        pq.write_table(part, tmp_path / f"prepared/{name}.parquet")
    return frame


def _predict(tmp_path, mlflow_model, flavor):
    suffix = local_predict.INPUT_FORMAT[flavor]
    return local_predict.run([
        "--input", str(tmp_path / f"prepared/*.{suffix}"), "--model-uri", mlflow_model.uri,
        "--id-column", "id", "--feature-columns", ",".join(mlflow_model.features),
        "--output-dir", str(tmp_path / flavor), "--flavor", flavor, "--chunk-rows", "128",
        "--result-file", str(tmp_path / f"{flavor}.json"),
    ])


def _read_back(tmp_path, flavor):
    tables = list(read_batch_predictions(STORE, str(tmp_path / flavor), flavor, id_column="id",
                                         input_dir=str(tmp_path / "prepared")))
    assert all(t.column_names == ["id", "prediction"] for t in tables)
    return pa.concat_tables(tables).to_pandas().sort_values("id").reset_index(drop=True)


def test_vertex_shape_round_trips(tmp_path, mlflow_model, prepared, features):
    result = _predict(tmp_path, mlflow_model, "vertex")
    assert result == {"rows_in": 900, "rows_scored": 900}
    assert json.loads((tmp_path / "vertex.json").read_text()) == result
    assert sorted(os.listdir(tmp_path / "vertex")) == [
        "prediction.errors_stats-00000-of-00001",
        "prediction.results-00000-of-00002", "prediction.results-00001-of-00002"]
    first = json.loads((tmp_path / "vertex/prediction.results-00000-of-00002").open().readline())
    assert list(first) == ["key", "prediction"]  # with a key field, Vertex leaves the instance out

    back = _read_back(tmp_path, "vertex")
    np.testing.assert_array_equal(back.id, prepared.id)
    np.testing.assert_allclose(back.prediction, mlflow_model.expected(prepared))


def test_sagemaker_shape_round_trips(tmp_path, mlflow_model, prepared, features):
    assert _predict(tmp_path, mlflow_model, "sagemaker") == {"rows_in": 900, "rows_scored": 900}
    assert sorted(os.listdir(tmp_path / "sagemaker")) == ["part-a.parquet.out", "part-b.parquet.out"]
    answer = json.loads((tmp_path / "sagemaker/part-a.parquet.out").read_text())
    assert list(answer) == ["predictions"] and len(answer["predictions"]) == 500

    back = _read_back(tmp_path, "sagemaker")
    np.testing.assert_array_equal(back.id, prepared.id)
    np.testing.assert_allclose(back.prediction, mlflow_model.expected(prepared))


def test_vertex_files_named_as_the_rest_reference_says_read_the_same(tmp_path, mlflow_model, prepared):
    """predictions_NNNN.jsonl / errors_NNNN.jsonl (the BatchPredictionJob reference) read like
    prediction.results-* / prediction.errors_stats-* (what jobs write for custom models)."""
    _predict(tmp_path, mlflow_model, "vertex")
    expected = _read_back(tmp_path, "vertex")
    folder = tmp_path / "vertex"
    for i, path in enumerate(sorted(folder.glob("prediction.results-*"))):
        path.rename(folder / f"predictions_{i + 1:04d}.jsonl")
    (folder / "prediction.errors_stats-00000-of-00001").rename(folder / "errors_0001.jsonl")
    assert _read_back(tmp_path, "vertex").equals(expected)
    (folder / "errors_0001.jsonl").write_text(json.dumps({"key": 7, "error": {"code": 3}}) + "\n")
    with pytest.raises(ValueError, match="1 failed instances"):
        _read_back(tmp_path, "vertex")


def test_missing_prediction_files_are_an_error(tmp_path, features):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no vertex prediction files"):
        next(read_batch_predictions(STORE, str(tmp_path / "empty"), "vertex"))
    with pytest.raises(FileNotFoundError, match="No input files match"):
        local_predict.predict_files(str(tmp_path / "none/*.jsonl"), "models:/x/1", "id",
                                    features, str(tmp_path / "out"))


def test_parsers_refuse_what_the_services_write_for_failures(tmp_path, mlflow_model, prepared):
    """A Vertex error line, or a SageMaker answer whose count does not match its input file."""
    _predict(tmp_path, mlflow_model, "vertex")
    (tmp_path / "vertex/prediction.errors_stats-00000-of-00001").write_text(
        json.dumps({"key": 7, "error": {"code": 3, "message": "bad instance"}}) + "\n")
    with pytest.raises(ValueError, match="1 failed instances.*bad instance"):
        list(read_batch_predictions(STORE, str(tmp_path / "vertex"), "vertex"))

    _predict(tmp_path, mlflow_model, "sagemaker")
    (tmp_path / "sagemaker/part-b.parquet.out").write_text(json.dumps({"predictions": [1.0, 2.0]}))
    with pytest.raises(ValueError, match="2 predictions for the 400 rows"):
        list(read_batch_predictions(STORE, str(tmp_path / "sagemaker"), "sagemaker",
                                    input_dir=str(tmp_path / "prepared")))
    (tmp_path / "sagemaker/part-b.parquet.out").unlink()
    with pytest.raises(ValueError, match="do not match the inputs"):
        list(read_batch_predictions(STORE, str(tmp_path / "sagemaker"), "sagemaker",
                                    input_dir=str(tmp_path / "prepared")))


def test_predict_and_publish_read_both_services_files_without_apache_beam(tmp_path, mlflow_model, prepared):
    """The end of predict and publish run on the Airflow side for every backend: the reader, the
    quality summaries taken as it reads and both steps' modules import no Beam (a process where
    `import apache_beam` fails reads and summarises both services' files)."""
    import subprocess
    import sys

    for flavor in ("vertex", "sagemaker"):
        _predict(tmp_path, mlflow_model, flavor)
    script = f"""
import os, sys
sys.modules["apache_beam"] = None  # any import of Beam now raises ImportError
import mlbatch.backends.batch_predictions
import mlbatch.operators.publish
from mlbatch.storage.layer import Storage
from mlbatch_beam.predictions import read_batch_predictions
from mlbatch_beam.quality.statistics import add_columns
for flavor in ("vertex", "sagemaker"):
    tables = list(read_batch_predictions(Storage(), {str(tmp_path)!r} + "/" + flavor, flavor, id_column="id",
                                         input_dir={str(tmp_path / "prepared")!r}))
    summaries = {{}}
    for table in tables:
        for batch in table.to_batches():
            add_columns(summaries, batch, ["prediction"], {{}})
    assert summaries["prediction"].count == sum(t.num_rows for t in tables)
    print("rows", flavor, sum(t.num_rows for t in tables))
assert not [m for m in sys.modules if m.startswith("apache_beam.")]
sys.stdout.flush()
os._exit(0)  # what is tested is done; skip interpreter teardown (a library's thread may abort it)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line.split()[1:] for line in done.stdout.splitlines() if line.startswith("rows ")]
    assert rows == [["vertex", "900"], ["sagemaker", "900"]]
