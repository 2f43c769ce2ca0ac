"""The SageMaker and Vertex emulators serve the model the job names (tests/dataplane/containers.py): the
archive or image of that version scores, a malformed or missing archive fails the job as the service
does, and an image that installs the model's requirements at start cannot start under network isolation
(and the SageMaker backend refuses such a job before submitting it).

The probe model's versions predict a constant (1.0, 2.0), so which version scored is in the answer."""

from __future__ import annotations

import io
import json
import tarfile

import pandas as pd
import pytest
from cloud_backends import aws_conn, sagemaker_dataplane, task_context, upload_model_archive  # noqa: F401
from scoring_server import SAGEMAKER_GENERIC_IMAGE
from test_backend_sagemaker import DS, jobs_of, prepare, spec, staging_bucket, submit  # noqa: F401

PROBE = "served_artifacts_probe"
BUCKET = "served-artifacts"
ROLE = "arn:aws:iam::123456789012:role/x"
ROWS = pd.DataFrame({"is_male": [True, False, True], "mother_age": [30.0, 25.0, 41.0],
                     "plurality": [1, 2, 1], "gestation_weeks": [39.0, 35.0, 40.0]})


@pytest.fixture(scope="module")
def probe(registered_model) -> dict[int, str]:
    """Versions 1 and 2 predict 1.0 and 2.0; version 3 predicts 3.0 and needs a package no image has."""
    import mlflow
    import sklearn
    from mlflow.models import infer_signature
    from sklearn.dummy import DummyRegressor

    from mlbatch.run.mlflow_experiments import ensure_experiment

    experiment = ensure_experiment(PROBE)  # under the session's artifact root, not ./mlruns
    versions = {}
    for constant, extra in ((1.0, []), (2.0, []), (3.0, ["probe-only-package==1.0"])):
        model = DummyRegressor(strategy="constant", constant=constant).fit(ROWS, [0.0] * len(ROWS))
        with mlflow.start_run(experiment_id=experiment):
            info = mlflow.sklearn.log_model(
                model, name="model", signature=infer_signature(ROWS, model.predict(ROWS)),
                pip_requirements=[f"scikit-learn=={sklearn.__version__}", *extra], registered_model_name=PROBE)
        versions[int(constant)] = f"models:/{PROBE}/{info.registered_model_version}"
    return versions


@pytest.fixture
def s3(aws_conn, sagemaker_dataplane, probe, tmp_path):
    client = aws_conn.client("s3")
    if not _bucket(client):  # once per session: the same archives (ETags) keep their containers
        client.create_bucket(Bucket=BUCKET)
        for constant, uri in probe.items():
            upload_model_archive(client, BUCKET, f"models/v{constant}/model.tar.gz", uri, tmp_path / f"v{constant}")
        buffer = io.BytesIO()
        ROWS.to_parquet(buffer, index=False)
        client.put_object(Bucket=BUCKET, Key="input/part-0.parquet", Body=buffer.getvalue())
    return client


def _bucket(client) -> bool:
    return any(b["Name"] == BUCKET for b in client.list_buckets()["Buckets"])


def transform(aws_conn, name: str, image: str, model_data_url: str | None, isolated: bool = False) -> dict:
    """CreateModel + CreateTransformJob (the emulator runs it) + DescribeTransformJob."""
    sm = aws_conn.client("sagemaker")
    container = {"Image": image, **({"ModelDataUrl": model_data_url} if model_data_url else {})}
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer=container,
                    EnableNetworkIsolation=isolated)
    sm.create_transform_job(
        TransformJobName=name, ModelName=name,
        TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/input/"}},
                        "ContentType": "application/vnd.apache.parquet", "SplitType": "None"},
        TransformOutput={"S3OutputPath": f"s3://{BUCKET}/out/{name}", "Accept": "application/json"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1})
    return sm.describe_transform_job(TransformJobName=name)


def container_log(aws_conn, name: str) -> str:
    """What the job's container printed: its instance stream in CloudWatch Logs (not the data-log)."""
    from dataplane.sagemaker_transform import LOG_GROUP

    logs = aws_conn.client("logs")
    [stream] = [s["logStreamName"] for s in logs.describe_log_streams(
        logGroupName=LOG_GROUP, logStreamNamePrefix=f"{name}/")["logStreams"] if not s["logStreamName"].endswith("/data-log")]
    return "\n".join(e["message"] for e in logs.get_log_events(logGroupName=LOG_GROUP, logStreamName=stream)["events"])


