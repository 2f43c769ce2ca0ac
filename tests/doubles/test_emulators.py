"""Tests of the test doubles, not of the product: the emulators the cloud tests rely on (moto's server
for S3 and SageMaker, the GCS emulator; tests/emulators.py starts them) answer over HTTP. A failure here
means the test environment is broken, not mlbatch."""


def test_moto_server_speaks_s3_and_sagemaker(moto_server):
    s3 = moto_server.client("s3")
    s3.create_bucket(Bucket="emulator-check")
    s3.put_object(Bucket="emulator-check", Key="a.txt", Body=b"hi")
    assert s3.get_object(Bucket="emulator-check", Key="a.txt")["Body"].read() == b"hi"
    assert moto_server.client("sagemaker").list_transform_jobs()["TransformJobSummaries"] == []


def test_gcs_emulator_stores_objects(gcs_emulator):
    client = gcs_emulator.client()
    bucket = client.create_bucket("emulator-check")
    bucket.blob("x/y.txt").upload_from_string("hello")
    assert [b.name for b in client.list_blobs("emulator-check")] == ["x/y.txt"]
    assert bucket.blob("x/y.txt").download_as_text() == "hello"
