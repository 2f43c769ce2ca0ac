"""The Batch Transform data-plane emulator against the real MLflow scoring server: which request formats
the MLflow container really accepts, and how the service fails a job when it does not."""

from __future__ import annotations

import io
import json
import os
import time

import pandas as pd
import pytest
from cloud_backends import aws_conn, moto_transform_jobs, sagemaker_dataplane, upload_model_archive  # noqa: F401
from scoring_server import SAGEMAKER_GENERIC_IMAGE

FEATURES = ["is_male", "mother_age", "plurality", "gestation_weeks"]
BUCKET = "dataplane-sagemaker"


@pytest.fixture
def rows() -> pd.DataFrame:
    from mlbatch.local.demo.natality import make_frame

    frame = make_frame(int(os.environ.get("MLBATCH_FORMAT_ROWS", 2_000)), seed=5, bad_fraction=0)
    return frame[["id", *FEATURES]]


@pytest.fixture
def s3(aws_conn, sagemaker_dataplane, registered_model, tmp_path):
    client = aws_conn.client("s3")
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    if not client.list_objects_v2(Bucket=BUCKET, Prefix="model/model.tar.gz").get("KeyCount"):
        # once per session (the container of the same model files is started once anyway)
        upload_model_archive(client, BUCKET, "model/model.tar.gz",
                             f"models:/{registered_model['name']}/{registered_model['version']}", tmp_path / "model")
    return client


def run_job(aws_conn, s3, name: str, files: dict[str, bytes], content_type: str, **job) -> dict:
    """Upload the input files, create the transform job (the emulator runs it), describe it."""
    for key, body in files.items():
        s3.put_object(Bucket=BUCKET, Key=f"{name}/in/{key}", Body=body)
    sm = aws_conn.client("sagemaker")
    try:
        sm.create_model(ModelName="dataplane-model", ExecutionRoleArn="arn:aws:iam::123456789012:role/x",
                        PrimaryContainer={"Image": SAGEMAKER_GENERIC_IMAGE,
                                          "ModelDataUrl": f"s3://{BUCKET}/model/model.tar.gz"})
    except sm.exceptions.ClientError:
        pass  # created by an earlier test of this session
    tin = job.pop("TransformInput", {})
    sm.create_transform_job(
        TransformJobName=name, ModelName="dataplane-model",
        TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                        "S3Uri": f"s3://{BUCKET}/{name}/in/"}},
                        "ContentType": content_type, **tin},
        TransformOutput={"S3OutputPath": f"s3://{BUCKET}/{name}/out", **job.pop("TransformOutput", {})},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1}, **job)
    return sm.describe_transform_job(TransformJobName=name)


def data_log(aws_conn, name: str) -> list[str]:
    """The job's data-log lines, as the emulator wrote them to moto's CloudWatch Logs."""
    from dataplane.sagemaker_transform import LOG_GROUP

    logs = aws_conn.client("logs")
    streams = [s["logStreamName"] for s in logs.describe_log_streams(
        logGroupName=LOG_GROUP, logStreamNamePrefix=f"{name}/")["logStreams"]]
    [stream] = [s for s in streams if s.endswith("/data-log")]
    return [e["message"] for e in logs.get_log_events(logGroupName=LOG_GROUP, logStreamName=stream)["events"]]


def job_reason(aws_conn, job: dict) -> str:
    """What the SageMaker backend reads back as the failed job's reason (its FailureReason says only
    "ClientError: See job logs for more information")."""
    from mlbatch.backends.sagemaker import SageMakerBackend

    assert job["FailureReason"] == "ClientError: See job logs for more information"
    return SageMakerBackend().failure_reason({"job_name": job["TransformJobName"], "region": aws_conn.region,
                                              "aws_conn_id": "aws_default"})


def output(s3, name: str, key: str) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=f"{name}/out/{key}")["Body"].read()


