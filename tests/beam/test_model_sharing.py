"""Each worker process loads the model once; large_model / model_copies reach the ModelHandler."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlbatch.backends.dataflow_options import local_runner_args, model_sharing_args
from mlbatch.spec.models import PipelineSpec
from mlbatch_beam import score
from mlbatch_beam.model_handler import MLflowPyfuncModelHandler


def make_spec(compute: dict) -> PipelineSpec:
    return PipelineSpec(
        name="natality_daily",
        model={"name": "natality", "version": 1},
        input={"uri": "/data/*.parquet", "format": "parquet", "id_column": "id",
               "features": [{"name": "mother_age", "type": "float"}]},
        output={"uri": "/out"},
        predict={"backend": "dataflow", "compute": compute},
    )


def cli_args(model_uri, features, input_pattern, out, *extra):
    return ["--input", input_pattern, "--model-uri", model_uri, "--id-column", "id",
            "--feature-columns", ",".join(features), "--output-dir", str(out),
            "--output-format", "parquet", "--result-file", f"{out}.json", *extra]


@pytest.mark.parametrize("compute, shared, copies", [
    ({}, False, 1),
    ({"large_model": True}, True, 1),
    ({"model_copies": 2}, True, 2),
])
def test_spec_sharing_settings_reach_the_model_handler(mlflow_model, features, compute, shared, copies):
    spec = make_spec(compute)
    args, beam_args = score.parse_args(
        cli_args(mlflow_model.uri, features, "/in/*.parquet", "/out", *model_sharing_args(spec),
                 *local_runner_args(spec)))
    handler = score.model_handler_from_args(args)
    assert beam_args == ["--runner=FnApiRunner"]
    assert handler.share_model_across_processes() is shared
    assert handler.model_copies() == copies


def test_model_copies_must_be_positive():
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        make_spec({"model_copies": 0})
    with pytest.raises(SystemExit):
        score.parse_args(cli_args("m", ["a"], "/in", "/out", "--model-copies", "0"))


def test_sklearn_models_skip_pyfunc_but_predict_the_same(mlflow_model, make_frame):
    """The fast path calls the estimator in its own column order, whatever order the job lists."""
    frame = make_frame(300, seed=3)
    reordered = list(reversed(mlflow_model.features))
    model = MLflowPyfuncModelHandler(mlflow_model.uri, "id", reordered).load_model()
    assert model.estimator is not None
    np.testing.assert_allclose(model.predict(frame[reordered]), mlflow_model.expected(frame))
    # A column the estimator needs but the job does not pass is refused at load time.
    with pytest.raises(ValueError, match="needs columns"):
        MLflowPyfuncModelHandler(mlflow_model.uri, "id", mlflow_model.features[:-1]).load_model()


@pytest.fixture
def prepared(tmp_path, make_frame):
    """Eight row groups in two files, so both worker processes get bundles to score."""
    frame = make_frame(4000, seed=9)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    (tmp_path / "in").mkdir()
    pq.write_table(table.slice(0, 2000), tmp_path / "in/a.parquet", row_group_size=500)
    pq.write_table(table.slice(2000), tmp_path / "in/b.parquet", row_group_size=500)
    return frame


def _scored(out):
    return pd.read_parquet(out).sort_values("id").reset_index(drop=True)


def test_two_worker_processes_load_the_model_once_each(tmp_path, mlflow_model, prepared):
    mp2 = ["--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    result = score.run(cli_args(mlflow_model.uri, mlflow_model.features, str(tmp_path / "in/*.parquet"),
                                tmp_path / "out", "--batch-rows", "250", *mp2))
    assert result["rows_scored"] == 4000
    assert result["model_loads"] == 2  # one per worker process, not one per bundle or batch
    np.testing.assert_allclose(_scored(tmp_path / "out").prediction, mlflow_model.expected(prepared))


def test_large_model_is_loaded_once_and_called_through_its_proxy(tmp_path, mlflow_model, prepared):
    result = score.run(cli_args(mlflow_model.uri, mlflow_model.features, str(tmp_path / "in/*.parquet"),
                                tmp_path / "out", "--batch-rows", "250", "--large-model"))
    assert (result["rows_scored"], result["model_loads"]) == (4000, 1)
    np.testing.assert_allclose(_scored(tmp_path / "out").prediction, mlflow_model.expected(prepared))
