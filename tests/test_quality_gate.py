"""The quality gate's statistics and verdict (issue 25, docs/quality.md): the direct-model Beam job
computes in its scoring pass exactly the statistics computed directly on the same rows; three normal
days committed with their statistics, then a day with one shifted feature blocks on that feature;
on the `local` backend (both services' files) the predictions' statistics are taken where predict
reads the service's output, and a shifted prediction blocks on it; half a partition blocks on the row count; the first run passes with a note; the spec's thresholds
override the defaults; a baseline logged with the model version in a real MLflow registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from mlbatch.errors import SpecError
from mlbatch.local.demo.natality import FEATURES, LABEL, make_frame
from mlbatch.quality import baseline, gate, log_model_baseline, measures
from mlbatch.run.commit import RECORD, Partition, commit
from mlbatch.run.paths import RunPaths
from mlbatch.spec.loader import load_spec
from mlbatch.spec.quality import MEASURES
from mlbatch.storage.layer import Storage
from mlbatch_beam.quality.combine import document_bytes, kind_of
from mlbatch_beam.quality.statistics import summary

ROWS = 5000


def spec_file(tmp_path: Path, quality: dict | None = None, name: str = "gated", predict: dict | None = None) -> Path:
    doc = {
        "name": name, "model": {"name": "natality_weight", "alias": "champion"},
        "input": {"uri": f"{tmp_path}/in/ds={{{{ ds }}}}/*.parquet", "format": "parquet", "id_column": "id",
                  "features": [{"name": "is_male", "type": "bool"},
                               {"name": "mother_age", "type": "float", "min": 10, "max": 60},
                               {"name": "plurality", "type": "int", "min": 1, "max": 5},
                               {"name": "gestation_weeks", "type": "float", "min": 18, "max": 46}]},
        "predict": predict or {"backend": "dataflow"},
        "output": {"uri": f"{tmp_path}/out/ds={{{{ ds }}}}", "format": "parquet"},
        "quality": {} if quality is None else quality,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def paths_for(tmp_path: Path, ds: str) -> RunPaths:
    return RunPaths(f"{tmp_path}/in/ds={ds}/*.parquet", None, f"{tmp_path}/out/ds={ds}",
                    f"{tmp_path}/out/_rejected/ds={ds}", f"{tmp_path}/out/_work/{ds}")


def day(tmp_path: Path, ds: str, rows: int = ROWS, seed: int = 0, shift: float = 0.0):
    frame = make_frame(rows, seed=seed, bad_fraction=0.002).drop(columns=[LABEL])
    frame["gestation_weeks"] += shift
    folder = tmp_path / "in" / f"ds={ds}"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / "part-00000.parquet")
    return frame


def score(spec, paths: RunPaths, model: dict, args: list[str] | None = None) -> dict:
    """The direct-model job as the local dataflow backend runs it, with the gate's statistics args."""
    from mlbatch_beam import validate_and_score

    from mlbatch.spec.prep_contract import schema_json

    args = baseline.edges_args(Storage(), spec, paths, model["version"]) if args is None else args
    return validate_and_score.run([
        "--input", paths.input_pattern, "--input-format", "parquet", "--schema-json", schema_json(spec),
        "--dead-letter-dir", f"{paths.work}/rejected", "--output-dir", f"{paths.work}/output",
        "--output-format", "parquet", "--batch-rows", "700", "--result-file", f"{paths.work}/predict.json",
        "--model-uri", model["artifact_uri"], "--id-column", "id", "--feature-columns", ",".join(FEATURES),
        "--runner=FnApiRunner", *args]) | {"model_version": model["version"]}


def publish(spec, paths: RunPaths, result: dict, ds: str) -> dict:
    """commit() as publish calls it: the statistics kept with the attempt and named in _SUCCESS."""
    return commit(Storage(), Partition(paths.output, f"{paths.work}/output"),
                  Partition(paths.dead_letter, f"{paths.work}/rejected"), f"run_{ds}.0001",
                  {"run_id": f"run_{ds}", "pipeline": spec.name, "rows_in": result["rows_in"],
                   "rows_rejected": result["rows_rejected"]},
                  sidecars=baseline.sidecars(Storage(), spec, paths, result))


def direct(values, edges=None, column="x"):
    array = pa.array(values)
    return summary(column, kind_of(array.type), edges).add_batch(array)


