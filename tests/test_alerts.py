"""Alert building and delivery against the local fake Slack Web API (tests/fake_slack.py): limits,
redaction, 429/500/down/slow/invalid token, the outbox and its re-sending, threads, webhook fallback."""

from __future__ import annotations

import json
import logging
import re
import socket

import pytest

from fake_slack import VALID_TOKEN, FakeSlack, block_problem


@pytest.fixture
def fake_slack(monkeypatch):
    with FakeSlack() as fake:
        use_slack(monkeypatch, fake.api_url)
        yield fake


def use_slack(monkeypatch, api_url: str, token: str = VALID_TOKEN) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_API_DEFAULT", json.dumps(
        {"conn_type": "slack", "password": token, "extra": {"base_url": api_url}}))


@pytest.fixture
def outbox(tmp_path):
    from mlbatch.alerts.outbox import Outbox

    return Outbox(tmp_path / "alerts")


def make_alert(task_id: str = "predict", lines: int = 30, **kw):
    from mlbatch.alerts.message import Alert, Link

    base = dict(kind="failure", pipeline="natality_daily", dag_id="natality_daily", task_id=task_id,
                run_id="scheduled__2026-11-20T00:00:00+00:00", try_number=2, max_tries=2,
                logical_date="2026-11-20T00:00:00+00:00", duration_s=754, error_type="RemoteJobError",
                error_message="mlbatch_beam.score exited with code 1",
                task_log=[f"12:00:{i % 60:02d}.000 INFO task: step {i}" for i in range(lines)],
                task_log_source="memory, in-process run", mention="@here",
                log_url="http://airflow.example/dags/natality_daily/runs/r/tasks/predict?try_number=2",
                links=[Link("Airflow task log", "http://airflow.example/x")])
    base.update(kw)
    return Alert(**base)


def queue(outbox, alert, thread_key: str | None = "natality_daily.predict.-1", attachment: str | None = "full log"):
    from mlbatch.alerts.message import blocks

    return outbox.add(kind=alert.kind, channel="#ml-alerts", thread_key=thread_key, attachment=attachment,
                      attachment_name="natality_daily.predict.try2.log",
                      payload={"text": alert.fallback_text(), "blocks": blocks(alert)})


def delivery(outbox, **kw):
    from mlbatch.alerts.delivery import SlackDelivery

    return SlackDelivery(outbox, **kw)


# --- the button contract ----------------------------------------------------------------------------

def test_retry_button_value_round_trips_and_rejects_bad_values():
    from mlbatch.retry_button import RetryTarget, decode_retry_value, encode_retry_value

    target = RetryTarget("natality_daily", "manual__2026-11-20T00:00:00+00:00", "predict", 3)
    assert decode_retry_value(encode_retry_value(target)) == target
    for bad, why in [("nope", "not JSON"), ("[1]", "JSON object"), ('{"dag_id":"d","run_id":"r"}', "task_id"),
                     ('{"dag_id":"d","run_id":"r","task_id":"t","map_index":"1"}', "integer"),
                     ('{"dag_id":"d","run_id":"r","task_id":"t","x":1}', "unknown keys")]:
        with pytest.raises(ValueError, match=why):
            decode_retry_value(bad)


# --- redaction -------------------------------------------------------------------------------------

def test_token_and_key_patterns_are_masked():
    from mlbatch.redaction import redact_text

    secrets = ["xoxb-2222222222-abcdefghijkl", "xapp-1-A0AAAAAAA-1234-abcdef", "AKIAIOSFODNN7EXAMPLE",
               "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abcdefghijkl",
               "hunter2hunter2", "ghp_" + "a" * 36, "https://hooks.slack.com/services/T1/B2/xyz"]
    text = (f"token {secrets[0]} app {secrets[1]} key {secrets[2]} aws_secret_access_key={secrets[3]}\n"
            f"Authorization: Bearer {secrets[4]}\npostgres://etl:{secrets[5]}@db/x gh {secrets[6]} {secrets[7]}\n"
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
            "password: p4ssw0rd! rows_in=1000 model_version=3")
    masked = redact_text(text)
    for secret in secrets + ["b3BlbnNzaC1rZXktdjEAAAAA", "p4ssw0rd!"]:
        assert secret not in masked, secret
    assert "rows_in=1000 model_version=3" in masked  # ordinary facts survive


