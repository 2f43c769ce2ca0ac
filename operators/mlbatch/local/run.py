"""`mlbatch run NAME`: run one pipeline on this machine, the way `make demo` does, without knowing Airflow.

It loads and checks the spec, checks the `--set` overrides against the spec's `trigger_params` (an
unknown key is an error: an override that Airflow would silently drop is worse than none), makes sure
the embedded Airflow database exists (`mlbatch.local.env`), checks that a local input is there, and
runs `airflow dags test` with the overrides as the run's conf. Its output goes to a log file; the
terminal gets one line per task and a progress bar for long steps (`mlbatch.local.display`).

Stopping `mlbatch run` (SIGTERM, Ctrl-C, SIGHUP) stops the run and every process it started
(`mlbatch.local.run_process`).
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from mlbatch.errors import SpecError
from mlbatch.local.env import DEFAULT_HOME, PIPELINES_DIR_ENV, ensure_airflow_db, local_env, pipelines_dir
from mlbatch.local.run_process import watched
from mlbatch.spec.models import PipelineSpec
from mlbatch.spec.loader import active_environment, load_spec, with_overrides
from mlbatch.spec.trigger_conf import unknown_keys




class RunError(Exception):
    """A problem found before the run starts, explained for the person who typed the command."""


def spec_path(name: str, environ: dict[str, str]) -> Path:
    """A spec by pipeline name (in the pipelines folder) or by file path."""
    as_path = Path(name)
    if as_path.suffix in (".yaml", ".yml") or as_path.exists():
        if not as_path.is_file():
            raise RunError(f"{as_path}: no such spec file")
        return as_path.resolve()
    folder = pipelines_dir(environ)
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise RunError(f"no pipeline {name!r} in {folder} (there: {', '.join(known) or 'none'}); "
                       f"create one with `mlbatch new {name} --model MODEL@ALIAS --input URI`")
    return path


def trigger_conf(spec: PipelineSpec, assignments: list[str]) -> dict[str, Any]:
    """`key=value` overrides -> the run's conf, checked like the trigger form checks them.

    A key is a `trigger_params` key or the spec field one of them overrides (`backend` or
    `predict.backend`). The value is read as YAML, checked against the param's type, `enum` and
    `format`, and the spec with all overrides applied is validated again."""
    by_field = {p.field: key for key, p in spec.trigger_params.items()}
    conf: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RunError(f"--set {assignment!r}: expected key=value")
        key = by_field.get(key, key)
        param = spec.trigger_params.get(key)
        if unknown_keys(spec.trigger_params, [key]):  # the rule every trigger path applies
            allowed = ", ".join(f"{k} ({p.field})" for k, p in spec.trigger_params.items()) or "none"
            raise RunError(f"--set {key}: not a trigger parameter of {spec.name}; it has: {allowed}. "
                           "To make another field overridable, add it under `trigger_params:` in the spec")
        conf[key] = _typed(key, param, raw)
    overrides = {spec.trigger_params[k].field: v for k, v in conf.items()
                 if spec.trigger_params[k].field != "ds" and v is not None}
    try:
        with_overrides(spec, overrides, source=f"--set overrides of {spec.name}")
    except SpecError as exc:
        raise RunError(str(exc)) from None
    return conf


def _typed(key: str, param, raw: str) -> Any:
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError):  # ValueError: a date-like value that is no date
        value = raw
    if isinstance(value, (dt.date, dt.datetime)):
        value = raw
    expected = {"string": str, "integer": int, "number": (int, float), "boolean": bool}[param.type]
    if param.type == "string" and value is not None and not isinstance(value, str):
        value = raw  # `--set model_alias=2024` is the string "2024"
    if param.format == "date" and value is not None:
        try:
            value = dt.date.fromisoformat(str(value)).isoformat()
        except ValueError:
            raise RunError(f"--set {key}={raw}: expected a date YYYY-MM-DD") from None
    if value is not None and (not isinstance(value, expected) or (param.type != "boolean" and isinstance(value, bool))):
        raise RunError(f"--set {key}={raw}: expected {param.type}")
    if param.enum is not None and value not in param.enum:
        raise RunError(f"--set {key}={raw}: expected one of {', '.join(map(str, param.enum))}")
    return value


def _data_date(spec: PipelineSpec, date: str, conf: dict[str, Any]) -> str:
    """The date the input paths are rendered with: a `ds` trigger param, else the run's date."""
    for key, p in spec.trigger_params.items():
        if p.field == "ds" and conf.get(key):
            return conf[key]
    return date


def check_input(spec: PipelineSpec, date: str, conf: dict[str, Any]) -> str | None:
    """For local input: fail now, not after the sensor's timeout, when nothing matches for `date`."""
    date = _data_date(spec, date, conf)
    target = spec.input.marker or spec.input.uri
    if "://" in target.replace("file://", "", 1):
        return None  # remote: the sensor checks (and waits)
    rendered = (target.replace("file://", "", 1).replace("{{ ds }}", date)
                .replace("{{ ds_nodash }}", date.replace("-", "")))
    if "{{" in rendered or glob.glob(rendered):
        return None
    return (f"no input for {date}: {rendered} matches no file. Pass the data date with --date YYYY-MM-DD, "
            "or --wait to let wait_for_data wait for it (up to wait.timeout_minutes)")