def test_statistics_from_the_beam_job_equal_statistics_computed_directly(tmp_path, model):
    spec = load_spec(spec_file(tmp_path))
    frame = day(tmp_path, "2026-11-01", seed=3)
    paths = paths_for(tmp_path, "2026-11-01")
    edges = {"mother_age": [15.0, 20, 25, 30, 35, 40, 45], "gestation_weeks": [30.0, 35, 38, 40, 42],
             "prediction": [5.0, 6, 7, 8, 9]}
    Path(paths.work).mkdir(parents=True)
    job_edges = Path(paths.work) / "edges.json"
    job_edges.write_text(json.dumps(edges))
    result = score(spec, paths, model, ["--statistics-file", f"{paths.work}/statistics.json",
                                        "--statistics-edges", str(job_edges)])  # these edges, not a baseline's
    assert result["statistics_uri"] == f"{paths.work}/statistics.json"
    job = baseline.read(Storage(), result["statistics_uri"])
    scored = pq.read_table(f"{paths.work}/output").to_pandas()
    valid = frame.set_index("id").loc[sorted(scored["id"])]
    assert len(valid) == result["rows_valid"] < ROWS  # a few rows rejected by prep's rules
    for column in FEATURES:
        mine, theirs = job.features[column].to_json(), direct(valid[column].to_numpy(), edges.get(column),
                                                              column).to_json()
        for key in ("count", "nulls", "values", "other", "counts", "below", "above", "min", "max", "sketch",
                    "edges", "non_finite"):
            assert mine.get(key) == theirs.get(key), (column, key)
        for key in ("mean", "m2", "sums"):
            assert np.allclose(mine.get(key, 0), theirs.get(key, 0), rtol=1e-9), (column, key)
    prediction = job.predictions["prediction"].to_json()
    expected = direct(scored["prediction"].to_numpy(), edges["prediction"], "prediction").to_json()
    assert [prediction[k] for k in ("count", "counts", "below", "above")] == [
        expected[k] for k in ("count", "counts", "below", "above")]
    assert sum(prediction["counts"]) + prediction["below"] + prediction["above"] == len(scored)
    assert set(job.predictions) == {"prediction"}  # the id column is not a prediction


def test_three_normal_days_then_one_shifted_feature_blocks_on_it(tmp_path, model):
    spec = load_spec(spec_file(tmp_path))
    days = ["2026-11-01", "2026-11-02", "2026-11-03"]
    verdicts = []
    for i, ds in enumerate(days):
        day(tmp_path, ds, seed=10 + i)
        paths = paths_for(tmp_path, ds)
        result = score(spec, paths, model)
        verdicts.append(gate.evaluate(spec, paths, result))
        record = publish(spec, paths, result, ds)
        assert record["statistics"].startswith(f"{paths.output}/_attempts/") and record["statistics"] not in (
            record["files"])
    assert verdicts[0].level == "pass" and "no baseline yet" in " ".join(verdicts[0].notes)
    assert verdicts[1].baseline == "last 1 committed run (ds=2026-11-01)"
    assert [v.level for v in verdicts[1:]] == ["pass", "pass"], [v.summary_lines() for v in verdicts]

    day(tmp_path, "2026-11-04", seed=20, shift=2.2)  # one standard deviation later
    paths = paths_for(tmp_path, "2026-11-04")
    result = score(spec, paths, model)
    edges = json.loads(Path(f"{paths.work}/{baseline.EDGES_FILE}").read_text())
    assert len(edges["gestation_weeks"]) > 5 and "is_male" not in edges  # bins fixed by the baseline
    verdict = gate.evaluate(spec, paths, result)
    assert verdict.level == "block"
    assert verdict.baseline == "last 3 committed runs (ds=2026-11-01 .. ds=2026-11-03)"
    shifted = {f.measure: f for f in verdict.findings if f.column == "gestation_weeks"}
    assert {"psi", "jensen_shannon", "wasserstein"} <= set(shifted)
    assert all(shifted[m].level == "block" for m in ("psi", "jensen_shannon", "wasserstein"))
    assert shifted["wasserstein"].value == pytest.approx(1.0, abs=0.15)  # one baseline std
    assert verdict.findings[0].level == "block"
    assert not [f for f in verdict.findings if f.column in ("mother_age", "is_male", "plurality")]
    assert verdict.measures["feature:mother_age"]["psi"] < 0.1
    assert verdict.summary_lines(top=2)[0].startswith("Quality BLOCK against last 3 committed runs")
    assert gate.Verdict.from_json(json.loads(json.dumps(verdict.to_json()))) == verdict
    png = gate.chart_png(verdict, spec, paths, result)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 50_000


