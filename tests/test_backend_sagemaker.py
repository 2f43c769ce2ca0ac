"""SageMaker Batch Transform backend against the moto server over HTTP (botocore validates every request).

moto does not compute predictions; these tests check requests, lifecycle, idempotency and cancellation.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from cloud_backends import (aws_conn, direct_model_predictions, moto_transform_jobs,  # noqa: F401
                            sagemaker_dataplane, sagemaker_lifecycle, task_context)

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "include" / "pipelines" / "natality_sagemaker.yaml"
DS = "2026-11-21"


@pytest.fixture
def staging_bucket(aws_conn, monkeypatch, request):
    bucket = "mlb-" + request.node.name.lower().replace("_", "-")[:40]
    aws_conn.client("s3").create_bucket(Bucket=bucket)
    monkeypatch.setenv("MLBATCH_SAGEMAKER_STAGING", f"s3://{bucket}/sagemaker")
    return bucket


@pytest.fixture
def spec(staging_bucket, tmp_path):
    from mlbatch.spec.loader import load_spec, with_overrides

    return with_overrides(load_spec(SPEC), {"output.uri": str(tmp_path / "out" / "ds={{ ds }}")})


def prepare(op, spec, context) -> None:
    """What the prep step leaves behind for SageMaker: Parquet files of id + features. Written once per
    run, as prep does: a predict retry finds the same files (the job fingerprint is their metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    prepared = Path(op.run_paths(context, spec).prepared)
    prepared.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        rows = [{"id": i * 10 + j, "is_male": True, "mother_age": 30.0, "plurality": 1,
                 "gestation_weeks": 39.0} for j in range(3)]
        if not (prepared / f"part-{i:05d}.parquet").exists():
            pq.write_table(pa.Table.from_pylist(rows), prepared / f"part-{i:05d}.parquet")


def submit(spec, context, model):
    """One try of the predict task: returns (operator, TaskDeferred)."""
    from airflow.sdk.exceptions import TaskDeferred

    from mlbatch.operators.predict import PredictOperator

    op = PredictOperator(task_id="predict", spec=spec)
    prepare(op, spec, context)
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    return op, deferred.value


def jobs_of(run_id: str, moto_server) -> list[dict]:
    sm = moto_server.client("sagemaker")
    names = [j["TransformJobName"] for j in sm.list_transform_jobs(MaxResults=100)["TransformJobSummaries"]]
    jobs = [sm.describe_transform_job(TransformJobName=n) for n in names
            if n.startswith("natality-sagemaker-predict-")]
    return [j for j in jobs if {"Key": "mlbatch-run-id", "Value": run_id} in
            sm.list_tags(ResourceArn=j["TransformJobArn"])["Tags"]]


def test_submit_builds_the_requests_from_the_spec_and_defers(spec, model, aws_conn, sagemaker_lifecycle,
                                                            staging_bucket):
    from mlbatch.backends.sagemaker import SageMakerTransformTrigger, model_config

    context = task_context("manual__submit", DS, model)
    op, deferred = submit(spec, context, model)

    assert isinstance(deferred.trigger, SageMakerTransformTrigger)
    classpath, kwargs = deferred.trigger.serialize()
    assert classpath == "mlbatch.backends.sagemaker.SageMakerTransformTrigger"
    assert SageMakerTransformTrigger(**kwargs).job_name == kwargs["job_name"]  # round-trips
    assert deferred.method_name == "execute_complete"

    [job] = jobs_of("manual__submit", aws_conn)
    remote = context["ti"].pushed["remote_job"]
    assert remote["job_name"] == job["TransformJobName"] and remote["job_name"].endswith("-a1")
    assert remote["console_url"].startswith("https://console.aws.amazon.com/sagemaker/home?region=us-east-1")
    assert job["TransformResources"] == {
        "InstanceType": "ml.m5.xlarge", "InstanceCount": 2,
        "VolumeKmsKeyId": spec.predict.network.kms_key}
    assert job["MaxConcurrentTransforms"] == 4 and job["MaxPayloadInMB"] == 6
    assert job["TransformInput"]["ContentType"] == "application/vnd.apache.parquet"
    assert job["TransformInput"]["SplitType"] == "None" and not job.get("BatchStrategy")
    assert job["TransformOutput"]["Accept"] == "application/json"
    assert job["TransformOutput"]["KmsKeyId"] == spec.predict.network.kms_key
    tags = aws_conn.client("sagemaker").list_tags(ResourceArn=job["TransformJobArn"])["Tags"]
    assert {"Key": "team", "Value": "ml-platform"} in tags
    assert {"Key": "mlbatch-pipeline", "Value": "natality_sagemaker"} in tags

    model_name = model_config(spec, model)["ModelName"]
    described = aws_conn.client("sagemaker").describe_model(ModelName=model_name)
    assert job["ModelName"] == model_name and model_name.startswith(f"mlb-natality-weight-v{model['version']}-")
    assert described["PrimaryContainer"]["Image"] == spec.predict.sagemaker.image_uri.format(
        model_name=model["name"], model_version=model["version"])  # the image of this version
    assert described["PrimaryContainer"]["Environment"]["MLFLOW_DEPLOYMENT_FLAVOR_NAME"] == "python_function"
    s3 = aws_conn.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=staging_bucket)["Contents"]]
    assert any(k.endswith(f"v{model['version']}/model.tar.gz") for k in keys)
    input_uri = job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
    inputs = sorted(k for k in keys if f"s3://{staging_bucket}/{k}".startswith(input_uri))
    assert [k.rsplit("/", 1)[-1] for k in inputs] == ["part-00000.parquet", "part-00001.parquet"]
    import io

    import pyarrow.parquet as pq

    sent = pq.read_table(io.BytesIO(s3.get_object(Bucket=staging_bucket, Key=inputs[0])["Body"].read()))
    assert sent.column_names == [f.name for f in spec.input.features]  # features only, in model order


