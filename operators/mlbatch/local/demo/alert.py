"""`make demo-alert`: run a deliberately failing pipeline and show its Slack alert as readable text.

The pipeline (include/examples/failing/natality_missing_model.yaml) pins a model that was never
registered, so `resolve_model` fails and its failure callback builds the alert. Without a Slack token
(the default here) the alert goes to the local outbox (.demo/alerts/outbox.sqlite) and the console; with
a `slack_api_default` connection (AIRFLOW_CONN_SLACK_API_DEFAULT) it is posted for real.
Uses its own data folder, so the 1M-row partition of `make demo` is left alone.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

PIPELINE = "natality_missing_model"
DATE = "2026-11-20"


def main() -> int:
    """Run the failing pipeline once and print the one alert it raised; 1 unless exactly one was raised."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path(".demo"))
    args = parser.parse_args()
    home = args.home.resolve()
    env = _prepared(home, Path.cwd().resolve())

    from mlbatch.alerts.outbox import Outbox

    outbox = Outbox(home / "alerts")
    before = max((e.id for e in outbox.entries(limit=1_000_000)), default=0)
    _run_failing_dag(env, home)
    new = [e for e in outbox.entries(limit=1_000_000) if e.id > before]
    if len(new) != 1:
        print(f"FAILED: expected exactly one new alert in {outbox.path}, found {len(new)}")
        return 1
    _show(new[0], outbox)
    return 0


def _prepared(home: Path, repo: Path) -> dict[str, str]:
    """The demo's environment (also set in this process), its Airflow database and its input partition."""
    from mlbatch.local.demo.__main__ import demo_env

    env = {**demo_env(home, repo),
           "MLBATCH_PIPELINES_DIR": str(repo / "include" / "examples" / "failing"),
           "MLBATCH_DATA_ROOT": str(home / "alert-data"),
           "MLBATCH_ALERTS_DIR": str(home / "alerts")}
    import os

    os.environ.update(env)
    (home / "logs").mkdir(parents=True, exist_ok=True)
    from mlbatch.local.env import ensure_airflow_db

    print(f"== {ensure_airflow_db(env)}", flush=True)
    partition = home / "alert-data" / "natality" / f"ds={DATE}"
    if not (partition / "_SUCCESS").exists():
        from mlbatch.local.demo.natality import write_partition

        write_partition(partition, 2_000, files=1)
    return env


def _run_failing_dag(env: dict[str, str], home: Path) -> None:
    """`airflow dags test` of the failing pipeline, its output to a log file."""
    log_file = home / "logs" / f"{PIPELINE}.log"
    print(f"== airflow dags test {PIPELINE} {DATE}  (fails on purpose: its model was never registered)",
          flush=True)
    started = time.perf_counter()
    with log_file.open("w") as sink:
        code = subprocess.run([sys.executable, "-m", "airflow", "dags", "test", PIPELINE, DATE], env=env,
                              stdout=sink, stderr=subprocess.STDOUT).returncode
    print(f"   exit code {code} in {time.perf_counter() - started:.1f} s; full output: {log_file}")


def _show(entry, outbox) -> None:
    """The alert as text, where it went, and its thread attachment."""
    from mlbatch.alerts.message import as_text

    where = "posted to Slack" if entry.status == "sent" else (
        "kept locally: no Slack token (set AIRFLOW_CONN_SLACK_API_DEFAULT to post it)"
        if entry.status == "local" else f"pending: {entry.last_error}")
    print(f"\n== The alert for channel {entry.channel} ({where})\n")
    print(as_text(entry.payload["blocks"], entry.payload["text"]))
    if entry.attachment:
        print(f"(+ in the alert's thread: {entry.attachment_name}, the full task log,"
              f" {len(entry.attachment.splitlines())} lines, secrets masked)")
    print(f"\nOutbox: {outbox.path}  (python -m mlbatch.alerts show --dir {outbox.path.parent})")


if __name__ == "__main__":
    sys.exit(main())
