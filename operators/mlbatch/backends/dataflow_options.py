"""Beam pipeline arguments from a spec: the local FnApiRunner, or Google Dataflow.

The spec says what it needs in backend-neutral words (`predict.compute`, `predict.network`); this
module is where they become Beam/Dataflow flags. Only strings are built here (no Beam import), so
operators can call it at DAG-parse time; `tests/beam/test_dataflow_ready.py` parses every flag with
Beam's own `PipelineOptions` to prove Beam knows it.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from mlbatch.errors import BackendConfigError
from mlbatch.spec.accelerators import dataflow_service_option
from mlbatch.spec.models import PipelineSpec
from mlbatch.spec.predict import Network

LOCAL_RUNNER = "FnApiRunner"
DATAFLOW_RUNNER = "DataflowRunner"
ONE_SDK_PROCESS_EXPERIMENT = "no_use_multiple_sdk_containers"
# Dataflow job names: lowercase letter first, then lowercase letters, digits and hyphens.
_JOB_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,1022}[a-z0-9])?$")


def local_runner_args(spec: PipelineSpec) -> list[str]:
    """Local runs use FnApiRunner explicitly: Beam's default DirectRunner downloads Prism, which fails
    offline. One in-memory job per process; `local_job` says how several processes share the work."""
    return [f"--runner={LOCAL_RUNNER}"]


def local_job(spec: PipelineSpec, module: str) -> tuple[str, list[str]]:
    """The module to run for a local Beam job, and its leading arguments. `compute.local_workers` = N > 1
    runs N in-memory jobs over disjoint groups of the input files (`mlbatch_beam.shards`), not Beam's
    multi_processing mode, which is slower than one process on 2 cores and stops scaling at ~4
    (bench/results.md)."""
    workers = spec.predict.compute.local_workers
    if workers == 1:
        return module, []
    return "mlbatch_beam.shards", ["--shards", str(workers), "--job", module]


def model_sharing_args(spec: PipelineSpec) -> list[str]:
    """Flags of `mlbatch_beam.score` that say how worker processes share the model."""
    compute = spec.predict.compute
    args = ["--large-model"] if compute.large_model else []
    if compute.model_copies is not None:
        args += ["--model-copies", str(compute.model_copies)]
    return args


def prediction_output_args(spec: PipelineSpec) -> list[str]:
    """Flags of `mlbatch_beam.score` that say which columns the model's answer becomes: the prediction
    column, plus `output.predictions` unless it is the default (one value per row)."""
    args = ["--prediction-column", spec.output.prediction_column]
    if spec.output.predictions != type(spec.output.predictions)():
        args += ["--prediction-output", spec.output.prediction_output()]
    return args


PACKAGE_ENV = "MLBATCH_BEAM_PACKAGE"
PACKAGE_SUFFIXES = (".tar.gz", ".whl", ".zip")


def beam_jobs_setup_file() -> str:
    """include/beam_jobs/setup.py, found through the installed `mlbatch_beam` package (no import).
    Only a source checkout (editable install) has it; an image with the package installed
    non-editably ships a built package instead (`beam_jobs_package`)."""
    found = importlib.util.find_spec("mlbatch_beam")
    if found is None or found.origin is None:
        raise FileNotFoundError("package mlbatch_beam is not installed; `make venv` installs it")
    setup = Path(found.origin).resolve().parents[1] / "setup.py"
    if not setup.exists():
        raise FileNotFoundError(f"no setup.py next to the installed mlbatch_beam package (looked for {setup})")
    return str(setup)


def beam_jobs_package(env: dict | None = None) -> str | None:
    """The built Beam jobs package (sdist or wheel) named by $MLBATCH_BEAM_PACKAGE: a file, or a
    folder holding exactly one (the Dockerfile builds it there at image build time). None if unset."""
    import os

    value = (os.environ if env is None else env).get(PACKAGE_ENV)
    if not value:
        return None
    path = Path(value)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.name.endswith(PACKAGE_SUFFIXES))
        if len(found) != 1:
            raise FileNotFoundError(f"${PACKAGE_ENV}={value}: expected exactly one built mlbatch_beam package "
                                    f"({', '.join(PACKAGE_SUFFIXES)}) in the folder, found {[p.name for p in found]}")
        path = found[0]
    if not (path.is_file() and path.name.endswith(PACKAGE_SUFFIXES)):
        raise FileNotFoundError(f"${PACKAGE_ENV}={value}: not a built package file ({', '.join(PACKAGE_SUFFIXES)})")
    return str(path)


def beam_jobs_staging_args(setup_file: str | None = None) -> list[str]:
    """How the workers get the Beam jobs package: the built package from $MLBATCH_BEAM_PACKAGE
    (`--extra_package`; workers pip-install it with its pinned requirements), else the source
    checkout's setup.py (`--setup_file`; Beam builds the sdist at launch)."""
    if setup_file:
        return [f"--setup_file={setup_file}"]
    package = beam_jobs_package()
    if package:
        return [f"--extra_package={package}"]
    try:
        return [f"--setup_file={beam_jobs_setup_file()}"]
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"{exc}. mlbatch_beam is installed without its sources (as in the Docker image): set "
            f"${PACKAGE_ENV} to its built sdist/wheel (the Dockerfile does), or set "
            "predict.dataflow.sdk_container_image to an image that has it") from None