def test_retry_after_a_worker_crash_reattaches_instead_of_submitting_again(spec, model, aws_conn,
                                                                           sagemaker_lifecycle):
    run_id = "scheduled__crash"
    first_op, first = submit(spec, task_context(run_id, DS, model), model)
    del first_op  # the worker died while the task waited: no on_kill, the job keeps running
    models_before = {m["ModelName"] for m in aws_conn.client("sagemaker").list_models()["Models"]}

    retry_context = task_context(run_id, DS, model)  # a new try: its XCom starts empty
    _, second = submit(spec, retry_context, model)

    assert second.trigger.job_name == first.trigger.job_name
    assert len(jobs_of(run_id, aws_conn)) == 1  # exactly one job was created
    models = {m["ModelName"] for m in aws_conn.client("sagemaker").list_models()["Models"]}
    assert models == models_before  # and no second model


def test_retry_after_a_failed_job_submits_a_new_distinct_attempt(spec, model, aws_conn, sagemaker_lifecycle):
    run_id = "scheduled__failed"
    _, first = submit(spec, task_context(run_id, DS, model), model)
    sagemaker_lifecycle(first.trigger.job_name, "Failed", "ClientError: model container exited")

    _, second = submit(spec, task_context(run_id, DS, model), model)
    assert second.trigger.job_name.endswith("-a2") and first.trigger.job_name.endswith("-a1")
    assert sorted(j["TransformJobStatus"] for j in jobs_of(run_id, aws_conn)) == ["Failed", "InProgress"]


def test_killing_the_deferred_task_stops_the_job(spec, model, aws_conn, sagemaker_lifecycle):
    _, deferred = submit(spec, task_context("manual__kill_deferred", DS, model), model)
    classpath, kwargs = deferred.trigger.serialize()  # as the triggerer rebuilds it
    from mlbatch.backends.sagemaker import SageMakerTransformTrigger

    asyncio.run(SageMakerTransformTrigger(**kwargs).on_kill())
    assert moto_transform_jobs()[deferred.trigger.job_name].transform_job_status == "Stopped"


def test_killing_the_running_task_stops_the_job(spec, model, aws_conn, sagemaker_lifecycle):
    op, deferred = submit(spec, task_context("manual__kill_running", DS, model), model)
    op.on_kill()
    assert moto_transform_jobs()[deferred.trigger.job_name].transform_job_status == "Stopped"