def test_csv_split_by_line_fails_because_only_the_first_mini_batch_has_the_header(aws_conn, s3, rows):
    """MLflow's own `deploy_transform_job` defaults (text/csv, SplitType Line): MultiRecord mini-batches
    after the first start without the header, and MLflow's CSV parser takes their first row for it."""
    body = rows[FEATURES].to_csv(index=False).encode()
    body += body.split(b"\n", 1)[1] * (1024 * 1024 // len(body) + 1)  # over 1 MB: two mini-batches
    job = run_job(aws_conn, s3, "csv-line", {"part.csv": body}, "text/csv",
                  TransformInput={"SplitType": "Line"}, BatchStrategy="MultiRecord", MaxPayloadInMB=1,
                  TransformOutput={"AssembleWith": "Line"})
    assert job["TransformJobStatus"] == "Failed"
    assert job_reason(aws_conn, job).startswith(  # a data row read as the header
        "Model is missing inputs ['is_male', 'mother_age', 'plurality', 'gestation_weeks']. Note that there "
        "were extra inputs: [")
    assert any("Failed to enforce schema" in line for line in data_log(aws_conn, "csv-line"))


def test_json_lines_are_refused_by_the_mlflow_container(aws_conn, s3, rows):
    body = rows[FEATURES].to_json(orient="records", lines=True).encode()
    job = run_job(aws_conn, s3, "jsonl", {"part.jsonl": body}, "application/jsonlines",
                  TransformInput={"SplitType": "Line"}, BatchStrategy="MultiRecord")
    assert job["TransformJobStatus"] == "Failed"
    assert any(line.endswith("part.jsonl: ClientError: 415") for line in data_log(aws_conn, "jsonl"))


def test_a_whole_file_over_max_payload_fails_the_job(aws_conn, s3, rows):
    big = pd.concat([rows] * max(1, (2 * 1024 * 1024) // max(1, len(rows.to_csv())) + 1))
    job = run_job(aws_conn, s3, "too-big", {"part.csv": big[FEATURES].to_csv(index=False).encode()},
                  "text/csv", MaxPayloadInMB=1)
    assert job["TransformJobStatus"] == "Failed" and "over MaxPayloadInMB" in job["FailureReason"]


def test_json_records_with_input_filter_join_and_output_filter(aws_conn, s3, rows):
    """Per-record JSON (SingleRecord): InputFilter sends only `instances`, JoinSource Input adds the
    answer as SageMakerOutput, OutputFilter keeps the id beside it; AssembleWith Line."""
    head = rows.head(5)
    lines = "".join(json.dumps({"id": int(r.id), "instances": [{f: r[f] for f in FEATURES}]},
                               default=lambda v: v.item()) + "\n" for _, r in head.iterrows())
    job = run_job(aws_conn, s3, "json-join", {"part.jsonl": lines.encode()}, "application/json",
                  TransformInput={"SplitType": "Line"}, BatchStrategy="SingleRecord",
                  TransformOutput={"Accept": "application/json", "AssembleWith": "Line"},
                  DataProcessing={"InputFilter": "$['instances']", "JoinSource": "Input",
                                  "OutputFilter": "$['id','SageMakerOutput']"})
    assert job["TransformJobStatus"] == "Completed", job.get("FailureReason")
    out = [json.loads(line) for line in output(s3, "json-join", "part.jsonl.out").decode().splitlines()]
    assert [o["id"] for o in out] == head.id.tolist()
    assert all(list(o) == ["id", "SageMakerOutput"] and len(o["SageMakerOutput"]["predictions"]) == 1
               for o in out)


def test_whole_file_csv_and_parquet_give_the_same_predictions(aws_conn, s3, rows, capsys):
    """The two formats the MLflow container takes as a whole file (SplitType None). Timed, for the
    choice in mlbatch.backends.sagemaker (numbers in the issue note; MLBATCH_FORMAT_ROWS scales it)."""
    parts = {i: rows.iloc[i::4] for i in range(4)}
    timings, answers = {}, {}
    for fmt, content_type, encode in (
            ("csv", "text/csv", lambda f: f[FEATURES].to_csv(index=False).encode()),
            ("parquet", "application/vnd.apache.parquet", lambda f: _parquet(f[FEATURES]))):
        files = {f"part-{i}.{fmt}": encode(frame) for i, frame in parts.items()}
        started = time.perf_counter()
        job = run_job(aws_conn, s3, f"whole-{fmt}", files, content_type,
                      BatchStrategy="SingleRecord", TransformOutput={"Accept": "application/json"})
        timings[fmt] = (time.perf_counter() - started, sum(map(len, files.values())))
        assert job["TransformJobStatus"] == "Completed", job.get("FailureReason")
        answers[fmt] = [json.loads(output(s3, f"whole-{fmt}", f"part-{i}.{fmt}.out"))["predictions"]
                        for i in parts]
    flat = {fmt: [p for part in parts_ for p in part] for fmt, parts_ in answers.items()}
    assert flat["csv"] == pytest.approx(flat["parquet"], rel=1e-12)
    assert [len(a) for a in answers["parquet"]] == [len(p) for p in parts.values()]
    with capsys.disabled():
        print("\n" + "; ".join(f"{fmt}: {len(rows)} rows, {size / 1e6:.2f} MB sent, {s:.2f} s"
                               for fmt, (s, size) in timings.items()))


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def test_the_backends_job_fails_with_the_containers_reason_on_bad_input(aws_conn, s3):
    """A Parquet file the model cannot take (a missing feature): the job is Failed with the service's
    terse FailureReason; the container's answer is in the job's CloudWatch data-log stream, in the
    agent's lines (`<bucket/key>: ClientError: 400`, `Message:`, the answer)."""
    from dataplane.sagemaker_transform import ContainerRefused

    job = run_job(aws_conn, s3, "bad-parquet",
                  {"part.parquet": _parquet(pd.DataFrame({"is_male": [True], "mother_age": [30.0]}))},
                  "application/vnd.apache.parquet", BatchStrategy="SingleRecord")
    assert job["TransformJobStatus"] == "Failed"
    assert job["FailureReason"] == ContainerRefused.REASON == "ClientError: See job logs for more information"
    assert moto_transform_jobs()["bad-parquet"].failure_reason == job["FailureReason"]
    lines = data_log(aws_conn, "bad-parquet")
    source = f"{BUCKET}/bad-parquet/in/part.parquet"
    assert any(line.endswith(f":[sagemaker logs]: {source}: ClientError: 400") for line in lines), lines
    assert "Model is missing inputs ['plurality', 'gestation_weeks']" in lines[-1]
    assert job_reason(aws_conn, job) == "Model is missing inputs ['plurality', 'gestation_weeks']."
