"""The embedded defaults for running pipelines on this machine, shared by `make demo` and `mlbatch run`.

One folder (`.demo/` of the current directory unless told otherwise) holds an Airflow home on SQLite,
an MLflow store (SQLite + local artifacts) and a data root. Airflow and MLflow find them through
environment variables that this module sets for the child processes, so nobody has to know them.
`mlbatch run` keeps any of these variables the user already set (their own Airflow home or MLflow
server); the demo replaces them, so it is the same on every machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

DEFAULT_HOME = Path(".demo")
PIPELINES_DIR_ENV = "MLBATCH_PIPELINES_DIR"
DEFAULT_PIPELINES_DIR = Path("include") / "pipelines"
_MIGRATED_STAMP = ".mlbatch-db-migrated"  # holds the Airflow version the database was migrated for


def bundle_root() -> Path:
    """The checkout holding `dags/` (the `mlbatch` package is installed from it in editable mode)."""
    for root in (Path(__file__).resolve().parents[3], Path.cwd()):
        if (root / "dags" / "mlbatch_pipelines.py").is_file():
            return root
    raise FileNotFoundError("cannot find the DAG bundle (dags/mlbatch_pipelines.py) next to the mlbatch "
                            "package or in the current directory; run from the mlbatch checkout")


def pipelines_dir(environ: dict[str, str] | None = None) -> Path:
    """Where pipeline specs live: `MLBATCH_PIPELINES_DIR`, else `include/pipelines` of this directory."""
    environ = os.environ if environ is None else environ
    return Path(environ.get(PIPELINES_DIR_ENV) or DEFAULT_PIPELINES_DIR).resolve()


def local_env(home: Path = DEFAULT_HOME, *, pipelines: Path | None = None, keep_user_settings: bool = True,
              base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for Airflow/MLflow child processes using the embedded defaults under `home`.

    With `keep_user_settings`, a variable already set in `base` (default: this process's environment)
    wins over the default; the MLflow artifact root is only defaulted along with the default store."""
    base = dict(os.environ if base is None else base)
    home = home.resolve()
    defaults = {
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(bundle_root() / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow/mlflow.db",
        "MLBATCH_MLFLOW_ARTIFACT_ROOT": str(home / "mlflow" / "artifacts"),
        "MLBATCH_DATA_ROOT": str(home / "data"),
        PIPELINES_DIR_ENV: str((pipelines or pipelines_dir(base)).resolve()),
    }
    if keep_user_settings and base.get("MLFLOW_TRACKING_URI"):
        defaults.pop("MLBATCH_MLFLOW_ARTIFACT_ROOT")  # their server (or store) decides where artifacts go
    if keep_user_settings:
        return {**base, **{k: v for k, v in defaults.items() if not base.get(k)}}
    return {**base, **defaults}


def ensure_airflow_db(env: dict[str, str]) -> str:
    """Migrate the Airflow metadata database once per Airflow home and Airflow version.

    `airflow db migrate` is idempotent but costs seconds; a stamp file in the Airflow home records the
    version it last ran for, so an upgraded Airflow migrates again and an unchanged one does not."""
    home = Path(env["AIRFLOW_HOME"])
    stamp = home / _MIGRATED_STAMP
    airflow_version = version("apache-airflow")
    if stamp.is_file() and stamp.read_text().strip() == airflow_version:
        return f"reusing Airflow database in {home}"
    home.mkdir(parents=True, exist_ok=True)
    (Path(env["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
     if env.get("MLFLOW_TRACKING_URI", "").startswith("sqlite:///") else None)
    done = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"`airflow db migrate` failed (AIRFLOW_HOME={home}):\n{done.stdout[-3000:]}")
    stamp.write_text(airflow_version + "\n")
    return f"migrated Airflow database in {home} (Airflow {airflow_version})"