def predictions(s3, name: str) -> list:
    body = s3.get_object(Bucket=BUCKET, Key=f"out/{name}/part-0.parquet.out")["Body"].read()
    return json.loads(body)["predictions"]


def test_the_job_scores_with_the_archive_of_the_version_it_names(aws_conn, s3):
    for version in (1, 2):
        job = transform(aws_conn, f"names-v{version}", SAGEMAKER_GENERIC_IMAGE,
                        f"s3://{BUCKET}/models/v{version}/model.tar.gz")
        assert job["TransformJobStatus"] == "Completed", job.get("FailureReason")
        assert predictions(s3, f"names-v{version}") == [float(version)] * len(ROWS)


def test_an_archive_that_is_not_a_tar_gz_fails_the_job(aws_conn, s3):
    s3.put_object(Bucket=BUCKET, Key="models/zip/model.tar.gz", Body=b"PK\x03\x04 a zip file, not a tar.gz")
    url = f"s3://{BUCKET}/models/zip/model.tar.gz"
    job = transform(aws_conn, "not-a-tar-gz", SAGEMAKER_GENERIC_IMAGE, url)
    assert job["TransformJobStatus"] == "Failed"
    assert job["FailureReason"] == (
        f'ClientError: Failed to extract model data archive for container "container_1" from URL "{url}". '
        "Please ensure that the object located at the URL is a valid tar.gz archive.")


def test_an_archive_with_the_model_in_a_folder_fails_the_job(aws_conn, s3, probe, tmp_path):
    """tar -czf model.tar.gz model/ (the folder, not its files): /opt/ml/model/model/MLmodel, and the
    MLflow image's entry point opens /opt/ml/model/MLmodel."""
    import mlflow

    local = mlflow.artifacts.download_artifacts(artifact_uri=probe[1], dst_path=str(tmp_path))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(local, arcname="model")
    s3.put_object(Bucket=BUCKET, Key="models/nested/model.tar.gz", Body=buffer.getvalue())
    job = transform(aws_conn, "nested-archive", SAGEMAKER_GENERIC_IMAGE, f"s3://{BUCKET}/models/nested/model.tar.gz")
    assert job["TransformJobStatus"] == "Failed"
    assert job["FailureReason"] == "AlgorithmError: See job logs for more information"
    assert 'Could not find an "MLmodel" configuration file at "/opt/ml/model/MLmodel"' in container_log(
        aws_conn, "nested-archive")


def test_a_missing_archive_fails_the_job(aws_conn, s3):
    url = f"s3://{BUCKET}/models/none/model.tar.gz"
    job = transform(aws_conn, "missing-archive", SAGEMAKER_GENERIC_IMAGE, url)
    assert job["TransformJobStatus"] == "Failed"
    assert job["FailureReason"].startswith(
        f'ClientError: Failed to download model data for container "container_1" from URL: "{url}".')


def test_an_image_no_one_built_fails_the_job(aws_conn, s3):
    job = transform(aws_conn, "unknown-image", "123456789012.dkr.ecr.us-east-1.amazonaws.com/nobody-built-it:1",
                    f"s3://{BUCKET}/models/v1/model.tar.gz")
    assert job["TransformJobStatus"] == "Failed" and "nobody-built-it:1 not found" in job["FailureReason"]


def test_network_isolation_stops_the_image_that_installs_at_start_not_the_per_version_one(
        aws_conn, s3, probe, model_containers):
    """The generic image pip-installs the model's requirements when it starts: no package index under
    EnableNetworkIsolation. The image built for the version (`build-docker -m`) installs nothing."""
    url = f"s3://{BUCKET}/models/v1/model.tar.gz"
    job = transform(aws_conn, "isolated-generic", SAGEMAKER_GENERIC_IMAGE, url, isolated=True)
    assert job["TransformJobStatus"] == "Failed"
    assert job["FailureReason"] == "AlgorithmError: See job logs for more information"
    assert "No matching distribution found for mlflow==" in container_log(aws_conn, "isolated-generic")

    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/mlflow-served-artifacts-probe:v1"
    model_containers.images.per_version(image, probe[1])
    job = transform(aws_conn, "isolated-per-version", image, url, isolated=True)
    assert job["TransformJobStatus"] == "Completed", job.get("FailureReason")
    assert predictions(s3, "isolated-per-version") == [1.0] * len(ROWS)


