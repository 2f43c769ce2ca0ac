"""`/mlops` through the HTTP front door mounted in a real Airflow API server (by the bundle's plugin):
signed exactly as Slack signs, acked at once, answered on the response_url, acting through the REST
API. See slack_support.py for the server, the fake Slack and the signing."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from mlbatch.retry_button import RetryTarget, encode_retry_value
from slack_support import (  # noqa: F401  (fixtures)
    ALICE, BOB, CAROL, SIGNING_SECRET, airflow_server, fake_slack, retry_button_payload, signed,
    slash_command_form,
)

PIPELINE = "natality_daily"


def command(server, slack, text: str, user: str = ALICE, headers: dict | None = None, body: str | None = None):
    """Send one slash command; return (HTTP response, response_url)."""
    response_url = slack.response_url()
    body = body if body is not None else slash_command_form(text, user, response_url)
    response = httpx.post(f"{server.url}/slack/commands", content=body, headers=headers or signed(body), timeout=10)
    return response, response_url


def reply_to(server, slack, text: str, user: str = ALICE) -> str:
    response, response_url = command(server, slack, text, user)
    assert response.status_code == 200, response.text
    ack = response.json()
    assert ack["response_type"] == "ephemeral"
    if not ack["text"].startswith("⏳"):
        return ack["text"]  # final already (help, malformed text)
    reply = slack.wait_reply(response_url)
    assert reply["response_type"] == "ephemeral"
    return reply["text"]


def test_authorised_run_is_acked_at_once_and_triggers_with_conf_and_note(airflow_server, fake_slack):
    before = {r["dag_run_id"] for r in airflow_server.runs(PIPELINE)}
    response, response_url = command(airflow_server, fake_slack,
                                     f"run {PIPELINE} date=2026-11-20 backend=local model_alias=challenger")
    # "At once": the HTTP answer is the placeholder, the run comes on the response_url. How fast the
    # acknowledgement is belongs to the benchmark (make bench-slack), not to a test on a busy machine.
    assert response.status_code == 200
    assert response.json() == {"response_type": "ephemeral", "mrkdwn": True, "text": (
        f"⏳ Working on `/mlops run {PIPELINE} date=2026-11-20 backend=local model_alias=challenger` …")}

    reply = fake_slack.wait_reply(response_url)
    new = [r for r in airflow_server.runs(PIPELINE) if r["dag_run_id"] not in before]
    assert len(new) == 1
    run = new[0]
    assert run["conf"] == {"date": "2026-11-20", "backend": "local", "model_alias": "challenger"}
    assert run["note"].startswith("triggered from Slack by u0alice (U0ALICE)")
    assert run["triggering_user_name"] == "mlbatch_slack"
    assert run["dag_run_id"] in reply["text"]
    assert f"https://airflow.example.com/dags/{PIPELINE}/runs/" in reply["text"]


@pytest.mark.parametrize("tamper", ["bad signature", "stale timestamp", "wrong secret", "no headers"])
def test_unsigned_or_stale_requests_get_401_and_create_nothing(airflow_server, fake_slack, tamper):
    before = len(airflow_server.runs(PIPELINE))
    body = slash_command_form(f"run {PIPELINE}", ALICE, fake_slack.response_url())
    headers = {
        "bad signature": {**signed(body), "X-Slack-Signature": "v0=" + "0" * 64},
        "stale timestamp": signed(body, timestamp=int(time.time()) - 6 * 60),
        "wrong secret": signed(body, secret="not-" + SIGNING_SECRET),
        "no headers": {"Content-Type": "application/x-www-form-urlencoded"},
    }[tamper]
    response, _ = command(airflow_server, fake_slack, "", headers=headers, body=body)
    assert response.status_code == 401
    altered = body.replace("U0ALICE", "U0MALLORY")  # body changed after signing
    response, _ = command(airflow_server, fake_slack, "", headers=signed(body), body=altered)
    assert response.status_code == 401
    time.sleep(0.5)
    assert len(airflow_server.runs(PIPELINE)) == before


def test_replayed_request_is_refused(airflow_server, fake_slack):
    body = slash_command_form("help", ALICE, fake_slack.response_url())
    headers = signed(body)
    first, _ = command(airflow_server, fake_slack, "", headers=headers, body=body)
    again, _ = command(airflow_server, fake_slack, "", headers=headers, body=body)
    assert first.status_code == 200 and "/mlops run <pipeline>" in first.json()["text"]
    assert again.status_code == 401


def test_unauthorised_user_is_refused_in_the_ack_naming_the_missing_grant(airflow_server, fake_slack):
    before = len(airflow_server.runs(PIPELINE))
    response, response_url = command(airflow_server, fake_slack, f"run {PIPELINE} backend=local", user=BOB)
    text = response.json()["text"]  # the acknowledgement itself refuses: no "Working on" first
    assert text.startswith("⛔ You are not allowed to `run` `natality_daily`: no grant of the Slack command policy")
    assert "`U0BOB`" in text and "`actions: [run]` and `pipelines: [natality_daily]`" in text
    time.sleep(0.3)
    assert not fake_slack.replies.get(response_url[len(fake_slack.url):])  # and nothing follows
    text = reply_to(airflow_server, fake_slack, f"retry slack_failing/{airflow_server.failed_run_id}", user=BOB)
    assert text.startswith("⛔ You are not allowed to `retry` `slack_failing`")
    assert len(airflow_server.runs(PIPELINE)) == before


@pytest.mark.parametrize("text, expected", [
    ("run natality_hourly", "No such pipeline `natality_hourly`: it is not loaded in Airflow. Pipelines:"),
    ("run natality_broken", "`natality_broken` is not loaded: its spec is broken, so it cannot run. BROKEN SPEC"),
    (f"run {PIPELINE} colour=blue", "`natality_daily` has no parameter `colour`. Parameters: `model_alias`"),
    (f"run {PIPELINE} backend=gpu", "`backend=gpu` is not allowed: expected one of `dataflow`, `local`"),
    (f"run {PIPELINE} date=20-11-2026", "`date=20-11-2026` is not allowed: expected a date (e.g. 2026-11-20)"),
    (f"run {PIPELINE} backend", "Expected `key=value`, got `backend`."),
    ("run 'natality_daily", "Could not read the command: No closing quotation"),
    ("rerun natality_daily", "Unknown command `rerun`. Did you mean `/mlops run`?"),
    ("logs manual__2020-01-01T00:00:00+00:00", "No run `manual__2020-01-01T00:00:00+00:00` in the mlbatch"),
    ("status nothing_like_this", "No run `nothing_like_this` in the mlbatch pipelines."),
])
def test_bad_input_gets_a_helpful_ephemeral_reply_and_creates_nothing(airflow_server, fake_slack, text, expected):
    before = len(airflow_server.runs(PIPELINE))
    reply = reply_to(airflow_server, fake_slack, text)
    assert expected in reply
    assert reply.startswith("⚠️")
    assert len(airflow_server.runs(PIPELINE)) == before


def test_status_list_and_logs_read_through_the_api(airflow_server, fake_slack):
    run_id = airflow_server.failed_run_id
    listing = reply_to(airflow_server, fake_slack, "list", user=BOB)
    assert "natality_daily" in listing and "slack_failing" in listing and f"failed `{run_id}`" in listing
    assert "natality_broken|natality_broken> 🚫 spec broken: BROKEN SPEC" in listing

    status = reply_to(airflow_server, fake_slack, f"status {run_id}", user=BOB)
    assert "❌ `score` failed" in status and "⛔ `publish` upstream_failed" in status and "✅ `extract`" in status

    assert run_id in reply_to(airflow_server, fake_slack, "status slack_failing", user=BOB)
    assert run_id in reply_to(airflow_server, fake_slack, "status", user=BOB)

    logs = reply_to(airflow_server, fake_slack, f"logs {run_id}", user=BOB)  # the failed task by default
    assert "task `score` try 1 (failed)" in logs
    assert "RuntimeError: model endpoint returned 503" in logs
    assert "hunter22" not in logs and "xoxb-1234567890" not in logs and "password=***" in logs

    missing = reply_to(airflow_server, fake_slack, f"logs {run_id} publish", user=BOB)
    assert "Task `publish` of run" in missing and "has not run yet" in missing
    unknown = reply_to(airflow_server, fake_slack, f"logs {run_id} train", user=BOB)
    assert "has no task `train`. Tasks: `extract`, `publish`, `score`" in unknown


def test_help_answers_in_the_ack(airflow_server, fake_slack):
    response, response_url = command(airflow_server, fake_slack, "help", user=BOB)
    assert "`/mlops retry <run id> [task]`" in response.json()["text"]
    time.sleep(0.3)
    assert not fake_slack.replies.get(response_url[len(fake_slack.url):])


def test_retry_of_a_task_that_succeeded_says_nothing_failed(airflow_server, fake_slack):
    run_id = airflow_server.failed_run_id  # `extract` succeeded in it (`score` failed)

    def states():
        return {t["task_id"]: t["state"] for t in airflow_server.api(
            "GET", f"/api/v2/dags/slack_failing/dagRuns/{run_id}/taskInstances").json()["task_instances"]}

    before = states()
    assert before["extract"] == "success"
    text = reply_to(airflow_server, fake_slack, f"retry {run_id} extract", user=ALICE)
    assert text == (f"Nothing failed: task `extract` of `slack_failing` run `{run_id}` succeeded; "
                    "use `run` to score again: `/mlops run slack_failing`.")
    assert states() == before  # nothing cleared, not even the failed tasks downstream of `extract`


def test_retry_button_clears_the_failed_tasks_for_a_group_member(airflow_server, fake_slack):
    """Carol may retry `slack_failing` through the on-call user group (looked up in Slack)."""
    run_id = airflow_server.failed_run_id
    value = encode_retry_value(RetryTarget("slack_failing", run_id, "score"))
    response_url = fake_slack.response_url()
    body = str(httpx.QueryParams({"payload": json.dumps(retry_button_payload(CAROL, response_url, value))}))
    response = httpx.post(f"{airflow_server.url}/slack/interactions", content=body, headers=signed(body), timeout=10)
    assert response.status_code == 200 and response.content == b""

    reply = fake_slack.wait_reply(response_url)
    assert reply["replace_original"] is False
    assert "🔁 Cleared `publish`, `score` of `slack_failing`" in reply["text"]
    assert "usergroups.users.list" in fake_slack.api_calls
    tasks = airflow_server.api("GET", f"/api/v2/dags/slack_failing/dagRuns/{run_id}/taskInstances").json()
    states = {t["task_id"]: t["state"] for t in tasks["task_instances"]}
    assert states == {"extract": "success", "score": None, "publish": None}
    run = airflow_server.api("GET", f"/api/v2/dags/slack_failing/dagRuns/{run_id}").json()
    assert run["state"] == "queued"
    assert run["note"].endswith("retried from Slack by u0carol (U0CAROL)")

    again = reply_to(airflow_server, fake_slack, f"retry {run_id}", user=ALICE)
    assert again.startswith("Nothing to retry: no task of `slack_failing`")


@pytest.mark.parametrize("run_state, task_id, task_state, expected", [
    ("success", None, "success", "Nothing failed: `natality_daily` run `scheduled__1` succeeded; use `run` to "
                                 "score again: `/mlops run natality_daily date=2026-11-20 backend=local`."),
    ("success", "publish", "success", "Nothing failed: task `publish` of `natality_daily` run `scheduled__1` "
                                      "succeeded; use `run` to score again: `/mlops run natality_daily "
                                      "date=2026-11-20 backend=local`."),
    ("running", "publish", "running", "Nothing to retry: task `publish` of `natality_daily` run `scheduled__1` "
                                      "has not failed (state: running)."),
    ("running", None, "running", "Nothing to retry: no task of `natality_daily` run `scheduled__1` has failed "
                                 "(run state: running)."),
])
def test_retry_that_clears_nothing_says_what_is_true(tmp_path, run_state, task_id, task_state, expected):
    """The router alone, with an Airflow API stand-in: each case of `retry` finding nothing failed."""
    import asyncio

    from mlbatch.slack_commands.commands import Command, RunRef
    from mlbatch.slack_commands.policy import Actor, load_policy
    from mlbatch.slack_commands.router import Router, SlackRequest
    from slack_support import POLICY

    run = {"dag_id": PIPELINE, "dag_run_id": "scheduled__1", "state": run_state,
           "conf": {"date": "2026-11-20", "backend": "local", "note_list": [1]}}

    class Airflow:
        async def find_runs(self, run_id):
            return [run]

        async def pipelines(self, tag):
            return [{"dag_id": PIPELINE}]

        async def task_instances(self, dag_id, run_id):
            return [{"task_id": t, "map_index": -1, "state": task_state} for t in ("predict", "publish")]

        async def clear_failed(self, dag_id, run_id, task_ids, note):
            return []

    (tmp_path / "policy.yaml").write_text(POLICY)
    router = Router(policy=load_policy(tmp_path / "policy.yaml"), airflow=Airflow(), links_base="https://airflow.example")
    request = SlackRequest(actor=Actor(ALICE), text="retry scheduled__1", response_url=None)
    reply = asyncio.run(router.execute(request, Command("retry", run=RunRef("scheduled__1"), task_id=task_id)))
    assert reply.text == expected


def test_retry_button_with_a_forged_value_is_refused(airflow_server, fake_slack):
    response_url = fake_slack.response_url()
    payload = retry_button_payload(ALICE, response_url, '{"dag_id": "slack_failing"}')
    body = str(httpx.QueryParams({"payload": json.dumps(payload)}))
    response = httpx.post(f"{airflow_server.url}/slack/interactions", content=body, headers=signed(body), timeout=10)
    assert response.status_code == 200
    assert "This Retry button cannot be used: Retry button value lacks run_id, task_id" in (
        fake_slack.wait_reply(response_url)["text"])


def test_20_concurrent_commands_are_each_acked_and_answered_once(airflow_server, fake_slack):
    """20 commands arriving at once (each one's Airflow work then runs in the same server process):
    every one gets the placeholder acknowledgement and exactly one reply on its own response_url.
    Their latency is measured by bench/slack_ack.py (`make bench-slack`), not asserted here."""
    import asyncio

    concurrency = 20

    async def one(client, response_url):
        body = slash_command_form(f"status {PIPELINE}", BOB, response_url)
        response = await client.post(f"{airflow_server.url}/slack/commands", content=body, headers=signed(body))
        assert response.status_code == 200 and response.json()["text"].startswith("⏳"), response.text

    async def burst(urls):
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
            await asyncio.gather(*(one(client, url) for url in urls))

    urls = [fake_slack.response_url() for _ in range(concurrency)]
    asyncio.run(burst(urls))
    for url in urls:
        assert PIPELINE in fake_slack.wait_reply(url, timeout=120)["text"]
    assert [len(fake_slack.replies[url[len(fake_slack.url):]]) for url in urls] == [1] * concurrency