def test_execution_timeout_while_deferred_stops_the_job(spec, model, aws_conn, sagemaker_lifecycle):
    from airflow.sdk.exceptions import TaskDeferralTimeout
    from airflow.sdk.bases.operator import TriggerFailureReason

    context = task_context("manual__timeout", DS, model)
    _, deferred = submit(spec, context, model)
    from mlbatch.operators.predict import PredictOperator

    resumed = PredictOperator(task_id="predict", spec=spec)  # the task resumes in a new process
    with pytest.raises(TaskDeferralTimeout):
        resumed.resume_execution("__fail__", {"error": TriggerFailureReason.TRIGGER_TIMEOUT}, context)
    assert moto_transform_jobs()[deferred.trigger.job_name].transform_job_status == "Stopped"


@pytest.mark.parametrize("event, job_status", [
    ({"status": "failed", "job_name": "x", "message": "AlgorithmError: model crashed"}, "Failed"),
    ({"status": "stopped", "job_name": "x", "message": "stopped"}, "Stopped"),
    ({"status": "timeout", "job_name": "x", "message": "max attempts"}, "InProgress"),
    (None, "InProgress"),
])
def test_execute_complete_refuses_an_event_that_is_not_success(spec, model, aws_conn, sagemaker_lifecycle,
                                                                event, job_status):
    """A job that ended badly fails the try; a trigger that failed while the job runs on only means
    waiting again (never stopping or abandoning a healthy job)."""
    from airflow.sdk.exceptions import TaskDeferred

    from mlbatch.errors import RemoteJobError
    from mlbatch.operators.predict import PredictOperator

    context = task_context(f"manual__event_{(event or {}).get('status')}", DS, model)
    _, deferred = submit(spec, context, model)
    sagemaker_lifecycle(deferred.trigger.job_name, job_status)
    op = PredictOperator(task_id="predict", spec=spec)
    if job_status == "InProgress":
        with pytest.raises(TaskDeferred) as again:
            op.execute_complete(context, event)
        assert again.value.trigger.job_name == deferred.trigger.job_name
        assert moto_transform_jobs()[deferred.trigger.job_name].transform_job_status == "InProgress"
    else:
        with pytest.raises(RemoteJobError, match="did not succeed"):
            op.execute_complete(context, event)


def test_a_trigger_failure_fails_the_try_without_stopping_the_job(spec, model, aws_conn, sagemaker_lifecycle):
    from airflow.sdk.bases.operator import TriggerFailureReason
    from airflow.sdk.exceptions import TaskDeferralError

    from mlbatch.operators.predict import PredictOperator

    context = task_context("manual__trigger_crash", DS, model)
    _, deferred = submit(spec, context, model)
    with pytest.raises(TaskDeferralError):
        PredictOperator(task_id="predict", spec=spec).resume_execution(
            "__fail__", {"error": TriggerFailureReason.TRIGGER_FAILURE}, context)
    assert moto_transform_jobs()[deferred.trigger.job_name].transform_job_status == "InProgress"
    _, retry = submit(spec, task_context("manual__trigger_crash", DS, model), model)  # the retry
    assert retry.trigger.job_name == deferred.trigger.job_name  # re-attached (with the task's deadline)


def test_execute_complete_rechecks_the_job_when_the_event_says_success(spec, model, aws_conn,
                                                                       sagemaker_lifecycle):
    """The provider bug in the design notes: a failed, deferred transform job reported as a success."""
    from mlbatch.errors import RemoteJobError
    from mlbatch.operators.predict import PredictOperator

    context = task_context("manual__lying_event", DS, model)
    _, deferred = submit(spec, context, model)
    sagemaker_lifecycle(deferred.trigger.job_name, "Failed", "ClientError: bad input")
    with pytest.raises(RemoteJobError, match="is Failed: ClientError: bad input"):
        PredictOperator(task_id="predict", spec=spec).execute_complete(
            context, {"status": "success", "job_name": deferred.trigger.job_name})


