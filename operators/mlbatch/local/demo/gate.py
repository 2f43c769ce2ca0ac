"""`make demo-gate`: three normal days, then a day with one shifted feature; shows the quality gate's
Slack message as readable text.

The pipeline is `natality_daily` with a `quality:` block (baseline: the last 3 committed runs), named
`natality_gate`, under its own data folder (.demo/gate-data). The three normal days pass the gate and
publish; the fourth day's `gestation_weeks` is three weeks later, so the gate holds the run: it posts
what drifted, the chart and Approve / Reject buttons, and waits on Airflow's Human-in-the-loop request.
Without a Slack token (the default here) the message goes to the local outbox (.demo/alerts) and is
printed; with a `slack_api_default` connection (AIRFLOW_CONN_SLACK_API_DEFAULT) it is posted for real.
`airflow dags test` has no API server to answer the request, so the demo stops the held run once the
message is out; in a deployment the buttons, `/mlops approve|reject` or the Required Actions page do.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

PIPELINE = "natality_gate"
NORMAL = ("2026-11-16", "2026-11-17", "2026-11-18")
DRIFTED = "2026-11-19"
SHIFT = {"gestation_weeks": 3.0}
ROWS = 5_000


def main() -> int:
    """0 when the three normal days published and the drifted day's gate posted its message."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path(".demo"))
    args = parser.parse_args()
    home = args.home.resolve()
    env = _prepared(home, Path.cwd().resolve())
    from mlbatch.local.demo.__main__ import prepare_model
    from mlbatch.local.demo.natality import write_partition

    prepare_model(home, env)
    data = home / "gate-data"
    for i, ds in enumerate(NORMAL):
        if (data / "predictions" / PIPELINE / f"ds={ds}" / "_SUCCESS").exists():
            print(f"== {ds}: published by an earlier demo run", flush=True)
            continue
        write_partition(data / "natality" / f"ds={ds}", ROWS, files=1, seed=300 + i)
        if _dags_test(env, home, ds, wait=True) != 0:
            return 1
    write_partition(data / "natality" / f"ds={DRIFTED}", ROWS, files=1, seed=399, shift=SHIFT)
    from mlbatch.alerts.outbox import Outbox

    outbox = Outbox(home / "alerts")
    before = max((e.id for e in outbox.entries(limit=1_000_000)), default=0)
    held = _dags_test(env, home, DRIFTED, wait=False)
    try:
        entry = _gate_message(outbox, before, held)
    finally:
        _stop(held)
    if entry is None:
        print(f"FAILED: no quality gate message in {outbox.path}; see {home / 'logs' / f'{PIPELINE}-{DRIFTED}.log'}")
        return 1
    _show(entry, outbox, home)
    return 0


def _prepared(home: Path, repo: Path) -> dict[str, str]:
    """The demo's environment (also set in this process) and the gated copy of natality_daily."""
    from mlbatch.local.demo.__main__ import demo_env

    pipelines = home / "gate-pipelines"
    pipelines.mkdir(parents=True, exist_ok=True)
    spec = yaml.safe_load((repo / "include" / "pipelines" / "natality_daily.yaml").read_text())
    spec.update(name=PIPELINE, schedule=None)
    spec["output"]["uri"] = spec["output"]["uri"].replace("natality_daily", PIPELINE)
    spec["quality"] = {"baseline": {"runs": 3}, "on_timeout": "reject", "timeout_minutes": 720}
    (pipelines / f"{PIPELINE}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**demo_env(home, repo), "MLBATCH_PIPELINES_DIR": str(pipelines),
           "MLBATCH_DATA_ROOT": str(home / "gate-data"), "MLBATCH_ALERTS_DIR": str(home / "alerts")}
    os.environ.update(env)
    (home / "logs").mkdir(parents=True, exist_ok=True)
    return env


def _dags_test(env: dict[str, str], home: Path, ds: str, wait: bool):
    """`airflow dags test` of one day, its output to a log file; the exit code, or the process."""
    log_file = home / "logs" / f"{PIPELINE}-{ds}.log"
    print(f"== airflow dags test {PIPELINE} {ds}" + ("  (gestation_weeks + 3: the gate holds it)" if not wait
                                                    else ""), flush=True)
    started = time.perf_counter()
    sink = log_file.open("w")
    process = subprocess.Popen([sys.executable, "-m", "airflow", "dags", "test", PIPELINE, ds], env=env,
                               stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    if not wait:
        return process
    code = process.wait()
    print(f"   exit code {code} in {time.perf_counter() - started:.1f} s; full output: {log_file}", flush=True)
    return code


def _stop(process) -> None:
    """End the held `dags test` (it waits for an answer that cannot come): the session we started for
    it, airflow and its task process; SIGKILL when it ignores SIGTERM (it sleeps in its wait loop)."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def _gate_message(outbox, before: int, process, timeout: float = 600):
    """The held run's gate message once it is in the outbox (None if the run ended or time ran out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        found = [e for e in outbox.entries(limit=1_000_000) if e.id > before and e.kind == "gate_block"]
        if found:
            return found[0]
        time.sleep(1)
    return None


def _show(entry, outbox, home: Path) -> None:
    from mlbatch.alerts.gate_message import as_plain_text

    where = "posted to Slack" if entry.status == "sent" else (
        "kept locally: no Slack token (set AIRFLOW_CONN_SLACK_API_DEFAULT to post it)"
        if entry.status == "local" else f"pending: {entry.last_error}")
    print(f"\n== The quality gate's message for channel {entry.channel} ({where})\n")
    print(as_plain_text(entry.payload))
    if isinstance(entry.attachment, bytes):
        chart = home / "logs" / (entry.attachment_name or "drift.png")
        chart.write_bytes(entry.attachment)
        print(f"(+ in the message's thread: {entry.attachment_name}, baseline vs today; saved to {chart})")
    print(f"\nOutbox: {outbox.path}. The run waited at quality_gate (awaiting_input) and was stopped by the demo;"
          "\nin a deployment Approve/Reject, `/mlops approve|reject` or Airflow's Required Actions answer it.")


if __name__ == "__main__":
    sys.exit(main())