def test_secrets_known_to_airflow_are_masked():
    from airflow.sdk.log import mask_secret

    from mlbatch.redaction import redact_text

    mask_secret("plain-looking-value-8812")
    assert redact_text("connected with plain-looking-value-8812 ok") == "connected with *** ok"


# --- the message -----------------------------------------------------------------------------------

def test_huge_logs_stay_within_slack_limits_and_keep_the_newest_lines(fake_slack, outbox):
    from mlbatch.alerts.message import MAX_TOTAL_TEXT, as_text, blocks, total_text

    alert = make_alert(lines=5000, error_message="x" * 20_000, remote_backend="dataflow", remote_job="job-1",
                       remote_log=[f"worker line {i} " + "w" * 300 for i in range(3000)])
    alert.task_log = [f"task line {i} " + "t" * 200 for i in range(5000)]
    built = blocks(alert)
    assert len(built) <= 50 and total_text(built) <= MAX_TOTAL_TEXT and block_problem(built) is None
    assert all(len(b["text"]["text"]) <= 3000 for b in built if b["type"] == "section" and "text" in b)
    rendered = as_text(built)
    assert "task line 4999" in rendered and "worker line 2999" in rendered  # newest lines kept
    assert "task line 0 " not in rendered and "earlier lines cut" in rendered

    entry = queue(outbox, alert, attachment="\n".join(alert.task_log))
    assert delivery(outbox).send_within(entry, 4).status == "sent"  # Slack (fake) accepts it
    [(_, attached)] = fake_slack.files.items()
    assert attached["content"].count("\n") == 4999  # the full log went to the thread


def test_blocks_refused_by_slack_still_deliver_the_alert_as_text(fake_slack, outbox):
    from mlbatch.alerts.message import blocks

    alert = make_alert()
    too_long = blocks(alert) + [{"type": "section", "text": {"type": "mrkdwn", "text": "y" * 2900}}] * 5
    entry = outbox.add(kind="failure", channel="#ml-alerts", payload={"text": alert.fallback_text(), "blocks": too_long})
    assert delivery(outbox).send_within(entry, 4).status == "sent"
    assert [c.response.get("error") for c in fake_slack.api_calls("chat.postMessage")] == ["msg_blocks_too_long", None]
    assert "blocks refused: msg_blocks_too_long" in outbox.get(entry).last_error


# --- robustness ------------------------------------------------------------------------------------

def retry_after_waits(caplog) -> list[float]:
    """The Retry-After waits the delivery decided on, in order (its log line, written before it sleeps)."""
    return [float(m.group(1)) for r in caplog.records
            if (m := re.match(r"Slack rate limit: waiting ([\d.]+) s \(Retry-After\)", r.getMessage()))]


def test_rate_limit_waits_for_retry_after_then_sends(fake_slack, outbox, caplog):
    fake_slack.fail_next(1, 429, headers={"Retry-After": "1"})
    entry = queue(outbox, make_alert(), attachment=None)
    with caplog.at_level(logging.INFO, logger="mlbatch.alerts.delivery"):
        assert delivery(outbox).send_within(entry, 30).status == "sent"  # the budget caps; sending returns
    first, second = fake_slack.api_calls("chat.postMessage")
    assert first.status == 429 and second.status == 200
    assert retry_after_waits(caplog) == [1.0]  # it waited what Slack asked, once
    assert second.at - first.at >= 1.0  # and did not retry earlier (a lower bound: no slow machine breaks it)


def test_a_retry_after_longer_than_the_budget_is_not_waited_for(fake_slack, outbox, caplog):
    fake_slack.fail_next(1, 429, headers={"Retry-After": "30"})
    entry = queue(outbox, make_alert())
    with caplog.at_level(logging.INFO, logger="mlbatch.alerts.delivery"):
        result = delivery(outbox).send_within(entry, 3)
    assert retry_after_waits(caplog) == []  # 30 s does not fit a 3 s budget: no wait was started
    assert len(fake_slack.api_calls("chat.postMessage")) == 1
    assert result.status == "pending" and "ratelimited" in outbox.get(entry).last_error


