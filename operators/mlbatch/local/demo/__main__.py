"""`make demo`: run the example pipeline end to end on this machine, no cloud account, no Docker.

It makes (once) an Airflow home on SQLite, a local MLflow registry, a 1M-row natality-like partition
and a registered model with alias `champion`; then runs `natality_daily` with `airflow dags test` on
the `dataflow` backend (direct model on the local Beam runner) and on the `local` backend, and prints
where outputs, dead letters and MLflow runs are, with row counts and timings. A second run reuses
everything that exists.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from mlbatch.local.env import ensure_airflow_db, local_env
from mlbatch.run.steps import PREDICT, PREP, PUBLISH, RESOLVE_MODEL

PIPELINE = "natality_daily"
MODEL = "natality_weight"
DATE = "2026-11-20"
SHOWN = re.compile(
    r"(Input is there|Waiting \(kind|Deferring until|Arrived:|Pinned models:|Resources of|Reconciliation|Published|prep: \{|predict \(|MLflow run |"
    r"Marking task as|ERROR|Traceback|Error:)"
)

STRUCTURED = re.compile(r"\[(\w+)\s*\] (.*?)(?: \[[\w.]+\](?: loc=\S+)?)?\s*$")


def demo_env(home: Path, repo: Path) -> dict[str, str]:
    """The embedded defaults under `home` (mlbatch.local.env), replacing any the caller had set."""
    env = local_env(home, pipelines=repo / "include" / "pipelines", keep_user_settings=False)
    return {**env, "MLBATCH_ENV": "dev"}


def readable(line: str) -> str:
    """`<time> [info ] message [logger] loc=...` -> `message` (Airflow's structured log lines)."""
    found = STRUCTURED.search(line)
    text = found.group(2) if found else line.rstrip()
    return (f"{found.group(1).upper()}: " if found and found.group(1) != "info" else "") + text[:300]


def step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def done(start: float, what: str = "") -> None:
    print(f"   {what}({time.perf_counter() - start:.1f} s)", flush=True)


def prepare(home: Path, env: dict[str, str], rows: int) -> None:
    prepare_model(home, env, partition_rows=rows)


def prepare_model(home: Path, env: dict[str, str], partition_rows: int = 0) -> None:
    """The Airflow database, (with `partition_rows`) the local input partition, and the registered model."""
    os.environ.update(env)
    (home / "mlflow").mkdir(parents=True, exist_ok=True)

    t = step("Airflow metadata database (SQLite)")
    done(t, ensure_airflow_db(env) + " ")

    from mlbatch.local.demo.natality import train_and_register, write_partition

    if partition_rows:
        t = step(f"Input partition ds={DATE} ({partition_rows:,} natality-like rows)")
        partition = home / "data" / "natality" / f"ds={DATE}"
        if (partition / "_SUCCESS").exists():
            done(t, f"reusing {partition} ")
        else:
            write_partition(partition, partition_rows)
            done(t, f"wrote {partition} ")

    t = step(f"MLflow model {MODEL}@champion")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        version = MlflowClient().get_model_version_by_alias(MODEL, "champion").version
        done(t, f"reusing version {version} ")
    except MlflowException:
        version = train_and_register(MODEL)
        done(t, f"trained and registered version {version} ")


def run_pipeline(home: Path, env: dict[str, str], backend: str, label: str = "") -> bool:
    t = step(f"airflow dags test {PIPELINE} {DATE}  (backend={backend})")
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    log_file = logs / f"{PIPELINE}-{label or backend}.log"
    conf = json.dumps({"backend": backend})
    command = [sys.executable, "-m", "airflow", "dags", "test", PIPELINE, DATE, "--conf", conf]
    with log_file.open("w") as sink:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            sink.write(line)
            if SHOWN.search(line):
                print("   " + readable(line), flush=True)
        code = proc.wait()
    done(t, f"full log: {log_file} ")
    if code != 0:
        print(f"   FAILED (exit {code}); last lines:\n" + "".join(log_file.read_text().splitlines(True)[-40:]))
    return code == 0


def summary(backends: list[str]) -> None:
    import mlflow

    print("\n== Results")
    runs = mlflow.search_runs(experiment_names=[f"mlbatch/{PIPELINE}"], order_by=["start_time DESC"],
                              max_results=20, output_format="list")
    for backend in backends:
        run = next((r for r in runs if r.data.tags.get("backend") == backend), None)
        if run is None:
            print(f"   {backend}: no MLflow run found")
            continue
        m, p = run.data.metrics, run.data.params
        steps = ", ".join(
            f"{s} {m.get(f'{s}.wall_s', 0):.1f}s/{m.get(f'{s}.peak_rss_mb', 0):.0f}MB"
            for s in (RESOLVE_MODEL, PREP, PREDICT, PUBLISH)
        )
        print(f"   backend {backend}: model v{p['model_version']}  rows in {m['rows_in']:,.0f} = "
              f"scored {m['rows_scored']:,.0f} + rejected {m['rows_rejected']:,.0f}")
        print(f"     mean prediction {m['prediction_mean']:.3f} (p01 {m['prediction_p01']:.2f}, "
              f"p99 {m['prediction_p99']:.2f})")
        print(f"     steps (wall/peak RSS): {steps}")
        print(f"     MLflow run {run.info.run_id} in experiment mlbatch/{PIPELINE}")
    if runs:
        p = runs[0].data.params
        print(f"   output partition : {p['output_uri']}  (the last run replaced the earlier one)")
        print(f"   dead letters     : {p['dead_letter_uri']}")
    print(f"   MLflow UI        : mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path(".demo"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--backends", default="dataflow,local")
    args = parser.parse_args()
    repo = Path.cwd().resolve()
    home = args.home.resolve()
    env = demo_env(home, repo)
    started = time.perf_counter()
    prepare(home, env, args.rows)
    backends = args.backends.split(",")
    ok = all([run_pipeline(home, env, b) for b in backends])
    summary(backends)
    print(f"\nDemo {'finished' if ok else 'FAILED'} in {time.perf_counter() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
