"""publish: refuses to commit when rows in != rows scored + rows rejected; commits atomically otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mlbatch.errors import CountMismatchError, TooManyRejectedError
from mlbatch.operators.publish import PublishOperator
from mlbatch.run.paths import RunPaths
from mlbatch.spec.loader import load_spec, with_overrides

EXAMPLE = Path(__file__).resolve().parents[1] / "include" / "pipelines" / "natality_daily.yaml"


class XComOnly:
    """The TaskInstance calls publish makes: resolve_model's pinned version; prep and predict ran locally
    (their results name no cloud location)."""

    def xcom_pull(self, task_ids: str, key: str = "return_value"):
        assert task_ids in ("resolve_model", "prep", "predict")
        return {"uri": "models:/natality_weight/3", "version": 3} if task_ids == "resolve_model" else {}


def staged_run(tmp_path: Path, rows_in: int, rows_out: int, rows_rejected: int) -> RunPaths:
    paths = RunPaths(
        input_pattern=str(tmp_path / "in" / "*.parquet"), marker=None,
        output=str(tmp_path / "out" / "ds=2026-11-20"),
        dead_letter=str(tmp_path / "out" / "_rejected" / "ds=2026-11-20"),
        work=str(tmp_path / "work" / "run1"),
    )
    for folder in ("in", "work/run1/output", "work/run1/rejected"):
        (tmp_path / folder).mkdir(parents=True)
    pd.DataFrame({"id": range(rows_in), "x": 1.0}).to_parquet(tmp_path / "in" / "part-0.parquet")
    pd.DataFrame({"id": range(rows_out), "predicted_weight_pounds": 7.0}).to_parquet(
        tmp_path / "work/run1/output/part-0.parquet")
    (tmp_path / "work/run1/rejected/dead.jsonl").write_text(
        "".join(json.dumps({"row": {"id": i}, "reason": "x: null not allowed"}) + "\n"
                for i in range(rows_rejected)))
    return paths


class Predicted(XComOnly):
    """Predict's result as a batch-prediction backend returns it."""

    def __init__(self, result: dict):
        self.result = result

    def xcom_pull(self, task_ids: str, key: str = "return_value"):
        return self.result if task_ids == "predict" else super().xcom_pull(task_ids, key)


def publish(spec, paths, outlet_events=None, ti=None):
    from airflow.sdk.execution_time.context import OutletEventAccessors

    op = PublishOperator(task_id="publish", spec=spec)
    context = {"ti": ti or XComOnly(), "run_id": "run1", "params": {}, "ds": "2026-11-20",
               "outlet_events": OutletEventAccessors() if outlet_events is None else outlet_events}
    return op.run(context, spec, paths)


def test_count_mismatch_fails_and_publishes_nothing(tmp_path):
    spec = load_spec(EXAMPLE)
    paths = staged_run(tmp_path, rows_in=100, rows_out=90, rows_rejected=5)
    with pytest.raises(CountMismatchError, match=r"rows in \(100\) != rows scored \(90\) \+ rows rejected "
                                                 r"\(5\): 5 rows missing"):
        publish(spec, paths)
    assert not Path(paths.output).exists() and not Path(paths.dead_letter).exists()


def test_too_many_rows_in_output_also_fails(tmp_path):
    paths = staged_run(tmp_path, rows_in=100, rows_out=100, rows_rejected=2)
    with pytest.raises(CountMismatchError, match="2 rows too many"):
        publish(load_spec(EXAMPLE), paths)


def test_rejected_share_above_the_limit_fails(tmp_path):
    spec = with_overrides(load_spec(EXAMPLE), {"prep.max_rejected_fraction": 0.1})
    paths = staged_run(tmp_path, rows_in=100, rows_out=80, rows_rejected=20)
    with pytest.raises(TooManyRejectedError, match=r"20 of 100 rows rejected \(20.00%\)"):
        publish(spec, paths)
    assert not Path(paths.output).exists()


