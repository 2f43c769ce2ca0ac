"""SageMaker Batch Transform backend against the moto server over HTTP (botocore validates every request).

moto does not compute predictions; these tests check requests, lifecycle, idempotency and cancellation.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from cloud_backends import aws_conn, moto_transform_jobs, sagemaker_lifecycle, task_context  # noqa: F401

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
    from mlbatch.spec_loader import load_spec, with_overrides

    return with_overrides(load_spec(SPEC), {"output.uri": str(tmp_path / "out" / "ds={{ ds }}")})


def prepare(op, spec, context) -> None:
    """What the prep step leaves behind for a batch backend: JSON Lines files."""
    from mlbatch.run_paths import local_path

    prepared = local_path(op.run_paths(context, spec).prepared)
    prepared.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        rows = [{"id": i * 10 + j, "is_male": True, "mother_age": 30.0, "plurality": 1,
                 "gestation_weeks": 39.0} for j in range(3)]
        (prepared / f"part-{i:05d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


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
    from mlbatch.backends.job_names import job_name

    prefix = job_name("natality_sagemaker", run_id, "predict", 1).rsplit("-a", 1)[0]
    return [sm.describe_transform_job(TransformJobName=n) for n in names if n.startswith(prefix)]


def test_submit_builds_the_requests_from_the_spec_and_defers(spec, model, aws_conn, sagemaker_lifecycle,
                                                            staging_bucket):
    from mlbatch.backends.sagemaker import SageMakerTransformTrigger, model_name

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
    assert job["TransformInput"]["ContentType"] == "application/jsonlines"
    assert job["TransformInput"]["SplitType"] == "Line"
    assert job["DataProcessing"] == {"JoinSource": "Input"}
    assert job["TransformOutput"]["KmsKeyId"] == spec.predict.network.kms_key
    tags = aws_conn.client("sagemaker").list_tags(ResourceArn=job["TransformJobArn"])["Tags"]
    assert {"Key": "team", "Value": "ml-platform"} in tags
    assert {"Key": "mlbatch-pipeline", "Value": "natality_sagemaker"} in tags

    described = aws_conn.client("sagemaker").describe_model(ModelName=model_name(model))
    assert job["ModelName"] == model_name(model)
    assert described["PrimaryContainer"]["Image"] == spec.predict.sagemaker.image_uri
    assert described["PrimaryContainer"]["Environment"]["MLFLOW_DEPLOYMENT_FLAVOR_NAME"] == "python_function"
    s3 = aws_conn.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=staging_bucket)["Contents"]]
    assert any(k.endswith(f"v{model['version']}/model.tar.gz") for k in keys)
    input_uri = job["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
    assert sorted(k for k in keys if f"s3://{staging_bucket}/{k}".startswith(input_uri)) == [
        k for k in sorted(keys) if k.endswith((".jsonl",))]
    assert sum(k.endswith(".jsonl") for k in keys) == 2


def test_retry_after_a_worker_crash_reattaches_instead_of_submitting_again(spec, model, aws_conn,
                                                                           sagemaker_lifecycle):
    run_id = "scheduled__crash"
    first_op, first = submit(spec, task_context(run_id, DS, model), model)
    del first_op  # the worker died while the task waited: no on_kill, the job keeps running

    retry_context = task_context(run_id, DS, model)  # a new try: its XCom starts empty
    _, second = submit(spec, retry_context, model)

    assert second.trigger.job_name == first.trigger.job_name
    assert len(jobs_of(run_id, aws_conn)) == 1  # exactly one job was created
    models = aws_conn.client("sagemaker").list_models()["Models"]
    assert len([m for m in models if m["ModelName"].endswith(f"-v{model['version']}")]) == 1


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


@pytest.mark.parametrize("event", [
    {"status": "failed", "job_name": "x", "message": "AlgorithmError: model crashed"},
    {"status": "stopped", "job_name": "x", "message": "stopped"},
    {"status": "timeout", "job_name": "x", "message": "max attempts"},
    None,
])
def test_execute_complete_refuses_an_event_that_is_not_success(spec, model, aws_conn, sagemaker_lifecycle,
                                                                event):
    from mlbatch.errors import RemoteJobError
    from mlbatch.operators.predict import PredictOperator

    context = task_context(f"manual__event_{(event or {}).get('status')}", DS, model)
    submit(spec, context, model)
    with pytest.raises(RemoteJobError, match="did not succeed"):
        PredictOperator(task_id="predict", spec=spec).execute_complete(context, event)


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


E2E_DATE = "2026-11-22"


@pytest.fixture
def sagemaker_computes(aws_conn, registered_model, monkeypatch, tmp_path):
    """EMULATES SAGEMAKER'S COMPUTATION, which moto does not do: when moto accepts CreateTransformJob,
    score the job's S3 input with the local batch backend (mlbatch_beam.local_predict, flavor
    'sagemaker': input object + SageMakerOutput, one `<input>.out` per input file) and put the results
    where the job was told to write them. This is test code, not product code."""
    from moto.sagemaker.models import SageMakerModelBackend

    from mlbatch_beam.local_predict import predict_files

    original = SageMakerModelBackend.create_transform_job
    s3 = aws_conn.client("s3")
    model_uri = f"models:/{registered_model['name']}/{registered_model['version']}"

    def create_and_compute(self, transform_job_name, model_name, max_concurrent_transforms,
                           model_client_config, max_payload_in_mb, batch_strategy, environment,
                           transform_input, transform_output, *args, **kwargs):
        job = original(self, transform_job_name, model_name, max_concurrent_transforms, model_client_config,
                       max_payload_in_mb, batch_strategy, environment, transform_input, transform_output,
                       *args, **kwargs)
        src = transform_input["DataSource"]["S3DataSource"]["S3Uri"]
        bucket, prefix = src[len("s3://"):].split("/", 1)
        work = tmp_path / transform_job_name
        (work / "in").mkdir(parents=True)
        for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]:
            s3.download_file(bucket, obj["Key"], str(work / "in" / obj["Key"].rsplit("/", 1)[-1]))
        predict_files(f"{work}/in/*.jsonl", model_uri, "id",
                      ["is_male", "mother_age", "plurality", "gestation_weeks"], str(work / "out"),
                      flavor="sagemaker")
        out_bucket, out_prefix = transform_output["S3OutputPath"][len("s3://"):].split("/", 1)
        for f in sorted((work / "out").iterdir()):
            s3.upload_file(str(f), out_bucket, f"{out_prefix.rstrip('/')}/{f.name}")
        return job

    monkeypatch.setattr(SageMakerModelBackend, "create_transform_job", create_and_compute)


def test_sagemaker_example_runs_end_to_end_against_moto(airflow_db, registered_model, session_dir,
                                                         staging_bucket, sagemaker_computes, monkeypatch):
    from datetime import datetime, timezone

    import pyarrow.parquet as pq
    from airflow.dag_processing.dagbag import DagBag

    from mlbatch.demo.natality import write_partition

    write_partition(session_dir / "data" / "natality" / f"ds={E2E_DATE}", 3_000, files=2, seed=11,
                    row_group_rows=1_000)
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors
    dag = bag.dags["natality_sagemaker"]
    run = dag.test(logical_date=datetime.fromisoformat(E2E_DATE).replace(tzinfo=timezone.utc))
    assert run.state == "success"

    out = session_dir / "data" / "predictions" / "natality_sagemaker" / f"ds={E2E_DATE}"
    manifest = json.loads((out / "_SUCCESS").read_text())
    assert manifest["rows_in"] == 3_000 == manifest["rows_scored"] + manifest["rows_rejected"]
    table = pq.read_table(sorted(out.glob("*.parquet")), partitioning=None).to_pandas()
    assert len(table) == manifest["rows_scored"] and table.id.is_unique
    assert table.predicted_weight_pounds.between(0, 15).all()
    jobs = [j for j in aws_conn_jobs(staging_bucket)]
    assert len(jobs) == 1


def aws_conn_jobs(bucket: str) -> list[str]:
    """Transform jobs that wrote under this test's staging bucket."""
    return [name for name, job in moto_transform_jobs().items()
            if job.transform_output["S3OutputPath"].startswith(f"s3://{bucket}/")]
