"""bench/three_ways.py's own logic: the batch-prediction step it times scores every row as the model does
(real prep job, SageMaker transform emulator on moto, real scoring server), and the crossover rule
`backend: auto` takes from it. No timing is asserted: the figures below are inputs, not measurements."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def three_ways():
    spec = importlib.util.spec_from_file_location("three_ways_bench", REPO / "bench" / "three_ways.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_batch_prediction_step_scores_every_row_as_the_model_does(three_ways, scoring_server, model, tmp_path):
    import mlflow.pyfunc
    import pandas as pd

    from mlbatch.local.demo.natality import FEATURES, make_frame
    from mlbatch_beam import prep

    rows = make_frame(500, seed=7, bad_fraction=0.0)[["id", *FEATURES]]
    rows.to_parquet(tmp_path / "raw.parquet", index=False)
    result = prep.run(["--input", str(tmp_path / "raw.parquet"), "--input-format", "parquet",
                       "--schema-json", three_ways.model_schema(model["artifact_uri"], model["uri"]),
                       "--output-dir", str(tmp_path / "prepared"), "--output-format", "parquet",
                       "--dead-letter-dir", str(tmp_path / "rejected"), "--batch-rows", "200",
                       "--result-file", str(tmp_path / "prep.json"), "--runner=FnApiRunner"])
    assert result["rows_valid"] == 500
    assert len(list((tmp_path / "prepared").glob("*.parquet"))) >= 3  # several requests, joined back by order

    done = three_ways.transform({"prepared": str(tmp_path / "prepared"), "work": str(tmp_path),
                                 "container": scoring_server.url})

    assert done == {"rows_scored": 500}
    scored = pd.read_parquet(tmp_path / "output" / "predictions.parquet").set_index("id")["prediction"]
    expected = pd.Series(mlflow.pyfunc.load_model(model["artifact_uri"]).predict(rows[FEATURES]),
                         index=rows["id"])
    pd.testing.assert_series_equal(scored.sort_index(), expected.sort_index(), check_names=False)


def _figures(three_ways, way: str, fixed_s: float, s_per_1m: float) -> list:
    return [three_ways.Figures(way, rows, fixed_s + s_per_1m * rows / 1e6, 0.0, 0.0)
            for rows in (10_000, 100_000, 1_000_000)]


def test_the_endpoint_crossover_is_where_its_line_meets_the_nearest_other_way(three_ways):
    results = (_figures(three_ways, "direct", 3.0, 5.0) + _figures(three_ways, "batch", 10.0, 10.0)
               + _figures(three_ways, "endpoint", 2.0, 30.0))

    rows, detail = three_ways.crossover(results)

    assert rows == pytest.approx(40_000, abs=1)  # (3 - 2) s / (30 - 5) s per 1M rows; batch meets it at 400K
    assert "endpoint 2.0 s + 30.0 s per 1M rows" in detail


def test_an_endpoint_with_the_larger_fixed_cost_never_crosses_over(three_ways):
    results = (_figures(three_ways, "direct", 3.0, 5.0) + _figures(three_ways, "batch", 10.0, 10.0)
               + _figures(three_ways, "endpoint", 3.5, 30.0))

    assert three_ways.crossover(results)[0] == 0


def test_the_section_replaces_only_its_own_markers(three_ways, tmp_path):
    import whole_run

    path = tmp_path / "results.md"
    path.write_text(f"# scoring\n\n{whole_run.START_MARK}\nwhole\n{whole_run.END_MARK}\n\n"
                    f"{three_ways.START_MARK}\nold\n{three_ways.END_MARK}\n\ntail\n")

    whole_run.write_section(f"{three_ways.START_MARK}\nnew\n{three_ways.END_MARK}\n", path,
                            three_ways.START_MARK, three_ways.END_MARK)

    text = path.read_text()
    assert "new" in text and "old" not in text and "whole" in text and text.endswith("tail\n")
