"""A Dataflow job launched from the production image stages the Beam jobs package.

The image (Dockerfile) installs `operators/` and `include/beam_jobs/` non-editably, so there is no
setup.py next to `mlbatch_beam`; it builds the package's sdist at image build time and names it in
$MLBATCH_BEAM_PACKAGE. This test does the same in a fresh venv (uv, offline): build the sdist, install
both packages with --no-deps (their third-party dependencies come from this venv's site-packages
through a .pth line, which adds no mlbatch code: the editable finders there are not activated),
then, inside that venv, build the Dataflow job's flags and let Beam's own Stager compute what it
would upload to the staging location.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UV = Path(sys.executable).parent / "uv"

STAGE = r'''
import json, os, sys, tempfile
import mlbatch, mlbatch_beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.stager import Stager
from mlbatch.backends.dataflow_options import dataflow_pipeline_args
from mlbatch.spec.models import PipelineSpec

spec = PipelineSpec(
    name="natality_daily", model={"name": "natality_weight", "alias": "champion"},
    input={"uri": "gs://b/in/*.parquet", "format": "parquet", "id_column": "id",
           "features": [{"name": "mother_age", "type": "float"}]},
    output={"uri": "gs://b/out"},
    predict={"backend": "dataflow", "dataflow": {"runner": "dataflow", "project": "p", "region": "europe-west1",
                                                 "temp_location": "gs://t/tmp"}})
out = {"mlbatch": mlbatch.__file__, "mlbatch_beam": mlbatch_beam.__file__}
try:
    args = dataflow_pipeline_args(spec, job_name="natality-daily-image-check")
except FileNotFoundError as exc:
    print(json.dumps({**out, "error": str(exc)}))
    sys.exit(0)
from apache_beam.portability.api import beam_runner_api_pb2 as api
staged = {}  # staged name -> local file: what the runner uploads to --staging_location
for artifact in Stager.create_job_resources(PipelineOptions(args), tempfile.mkdtemp(dir=os.environ['STAGING_DIR']),
                                            log_submission_env_dependencies=False):
    name = api.ArtifactStagingToRolePayload.FromString(artifact.role_payload).staged_name
    staged[name] = api.ArtifactFilePayload.FromString(artifact.type_payload).path
print(json.dumps({**out, "args": args, "staged": staged}))
'''


def _run(*cmd, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{cmd}: {done.stderr[-2000:]}"
    return done


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory):
    """A venv laid out like the image: both packages installed non-editably, the sdist built."""
    root = tmp_path_factory.mktemp("image")
    ignore = shutil.ignore_patterns("*.egg-info", "__pycache__", "build", "dist")
    shutil.copytree(REPO / "operators", root / "src" / "operators", ignore=ignore)
    shutil.copytree(REPO / "include" / "beam_jobs", root / "src" / "beam_jobs", ignore=ignore)
    venv = root / "venv"
    _run(UV, "venv", "-q", "--offline", "--python", sys.executable, venv)
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (site / "zz_shared_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # As the Dockerfile does: build the job package's sdist, then install both packages non-editably.
    _run(UV, "build", "-q", "--offline", "--no-build-isolation", "--sdist", "--python", python,
         "--out-dir", root / "dist", root / "src" / "beam_jobs")
    _run(UV, "pip", "install", "-q", "--offline", "--no-deps", "--no-build-isolation", "--python", python,
         root / "src" / "operators", root / "src" / "beam_jobs")
    return root, python, site


def _stage(python: Path, **env) -> dict:
    import os

    environ = {k: v for k, v in os.environ.items() if k != "MLBATCH_BEAM_PACKAGE"}
    staging = Path(python).parents[2] / "staging"
    staging.mkdir(exist_ok=True)
    return json.loads(_run(python, "-c", STAGE, env={**environ, "STAGING_DIR": str(staging), **env})
                      .stdout.strip().splitlines()[-1])


def test_without_the_built_package_the_job_fails_before_launch_and_says_what_to_do(image_venv):
    root, python, site = image_venv
    got = _stage(python)
    assert got["mlbatch_beam"].startswith(str(site)) and got["mlbatch"].startswith(str(site))
    assert "no setup.py next to the installed mlbatch_beam" in got["error"]
    assert "MLBATCH_BEAM_PACKAGE" in got["error"] and "sdk_container_image" in got["error"]


def test_the_built_package_is_staged_with_its_pinned_worker_requirements(image_venv):
    root, python, site = image_venv
    got = _stage(python, MLBATCH_BEAM_PACKAGE=str(root / "dist"))
    assert got["mlbatch_beam"].startswith(str(site))  # the non-editable copy, not this checkout
    [sdist] = list((root / "dist").glob("*.tar.gz"))
    assert f"--extra_package={sdist}" in got["args"] and not any(a.startswith("--setup_file") for a in got["args"])
    staged = {name: Path(path) for name, path in got["staged"].items()}
    assert set(staged) == {sdist.name, "extra_packages.txt"}  # no setup.py to build, nothing else
    assert staged["extra_packages.txt"].read_text().split() == [sdist.name]  # workers install it

    pinned = [line.strip() for line in (REPO / "include/beam_jobs/worker-requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    with tarfile.open(staged[sdist.name]) as tar:
        names = tar.getnames()
        info = next(n for n in names if n.endswith("PKG-INFO") and n.count("/") == 1)
        requires = [line.split(": ", 1)[1] for line in tar.extractfile(info).read().decode().splitlines()
                    if line.startswith("Requires-Dist")]
    assert requires == pinned  # what every worker pip-installs beside the package
    assert {f"{sdist.name[:-7]}/mlbatch_beam/{m}.py" for m in ("score", "prep", "model_handler", "quality/combine",
                                                              "quality/statistics")} <= set(names)  # the gate's statistics
    assert not any("airflow" in n for n in names)


def test_the_dockerfile_builds_the_package_where_the_image_says_it_is():
    """The steps above are the Dockerfile's: it builds the sdist into the folder $MLBATCH_BEAM_PACKAGE
    names, and installs both packages non-editably."""
    import re

    dockerfile = (REPO / "Dockerfile").read_text()
    out_dir = re.search(r"uv build --sdist --out-dir (\S+) /opt/mlbatch/include/beam_jobs", dockerfile)
    env = re.search(r"^ENV MLBATCH_BEAM_PACKAGE=(\S+)$", dockerfile, re.M)
    assert out_dir and env and out_dir.group(1) == env.group(1)
    assert re.search(r"uv pip install --system --no-cache --no-deps /opt/mlbatch/operators "
                     r"/opt/mlbatch/include/beam_jobs", dockerfile)
    assert " -e " not in dockerfile  # non-editable, as the test's venv
