"""The direct-model job ships to Dataflow unchanged: flags Beam knows, a package workers can install."""
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import (
    DebugOptions, GoogleCloudOptions, PipelineOptions, SetupOptions, StandardOptions, WorkerOptions,
)

from mlbatch.backends.dataflow_options import (
    beam_jobs_setup_file, dataflow_pipeline_args, local_job, local_runner_args, model_sharing_args,
)
from mlbatch.spec.models import PipelineSpec

BEAM_JOBS = Path(__file__).resolve().parents[2] / "include" / "beam_jobs"


def make_spec(**predict) -> PipelineSpec:
    return PipelineSpec(
        name="natality_daily",
        model={"name": "natality_weight", "alias": "champion"},
        input={"uri": "gs://b/in/*.parquet", "format": "parquet", "id_column": "id",
               "features": [{"name": "mother_age", "type": "float"}]},
        output={"uri": "gs://b/out"},
        predict={"backend": "dataflow", **predict},
    )


FULL = dict(
    dataflow={"runner": "dataflow", "project": "example-ml-prod", "region": "europe-west1",
              "temp_location": "gs://example-tmp/dataflow", "experiments": ["use_runner_v2"],
              "service_options": ["enable_prime"]},
    compute={"machine_type": "n1-standard-4", "min_workers": 2, "max_workers": 20,
             "accelerator_type": "nvidia-tesla-t4", "accelerator_count": 1, "one_process_per_worker": True},
    network={"subnetwork": "ml-private", "service_account": "batch@example-ml-prod.iam.gserviceaccount.com",
             "public_ips": False, "kms_key": "projects/p/locations/l/keyRings/r/cryptoKeys/k"},
)


def unknown_to_beam(args: list[str]) -> set[str]:
    """Option names Beam's own parsers do not define (they would be silently dropped)."""
    options = PipelineOptions(args)
    known = options.get_all_options()
    return set(options.get_all_options(retain_unknown_options=True)) - set(known)


def test_unknown_flags_are_detected():
    # The check below is only worth something if it can fail.
    assert unknown_to_beam(["--runner=DataflowRunner", "--machine_typo=n1-standard-4"]) == {"machine_typo"}


def test_every_dataflow_flag_is_known_to_beam_and_means_what_the_spec_says():
    args = dataflow_pipeline_args(make_spec(**FULL), job_name="natality-daily-20261120-1")
    assert unknown_to_beam(args) == set()

    options = PipelineOptions(args)
    cloud, worker = options.view_as(GoogleCloudOptions), options.view_as(WorkerOptions)
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert (cloud.project, cloud.region, cloud.job_name) == (
        "example-ml-prod", "europe-west1", "natality-daily-20261120-1")
    assert cloud.temp_location == "gs://example-tmp/dataflow"
    assert cloud.staging_location == "gs://example-tmp/dataflow/staging"
    assert cloud.service_account_email == "batch@example-ml-prod.iam.gserviceaccount.com"
    assert cloud.dataflow_kms_key.endswith("cryptoKeys/k")
    assert cloud.dataflow_service_options == [
        "enable_prime", "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"]
    assert (worker.machine_type, worker.num_workers, worker.max_num_workers) == ("n1-standard-4", 2, 20)
    assert worker.autoscaling_algorithm == "THROUGHPUT_BASED"
    assert worker.subnetwork == "regions/europe-west1/subnetworks/ml-private"
    assert worker.use_public_ips is False
    assert options.view_as(DebugOptions).experiments == ["use_runner_v2", "no_use_multiple_sdk_containers"]
    assert options.view_as(SetupOptions).setup_file == str(BEAM_JOBS / "setup.py")


def test_container_image_replaces_the_setup_file_and_defaults_stay_minimal():
    spec = make_spec(dataflow={"runner": "dataflow", "project": "p", "region": "us-central1",
                               "temp_location": "gs://t/tmp", "sdk_container_image": "gcr.io/p/mlbatch:1"})
    args = dataflow_pipeline_args(spec, job_name="j1")
    assert unknown_to_beam(args) == set()
    options = PipelineOptions(args)
    assert options.view_as(WorkerOptions).sdk_container_image == "gcr.io/p/mlbatch:1"
    assert options.view_as(SetupOptions).setup_file is None
    assert options.view_as(WorkerOptions).autoscaling_algorithm == "NONE"  # min == max workers
    assert options.view_as(WorkerOptions).use_public_ips is None  # Dataflow's default
    assert options.view_as(DebugOptions).experiments is None