def _subnetwork(subnetwork: str, region: str) -> str:
    """Dataflow wants a full or `regions/<region>/subnetworks/<name>` path; a bare name is expanded."""
    if "/" in subnetwork:
        return subnetwork
    return f"regions/{region}/subnetworks/{subnetwork}"


def dataflow_pipeline_args(spec: PipelineSpec, *, job_name: str, setup_file: str | None = None,
                           model_workers: bool = True) -> list[str]:
    """DataflowRunner arguments for the spec's direct-model job (and, with `model_workers=False`, for
    its prep job: same project, network and sizing, but no GPUs and no one-process-per-worker).

    :param job_name: the Dataflow job name (unique per run; see mlbatch.backends.job_names).
    :param model_workers: add what the workers need to hold the model (`compute.accelerator_*`,
        `compute.one_process_per_worker`); False for the prep job, which loads no model.
    :param setup_file: the Beam jobs' setup.py staged to the workers; defaults to
        `beam_jobs_staging_args` (the built package of $MLBATCH_BEAM_PACKAGE, else the source
        checkout's setup.py), and is left out when `predict.dataflow.sdk_container_image` is set
        (the image has the package already, and installing it at every worker start costs minutes).
    """
    _check_dataflow_settings(spec, job_name)
    dataflow, compute = spec.predict.dataflow, spec.predict.compute
    args = _job_and_sizing_args(spec, job_name) + _network_args(spec.predict.network, dataflow.region)
    if dataflow.sdk_container_image:
        args.append(f"--sdk_container_image={dataflow.sdk_container_image}")
    else:
        args += beam_jobs_staging_args(setup_file)

    service_options = list(dataflow.service_options)
    if compute.accelerator_type and model_workers:
        service_options.append(dataflow_service_option(compute.accelerator_type, compute.accelerator_count))
    if service_options:
        args.append("--dataflow_service_options=" + ",".join(service_options))

    experiments = list(dataflow.experiments)
    if model_workers and compute.one_process_per_worker and ONE_SDK_PROCESS_EXPERIMENT not in experiments:
        experiments.append(ONE_SDK_PROCESS_EXPERIMENT)
    if experiments:
        args.append("--experiments=" + ",".join(experiments))
    return args


def _check_dataflow_settings(spec: PipelineSpec, job_name: str) -> None:
    """Refuse, before anything is staged, a spec without what runner 'dataflow' needs or a bad job name."""
    where = f"{spec.name}: predict.dataflow"
    dataflow = spec.predict.dataflow
    missing = [name for name in ("project", "region", "temp_location") if not getattr(dataflow, name)]
    if missing:
        raise BackendConfigError(f"{where}: runner 'dataflow' needs {', '.join(missing)}")
    if not dataflow.temp_location.startswith("gs://"):
        raise BackendConfigError(f"{where}.temp_location = {dataflow.temp_location!r}: expected a gs:// path")
    if not _JOB_NAME.match(job_name):
        raise BackendConfigError(f"{spec.name}: Dataflow job name {job_name!r} must be lowercase letters, digits "
                                 "and hyphens, starting with a letter and not ending with a hyphen")


def _job_and_sizing_args(spec: PipelineSpec, job_name: str) -> list[str]:
    """Runner, project, region, job name, temp and staging locations, workers and machine type."""
    dataflow, compute = spec.predict.dataflow, spec.predict.compute
    args = [
        f"--runner={DATAFLOW_RUNNER}",
        f"--project={dataflow.project}",
        f"--region={dataflow.region}",
        f"--job_name={job_name}",
        f"--temp_location={dataflow.temp_location}",
        f"--staging_location={dataflow.staging_location or dataflow.temp_location.rstrip('/') + '/staging'}",
        f"--num_workers={compute.min_workers}",
        f"--max_num_workers={compute.max_workers}",
        "--autoscaling_algorithm=" + ("THROUGHPUT_BASED" if compute.max_workers > compute.min_workers else "NONE"),
    ]
    if compute.machine_type:
        args.append(f"--machine_type={compute.machine_type}")
    return args


def _network_args(network: Network, region: str) -> list[str]:
    """`predict.network` in Dataflow's flags: service account, network, subnetwork, public IPs, KMS key."""
    args = []
    if network.service_account:
        args.append(f"--service_account_email={network.service_account}")
    if network.network:
        args.append(f"--network={network.network}")
    if network.subnetwork:
        args.append(f"--subnetwork={_subnetwork(network.subnetwork, region)}")
    if not network.public_ips:
        args.append("--no_use_public_ips")
    if network.kms_key:
        args.append(f"--dataflow_kms_key={network.kms_key}")
    return args
