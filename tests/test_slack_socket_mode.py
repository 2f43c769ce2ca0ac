"""The Socket Mode front door: slack_sdk's asyncio Socket Mode client connected to a fake Slack
WebSocket; envelopes in, acks (with the first reply) out, the slow part on the response_url, the run
created in the real Airflow API server."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid

import pytest

from mlbatch.retry_button import RetryTarget, encode_retry_value
from mlbatch.slack_commands.settings import Settings
from slack_support import ALICE, BOB, airflow_server, fake_slack, retry_button_payload  # noqa: F401


@pytest.fixture(scope="module")
def socket_mode_process(airflow_server, fake_slack):
    """`mlbatch.slack_commands.socket_mode.serve` on its own event loop, as its entrypoint runs it."""
    from mlbatch.slack_commands.socket_mode import serve

    env = airflow_server.env
    settings = Settings.from_env({**env, "SLACK_APP_TOKEN": "xapp-1-test-app-token", "SLACK_SIGNING_SECRET": ""})
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    done = threading.Event()

    def run():
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve(settings, stop))
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    yield
    loop.call_soon_threadsafe(stop.set)
    assert done.wait(20)


def envelope(kind: str, payload: dict) -> dict:
    return {"envelope_id": str(uuid.uuid4()), "type": kind, "payload": payload,
            "accepts_response_payload": kind == "slash_commands"}


def slash_payload(text: str, user: str, response_url: str) -> dict:
    return {"token": "x", "team_id": "T0001", "team_domain": "example", "channel_id": "C1", "channel_name": "ml-ops",
            "user_id": user, "user_name": user.lower(), "command": "/mlops", "text": text, "api_app_id": "A123456",
            "is_enterprise_install": "false", "response_url": response_url, "trigger_id": "1.2.3"}


def test_slash_command_over_socket_mode_triggers_a_run(socket_mode_process, airflow_server, fake_slack):
    before = {r["dag_run_id"] for r in airflow_server.runs("natality_daily")}
    response_url = fake_slack.response_url()
    sent = envelope("slash_commands", slash_payload("run natality_daily backend=local", ALICE, response_url))
    ack = fake_slack.send_envelope(sent)
    assert ack["envelope_id"] == sent["envelope_id"]
    assert ack["payload"]["text"].startswith("⏳ Working on `/mlops run natality_daily backend=local`")
    assert ack["payload"]["response_type"] == "ephemeral"

    reply = fake_slack.wait_reply(response_url)
    new = [r for r in airflow_server.runs("natality_daily") if r["dag_run_id"] not in before]
    assert len(new) == 1 and new[0]["conf"] == {"backend": "local"}
    assert new[0]["note"].startswith("triggered from Slack by u0alice (U0ALICE)")
    assert new[0]["dag_run_id"] in reply["text"]
    assert "apps.connections.open" in fake_slack.api_calls


def test_socket_mode_refuses_an_unauthorised_user_and_answers_help_in_the_ack(socket_mode_process, airflow_server,
                                                                                fake_slack):
    before = len(airflow_server.runs("natality_daily"))
    response_url = fake_slack.response_url()
    ack = fake_slack.send_envelope(envelope("slash_commands", slash_payload("run natality_daily", BOB, response_url)))
    assert ack["payload"]["text"].startswith("⛔ You are not allowed to `run` `natality_daily`")
    assert len(airflow_server.runs("natality_daily")) == before

    ack = fake_slack.send_envelope(envelope("slash_commands", slash_payload("", BOB, fake_slack.response_url())))
    assert "`/mlops list`" in ack["payload"]["text"]


def test_retry_button_over_socket_mode_is_acked_and_authorised(socket_mode_process, airflow_server, fake_slack):
    response_url = fake_slack.response_url()
    value = encode_retry_value(RetryTarget("slack_failing", airflow_server.failed_run_id, "score"))
    sent = envelope("interactive", retry_button_payload(BOB, response_url, value))
    ack = fake_slack.send_envelope(sent)
    assert ack == {"envelope_id": sent["envelope_id"]}
    assert fake_slack.wait_reply(response_url)["text"].startswith("⛔ You are not allowed to `retry` `slack_failing`")
    assert json.loads(value)["task_id"] == "score"