def test_log_tail_reads_the_transform_jobs_cloudwatch_streams(aws_conn):
    from mlbatch.remote_logs import remote_log_tail

    logs = aws_conn.client("logs")
    group, job = "/aws/sagemaker/TransformJobs", "natality-sagemaker-predict-0123456789-a1"
    try:
        logs.create_log_group(logGroupName=group)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    now = int(time.time() * 1000) - 60_000  # CloudWatch refuses events older than 14 days
    for n, stream in enumerate([f"{job}/i-0abc-1700000000", f"{job}/i-0abc-1700000000/data-log"]):
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
        logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=[
            {"timestamp": now + 10 * i + n, "message": f"{stream.rsplit('/', 1)[-1]} line {i}"}
            for i in range(20)])
    logs.create_log_stream(logGroupName=group, logStreamName="other-job-a1/i-0def-1")
    logs.put_log_events(logGroupName=group, logStreamName="other-job-a1/i-0def-1",
                        logEvents=[{"timestamp": now + 5_000, "message": "not ours"}])

    tail = remote_log_tail({"backend": "sagemaker", "job_name": job, "region": "us-east-1",
                            "aws_conn_id": "aws_default"}, lines=5)
    assert len(tail) == 5
    assert tail[-1].endswith("data-log line 19") and tail[-2].endswith("i-0abc-1700000000 line 19")
    assert not any("not ours" in line for line in tail)


def test_unknown_names_are_recognised_by_error_code_not_message(aws_conn):
    """SageMaker (and moto) answer a Describe* of an unknown name with ValidationException."""
    from botocore.exceptions import ClientError

    from mlbatch.hooks.sagemaker import TransformJobHook, error_code

    hook = TransformJobHook("aws_default", "us-east-1")
    assert hook.job_verdict("no-such-transform-job") == ("absent", None)
    assert hook.model_exists("no-such-model") is False
    with pytest.raises(ClientError) as refused:
        hook.describe_model("no-such-model")
    assert error_code(refused.value) == "ValidationException"


E2E_DATE = "2026-11-22"


def test_sagemaker_example_runs_end_to_end_against_moto(airflow_db, registered_model, staging_bucket,
                                                         sagemaker_dataplane, tmp_path, monkeypatch, aws_conn):
    """The example pipeline through moto, the Batch Transform emulator and the real MLflow scoring
    server, with every location on S3 (input and marker, work folder, SageMaker staging, output, dead
    letters) reached through the storage layer and aws_default: the same predictions as the direct-model
    backend, for every valid row, by id."""
    import io
    from datetime import datetime, timezone

    import numpy as np
    import pandas as pd

    import pyarrow.parquet as pq
    from airflow.dag_processing.dagbag import DagBag

    from cloud_backends import pipeline_outputs_moved

    from mlbatch.local.demo.natality import LABEL, make_frame
    from mlbatch.storage.layer import Storage

    data_root = f"s3://{staging_bucket}/data"
    monkeypatch.setenv("MLBATCH_DATA_ROOT", data_root)
    storage = Storage()
    frames = [make_frame(1_500, seed=11 + i, id_offset=i * 1_500).drop(columns=[LABEL]) for i in range(2)]
    for i, frame in enumerate(frames):
        sink = io.BytesIO()
        frame.to_parquet(sink, row_group_size=1_000)
        storage.write_bytes(f"{data_root}/natality/ds={E2E_DATE}/part-{i}.parquet", sink.getvalue())
    source = pd.concat(frames)
    storage.write_bytes(f"{data_root}/natality/ds={E2E_DATE}/_SUCCESS", b"")
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors
    dag = bag.dags["natality_sagemaker"]
    with pipeline_outputs_moved():  # to s3://, from the dev paths of other tests
        run = dag.test(logical_date=datetime.fromisoformat(E2E_DATE).replace(tzinfo=timezone.utc))
    assert run.state == "success"

    out = f"{data_root}/predictions/natality_sagemaker/ds={E2E_DATE}"
    record = storage.read_json(f"{out}/_SUCCESS")
    assert record["rows_in"] == 3_000 == record["rows_scored"] + record["rows_rejected"]
    assert record["rows_rejected"] > 0 and all(f.startswith(f"{out}/_attempts/") for f in record["files"])
    tables = []
    for uri in record["files"]:
        with storage.open(uri) as fh:
            tables.append(pq.read_table(fh).to_pandas())
    table = pd.concat(tables)
    assert len(table) == record["rows_scored"] and table.id.is_unique
    assert table.predicted_weight_pounds.between(0, 15).all()
    rejected = sum(1 for uri in record["dead_letter"]["files"] for line in storage.open(uri) if line.strip())
    assert rejected == record["rows_rejected"]
    jobs = [j for j in aws_conn_jobs(staging_bucket)]
    assert len(jobs) == 1 and moto_transform_jobs()[jobs[0]].transform_job_status == "Completed"
    # staged job input/output and the work folder are gone once the partition is committed
    keys = [o["Key"] for o in aws_conn.client("s3").list_objects_v2(Bucket=staging_bucket)["Contents"]]
    assert not [k for k in keys if k.startswith("sagemaker/natality_sagemaker/") or "/_work/" in k], keys

    features = ["is_male", "mother_age", "plurality", "gestation_weeks"]
    direct = direct_model_predictions(source[source.id.isin(table.id)],
                                      f"models:/{registered_model['name']}/{registered_model['version']}",
                                      features, tmp_path / "direct")
    assert len(direct) == len(table)
    np.testing.assert_allclose(table.set_index("id").predicted_weight_pounds.sort_index(),
                               direct.sort_index(), rtol=1e-12)