@pytest.mark.parametrize("trouble", ["down", "slow", "invalid token", "server errors"])
def test_slack_trouble_keeps_the_alert_pending_within_the_budget(monkeypatch, outbox, trouble):
    with FakeSlack() as fake:
        use_slack(monkeypatch, fake.api_url)
        if trouble == "down":
            with socket.socket() as s:  # a port nobody listens on
                s.bind(("127.0.0.1", 0))
                use_slack(monkeypatch, f"http://127.0.0.1:{s.getsockname()[1]}/api/")
        elif trouble == "slow":
            fake.hold()  # Slack takes every request and answers none until the `with` ends
        elif trouble == "invalid token":
            use_slack(monkeypatch, fake.api_url, token="xoxb-0000-revoked")
        else:
            fake.fail_next(5, 500)
        entry = queue(outbox, make_alert())
        result = delivery(outbox).send_within(entry, 2.0)  # returning at all is the point (the pytest timeout guards)
        assert result.status == "pending", result
        if trouble == "slow":
            assert fake.held >= 1, "Slack never saw the request"  # it gave up while Slack still held it
        stored = outbox.get(entry)
        assert stored.status == "pending" and stored.attempts >= 1 and stored.last_error
        if trouble == "invalid token":
            assert "invalid_auth" in stored.last_error
        assert "revoked" not in json.dumps(stored.payload)


def test_pending_alerts_are_resent_when_slack_comes_back(fake_slack, outbox):
    fake_slack.fail_next(2, 500)  # the post and its one quick retry
    first = queue(outbox, make_alert(task_id="prep"), thread_key="natality_daily.prep.-1")
    assert delivery(outbox).send_within(first, 3).status == "pending"
    assert fake_slack.messages == []

    second = queue(outbox, make_alert(task_id="predict"))  # Slack is back: the next alert sends both, in order
    assert delivery(outbox).send_within(second, 4).status == "sent"
    assert [m["blocks"][0]["text"]["text"] for m in fake_slack.messages] == [
        "🔴 natality_daily.prep failed (try 2 of 2)", "🔴 natality_daily.predict failed (try 2 of 2)"]
    late, on_time = (m["blocks"][1] for m in fake_slack.messages)
    assert late["type"] == "context" and late["elements"][0]["text"].startswith("⏱ Delayed: raised ")
    assert "because Slack was unreachable (HTTP 500: fatal_error)" in late["elements"][0]["text"]
    assert "Delayed" not in json.dumps(on_time)
    assert {e.status for e in outbox.entries()} == {"sent"}


def test_flush_command_resends_pending_alerts(fake_slack, outbox):
    from mlbatch.alerts.__main__ import main

    fake_slack.fail_next(2, 500)
    entry = queue(outbox, make_alert())
    assert delivery(outbox).send_within(entry, 3).status == "pending"
    assert main(["flush", "--dir", str(outbox.path.parent)]) == 0
    assert outbox.get(entry).status == "sent" and len(fake_slack.messages) == 1


def test_repeated_failures_of_one_task_reply_in_one_thread(fake_slack, outbox):
    d = delivery(outbox, thread_window_s=3600)
    ts = [d.send_within(queue(outbox, make_alert()), 4).ts for _ in range(3)]
    other = d.send_within(queue(outbox, make_alert(task_id="prep"), thread_key="natality_daily.prep.-1"), 4)
    first, second, third, prep = fake_slack.messages
    assert "thread_ts" not in first and second["thread_ts"] == third["thread_ts"] == ts[0]
    assert "thread_ts" not in prep and other.ts not in ts
    # every failure's full log lands in that same thread
    assert {f["thread_ts"] for f in list(fake_slack.files.values())[:3]} == {ts[0]}


def test_thread_window_expires(fake_slack, outbox):
    d = delivery(outbox, thread_window_s=0)
    d.send_within(queue(outbox, make_alert()), 4)
    d.send_within(queue(outbox, make_alert()), 4)
    assert all("thread_ts" not in m for m in fake_slack.messages)


def test_webhook_is_the_fallback_when_the_web_api_fails(fake_slack, outbox, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_WEBHOOK", json.dumps(
        {"conn_type": "slackwebhook", "password": fake_slack.webhook_url}))
    fake_slack.fail_next(2, 500)
    entry = queue(outbox, make_alert())
    result = delivery(outbox, webhook_conn_id="slack_webhook").send_within(entry, 4)
    assert result.status == "sent" and "webhook fallback" in result.detail
    [posted] = fake_slack.webhook_posts
    assert posted["blocks"][0]["text"]["text"].startswith("🔴 natality_daily.predict failed")
    assert "sent through webhook" in outbox.get(entry).last_error