def parquet_rows(spec: PipelineSpec, date: str) -> int | None:
    """Rows of a local Parquet input from the file footers (cheap): the total of prep's progress bar."""
    if spec.input.format != "parquet" or "://" in spec.input.uri.replace("file://", "", 1):
        return None
    pattern = spec.input.uri.replace("file://", "", 1).replace("{{ ds }}", date).replace(
        "{{ ds_nodash }}", date.replace("-", ""))
    if "{{" in pattern:
        return None
    import pyarrow.parquet as pq

    try:
        return sum(pq.ParquetFile(p).metadata.num_rows for p in glob.glob(pattern)) or None
    except Exception:  # an unreadable file is prep's to report, with its name
        return None


def run(name: str, date: str | None, assignments: list[str], environment: str | None, home: Path = DEFAULT_HOME,
        wait: bool = False) -> int:
    """Run the pipeline `name` for `date` (default today) with `airflow dags test`; the exit status:
    0 when every task succeeded or was skipped, 1 when not, 128 + the signal when stopped."""
    from rich.console import Console

    from mlbatch.local.display import RunWatcher

    console = Console(highlight=False, soft_wrap=True)
    spec, env, conf, date = _checked_run(name, date, assignments, environment, home, wait)
    started = time.perf_counter()
    console.print(f"[bold]{spec.name}[/] {date}  env {env['MLBATCH_ENV']}, backend "
                  f"{conf.get(_key_of(spec, 'predict.backend'), spec.predict.backend)}"
                  + (f", overrides {json.dumps(conf)}" if conf else ""))
    console.print(f"  {ensure_airflow_db(env)}")
    logs = Path(env["AIRFLOW_HOME"]).parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / f"{spec.name}-{date}.log"
    command = [sys.executable, "-m", "airflow", "dags", "test", spec.name, date, "--conf", json.dumps(conf)]
    totals = {"prep": parquet_rows(spec, _data_date(spec, date, conf))}
    with log_file.open("w") as sink, RunWatcher(console, totals) as watcher:
        code, stopper = watched(command, env, sink, watcher)
    if stopper.signum is not None:
        name = signal.Signals(stopper.signum).name
        console.print(f"[bold]STOPPED[/] by {name} after {time.perf_counter() - started:.0f} s: the Airflow run "
                      f"and its job processes are stopped\n  full log     : {log_file}")
        return 128 + stopper.signum
    ok = code == 0 and bool(watcher.tasks) and all(t.state in ("success", "skipped") for t in watcher.tasks.values())
    if code == 0 and not watcher.tasks:
        console.print("  Airflow ran no task (is the date before the DAG's start_date?)")
    summary(console, watcher.facts, env, ok, time.perf_counter() - started, log_file)
    return 0 if ok else 1


def _checked_run(name: str, date: str | None, assignments: list[str], environment: str | None, home: Path,
                 wait: bool) -> tuple[PipelineSpec, dict[str, str], dict[str, Any], str]:
    """(spec, the run's environment, its conf, its date), or a `RunError` saying what is wrong."""
    path = spec_path(name, dict(os.environ))
    env = local_env(home)
    env[PIPELINES_DIR_ENV] = str(path.parent)  # the DAG file builds the spec that was named, wherever it is
    env["MLBATCH_ENV"] = environment or active_environment()
    env["MLBATCH_PROGRESS"] = "1"
    os.environ.update(env)  # spec interpolation (${env:...}) sees what the run will see
    try:
        spec = load_spec(path, env["MLBATCH_ENV"])
    except SpecError as exc:
        raise RunError(str(exc)) from None
    conf = trigger_conf(spec, assignments)
    _check_connections(spec)
    date = date or dt.date.today().isoformat()
    try:
        date = dt.date.fromisoformat(date).isoformat()
    except ValueError:
        raise RunError(f"--date {date}: expected a date YYYY-MM-DD") from None
    if date < spec.start_date:
        raise RunError(f"--date {date} is before the spec's start_date {spec.start_date}: Airflow would run "
                       "no task; move start_date back in the spec")
    if not wait:
        missing = check_input(spec, date, conf)
        if missing:
            raise RunError(missing)
    return spec, env, conf, date


def _check_connections(spec: PipelineSpec) -> None:
    """A connection the spec needs that is missing, or whose endpoint does not answer: refused now, in
    seconds, not after Airflow has started (mlbatch.run.preflight; its first task checks again)."""
    from mlbatch.run.preflight import connection_problems

    problems = connection_problems(spec)
    if problems:
        raise RunError("\n".join(f"{type(p).__name__}: {p}" for p in problems))


def _key_of(spec: PipelineSpec, dotted: str) -> str | None:
    return next((k for k, p in spec.trigger_params.items() if p.field == dotted), None)


def summary(console, facts: dict, env: dict[str, str], ok: bool, seconds: float, log_file: Path) -> None:
    console.print(f"[bold]{'Done' if ok else 'FAILED'}[/] in {seconds:.0f} s")
    if "published" in facts:
        output, scored, dead_letters, rejected = facts["published"]
        console.print(f"  output       : {output}  ({int(scored):,} rows; its _SUCCESS lists the files, "
                      "see docs/storage.md)")
        console.print(f"  dead letters : {dead_letters}  ({int(rejected):,} rows)")
    if "mlflow_run" in facts:
        run_id, experiment = facts["mlflow_run"]
        tracking = env.get("MLFLOW_TRACKING_URI", "")
        console.print(f"  MLflow run   : {run_id} in experiment {experiment}")
        if tracking.startswith(("http://", "https://")):
            console.print(f"  MLflow UI    : {tracking}")
        else:
            console.print(f"  MLflow UI    : mlflow ui --workers 1 --backend-store-uri {tracking}  "
                          "(then open http://127.0.0.1:5000)")
    console.print(f"  full log     : {log_file}")