def test_a_model_whose_requirement_the_image_lacks_fails_on_the_image_of_another_version(
        aws_conn, s3, probe, model_containers):
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/mlflow-served-artifacts-probe:v1"
    model_containers.images.per_version(image, probe[1])
    job = transform(aws_conn, "wrong-image", image, f"s3://{BUCKET}/models/v3/model.tar.gz")
    assert job["TransformJobStatus"] == "Failed"
    assert "probe-only-package==1.0 is not installed in image" in container_log(aws_conn, "wrong-image")


def test_the_vertex_container_serves_the_model_its_image_was_built_with(probe, model_containers):
    from google.cloud.aiplatform_v1.types import Model, ModelContainerSpec, Port

    from dataplane.containers import ContainerFailed

    def model(image: str) -> Model:
        return Model(display_name="probe", artifact_uri="gs://unused", container_spec=ModelContainerSpec(
            image_uri=image, predict_route="/invocations", health_route="/ping", ports=[Port(container_port=8080)]))

    import requests

    instances = {"instances": ROWS.to_dict(orient="records")}
    for version in (1, 2):
        image = f"europe-docker.pkg.dev/p/serving/mlflow-{PROBE}:v{version}"
        model_containers.images.per_version(image, probe[version])
        answer = requests.post(model_containers.vertex(model(image)) + "/invocations", json=instances, timeout=60)
        assert answer.json()["predictions"] == [float(version)] * len(ROWS)
    with pytest.raises(ContainerFailed, match="Requested image .*:v9 not found"):
        model_containers.vertex(model(f"europe-docker.pkg.dev/p/serving/mlflow-{PROBE}:v9"))
    with pytest.raises(ContainerFailed, match="Model server never became ready") as failed:
        model_containers.vertex(model(SAGEMAKER_GENERIC_IMAGE))  # no model inside: /opt/ml/model is empty
    assert 'configuration file at "/opt/ml/model/MLmodel"' in failed.value.log


def test_the_sagemaker_backend_refuses_an_isolated_job_on_the_image_that_installs_at_start(
        spec, model, aws_conn, sagemaker_dataplane, staging_bucket):
    """`network.public_ips: false` with the generic image: refused before the Model, its archive or a
    job exist, naming image, model version and the requirement that could not be installed."""
    from mlbatch.errors import ServingImageError
    from mlbatch.operators.predict import PredictOperator
    from mlbatch.spec.loader import with_overrides

    isolated = with_overrides(spec, {"predict.network.public_ips": False,
                                     "predict.sagemaker.image_uri": SAGEMAKER_GENERIC_IMAGE})
    context = task_context("manual__isolated_generic", DS, model)
    op = PredictOperator(task_id="predict", spec=isolated)
    prepare(op, isolated, context)
    with pytest.raises(ServingImageError) as refused:
        op.execute(context)
    message = str(refused.value)
    assert isolated.predict.sagemaker.image_uri in message and f"version {model['version']}" in message
    assert "mlflow==" in message and "network.public_ips: false" in message
    assert not aws_conn.client("s3").list_objects_v2(Bucket=staging_bucket).get("KeyCount")
    assert not jobs_of("manual__isolated_generic", aws_conn)


def test_the_sagemaker_backend_runs_an_isolated_job_on_the_per_version_image(
        spec, model, aws_conn, sagemaker_dataplane, staging_bucket):
    from scoring_server import SAGEMAKER_IMAGE

    from mlbatch.backends.sagemaker import model_config
    from mlbatch.spec.loader import with_overrides

    isolated = with_overrides(spec, {"predict.network.public_ips": False,
                                     "predict.sagemaker.image_uri": SAGEMAKER_IMAGE})
    submit(isolated, task_context("manual__isolated_per_version", DS, model), model)
    [job] = jobs_of("manual__isolated_per_version", aws_conn)
    assert job["TransformJobStatus"] == "Completed", job.get("FailureReason")
    described = aws_conn.client("sagemaker").describe_model(ModelName=model_config(isolated, model)["ModelName"])
    assert described["PrimaryContainer"]["Image"] == SAGEMAKER_IMAGE.format(
        model_name=model["name"], model_version=model["version"])
    from moto.sagemaker.models import sagemaker_backends

    backend = sagemaker_backends["123456789012"]["us-east-1"]
    assert backend.describe_model(described["ModelName"]).enable_network_isolation  # as CreateModel said
