"""The local prediction backend writes cloud shapes that read back into [id, prediction]."""
import json
import os

import numpy as np
import pyarrow as pa
import pytest

from mlbatch_beam import local_predict
from mlbatch_beam.arrow_io import table_to_jsonl
from mlbatch_beam.predictions import read_batch_predictions


@pytest.fixture
def prepared(tmp_path, make_frame, features):
    """Two prepared JSON Lines files, as the prep job writes them for cloud backends."""
    frame = make_frame(900, seed=21)[["id"] + features]
    table = pa.Table.from_pandas(frame, preserve_index=False)
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared/part-a.jsonl").write_bytes(table_to_jsonl(table.slice(0, 500)))
    (tmp_path / "prepared/part-b.jsonl").write_bytes(table_to_jsonl(table.slice(500)))
    return frame


def _predict(tmp_path, mlflow_model, flavor):
    return local_predict.run([
        "--input", str(tmp_path / "prepared/*.jsonl"), "--model-uri", mlflow_model.uri,
        "--id-column", "id", "--feature-columns", ",".join(mlflow_model.features),
        "--output-dir", str(tmp_path / flavor), "--flavor", flavor, "--chunk-rows", "128",
        "--result-file", str(tmp_path / f"{flavor}.json"),
    ])


def _read_back(tmp_path, flavor):
    tables = list(read_batch_predictions(str(tmp_path / flavor), flavor, id_column="id"))
    assert all(t.column_names == ["id", "prediction"] for t in tables)
    return pa.concat_tables(tables).to_pandas().sort_values("id").reset_index(drop=True)


def test_vertex_shape_round_trips(tmp_path, mlflow_model, prepared, features):
    result = _predict(tmp_path, mlflow_model, "vertex")
    assert result == {"rows_in": 900, "rows_scored": 900}
    assert json.loads((tmp_path / "vertex.json").read_text()) == result
    assert sorted(os.listdir(tmp_path / "vertex")) == [
        "prediction.results-00000-of-00002", "prediction.results-00001-of-00002"]
    first = json.loads((tmp_path / "vertex/prediction.results-00000-of-00002").open().readline())
    assert set(first) == {"instance", "key", "prediction"}
    assert set(first["instance"]) == set(features)

    back = _read_back(tmp_path, "vertex")
    np.testing.assert_array_equal(back.id, prepared.id)
    np.testing.assert_allclose(back.prediction, mlflow_model.expected(prepared))


def test_sagemaker_shape_round_trips(tmp_path, mlflow_model, prepared, features):
    assert _predict(tmp_path, mlflow_model, "sagemaker") == {"rows_in": 900, "rows_scored": 900}
    assert sorted(os.listdir(tmp_path / "sagemaker")) == ["part-a.jsonl.out", "part-b.jsonl.out"]
    first = json.loads((tmp_path / "sagemaker/part-a.jsonl.out").open().readline())
    assert list(first) == ["id"] + features + ["SageMakerOutput"]

    back = _read_back(tmp_path, "sagemaker")
    np.testing.assert_array_equal(back.id, prepared.id)
    np.testing.assert_allclose(back.prediction, mlflow_model.expected(prepared))


def test_missing_prediction_files_are_an_error(tmp_path, features):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no vertex prediction files"):
        next(read_batch_predictions(str(tmp_path / "empty"), "vertex"))
    with pytest.raises(FileNotFoundError, match="No input files match"):
        local_predict.predict_files(str(tmp_path / "none/*.jsonl"), "models:/x/1", "id",
                                    features, str(tmp_path / "out"))
