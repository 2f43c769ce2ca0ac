"""The alert flusher (`python -m mlbatch.alerts flush --loop`): pending alerts go out on their own once
Slack is back, each once, in the order they were raised, marked as delayed.

The outage test runs the real loop (mlbatch.alerts.flusher.Flusher), real HTTP to the fake Slack Web API
(tests/fake_slack.py) and the real SQLite outbox; only the clock is simulated (the loop's sleep advances
it), so a 10-minute outage takes seconds. The two-flusher test runs two real flusher processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from fake_slack import VALID_TOKEN, FakeSlack, Trouble

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 11, 20, 2, 0, tzinfo=timezone.utc).timestamp()  # the outage starts
OUTAGE_S = 600
RAISED_AT = [15, 125, 250, 377, 480, 598]  # seconds into the outage: a task fails, its alert is queued
RETRY_AFTER_S = 20


class SimClock:
    def __init__(self, start: float):
        self.t = start

    def now(self) -> float:
        return self.t


def slack_connection(api_url: str) -> str:
    return json.dumps({"conn_type": "slack", "password": VALID_TOKEN, "extra": {"base_url": api_url}})


def failed_ti(task_id: str):
    return SimpleNamespace(dag_id="natality_daily", task_id=task_id, run_id="scheduled__2026-11-20T00:00:00+00:00",
                           try_number=1, max_tries=0, map_index=-1, start_date=None, end_date=None,
                           log_url=f"http://localhost:8080/dags/natality_daily/tasks/{task_id}",
                           xcom_pull=lambda **kw: None)


def titles(fake) -> list[str]:
    return [m["blocks"][0]["text"]["text"] for m in fake.messages]


def test_alerts_raised_during_a_10_minute_outage_go_out_once_within_60_s_of_recovery(monkeypatch, tmp_path):
    from mlbatch.alerts.delivery import BACKOFF_FIRST_S
    from mlbatch.alerts.flusher import Flusher
    from mlbatch.alerts.notifier import PipelineAlertNotifier
    from mlbatch.alerts.outbox import Outbox

    sim = SimClock(T0 - 60)
    monkeypatch.setattr("mlbatch.alerts.outbox.wall_clock", sim.now)  # every outbox stamp on the simulated clock
    recovered = T0 + OUTAGE_S
    with FakeSlack(clock=sim.now) as fake:
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_API_DEFAULT", slack_connection(fake.api_url))
        fake.set_outage(lambda: T0 <= sim.now() < recovered, [
            Trouble(500),
            Trouble(429, headers={"Retry-After": str(RETRY_AFTER_S)}),
            Trouble(503, text="<html><body>upstream connect error</body></html>"),  # a proxy's page, not JSON
        ])
        outbox = Outbox(tmp_path)
        notifier = PipelineAlertNotifier(pipeline="natality_daily", channel="#ml-alerts", outbox_dir=str(tmp_path),
                                         budget_s=2.0)
        events = [T0 + s for s in RAISED_AT]
        raised: list[tuple[float, str]] = []
        stop = threading.Event()

        def sleep(seconds: float) -> None:
            """The loop's sleep: simulated time passes; the failures due in it happen (the real notifier:
            queue the alert, try Slack once within the task's budget, leave it pending)."""
            end = sim.t + seconds
            while events and events[0] <= end:
                sim.t = max(sim.t, events.pop(0))
                task_id = f"step_{len(raised) + 1}"
                notifier.notify({"ti": failed_ti(task_id), "exception": RuntimeError(f"{task_id} broke"),
                                 "logical_date": None})
                assert notifier.last_result["status"] == "pending"  # Slack is down: kept for the flusher
                raised.append((sim.t, task_id))
            sim.t = end
            if sim.t > recovered + 120:
                stop.set()

        Flusher(outbox, poll_s=2.0, stop=stop, sleep=sleep).run()

    # N failures -> N alerts, each delivered once, in the order raised
    assert [t for _, t in raised] == [f"step_{i}" for i in range(1, len(RAISED_AT) + 1)]
    assert titles(fake) == [f"🔴 natality_daily.{t} failed (try 1 of 1)" for _, t in raised]
    entries = outbox.entries()
    assert [e.status for e in entries] == ["sent"] * len(RAISED_AT)
    # ... within 60 s of recovery, nothing before it
    sent = [e.sent for e in entries]
    assert all(recovered <= s <= recovered + 60 for s in sent), [s - recovered for s in sent]
    # ... each marked as delayed: raised when, how late, why
    for (at, _), entry, message in zip(raised, entries, fake.messages):
        [note] = message["blocks"][1]["elements"]
        said = re.fullmatch(r"⏱ Delayed: raised (\d\d:\d\d) UTC, delivered after (\d+) (s|min) because (.+)\.",
                            note["text"])
        assert said and said[1] == time.strftime("%H:%M", time.gmtime(at)), note["text"]
        assert int(said[2]) == round((entry.sent - at) / (60 if said[3] == "min" else 1)), note["text"]
        assert said[4] in (  # what the first try of this alert met (the task's own, or a hold)
            "Slack was unreachable (HTTP 500: fatal_error)", "Slack was unreachable (HTTP 503)",
            f"Slack rate-limited the alerts (HTTP 429, Retry-After {RETRY_AFTER_S} s)"), note["text"]

    # the flusher retried on its own (more tries than failures), backing off, never inside a Retry-After
    posts = [c for c in fake.api_calls("chat.postMessage") if T0 <= c.at < recovered]
    assert len(RAISED_AT) < len(posts) <= OUTAGE_S / BACKOFF_FIRST_S, len(posts)
    for c in posts:
        if c.status == 429:
            assert not [d for d in posts if c.at < d.at < c.at + RETRY_AFTER_S], f"a try within Retry-After of {c.at}"
    flusher_tries = [c for c in posts if c.at not in {at for at, _ in raised}]
    gaps = [b.at - a.at for a, b in zip(flusher_tries, flusher_tries[1:])]
    assert min(gaps) >= BACKOFF_FIRST_S, gaps