# --- the notifier itself ---------------------------------------------------------------------------

def test_without_a_token_alerts_stay_local_and_are_printed(monkeypatch, tmp_path):
    import logging
    from types import SimpleNamespace

    from mlbatch.alerts.notifier import PipelineAlertNotifier
    from mlbatch.alerts.outbox import Outbox

    monkeypatch.delenv("AIRFLOW_CONN_SLACK_API_DEFAULT", raising=False)
    ti = SimpleNamespace(dag_id="natality_daily", task_id="prep", run_id="manual__1", try_number=1, max_tries=0,
                         map_index=-1, start_date=None, end_date=None, log_url="http://localhost:8080/x",
                         xcom_pull=lambda **kw: None)
    notifier = PipelineAlertNotifier(pipeline="natality_daily", channel="#ml-alerts", outbox_dir=str(tmp_path))
    printed: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: printed.append(record.getMessage())
    logging.getLogger("mlbatch.alerts.notifier").addHandler(handler)
    try:
        notifier.notify({"ti": ti, "exception": ValueError("bad input partition"), "logical_date": None})
    finally:
        logging.getLogger("mlbatch.alerts.notifier").removeHandler(handler)
    assert notifier.last_result["status"] == "local"
    [entry] = Outbox(tmp_path).entries("local")
    assert "bad input partition" in json.dumps(entry.payload)
    [console] = printed
    assert "natality_daily.prep failed (try 1 of 1)" in console and "local mode" in console
    assert "[Retry] (mlbatch_retry:" in console  # the readable rendering, not JSON


def test_dag_factory_attaches_alerts_as_the_spec_says():
    from pathlib import Path

    from mlbatch.alerts.notifier import PipelineAlertNotifier
    from mlbatch.alerts.task_log import start_log_tap
    from mlbatch.dag_factory import build_dag
    from mlbatch.spec.loader import load_spec, with_overrides

    spec = load_spec(Path(__file__).resolve().parents[1] / "include" / "pipelines" / "natality_daily.yaml")
    quiet = build_dag(spec)
    for task in quiet.tasks:
        [failure] = task.on_failure_callback
        assert isinstance(failure, PipelineAlertNotifier) and failure.kind == "failure"
        assert (failure.channel, failure.mention) == ("#ml-alerts", "@ml-oncall")
        assert start_log_tap in task.on_execute_callback
        assert not task.on_retry_callback and not task.on_success_callback

    chatty = build_dag(with_overrides(spec, {"alerts.on_success": True, "alerts.notify_retries": True},
                                      source="test"))
    for task in chatty.tasks:
        [retry] = task.on_retry_callback
        assert retry.kind == "retry" and retry.mention is None  # a retry notice pings nobody
    assert [t.task_id for t in chatty.tasks if t.on_success_callback] == ["record"]
    assert chatty.get_task("record").on_success_callback[0].kind == "success"


def test_success_message_carries_counts_model_and_mlflow_link(fake_slack, tmp_path):
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace

    from mlbatch.alerts.notifier import PipelineAlertNotifier

    xcoms = {"publish": {"rows_in": 1_000_000, "rows_scored": 999_000, "rows_rejected": 1_000,
                         "output_uri": "gs://b/predictions/ds=2026-11-20"},
             "resolve_model": {"name": "natality_weight", "version": 7, "alias": "champion",
                               "uri": "models:/natality_weight/7", "tracking_uri": "https://mlflow.example"},
             "record": {"mlflow_run_id": "abc123", "experiment_id": "4", "tracking_uri": "https://mlflow.example"}}
    ti = SimpleNamespace(dag_id="natality_daily", task_id="record", run_id="scheduled__1", try_number=1,
                         max_tries=1, map_index=-1, xcom_pull=lambda task_ids=None, key=None: xcoms.get(task_ids))
    run = SimpleNamespace(start_date=datetime.now(timezone.utc) - timedelta(minutes=12))
    notifier = PipelineAlertNotifier(kind="success", pipeline="natality_daily", channel="#ml-alerts",
                                     outbox_dir=str(tmp_path))
    notifier.notify({"ti": ti, "dag_run": run, "logical_date": None})
    assert notifier.last_result["status"] == "sent"
    [message] = fake_slack.messages
    text = json.dumps(message["blocks"], ensure_ascii=False)
    assert "✅ natality_daily succeeded" in text and "1,000,000 in = 999,000 scored + 1,000 rejected" in text
    assert "models:/natality_weight/7 (alias champion)" in text and "12 min" in text
    assert "https://mlflow.example/#/experiments/4/runs/abc123" in text
    assert "mlbatch_retry" not in text and fake_slack.files == {}  # nothing to retry, no log file