@pytest.mark.parametrize("dataflow, job_name, message", [
    ({"runner": "dataflow", "region": "r", "temp_location": "gs://t"}, "j", "needs project"),
    ({"runner": "dataflow", "project": "p", "region": "r", "temp_location": "/tmp/x"}, "j", "gs:// path"),
    ({"runner": "dataflow", "project": "p", "region": "r", "temp_location": "gs://t"}, "Bad_Name", "job name"),
])
def test_incomplete_dataflow_settings_fail_with_the_field(dataflow, job_name, message):
    with pytest.raises(ValueError, match=message):
        dataflow_pipeline_args(make_spec(dataflow=dataflow), job_name=job_name)


def test_local_runner_and_model_sharing_flags():
    args = local_runner_args(make_spec(compute={"local_workers": 2}))
    assert unknown_to_beam(args) == set()
    assert args == ["--runner=FnApiRunner"]  # one in-memory job per process; local_job spreads the files
    assert local_job(make_spec(), "mlbatch_beam.score") == ("mlbatch_beam.score", [])
    assert local_job(make_spec(compute={"local_workers": 2}), "mlbatch_beam.prep") == (
        "mlbatch_beam.shards", ["--shards", "2", "--job", "mlbatch_beam.prep"])
    assert model_sharing_args(make_spec()) == []
    assert model_sharing_args(make_spec(compute={"large_model": True, "model_copies": 2})) == [
        "--large-model", "--model-copies", "2"]


def _build(tmp_path: Path) -> tuple[Path, Path]:
    """sdist and wheel of a copy of include/beam_jobs (the tree itself stays untouched)."""
    source = tmp_path / "beam_jobs"
    source.mkdir()
    for name in ("setup.py", "MANIFEST.in", "worker-requirements.txt"):
        (source / name).write_bytes((BEAM_JOBS / name).read_bytes())
    for path in (BEAM_JOBS / "mlbatch_beam").glob("*.py"):
        (source / "mlbatch_beam").mkdir(exist_ok=True)
        (source / "mlbatch_beam" / path.name).write_bytes(path.read_bytes())
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(dist),
                    "bdist_wheel", "--dist-dir", str(dist)], cwd=source, check=True, capture_output=True)
    return next(dist.glob("*.tar.gz")), next(dist.glob("*.whl"))


def test_beam_jobs_package_holds_the_pipeline_and_the_model_handler(tmp_path):
    assert beam_jobs_setup_file() == str(BEAM_JOBS / "setup.py")
    sdist, wheel = _build(tmp_path)
    pinned = [line for line in (BEAM_JOBS / "worker-requirements.txt").read_text().splitlines()
              if line and not line.startswith("#")]
    assert any(p.startswith("scikit-learn==") for p in pinned) and any(p.startswith("mlflow-skinny==") for p in pinned)

    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        metadata = whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {"mlbatch_beam/score.py", "mlbatch_beam/model_handler.py", "mlbatch_beam/arrow_io.py",
            "mlbatch_beam/prep.py"} <= names
    assert [line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist")] == pinned
    assert not any("airflow" in name for name in names)

    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    unpacked = next((tmp_path / "unpacked").iterdir())
    assert (unpacked / "worker-requirements.txt").exists()  # setup.py reads it on the worker
    # Import the packaged copy (not the editable install) the way a worker would.
    probe = ("import mlbatch_beam.model_handler as m, mlbatch_beam.score as s; "
             "assert m.__file__.startswith(%r), m.__file__; "
             "print(m.MLflowPyfuncModelHandler.__name__, s.ScoreBatches.__name__)") % str(unpacked)
    done = subprocess.run([sys.executable, "-c", probe], cwd=unpacked, capture_output=True, text=True,
                          env={"PYTHONPATH": str(unpacked), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["MLflowPyfuncModelHandler", "ScoreBatches"]
