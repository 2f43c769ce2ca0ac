"""Honest reruns and recovery of remote jobs, against the moto server (SageMaker Batch Transform):
a rerun whose model version or input changed runs a new job and reports the version that ran; a
Stopping job is waited out; a changed image/role/network makes a new SageMaker Model; a kill during
submission finds the job by its deterministic name; record keeps one MLflow run per published result."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from cloud_backends import aws_conn, moto_transform_jobs, sagemaker_lifecycle, task_context  # noqa: F401
from test_backend_sagemaker import DS, prepare, spec, staging_bucket, submit  # noqa: F401


def second_version(model: dict) -> dict:
    """Register the same artifact again: version N+1 of the model, as after a retraining."""
    from mlflow import MlflowClient

    client = MlflowClient()
    source = client.get_model_version(model["name"], str(model["version"]))
    v2 = client.create_model_version(model["name"], source.source, run_id=source.run_id)
    return {**model, "version": int(v2.version), "uri": f"models:/{model['name']}/{v2.version}",
            "artifact_uri": client.get_model_version_download_uri(model["name"], v2.version)}


def fake_output(aws_conn, remote: dict) -> None:
    """What the finished job leaves in S3 (moto computes nothing): one answer per prepared file (`prepare`
    writes two of three rows), as predict's result now joins every file's answers to its ids."""
    bucket, key = remote["output_uri"][len("s3://"):].split("/", 1)
    for part in range(2):
        aws_conn.client("s3").put_object(Bucket=bucket, Key=f"{key}/part-{part:05d}.parquet.out",
                                         Body=b'{"predictions": [7.1, 7.2, 7.3]}')


def job_model_tag(aws_conn, job_name: str) -> str:
    sm = aws_conn.client("sagemaker")
    model = sm.describe_model(ModelName=sm.describe_transform_job(TransformJobName=job_name)["ModelName"])
    return next(t["Value"] for t in sm.list_tags(ResourceArn=model["ModelArn"])["Tags"]
                if t["Key"] == "mlbatch-model")


def test_a_rerun_after_the_alias_moved_runs_a_new_job_and_reports_the_version_that_ran(
        spec, model, aws_conn, sagemaker_lifecycle):
    from mlbatch.operators.predict import PredictOperator

    run_id = "scheduled__alias_moved"
    first_context = task_context(run_id, DS, model)
    _, first = submit(spec, first_context, model)
    sagemaker_lifecycle(first.trigger.job_name, "Completed")
    fake_output(aws_conn, first_context["ti"].pushed["remote_job"])

    v2 = second_version(model)  # the alias moved; the run is cleared and resolve_model pins v2
    rerun_context = task_context(run_id, DS, v2)
    _, rerun = submit(spec, rerun_context, v2)
    assert rerun.trigger.job_name != first.trigger.job_name  # a new job, not the finished v1 job
    assert job_model_tag(aws_conn, rerun.trigger.job_name) == f"{model['name']}/{v2['version']}"
    sagemaker_lifecycle(rerun.trigger.job_name, "Completed")
    fake_output(aws_conn, rerun_context["ti"].pushed["remote_job"])
    done = PredictOperator(task_id="predict", spec=spec).execute_complete(
        rerun_context, {"status": "success", "job_name": rerun.trigger.job_name})
    assert done["model_version"] == v2["version"]  # read from the job's own model, not assumed

    # The same work again (a retry with v1 pinned) re-attaches to the finished v1 job: no new job.
    again = PredictOperator(task_id="predict", spec=spec)
    prepare(again, spec, first_context)
    assert again.execute(task_context(run_id, DS, model))["model_version"] == model["version"]
    assert len([n for n in moto_transform_jobs() if n.startswith("natality-sagemaker-predict-")
                and n in (first.trigger.job_name, rerun.trigger.job_name)]) == 2


def test_changed_input_runs_a_new_job(spec, model, aws_conn, sagemaker_lifecycle):
    run_id = "scheduled__input_changed"
    context = task_context(run_id, DS, model)
    op, first = submit(spec, context, model)
    sagemaker_lifecycle(first.trigger.job_name, "Completed")
    fake_output(aws_conn, context["ti"].pushed["remote_job"])
    from mlbatch.operators.predict import PredictOperator

    same = PredictOperator(task_id="predict", spec=spec).execute(task_context(run_id, DS, model))
    assert same["job_name"] == first.trigger.job_name  # same prepared input: the finished job is re-used

    import pyarrow as pa
    import pyarrow.parquet as pq

    prepared = Path(op.run_paths(context, spec).prepared)  # one more row arrived since the first run
    pq.write_table(pa.Table.from_pylist([{"id": 99, "is_male": False, "mother_age": 31.0, "plurality": 1,
                                          "gestation_weeks": 40.0}]), prepared / "part-00002.parquet")
    from airflow.sdk.exceptions import TaskDeferred

    with pytest.raises(TaskDeferred) as changed:  # submit() would rewrite the files: execute directly
        PredictOperator(task_id="predict", spec=spec).execute(task_context(run_id, DS, model))
    assert changed.value.trigger.job_name != first.trigger.job_name


def test_a_stopping_job_is_waited_out_then_the_next_attempt_starts(spec, model, aws_conn, sagemaker_lifecycle,
                                                                   monkeypatch):
    from mlbatch.backends import job_names

    monkeypatch.setattr(job_names, "ENDING_POLL_S", 0.2)
    run_id = "scheduled__stopping"
    _, first = submit(spec, task_context(run_id, DS, model), model)
    sagemaker_lifecycle(first.trigger.job_name, "Stopping")  # a kill just asked it to stop
    stopped = threading.Timer(1.5, sagemaker_lifecycle, (first.trigger.job_name, "Stopped"))
    stopped.start()
    started = time.monotonic()
    _, second = submit(spec, task_context(run_id, DS, model), model)
    assert time.monotonic() - started >= 1.4  # it waited for Stopped instead of re-attaching
    assert second.trigger.job_name == first.trigger.job_name[:-1] + "2"
    assert moto_transform_jobs()[second.trigger.job_name].transform_job_status == "InProgress"


def test_a_changed_image_role_or_network_makes_a_new_model(spec, model, aws_conn, sagemaker_lifecycle):
    from mlbatch.backends.sagemaker import model_config
    from mlbatch.spec.loader import with_overrides

    _, first = submit(spec, task_context("manual__image_a", DS, model), model)
    changed = {
        "image": {"predict.sagemaker.image_uri": spec.predict.sagemaker.image_uri + "-patched"},
        "role": {"predict.sagemaker.role_arn": "arn:aws:iam::123456789012:role/other"},
        "isolation": {"predict.network.public_ips": not spec.predict.network.public_ips},
        "kms": {"predict.network.kms_key": "arn:aws:kms:us-east-1:123456789012:key/other"},
        "vpc": {"predict.network.security_group_ids": ["sg-other"], "predict.network.subnetwork": "subnet-x"},
    }
    names = {model_config(spec, model)["ModelName"]}
    for what, override in changed.items():
        names.add(model_config(with_overrides(spec, override), model)["ModelName"])
        assert len(names) == 2 + list(changed).index(what), f"{what} did not change the model name"

    patched = with_overrides(spec, changed["image"])
    _, second = submit(patched, task_context("manual__image_b", DS, model), model)
    sm = aws_conn.client("sagemaker")
    old, new = (sm.describe_model(ModelName=sm.describe_transform_job(TransformJobName=j.trigger.job_name)
                                  ["ModelName"]) for j in (first, second))
    assert old["ModelName"] != new["ModelName"]
    assert new["PrimaryContainer"]["Image"].endswith("-patched")
    assert not old["PrimaryContainer"]["Image"].endswith("-patched")


def test_a_kill_during_submission_finds_and_stops_the_job_by_its_name(spec, model, aws_conn, sagemaker_lifecycle):
    from mlbatch.backends.job_names import job_name
    from mlbatch.backends.sagemaker import job_identity
    from mlbatch.hooks.sagemaker import TransformJobHook
    from mlbatch.operators.predict import PredictOperator

    run_id = "manual__kill_submitting"
    context = task_context(run_id, DS, model)
    op = PredictOperator(task_id="predict", spec=spec)
    prepare(op, spec, context)
    name = job_name(spec.name, run_id, "predict", 1,
                    identity=job_identity(spec, op.run_paths(context, spec), model))
    # the kill arrives while CreateTransformJob is still on its way: the job does not exist yet
    killer = threading.Thread(target=TransformJobHook("aws_default").stop_job, args=(name,),
                              kwargs={"appear_s": 180})
    killer.start()
    time.sleep(0.5)
    _, deferred = submit(spec, context, model)
    killer.join(timeout=200)
    assert deferred.trigger.job_name == name
    assert moto_transform_jobs()[name].transform_job_status == "Stopped"


def test_record_keeps_one_mlflow_run_per_published_result_linked(spec, model):
    import mlflow

    from mlbatch.operators.record import RecordRunOperator

    def record(version: int, rows_scored: int) -> str:
        published = {"rows_in": 10, "rows_scored": rows_scored, "rows_rejected": 10 - rows_scored,
                     "input_uri": "s3://in", "output_uri": "s3://out", "dead_letter_uri": "s3://dead",
                     "stats": {"count": rows_scored, "mean": 7.0}}
        ti = task_context("manual__record_rerun", DS, {**model, "source_run_id": "r1"})["ti"]
        ti.upstream.update(publish=published, predict={"model_version": version})
        context = {"run_id": "manual__record_rerun", "ds": DS, "ds_nodash": DS.replace("-", ""),
                   "params": {}, "ti": ti, "task_instance": ti, "dag": SimpleNamespace(dag_id=spec.name)}
        return RecordRunOperator(task_id="record", spec=spec).execute(context)["mlflow_run_id"]

    first = record(model["version"], 9)
    assert record(model["version"], 9) == first  # a retry of record: the same MLflow run
    rerun = record(model["version"] + 1, 8)        # a rerun that published v(N+1): its own run, linked
    assert rerun != first
    tags = mlflow.get_run(rerun).data.tags
    assert tags["mlbatch.previous_run_id"] == first and tags["mlbatch.attempt"] == "2"
    assert mlflow.get_run(rerun).data.params["model_version"] == str(model["version"] + 1)
    assert mlflow.get_run(first).data.params["model_version"] == str(model["version"])