def test_balanced_counts_commit_output_and_dead_letters(tmp_path):
    from airflow.sdk.execution_time.context import OutletEventAccessors

    paths = staged_run(tmp_path, rows_in=100, rows_out=97, rows_rejected=3)
    spec, events = load_spec(EXAMPLE), OutletEventAccessors()
    result = publish(spec, paths, events)
    [asset] = PublishOperator(task_id="publish", spec=spec).outlets
    assert events[asset].extra == {"pipeline": "natality_daily", "ds": "2026-11-20", "partition": paths.output,
                                   "rows_scored": 97, "rows_rejected": 3, "attempt": result["attempt"],
                                   "commit_record": f"{paths.output}/_SUCCESS"}  # what downstream pipelines read
    assert (result["rows_in"], result["rows_scored"], result["rows_rejected"]) == (100, 97, 3)
    assert result["stats"]["count"] == 97 and result["stats"]["mean"] == pytest.approx(7.0)
    manifest = json.loads((Path(paths.output) / "_SUCCESS").read_text())
    assert manifest["model"] == "models:/natality_weight/3" and manifest["rows_scored"] == 97
    assert manifest["attempt"] == result["attempt"] and result["attempt"].startswith("run1.")
    assert [Path(f).name for f in manifest["files"]] == ["part-0.parquet"]
    assert pd.read_parquet(manifest["files"][0]).shape == (97, 2)
    assert [Path(f).name for f in manifest["dead_letter"]["files"]] == ["dead.jsonl"]
    assert json.loads((Path(paths.dead_letter) / "_SUCCESS").read_text())["attempt"] == result["attempt"]
    assert not Path(paths.work).exists()  # the work folder goes once the partition is committed


def test_a_batch_backend_commits_what_predict_staged_without_reading_the_services_files(tmp_path):
    """backend local (or sagemaker, vertex): predict joined the service's files to their ids and staged
    them (`output_uri`); publish reconciles and commits those, reading no service files (there are none)."""
    spec = with_overrides(load_spec(EXAMPLE), {"predict.backend": "local"})
    paths = staged_run(tmp_path, rows_in=100, rows_out=97, rows_rejected=3)
    assert not Path(paths.raw_predictions).exists()
    result = publish(spec, paths, ti=Predicted({"output_uri": paths.output_staging, "model_version": 3}))
    assert (result["rows_scored"], result["rows_rejected"]) == (97, 3)
    manifest = json.loads((Path(paths.output) / "_SUCCESS").read_text())
    assert pd.read_parquet(manifest["files"][0]).shape == (97, 2)


def test_a_batch_backend_result_that_staged_nothing_is_joined_at_publish(tmp_path):
    """A predict result without `output_uri` (its step ran before predict staged): publish joins the
    service's files itself, and still refuses partial output."""
    spec = with_overrides(load_spec(EXAMPLE), {"predict.backend": "local", "predict.local.flavor": "vertex"})
    paths = staged_run(tmp_path, rows_in=100, rows_out=0, rows_rejected=3)
    raw = Path(paths.raw_predictions)
    raw.mkdir(parents=True)
    (raw / "prediction.results-00000-of-00001").write_text(
        "".join(json.dumps({"key": i, "prediction": 7.0 + i / 100}) + "\n" for i in range(97)))
    (raw / "prediction.errors_stats-00000-of-00001").write_text("")
    result = publish(spec, paths, ti=Predicted({"model_version": 3}))
    manifest = json.loads((Path(paths.output) / "_SUCCESS").read_text())
    frame = pd.concat(pd.read_parquet(f) for f in manifest["files"])
    assert result["rows_scored"] == 97 and sorted(frame.id) == list(range(97))
    assert frame.set_index("id").predicted_weight_pounds[5] == pytest.approx(7.05)

    paths = staged_run(tmp_path / "partial", rows_in=100, rows_out=0, rows_rejected=3)
    Path(paths.raw_predictions).mkdir(parents=True)
    (Path(paths.raw_predictions) / "prediction.results-00000-of-00001").write_text(
        "".join(json.dumps({"key": i, "prediction": 7.0}) + "\n" for i in range(90)))
    with pytest.raises(CountMismatchError, match="7 rows missing"):
        publish(spec, paths, ti=Predicted({"model_version": 3}))