def prep_and_predict(spec, paths: RunPaths, model: dict, flavor: str) -> dict:
    """The `local` backend's run of one day as its steps run it: prep (the features' statistics, on
    the baseline's edges), the service-shaped job (mlbatch_beam.local_predict), then the end of predict
    (`stage_batch_predictions`: the files joined to their ids and staged, the predictions' statistics
    taken in that read). Returns predict's result with prep's counts."""
    from mlbatch_beam import local_predict, prep
    from mlbatch_beam.predictions import INPUT_FORMAT

    from mlbatch.backends.batch_predictions import stage_batch_predictions
    from mlbatch.spec.prep_contract import schema_json

    prepped = prep.run(["--input", paths.input_pattern, "--input-format", "parquet", "--schema-json",
                        schema_json(spec), "--output-dir", paths.prepared, "--output-format", INPUT_FORMAT[flavor],
                        "--dead-letter-dir", paths.rejected_staging, "--result-file", paths.result_file("prep"),
                        "--batch-rows", "1000", "--runner=FnApiRunner",
                        *baseline.edges_args(Storage(), spec, paths, model["version"])])
    local_predict.run(["--input", f"{paths.prepared}/*", "--model-uri", model["artifact_uri"], "--id-column", "id",
                       "--feature-columns", ",".join(FEATURES), "--output-dir", paths.raw_predictions,
                       "--flavor", flavor, "--chunk-rows", "700", "--result-file", paths.result_file("predict")])
    staged = stage_batch_predictions(spec, paths, paths.raw_predictions, model["version"])
    return {**staged, "rows_in": prepped["rows_in"], "rows_rejected": prepped["rows_rejected"],
            "model_version": model["version"]}


@pytest.mark.parametrize("flavor", ["vertex", "sagemaker"])
def test_the_local_backend_takes_prediction_statistics_where_it_reads_the_services_files(tmp_path, model, flavor):
    """`local` (the Vertex and the SageMaker files): the end of predict reads the service's output once,
    stages it and adds the predictions' statistics to prep's document, equal to those computed directly
    on the committed predictions; three normal days, then a day whose predictions moved (its gestation
    weeks shifted, a feature the spec does not compare) blocks on the prediction."""
    spec = load_spec(spec_file(tmp_path, {"features": ["is_male", "plurality"]},
                               predict={"backend": "local", "local": {"flavor": flavor}}))
    verdicts = []
    for i, ds in enumerate(["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"]):
        day(tmp_path, ds, seed=40 + i, shift=2.2 if i == 3 else 0.0)
        paths = paths_for(tmp_path, ds)
        result = prep_and_predict(spec, paths, model, flavor)
        assert result["output_uri"] == paths.output_staging and result["staged_files"] >= 1
        assert result["statistics_uri"] == f"{paths.work}/{baseline.STATISTICS_FILE}"
        verdicts.append(gate.evaluate(spec, paths, result))
        record = publish(spec, paths, result, ds)
        committed = pq.read_table(record["files"], partitioning=None).column("prediction")
        assert len(committed) == result["rows_staged"] == result["rows_in"] - result["rows_rejected"]
        doc = json.loads(Path(record["statistics"]).read_text())
        assert set(doc["features"]) == set(FEATURES) and set(doc["predictions"]) == {"prediction"}
        stored = doc["predictions"]["prediction"]
        edges = json.loads(Path(paths.work, baseline.EDGES_FILE).read_text()).get("prediction")
        assert (edges is None) == (i == 0) and stored["edges"] == edges  # day 1: a sketch; then the baseline's bins
        expected = direct(committed, edges, "prediction").to_json()
        for key in ("count", "nulls", "non_finite", "counts", "below", "above", "min", "max", "sketch", "edges"):
            assert stored[key] == expected[key], (ds, key)
        for key in ("mean", "m2", "sums"):
            assert np.allclose(stored[key], expected[key], rtol=1e-9), (ds, key)
    assert [v.level for v in verdicts[:3]] == ["pass", "pass", "pass"], [v.summary_lines() for v in verdicts]
    assert not [n for v in verdicts for n in v.notes if "not compared" in n]
    shifted = verdicts[3]
    moved = {f.measure: f.level for f in shifted.findings if f.role == "prediction" and f.column == "prediction"}
    assert shifted.level == "block" and moved.get("wasserstein") == "block", shifted.summary_lines()
    assert not [f for f in shifted.findings if f.role == "feature"]  # the features it compares did not move
    assert shifted.measures["prediction:prediction"]["psi"] > verdicts[2].measures["prediction:prediction"]["psi"]