# --- never lost, never doubled, bounded -------------------------------------------------------------

def test_a_failing_connection_lookup_keeps_the_alert_pending_for_the_next_flush(fake_slack, monkeypatch,
                                                                               tmp_path):
    from types import SimpleNamespace

    from airflow.sdk import BaseHook

    from mlbatch.alerts.__main__ import main
    from mlbatch.alerts.notifier import PipelineAlertNotifier
    from mlbatch.alerts.outbox import Outbox

    def unreachable(conn_id):  # e.g. the API server or the secrets backend is down for a moment
        raise ConnectionError(f"cannot reach the API server for connection {conn_id}")

    ti = SimpleNamespace(dag_id="natality_daily", task_id="prep", run_id="manual__1", try_number=1, max_tries=0,
                         map_index=-1, start_date=None, end_date=None, log_url="http://localhost:8080/x",
                         xcom_pull=lambda **kw: None)
    notifier = PipelineAlertNotifier(pipeline="natality_daily", channel="#ml-alerts", outbox_dir=str(tmp_path),
                                     budget_s=1.0)
    with monkeypatch.context() as patched:
        patched.setattr(BaseHook, "get_connection", classmethod(lambda cls, conn_id: unreachable(conn_id)))
        notifier.notify({"ti": ti, "exception": ValueError("bad input partition"), "logical_date": None})
    assert notifier.last_result["status"] == "pending"
    [entry] = Outbox(tmp_path).entries()
    assert entry.status == "pending" and "cannot reach the API server" in entry.last_error
    assert fake_slack.messages == []

    assert main(["flush", "--dir", str(tmp_path)]) == 0  # the connection is back
    assert Outbox(tmp_path).get(entry.id).status == "sent"
    [posted] = fake_slack.messages
    assert "bad input partition" in json.dumps(posted)


def test_two_flushers_at_once_post_each_alert_once(fake_slack, outbox):
    import threading

    from airflow.providers.slack.hooks.slack import SlackHook  # noqa: F401  (imported once, not in two threads)

    entries = [queue(outbox, make_alert(task_id=f"t{i}"), thread_key=None, attachment=None) for i in range(4)]
    for entry in entries:
        outbox.mark_failed(entry, "Slack was down")  # tried once: now any flusher may send them
    fake_slack.delay_s = 0.3  # slow enough that the two flushes overlap
    flushers = [threading.Thread(target=lambda: delivery(outbox).send_within(None, 5)) for _ in range(2)]
    for t in flushers:
        t.start()
    for t in flushers:
        t.join()
    texts = [m["blocks"][0]["text"]["text"] for m in fake_slack.messages]
    assert sorted(texts) == sorted(f"🔴 natality_daily.t{i} failed (try 2 of 2)" for i in range(4)), texts
    assert {e.status for e in outbox.entries()} == {"sent"}


def test_the_outbox_is_bounded_and_pruned(outbox):
    import sqlite3

    ids = [queue(outbox, make_alert(), attachment=None) for _ in range(6)]
    for entry in ids[:3]:
        outbox.mark_sent(entry, ts="1.0", channel_id="C1")
    with sqlite3.connect(outbox.path) as db:  # two of the sent alerts are old
        db.execute("UPDATE alerts SET created = created - 40 * 86400 WHERE id IN (?, ?)", ids[:2])
    assert outbox.prune() == 2
    assert [e.id for e in outbox.entries()] == ids[2:]

    assert outbox.prune(max_entries=2) == 2  # over the bound: the sent one goes first, then the oldest pending
    assert [(e.id, e.status) for e in outbox.entries()] == [(ids[4], "pending"), (ids[5], "pending")]
