"""Failure -> Slack alert latency: `python bench/alert_latency.py [runs]` writes bench/alert_latency.md.

Runs the failing example pipeline (include/examples/failing/natality_missing_model.yaml) through
`dag.test()` several times against the local fake Slack Web API (tests/fake_slack.py), and measures
from the task runner's "Task failed with exception" log line (its timestamp in the full log attached
to the alert) to the moment the fake Slack received chat.postMessage. Also with the first post answered
429 Retry-After: 1. Everything runs in a throw-away Airflow home (SQLite) and MLflow registry.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOME = Path(tempfile.mkdtemp(prefix="mlbatch-alert-bench-"))
os.environ.update({
    "AIRFLOW_HOME": str(HOME / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{HOME}/airflow/airflow.db",
    "MLFLOW_TRACKING_URI": f"sqlite:///{HOME}/mlflow.db", "MLBATCH_DATA_ROOT": str(HOME / "data"),
    "MLBATCH_PIPELINES_DIR": str(REPO / "include" / "examples" / "failing"), "MLBATCH_ENV": "dev",
    "MLBATCH_ALERTS_DIR": str(HOME / "alerts"), "NO_PROXY": "*",
})
(HOME / "airflow").mkdir(parents=True)
sys.path.insert(0, str(REPO / "tests"))

DATE = "2026-11-20"


def failure_time(full_log: str, near: float) -> float:
    """When the task runner logged the failure: the log line carries only a UTC time of day, so take the
    instant with that time of day nearest to `near` (the post), which also holds across midnight."""
    line = next(l for l in full_log.splitlines() if "Task failed with exception" in l)
    day = datetime.fromtimestamp(near, timezone.utc).strftime("%Y-%m-%d")
    at = datetime.strptime(f"{day} {line[:12]}", "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()
    return min((at - 86400, at, at + 86400), key=lambda t: abs(near - t))


def one_run(dag, fake, rate_limited: bool) -> float:
    fake.calls.clear()
    fake.files.clear()
    if rate_limited:
        fake.fail_next(1, 429, headers={"Retry-After": "1"})
    dag.test(logical_date=datetime.fromisoformat(DATE).replace(tzinfo=timezone.utc))
    post = [c for c in fake.api_calls("chat.postMessage") if c.status == 200][-1]
    [attached] = fake.files.values()
    return post.at - failure_time(attached["content"], post.at)


def main() -> int:
    import subprocess

    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    from fake_slack import VALID_TOKEN, FakeSlack

    from mlbatch.local.demo.natality import write_partition

    write_partition(HOME / "data" / "natality" / f"ds={DATE}", 2_000, files=1)
    results: dict[str, list[float]] = {"Slack answers at once": [], "first post answered 429, Retry-After: 1": []}
    with FakeSlack() as fake:
        os.environ["AIRFLOW_CONN_SLACK_API_DEFAULT"] = json.dumps(
            {"conn_type": "slack", "password": VALID_TOKEN, "extra": {"base_url": fake.api_url}})
        from airflow.dag_processing.dagbag import DagBag

        dag = DagBag(dag_folder=str(REPO / "dags")).dags["natality_missing_model"]
        one_run(dag, fake, False)  # warm-up (first imports), not counted
        for label, limited in (("Slack answers at once", False), ("first post answered 429, Retry-After: 1", True)):
            for _ in range(runs):
                results[label].append(one_run(dag, fake, limited))
    lines = ["# Failure -> Slack alert latency", "",
             f"Produced by `python bench/alert_latency.py {runs}`: the failing example pipeline through `dag.test()`,",
             "measured from the task runner's `Task failed with exception` log line to the fake Slack receiving",
             "`chat.postMessage` (real HTTP on loopback; the task's callback builds the message, redacts it,",
             "writes the outbox, posts, then uploads the full log into the thread). Goal: under 3 s.", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
             f"{datetime.now(timezone.utc):%Y-%m-%d}.", "",
             "| case | runs | median s | max s |", "|---|---|---|---|"]
    for label, values in results.items():
        lines.append(f"| {label} | {len(values)} | {statistics.median(values):.3f} | {max(values):.3f} |")
    lines += ["", "Per-run seconds: " + "; ".join(f"{k}: {', '.join(f'{v:.3f}' for v in vs)}"
                                                  for k, vs in results.items())]
    out = REPO / "bench" / "alert_latency.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if max(results["Slack answers at once"]) < 3 else 1


if __name__ == "__main__":
    import shutil

    try:
        code = main()
    finally:
        shutil.rmtree(HOME, ignore_errors=True)
    sys.exit(code)
