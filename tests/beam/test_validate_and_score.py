"""The one-pass direct-model job (mlbatch_beam.validate_and_score) against the two jobs it replaces on
the local runner: prep (validate, dead letters, prepared files) then score. Real files, real model,
the jobs' own command lines."""
import glob
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest


def _job(module, *args):
    done = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _dead_letters(folder):
    return sorted((json.loads(line)["row"]["id"], json.loads(line)["reason"])
                  for path in glob.glob(f"{folder}/*.jsonl") for line in open(path))


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_one_pass_writes_what_prep_then_score_write(tmp_path, make_frame, schema_json, mlflow_model, fmt):
    frame = make_frame(3000, seed=5)
    frame.loc[7, "mother_age"] = 99.0
    frame.loc[1500, "plurality"] = 0
    frame.loc[2999, "gestation_weeks"] = np.nan
    (tmp_path / "in").mkdir()
    for i, part in enumerate((frame.iloc[:1700], frame.iloc[1700:])):
        path = tmp_path / "in" / f"part-{i}.{fmt}"
        part.to_parquet(path, index=False) if fmt == "parquet" else part.to_csv(path, index=False)
    scoring = ["--model-uri", mlflow_model.uri, "--id-column", "id", "--feature-columns", ",".join(mlflow_model.features),
               "--output-format", "parquet", "--batch-rows", "500", "--runner=FnApiRunner"]
    _job("mlbatch_beam.validate_and_score", "--input", f"{tmp_path}/in/*.{fmt}", "--input-format", fmt,
         "--schema-json", schema_json, "--dead-letter-dir", tmp_path / "one/rejected",
         "--output-dir", tmp_path / "one/out", "--result-file", tmp_path / "one.json", *scoring)
    _job("mlbatch_beam.prep", "--input", f"{tmp_path}/in/*.{fmt}", "--input-format", fmt, "--schema-json", schema_json,
         "--output-dir", tmp_path / "two/prepared", "--output-format", "parquet", "--batch-rows", "500",
         "--dead-letter-dir", tmp_path / "two/rejected", "--result-file", tmp_path / "prep.json")
    _job("mlbatch_beam.score", "--input", f"{tmp_path}/two/prepared/*.parquet", "--output-dir", tmp_path / "two/out",
         "--result-file", tmp_path / "score.json", *scoring)

    one = json.loads((tmp_path / "one.json").read_text())
    prep, score = json.loads((tmp_path / "prep.json").read_text()), json.loads((tmp_path / "score.json").read_text())
    assert (one["rows_in"], one["rows_valid"], one["rows_rejected"]) == (3000, 2997, 3)
    assert (one["rows_in"], one["rows_valid"], one["rows_rejected"]) == (
        prep["rows_in"], prep["rows_valid"], prep["rows_rejected"])
    assert (one["rows_scored"], one["model_loads"]) == (score["rows_scored"], score["model_loads"]) == (2997, 1)

    def scored(folder):
        return pd.read_parquet(folder).sort_values("id").reset_index(drop=True)

    pd.testing.assert_frame_equal(scored(tmp_path / "one/out"), scored(tmp_path / "two/out"))
    valid = frame.drop(index=[7, 1500, 2999]).sort_values("id")
    np.testing.assert_allclose(scored(tmp_path / "one/out").prediction, mlflow_model.expected(valid))
    assert _dead_letters(tmp_path / "one/rejected") == _dead_letters(tmp_path / "two/rejected")
    assert [i for i, _ in _dead_letters(tmp_path / "one/rejected")] == [7, 1500, 2999]


def test_one_pass_as_shards_counts_every_row_once(tmp_path, make_frame, schema_json, mlflow_model):
    frame = make_frame(4000, seed=9)
    frame.loc[10, "mother_age"] = 123.0
    (tmp_path / "in").mkdir()
    for i in range(4):
        frame.iloc[i * 1000:(i + 1) * 1000].to_parquet(tmp_path / "in" / f"part-{i}.parquet", index=False)
    done = _job("mlbatch_beam.shards", "--shards", 2, "--job", "mlbatch_beam.validate_and_score",
                "--input", f"{tmp_path}/in/*.parquet", "--input-format", "parquet", "--schema-json", schema_json,
                "--dead-letter-dir", tmp_path / "rejected", "--output-dir", tmp_path / "out",
                "--result-file", tmp_path / "result.json", "--model-uri", mlflow_model.uri, "--id-column", "id",
                "--feature-columns", ",".join(mlflow_model.features), "--output-format", "parquet")
    assert "mlbatch_beam.validate_and_score: 2 shards over 4 files" in done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert {k: result[k] for k in ("rows_in", "rows_valid", "rows_rejected", "rows_scored", "model_loads", "shards")} == {
        "rows_in": 4000, "rows_valid": 3999, "rows_rejected": 1, "rows_scored": 3999, "model_loads": 2, "shards": 2}
    out = pd.read_parquet(tmp_path / "out")
    assert len(out) == 3999 and out.id.is_unique and 10 not in set(out.id)
    assert [i for i, _ in _dead_letters(tmp_path / "rejected")] == [10]


@pytest.mark.parametrize("store_root", ["gcs", "s3"], indirect=True)
def test_one_pass_reads_and_writes_object_stores(store_root, tmp_path, make_frame, schema_json, mlflow_model):
    """Input, predictions, dead letters and result file in a bucket (GCS emulator, moto S3), reached with
    the credentials flags the predict task passes (mlbatch.storage.layer.Storage.job_env)."""
    import os

    from mlbatch.storage.layer import Storage, join

    frame = make_frame(2000, seed=3)
    frame.loc[5, "plurality"] = 0
    storage = Storage()
    for i, part in enumerate((frame.iloc[:1200], frame.iloc[1200:])):
        local = tmp_path / f"part-{i}.parquet"
        part.to_parquet(local, index=False)
        storage.copy(str(local), join(store_root, "in", local.name))
    env, flags = storage.job_env([store_root])
    run = join(store_root, "run")
    done = subprocess.run([sys.executable, "-m", "mlbatch_beam.validate_and_score",
                           "--input", join(store_root, "in", "*.parquet"), "--input-format", "parquet",
                           "--schema-json", schema_json, "--dead-letter-dir", join(run, "rejected"),
                           "--model-uri", mlflow_model.uri, "--id-column", "id",
                           "--feature-columns", ",".join(mlflow_model.features), "--output-dir", join(run, "out"),
                           "--output-format", "parquet", "--result-file", join(run, "result.json"),
                           "--runner=FnApiRunner", *flags],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr[-4000:]
    with storage.open(join(run, "result.json")) as f:
        result = json.load(f)
    assert (result["rows_in"], result["rows_rejected"], result["rows_scored"]) == (2000, 1, 1999)
    scored = []
    for uri in storage.files(join(run, "out")):
        with storage.open(uri) as f:
            scored.append(pd.read_parquet(f))
    out = pd.concat(scored).sort_values("id")
    assert len(out) == 1999 and 5 not in set(out.id)
    np.testing.assert_allclose(out.prediction, mlflow_model.expected(frame.drop(index=5).sort_values("id")))
    rejected = []
    for uri in storage.files(join(run, "rejected")):
        with storage.open(uri) as f:
            rejected += [json.loads(line) for line in f.read().decode().splitlines()]
    assert [r["row"]["id"] for r in rejected] == [5]