def aws_conn_jobs(bucket: str) -> list[str]:
    """Transform jobs that wrote under this test's staging bucket."""
    return [name for name, job in moto_transform_jobs().items()
            if job.transform_output["S3OutputPath"].startswith(f"s3://{bucket}/")]


def test_concurrent_payloads_over_100_mb_are_refused_before_submitting():
    """CreateTransformJob: MaxConcurrentTransforms * MaxPayloadInMB cannot exceed 100 MB: refused when the
    spec is loaded (mlbatch.spec.runnable), and again when a request is built from a spec made without it."""
    from mlbatch.backends.sagemaker import transform_config
    from mlbatch.errors import SpecError
    from mlbatch.spec.loader import load_spec, with_overrides
    from mlbatch.spec.models import PipelineSpec

    with pytest.raises(SpecError, match="max_concurrent_transforms = 20: expected at most 16 with max_payload_mb 6"):
        with_overrides(load_spec(SPEC), {"predict.sagemaker.max_concurrent_transforms": 20})
    data = load_spec(SPEC).model_dump()
    data["predict"]["sagemaker"]["max_concurrent_transforms"] = 20
    with pytest.raises(ValueError, match="max_concurrent_transforms x max_payload_mb = 120 MB"):
        transform_config(PipelineSpec.model_validate(data), "j-a1",
                         {"name": "m", "version": 1, "sagemaker_model": "mlb-m-v1"}, "s3://b/in/", "s3://b/out", "r")


@pytest.mark.parametrize("ended", ["Completed", "Failed", "Stopped"])
def test_stopping_an_ended_job_is_refused_by_the_service_and_a_logged_no_op_for_us(
        spec, model, aws_conn, sagemaker_lifecycle, caplog, ended):
    """StopTransformJob on an ended job answers ValidationException (the emulator as the service); a kill
    that comes after the job ended leaves it as it is and logs its final state."""
    import logging

    from botocore.exceptions import ClientError

    from mlbatch.backends.sagemaker import SageMakerBackend

    _, deferred = submit(spec, task_context(f"manual__stop_{ended.lower()}", DS, model), model)
    name = deferred.trigger.job_name
    sagemaker_lifecycle(name, ended)
    with pytest.raises(ClientError) as refused:
        aws_conn.client("sagemaker").stop_transform_job(TransformJobName=name)
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert f"transform job is in status {ended}" in refused.value.response["Error"]["Message"]
    with caplog.at_level(logging.INFO):
        SageMakerBackend().cancel({"backend": "sagemaker", "job_name": name, "aws_conn_id": "aws_default",
                                   "region": "us-east-1"})
    assert f"Transform job {name} already ended ({ended}): nothing to stop" in caplog.text
    assert moto_transform_jobs()[name].transform_job_status == ended