def test_an_alert_slack_refuses_does_not_hold_up_the_others(monkeypatch, tmp_path):
    """`channel_not_found` is about one alert: it waits alone (retried later), the next ones go out."""
    from mlbatch.alerts.flusher import Flusher
    from mlbatch.alerts.outbox import Outbox

    with FakeSlack() as fake:
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_API_DEFAULT", slack_connection(fake.api_url))
        outbox = Outbox(tmp_path)
        ids = [outbox.add(kind="failure", channel=channel, payload={"text": f"alert {i}"})
               for i, channel in enumerate(["#ml-alerts", "#no-such-channel", "#ml-alerts"])]
        Flusher(outbox).run_once()
        assert [m["text"] for m in fake.messages] == ["alert 0", "alert 2"]
        refused = outbox.get(ids[1])
        assert refused.status == "pending" and "channel_not_found" in refused.last_error
        [refusal] = [c for c in fake.api_calls("chat.postMessage") if c.response.get("error") == "channel_not_found"]
        assert refused.next_try >= refusal.at + 30  # not retried at every poll (timed from Slack's answer)
        assert outbox.route("slack_api_default").failures == 0  # Slack itself is fine


def test_two_flusher_processes_deliver_each_alert_once_in_order(tmp_path):
    from mlbatch.alerts.outbox import Outbox

    alerts = 40
    with FakeSlack() as fake:
        fake.delay_s = 0.02  # each post takes a moment: the two flushers' rounds overlap
        env = {**os.environ, "AIRFLOW_CONN_SLACK_API_DEFAULT": slack_connection(fake.api_url),
               "MLBATCH_ALERTS_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
        outbox = Outbox(tmp_path)
        logs = [tmp_path / f"flusher-{i}.log" for i in range(2)]
        flushers = [subprocess.Popen([sys.executable, "-m", "mlbatch.alerts", "flush", "--loop", "--poll", "0.2"],
                                     env=env, stdout=log.open("w"), stderr=subprocess.STDOUT) for log in logs]
        try:
            wait_for(lambda: all("Alert flusher on" in log.read_text() for log in logs), 120)  # both running
            for i in range(alerts):
                outbox.add(kind="failure", channel="#ml-alerts", payload={"text": f"alert {i:02d}"})
                if i % 10 == 9:
                    time.sleep(0.3)  # in bursts, while the flushers run
            wait_for(lambda: len(outbox.entries("sent", limit=1000)) == alerts, 120)
        finally:
            for p in flushers:
                p.send_signal(signal.SIGTERM)
                p.wait(60)
        outputs = [log.read_text() for log in logs]
        assert [p.returncode for p in flushers] == [0, 0], outputs  # SIGTERM: a clean stop
        assert all("Alert flusher stopped" in out for out in outputs), outputs
        texts = [m["text"] for m in fake.messages]
        assert texts == [f"alert {i:02d}" for i in range(alerts)], texts  # once each, in the order queued
        delivered = [int(out.split("Alert flusher stopped (")[1].split()[0]) for out in outputs]
        assert sum(delivered) == alerts, outputs


def wait_for(predicate, timeout: float) -> None:
    """Poll until true; `timeout` only guards against a hang (it asserts nothing about speed)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not done within {timeout} s")
        time.sleep(0.1)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_flusher_stops_cleanly_on_a_signal_while_slack_is_down(tmp_path, signum):
    with FakeSlack() as fake:
        fake.set_outage(lambda: True)
        env = {**os.environ, "AIRFLOW_CONN_SLACK_API_DEFAULT": slack_connection(fake.api_url),
               "MLBATCH_ALERTS_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
        from mlbatch.alerts.outbox import Outbox

        outbox = Outbox(tmp_path)
        outbox.add(kind="failure", channel="#ml-alerts", payload={"text": "stuck"})
        process = subprocess.Popen([sys.executable, "-m", "mlbatch.alerts", "flush", "--loop", "--poll", "0.2"],
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: fake.api_calls("chat.postMessage"), 60)
        process.send_signal(signum)
        out = process.communicate(timeout=60)[0]
        assert process.returncode == 0, out
        assert "Slack alerts through 'slack_api_default' wait (1 pending): Slack was unreachable (HTTP 500: fatal_error)" in out
        assert outbox.entries()[0].status == "pending"


def test_the_flusher_process_reads_a_connection_made_in_airflow(airflow_db, tmp_path):
    """Connections made in the UI/CLI live in the metadata database; outside a task the task SDK reads
    only environment variables and secrets backends, so the flusher runs as a server-side process."""
    from mlbatch.alerts.outbox import Outbox

    conn_id = "mlbatch_flusher_test_slack"  # its own id: other tests' connection look-ups stay as they were
    airflow = [sys.executable, "-m", "airflow", "connections"]
    # as deployed: no connection in the environment, not Airflow's unit-test mode (whose test config keeps
    # the metastore out of connection look-ups)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_") and k != "AIRFLOW__CORE__UNIT_TEST_MODE"}
    with FakeSlack() as fake:
        subprocess.run(airflow + ["add", conn_id, "--conn-type", "slack", "--conn-password", VALID_TOKEN,
                                  "--conn-extra", json.dumps({"base_url": fake.api_url})],
                       env=env, check=True, capture_output=True, timeout=120)
        try:
            outbox = Outbox(tmp_path)
            outbox.add(kind="failure", channel="#ml-alerts", payload={"text": "from the database"}, conn_id=conn_id)
            done = subprocess.run([sys.executable, "-m", "mlbatch.alerts", "flush", "--dir", str(tmp_path)],
                                  env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "1 of 1 pending alerts sent" in done.stdout
            assert [m["text"] for m in fake.messages] == ["from the database"]
        finally:
            subprocess.run(airflow + ["delete", conn_id], env=env, capture_output=True, timeout=120)


def test_an_outbox_written_by_the_previous_version_is_upgraded_and_flushed(monkeypatch, tmp_path):
    import sqlite3

    from mlbatch.alerts.flusher import Flusher
    from mlbatch.alerts.outbox import Outbox

    with sqlite3.connect(tmp_path / "outbox.sqlite") as db:  # the first release's schema, one alert pending
        db.executescript("""
            CREATE TABLE alerts (id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, kind TEXT NOT NULL,
                thread_key TEXT, channel TEXT, payload TEXT NOT NULL, attachment TEXT, attachment_name TEXT,
                status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, sent REAL, ts TEXT,
                channel_id TEXT);
            CREATE TABLE threads (thread_key TEXT PRIMARY KEY, channel_id TEXT NOT NULL, ts TEXT NOT NULL,
                started REAL NOT NULL);""")
        db.execute("INSERT INTO alerts (created, kind, channel, payload, status, attempts, last_error)"
                   " VALUES (?, 'failure', '#ml-alerts', ?, 'pending', 1, 'SlackApiError: fatal_error')",
                   (time.time() - 3 * 3600, json.dumps({"text": "old alert"})))
    with FakeSlack() as fake:
        monkeypatch.setenv("AIRFLOW_CONN_SLACK_API_DEFAULT", slack_connection(fake.api_url))
        Flusher(Outbox(tmp_path)).run_once()
        [message] = fake.messages
        assert message["text"].startswith("⏱ Delayed: raised ") and "delivered after 3.0 h" in message["text"]
        assert message["text"].endswith("\nold alert")