def write_today(paths: RunPaths, frame, edges: dict | None = None) -> dict:
    """Today's statistics document as the job writes it, computed from `frame` with the real summaries."""
    edges = edges or {}
    features = {c: direct(frame[c].to_numpy(), edges.get(c), c).to_json() for c in FEATURES}
    Path(paths.work).mkdir(parents=True, exist_ok=True)
    Path(paths.work, baseline.STATISTICS_FILE).write_bytes(document_bytes({"features": features,
                                                                           "predictions": {}}))
    return {"rows_in": len(frame), "rows_rejected": 0, "model_version": 1}


def committed_days(tmp_path, spec, rows=(ROWS, ROWS, ROWS)):
    for i, n in enumerate(rows):
        ds = f"2026-11-0{i + 1}"
        paths = paths_for(tmp_path, ds)
        Path(paths.work, "output").mkdir(parents=True)
        Path(paths.work, "rejected").mkdir()
        edges = json.loads(Path(baseline.edges_args(Storage(), spec, paths, 1)[3]).read_text())
        publish(spec, paths, write_today(paths, make_frame(n, seed=i), edges), ds)


def test_half_a_partition_blocks_on_the_row_count(tmp_path):
    spec = load_spec(spec_file(tmp_path))
    committed_days(tmp_path, spec)
    paths = paths_for(tmp_path, "2026-11-04")
    edges = json.loads(Path(baseline.edges_args(Storage(), spec, paths, 1)[3]).read_text())
    verdict = gate.evaluate(spec, paths, write_today(paths, make_frame(ROWS // 2, seed=9), edges))
    rows = [f for f in verdict.findings if f.role == "rows"]
    assert verdict.level == "block" and rows[0].measure == "row_count_ratio"
    assert rows[0].value == pytest.approx(0.5, rel=0.01) and rows[0].block == 2.0
    assert not [f for f in verdict.findings if f.role == "feature"]


def test_no_baseline_yet_passes_with_a_note_and_no_statistics_warns(tmp_path):
    spec = load_spec(spec_file(tmp_path))
    paths = paths_for(tmp_path, "2026-11-01")
    verdict = gate.evaluate(spec, paths, {"model_version": 1})
    assert verdict.level == "warn" and "no statistics for today's run" in verdict.notes[0]
    verdict = gate.evaluate(spec, paths, write_today(paths, make_frame(ROWS)))
    assert (verdict.level, verdict.baseline, verdict.findings) == ("pass", "none yet", [])
    assert "no baseline yet" in verdict.notes[-1]
    other = load_spec(spec_file(tmp_path, name="other"))  # another pipeline's partitions are not its baseline
    committed_days(tmp_path, other)
    assert gate.evaluate(spec, paths_for(tmp_path, "2026-11-09"), write_today(
        paths_for(tmp_path, "2026-11-09"), make_frame(ROWS))).baseline == "none yet"


def test_the_spec_thresholds_override_the_defaults_and_min_rows_skips_distributions(tmp_path):
    loose = load_spec(spec_file(tmp_path, {"thresholds": {"psi": {"warn": 5, "block": 10},
                                                          "jensen_shannon": {"block": 0.9},
                                                          "wasserstein": {"warn": 0.05, "block": 5}}}))
    limits = gate.thresholds(loose)
    assert (limits["psi"].warn, limits["psi"].block) == (5, 10)
    assert (limits["jensen_shannon"].warn, limits["jensen_shannon"].block) == (0.1, 0.9)  # warn: default
    committed_days(tmp_path, loose)
    paths = paths_for(tmp_path, "2026-11-04")
    edges = json.loads(Path(baseline.edges_args(Storage(), loose, paths, 1)[3]).read_text())
    shifted = make_frame(ROWS, seed=7)
    shifted["gestation_weeks"] += 2.2
    verdict = gate.evaluate(loose, paths, write_today(paths, shifted, edges))
    levels = {f.measure: f.level for f in verdict.findings if f.column == "gestation_weeks"}
    assert verdict.level == "warn" and levels == {"wasserstein": "warn", "jensen_shannon": "warn"}
    default = gate.evaluate(load_spec(spec_file(tmp_path, name="gated_default")), paths, {
        **write_today(paths, shifted, edges)})
    assert default.baseline == "none yet"  # its own pipeline: nothing committed
    few = load_spec(spec_file(tmp_path, {"min_rows": 10 * ROWS}))
    verdict = gate.evaluate(few, paths, write_today(paths, shifted, edges))
    assert verdict.level == "pass" and "distribution measures skipped" in " ".join(verdict.notes)


def test_a_column_that_changed_kind_is_noted_not_compared(tmp_path):
    spec = load_spec(spec_file(tmp_path))
    committed_days(tmp_path, spec)
    paths = paths_for(tmp_path, "2026-11-04")
    frame = make_frame(ROWS, seed=9)
    frame["plurality"] = frame["plurality"].map({0: "none", 1: "single", 2: "twins", 3: "triplets"})
    verdict = gate.evaluate(spec, paths, write_today(paths, frame))
    assert any(n.startswith("feature plurality: not compared (cannot merge the numeric summary") for n in verdict.notes)
    assert "feature:plurality" not in verdict.measures and "feature:mother_age" in verdict.measures


@pytest.mark.parametrize("quality, where, expected", [
    ({"thresholds": {"psy": {"warn": 1}}}, "quality", "unknown measures ['psy']"),
    ({"thresholds": {"psi": {"warn": 0.3, "block": 0.2}}}, "quality.thresholds.psi", "block must be at or above"),
    ({"thresholds": {"row_count": {"warn": 0.5}}}, "quality", "warn and block are >= 1"),
    ({"baseline": {"runs": 3, "model": True}}, "quality.baseline", "not both"),
    ({"baseline": {"runs": 0}}, "quality.baseline.runs", "greater than or equal to 1"),
    ({"features": ["weight"]}, "", "quality.features: ['weight'] are not input features"),
    ({"on_timeout": "maybe"}, "quality.on_timeout", "one of 'reject' or 'approve'"),
])
def test_a_bad_quality_block_names_the_field(tmp_path, quality, where, expected):
    with pytest.raises(SpecError) as err:
        load_spec(spec_file(tmp_path, quality))
    assert any(p.where == where and expected in p.expected for p in err.value.problems), err.value.problems


def test_spec_defaults_and_names_agree_with_the_measures():
    assert set(MEASURES.values()) == set(measures.DEFAULTS)
    from mlbatch.spec.quality import Quality

    q = Quality()
    assert (q.baseline.runs, q.baseline.model, q.features, q.predictions, q.min_rows, q.on_timeout) == (
        3, False, "all", True, 1000, "reject")
    assert baseline.RECORD == RECORD


def test_a_baseline_logged_with_the_model_version(tmp_path, registered_model):
    from mlflow import MlflowClient

    name, version = registered_model["name"], registered_model["version"]
    spec = load_spec(spec_file(tmp_path, {"baseline": {"model": True}}))
    paths = paths_for(tmp_path, "2026-11-01")
    today = make_frame(ROWS, seed=5)
    today["mother_age"] += 6.0  # one std older mothers
    result = write_today(paths, today) | {"model_version": version}
    assert gate.evaluate(spec, paths, result).level == "pass"  # nothing logged with the version yet
    training = make_frame(20_000, seed=42)[FEATURES + [LABEL]]
    run_id = log_model_baseline(training, name, version=version, predictions=[LABEL])
    assert run_id == MlflowClient().get_model_version(name, str(version)).run_id
    verdict = gate.evaluate(spec, paths, result)
    assert verdict.baseline == f"model {name} v{version}'s logged statistics"
    assert verdict.level == "block" and verdict.findings[0].column == "mother_age"
    assert "baseline from training data: no row count comparison" in verdict.notes
    assert not [f for f in verdict.findings if f.role == "rows"]


def test_the_endpoint_job_computes_the_statistics_of_the_direct_model_job(tmp_path, model, scoring_server):
    """backend: endpoint (mlbatch_beam.endpoint_score, through the real scoring server) computes the same
    statistics in its pass as the direct-model job on the same rows and edges (one shared PTransform)."""
    from mlbatch_beam import endpoint_score

    from mlbatch.spec.prep_contract import schema_json

    spec = load_spec(spec_file(tmp_path))
    day(tmp_path, "2026-11-01", rows=1500, seed=4)
    paths = paths_for(tmp_path, "2026-11-01")
    Path(paths.work).mkdir(parents=True)
    edges = Path(paths.work, "edges.json")
    edges.write_text(json.dumps({"gestation_weeks": [30.0, 35, 38, 40, 42], "prediction": [5.0, 6, 7, 8, 9]}))
    stats = ("--statistics-edges", str(edges))
    direct = score(spec, paths, model, ["--statistics-file", f"{tmp_path}/direct.json", *stats])
    served = endpoint_score.run([
        "--input", paths.input_pattern, "--input-format", "parquet", "--schema-json", schema_json(spec),
        "--dead-letter-dir", f"{tmp_path}/endpoint-rejected", "--id-column", "id",
        "--feature-columns", ",".join(FEATURES), "--output-dir", f"{tmp_path}/endpoint-out",
        "--output-format", "parquet", "--batch-rows", "700", "--result-file", f"{tmp_path}/endpoint-result.json",
        "--endpoint-json", json.dumps({"kind": "mlflow", "url": scoring_server.url, "max_rows_per_request": 250}),
        "--runner=FnApiRunner", "--statistics-file", f"{tmp_path}/endpoint.json", *stats])
    assert served["rows_scored"] == direct["rows_scored"] and served["statistics_uri"] == f"{tmp_path}/endpoint.json"
    mine, theirs = (json.loads(Path(tmp_path, f).read_text()) for f in ("endpoint.json", "direct.json"))
    exact = ("count", "nulls", "values", "other", "counts", "below", "above", "sketch", "edges")
    for side in ("features", "predictions"):
        assert sorted(mine[side]) == sorted(theirs[side])
        for column, a in mine[side].items():
            b = theirs[side][column]
            assert {k: a.get(k) for k in exact} == {k: b.get(k) for k in exact}, (side, column)
            assert a.get("mean", 0) == pytest.approx(b.get("mean", 0), rel=1e-9)


def test_the_prep_job_computes_the_feature_statistics_for_batch_prediction_backends(tmp_path):
    """Backends whose service scores later (local, sagemaker, vertex) get the features' statistics from
    prep's pass (mlbatch_beam.prep), equal to those of the rows it prepared; a document without the
    predictions' (the end of predict adds them: the local backend's test) makes the gate say
    predictions were not compared."""
    from mlbatch_beam import prep

    from mlbatch.spec.prep_contract import schema_json

    spec = load_spec(spec_file(tmp_path))
    day(tmp_path, "2026-11-01", seed=6)
    paths = paths_for(tmp_path, "2026-11-01")
    args = baseline.edges_args(Storage(), spec, paths, 1)
    result = prep.run(["--input", paths.input_pattern, "--input-format", "parquet", "--schema-json",
                       schema_json(spec), "--output-dir", paths.prepared, "--output-format", "parquet",
                       "--dead-letter-dir", paths.rejected_staging, "--result-file", paths.result_file("prep"),
                       "--batch-rows", "700", "--runner=FnApiRunner", *args])
    job = baseline.read(Storage(), result["statistics_uri"])
    prepared = pq.read_table(paths.prepared)
    assert job.predictions == {} and sorted(job.features) == sorted(FEATURES)
    for column in FEATURES:
        mine, theirs = job.features[column].to_json(), direct(prepared.column(column), None, column).to_json()
        assert {k: mine[k] for k in ("count", "nulls")} == {k: theirs[k] for k in ("count", "nulls")}
        assert mine.get("sketch", mine.get("values")) == theirs.get("sketch", theirs.get("values"))
    assert job.features["mother_age"].count == result["rows_valid"]
    publish(spec, paths, {**result, "statistics_uri": result["statistics_uri"]}, "2026-11-01")
    tomorrow = paths_for(tmp_path, "2026-11-02")
    verdict = gate.evaluate(spec, tomorrow, write_today(tomorrow, make_frame(ROWS, seed=8)) | {"rows_in": None})
    assert any("predictions not compared" in n for n in verdict.notes)
    assert any("rejected fraction not compared" in n for n in verdict.notes)  # tomorrow's prep never ran
    Path(tomorrow.result_file("prep")).write_text(json.dumps({"rows_in": 1000, "rows_rejected": 100}))
    verdict = gate.evaluate(spec, tomorrow, write_today(tomorrow, make_frame(ROWS, seed=8)) | {"rows_in": None})
    rejected = [f for f in verdict.findings if f.measure == "rejected_fraction_delta"]
    assert verdict.level == "block" and rejected[0].value == pytest.approx(
        0.1 - result["rows_rejected"] / result["rows_in"])  # prep's counts, read from its result file
