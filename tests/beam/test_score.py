"""The MLflow pyfunc ModelHandler, ScoreBatches and the score CLI."""
import glob
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that

from mlbatch_beam import score
from mlbatch_beam.arrow_io import ReadArrowBatches
from mlbatch_beam.model_handler import MLflowPyfuncModelHandler
from mlbatch_beam.results import counter_totals


def test_handler_contract_and_predictions_stay_joined_to_ids(mlflow_model, make_frame):
    handler = MLflowPyfuncModelHandler(mlflow_model.uri, "id", mlflow_model.features)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 1, "max_batch_size": 1}
    assert handler.share_model_across_processes() is False
    assert handler.get_metrics_namespace() == "mlbatch.model"

    frames = [make_frame(50, seed=1), make_frame(30, seed=2, start_id=100)]
    frames[1] = frames[1].iloc[::-1]  # ids out of order must still line up
    model = handler.load_model()
    outputs = list(handler.run_inference(frames, model))

    assert [len(o) for o in outputs] == [50, 30]
    for frame, out in zip(frames, outputs):
        assert list(out.columns) == ["id", "prediction"]
        np.testing.assert_array_equal(out.id.to_numpy(), frame.id.to_numpy())
        np.testing.assert_allclose(out.prediction.to_numpy(), mlflow_model.expected(frame))
    assert handler.get_num_bytes(frames) > 0


def test_score_batches_loads_the_model_once(tmp_path, mlflow_model, make_frame):
    frame = make_frame(2000, seed=5)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "in.parquet",
                   row_group_size=500)
    expected = dict(zip(frame.id, mlflow_model.expected(frame)))

    def check(batches):
        scored = pa.Table.from_batches(batches).to_pandas()
        assert len(scored) == 2000 and len(batches) == 8
        np.testing.assert_allclose(scored.prediction, [expected[i] for i in scored.id])

    handler = MLflowPyfuncModelHandler(mlflow_model.uri, "id", mlflow_model.features)
    p = BeamTestPipeline(runner="FnApiRunner")
    scored = (p | ReadArrowBatches(str(tmp_path / "in.parquet"), "parquet", 250)
              | score.ScoreBatches(handler))
    assert_that(scored, check)
    result = p.run()
    result.wait_until_finish()
    assert counter_totals(result, ["rows_in", "rows_scored", "model_loads"]) == {
        "rows_in": 2000, "rows_scored": 2000, "model_loads": 1}


def _run_cli(tmp_path, mlflow_model, model_uri, fmt):
    return score.run([
        "--input", str(tmp_path / "prepared/*.parquet"), "--model-uri", model_uri,
        "--id-column", "id", "--feature-columns", ",".join(mlflow_model.features),
        "--output-dir", str(tmp_path / f"out-{fmt}"), "--output-format", fmt,
        "--prediction-column", "weight_pounds", "--batch-rows", "300",
        "--result-file", str(tmp_path / f"result-{fmt}.json"),
    ])


def test_score_cli_with_registry_and_artifact_uris(tmp_path, mlflow_model, make_frame):
    frame = make_frame(1200, seed=11)
    (tmp_path / "prepared").mkdir()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table.slice(0, 700), tmp_path / "prepared/part-0.parquet")
    pq.write_table(table.slice(700), tmp_path / "prepared/part-1.parquet")
    expected = pd.DataFrame({"id": frame.id, "weight_pounds": mlflow_model.expected(frame)})

    # models:/ URI (resolved through MLFLOW_TRACKING_URI) -> parquet
    result = _run_cli(tmp_path, mlflow_model, mlflow_model.uri, "parquet")
    assert result == json.loads((tmp_path / "result-parquet.json").read_text())
    assert result == {"rows_in": 1200, "rows_scored": 1200, "model_loads": 1,
                      "output_dir": str(tmp_path / "out-parquet")}
    out = pd.read_parquet(tmp_path / "out-parquet").sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(out, expected)
    assert all(f.split("/")[-1].startswith("predictions-")
               for f in glob.glob(str(tmp_path / "out-parquet/*")))

    # direct artifact URI -> JSON Lines
    assert mlflow_model.artifact_uri.startswith("file://")
    result = _run_cli(tmp_path, mlflow_model, mlflow_model.artifact_uri, "jsonl")
    assert result["rows_scored"] == 1200
    lines = [json.loads(line) for f in glob.glob(str(tmp_path / "out-jsonl/*.jsonl")) for line in open(f)]
    out = pd.DataFrame(lines).sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(out, expected)
