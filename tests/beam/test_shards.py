"""`compute.local_workers` > 1: the prep and score jobs as independent in-memory jobs over groups of files.

Each case runs the real jobs (`python -m mlbatch_beam.shards`) on real files and compares with one job."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlbatch_beam.local_files import local_matches
from mlbatch_beam.shards import balanced_groups


def _shards(*args, check=True):
    done = subprocess.run([sys.executable, "-m", "mlbatch_beam.shards", *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    assert not check or done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture
def raw_input(tmp_path, make_frame):
    """Five parquet files of unequal size, three bad rows among them."""
    frame = make_frame(5000, seed=11)
    frame.loc[10, "mother_age"] = 123.0
    frame.loc[2100, "plurality"] = 0
    frame.loc[4900, "gestation_weeks"] = np.inf
    folder = tmp_path / "in"
    folder.mkdir()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for i, (start, stop) in enumerate([(0, 2000), (2000, 3000), (3000, 3500), (3500, 4600), (4600, 5000)]):
        pq.write_table(table.slice(start, stop - start), folder / f"part-{i}.parquet", row_group_size=400)
    return frame, folder


def _prep(tmp_path, folder, schema_json, *leading, name="one"):
    out = tmp_path / name
    done = _shards(*leading, "--input", f"{folder}/*.parquet", "--input-format", "parquet",
                   "--schema-json", schema_json, "--output-dir", out / "prepared", "--output-format", "parquet",
                   "--dead-letter-dir", out / "rejected", "--result-file", out / "result.json",
                   "--batch-rows", "300")
    return json.loads((out / "result.json").read_text()), out, done


def test_sharded_prep_writes_what_one_job_writes_and_counts_add_up(tmp_path, raw_input, schema_json):
    frame, folder = raw_input
    sharded, out, done = _prep(tmp_path, folder, schema_json, "--shards", 3, "--job", "mlbatch_beam.prep")
    assert "mlbatch_beam.prep: 3 shards over 5 files" in done.stderr
    single = subprocess.run([sys.executable, "-m", "mlbatch_beam.prep", "--input", f"{folder}/*.parquet",
                             "--input-format", "parquet", "--schema-json", schema_json,
                             "--output-dir", tmp_path / "single/prepared", "--output-format", "parquet",
                             "--dead-letter-dir", tmp_path / "single/rejected",
                             "--result-file", tmp_path / "single/result.json", "--batch-rows", "300"],
                            check=True, capture_output=True, timeout=300)
    assert single.returncode == 0
    one = json.loads((tmp_path / "single/result.json").read_text())
    assert (sharded["rows_in"], sharded["rows_valid"], sharded["rows_rejected"]) == (5000, 4997, 3)
    assert {k: v for k, v in sharded.items() if k not in ("shards", "output_dir", "dead_letter_dir")} == {
        k: v for k, v in one.items() if k not in ("output_dir", "dead_letter_dir")}
    assert sharded["shards"] == 3
    assert not glob.glob(str(out / "result.json.shard-*"))  # the shards' own results are folded in

    def ids(folder):
        return sorted(pd.read_parquet(folder).id.tolist())

    assert ids(out / "prepared") == ids(tmp_path / "single/prepared") == sorted(set(frame.id) - {10, 2100, 4900})
    # File names come from the input pieces: the same files as the single job, none overwritten.
    assert sorted(p.split("/")[-1] for p in glob.glob(str(out / "prepared/*"))) == sorted(
        p.split("/")[-1] for p in glob.glob(str(tmp_path / "single/prepared/*")))
    rejected = [json.loads(line) for f in glob.glob(str(out / "rejected/*.jsonl")) for line in open(f)]
    assert sorted(r["row"]["id"] for r in rejected) == [10, 2100, 4900]


def test_sharded_score_predicts_every_row_with_one_model_per_shard(tmp_path, raw_input, mlflow_model, make_frame):
    _, folder = raw_input  # the same files, all rows valid (the score job reads prepared rows)
    frame = make_frame(5000, seed=11)
    for path in sorted(folder.glob("*.parquet")):
        ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
        pq.write_table(pa.Table.from_pandas(frame[frame.id.isin(ids)], preserve_index=False), path,
                       row_group_size=400)
    out = tmp_path / "scored"
    _shards("--shards", 2, "--job", "mlbatch_beam.score", "--input", f"{folder}/*.parquet",
            "--model-uri", mlflow_model.uri, "--id-column", "id", "--feature-columns", ",".join(mlflow_model.features),
            "--output-dir", out, "--output-format", "parquet", "--result-file", tmp_path / "score.json",
            "--batch-rows", "500", "--runner=FnApiRunner", "--direct_running_mode=multi_processing",
            "--direct_num_workers=2")  # Beam's own multi-process flags are dropped: one in-memory job per shard
    result = json.loads((tmp_path / "score.json").read_text())
    assert (result["rows_in"], result["rows_scored"], result["model_loads"], result["shards"]) == (5000, 5000, 2, 2)
    scored = pd.read_parquet(out).sort_values("id").reset_index(drop=True)
    np.testing.assert_allclose(scored.prediction, mlflow_model.expected(frame.sort_values("id")))


def test_a_failing_shard_fails_the_job_and_writes_no_result(tmp_path, raw_input, schema_json):
    _, folder = raw_input
    (folder / "part-9.parquet").write_bytes(b"not parquet at all")
    done = _shards("--shards", 2, "--job", "mlbatch_beam.prep", "--input", f"{folder}/*.parquet",
                   "--input-format", "parquet", "--schema-json", schema_json,
                   "--output-dir", tmp_path / "prepared", "--output-format", "parquet",
                   "--dead-letter-dir", tmp_path / "rejected", "--result-file", tmp_path / "result.json",
                   check=False)
    assert done.returncode != 0
    assert "mlbatch_beam.prep: shard " in done.stderr and "of 2 failed" in done.stderr
    assert "part-9.parquet" in done.stderr  # the shard's own error names the file
    assert not (tmp_path / "result.json").exists()


def test_a_pattern_matching_nothing_fails_before_any_shard_starts(tmp_path, schema_json):
    done = _shards("--shards", 2, "--job", "mlbatch_beam.prep", "--input", f"{tmp_path}/nothing/*.parquet",
                   "--input-format", "parquet", "--schema-json", schema_json, "--output-dir", tmp_path / "p",
                   "--output-format", "parquet", "--dead-letter-dir", tmp_path / "r",
                   "--result-file", tmp_path / "result.json", check=False)
    assert done.returncode != 0 and "No input files match pattern" in done.stderr
    assert "shards over" not in done.stderr


def test_files_are_balanced_by_size():
    sizes = {"a": 100, "b": 60, "c": 50, "d": 40, "e": 10}
    groups = balanced_groups(sizes, 2)
    assert sorted(p for g in groups for p in g) == sorted(sizes)
    assert sorted(sum(sizes[p] for p in g) for g in groups) == [120, 140]  # largest first, onto the lightest
    assert balanced_groups({"a": 1}, 4) == [["a"]]  # never an empty shard


def test_local_files_are_matched_as_beam_matches_them(tmp_path, monkeypatch):
    """The launcher lists local files without Beam; it must pick exactly the files the job would."""
    from apache_beam.io.filesystems import FileSystems

    for rel in ["a/x.parquet", "a/.hidden.parquet", "a/b/y.parquet", "a/b/c/z.csv", "a/q1.parquet",
                "a/q[1].parquet", "a/!x", "a/^x", "a/x.parquet.crc", "ds=1/p.parquet", "ds=2/p.parquet"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x" * len(rel))
    monkeypatch.chdir(tmp_path)
    patterns = ["a/*.parquet", "a/**", "a/**.parquet", "a/*", "a/?1.parquet", "a/q[1].parquet", "a/q[!2].parquet",
                "ds=*/p.parquet", "a/b/", "a/x.parquet", "a/none*", "a/[^]x", "a/[!]x", "a/q[1", "*/p.parquet",
                "nothing/*", "*.parquet"]
    for pattern in patterns:
        for full in (f"{tmp_path}/{pattern}", pattern):  # absolute and relative to the working directory
            beam = {m.path: m.size_in_bytes for m in FileSystems.match([full])[0].metadata_list}
            assert local_matches(full) == beam, full


@pytest.mark.parametrize("store_root", ["gcs", "s3"], indirect=True)  # local files: the tests above
def test_sharded_prep_on_object_stores(store_root, raw_input, schema_json):
    """gs:// and s3:// input, output and result file: the launcher matches through Beam's filesystems
    with the job's own credentials flags (mlbatch.storage.layer.Storage.job_env), as the prep task passes them."""
    from mlbatch.storage.layer import Storage, join

    _, folder = raw_input
    storage = Storage()
    for path in sorted(folder.glob("*.parquet")):
        storage.copy(str(path), join(store_root, "in", path.name))
    env, flags = storage.job_env([store_root])
    out = join(store_root, "run")
    done = subprocess.run([sys.executable, "-m", "mlbatch_beam.shards", "--shards", "2", "--job", "mlbatch_beam.prep",
                           "--input", join(store_root, "in", "*.parquet"), "--input-format", "parquet",
                           "--schema-json", schema_json, "--output-dir", join(out, "prepared"),
                           "--output-format", "parquet", "--dead-letter-dir", join(out, "rejected"),
                           "--result-file", join(out, "result.json"), "--batch-rows", "300", *flags],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert done.returncode == 0, done.stderr[-4000:]
    assert "mlbatch_beam.prep: 2 shards over 5 files" in done.stderr
    with storage.open(join(out, "result.json")) as f:
        result = json.load(f)
    assert (result["rows_in"], result["rows_valid"], result["rows_rejected"], result["shards"]) == (5000, 4997, 3, 2)
    assert not [u for u in storage.files(out) if ".shard-" in u]  # the shards' own results are folded in


def test_the_launcher_imports_no_beam_for_local_files(tmp_path, raw_input, schema_json):
    """Beam's import belongs to the shards; the launcher paying it too would add it serially to every step."""
    _, folder = raw_input
    args = ["--shards", "2", "--job", "mlbatch_beam.prep", "--input", f"{folder}/*.parquet", "--input-format",
            "parquet", "--schema-json", schema_json, "--output-dir", str(tmp_path / "p"), "--output-format",
            "parquet", "--dead-letter-dir", str(tmp_path / "r"), "--result-file", str(tmp_path / "result.json")]
    code = ("import sys\nfrom mlbatch_beam import shards\n"
            f"result = shards.run({args!r})\n"
            "assert result['rows_in'] == 5000, result\n"
            "assert not [m for m in sys.modules if m.startswith('apache_beam')], 'the launcher imported Beam'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
