"""What keeps Slack acknowledgements fast under load (bench/slack_ack.py measures it on the live API
server): the app built at API server start, not on the first request; user-group membership known
before the first command and refreshed off the request path; the work after an ack waiting for the
burst's acks, a few commands at a time. No timing thresholds here: order and counts only."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import threading
import time
import types
from pathlib import Path

import httpx
import pytest

from slack_support import ALICE, BOB, SIGNING_SECRET, FakeSlack, signed, slash_command_form

REPO = Path(__file__).resolve().parents[1]


def test_the_api_server_is_recognised_and_other_components_are_not():
    from mlbatch.slack_commands.lazy_app import serving_api

    assert serving_api(["/venv/lib/python3.11/site-packages/airflow/__main__.py", "api-server", "--port", "8080"], {})
    assert serving_api(["/venv/bin/airflow", "api-server"], {})
    assert serving_api(["/venv/bin/gunicorn", "airflow.api_fastapi.main:app"], {})
    for component in ("scheduler", "dag-processor", "triggerer", "celery", "dags", "tasks"):
        assert not serving_api(["/venv/bin/airflow", component], {}), component
    assert not serving_api(["/venv/bin/python", "-m", "pytest"], {})
    assert serving_api(["/venv/bin/airflow", "scheduler"], {"MLBATCH_SLACK_APP_EAGER": "1"})
    assert not serving_api(["/venv/bin/airflow", "api-server"], {"MLBATCH_SLACK_APP_EAGER": "0"})


def _factory_module(monkeypatch, body):
    """A module `mlbatch_test_factory` whose `create()` runs `body()`; returns the call log."""
    calls: list[str] = []
    module = types.ModuleType("mlbatch_test_factory")

    def create():
        calls.append(threading.current_thread().name)
        return body()

    module.create = create
    monkeypatch.setitem(sys.modules, "mlbatch_test_factory", module)
    return calls


async def _get(app, path="/commands"):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        return await client.post(path, content=b"")


def test_the_app_is_built_at_start_up_in_a_thread_not_on_the_first_request(monkeypatch):
    from fastapi import FastAPI

    from mlbatch.slack_commands.lazy_app import LazyASGIApp

    def build():
        app = FastAPI()

        @app.post("/commands")
        def commands():
            return {"ok": True}

        return app

    calls = _factory_module(monkeypatch, build)
    lazy = LazyASGIApp("mlbatch_test_factory:create", eager=True)  # what the plugin makes in the API server
    deadline = time.monotonic() + 60
    while lazy.build_seconds is None and time.monotonic() < deadline:  # a hang guard, not a speed check
        time.sleep(0.01)
    assert calls == ["mlbatch-slack-app-build"]  # built before any request, off the main thread
    assert asyncio.run(_get(lazy)).json() == {"ok": True}
    assert calls == ["mlbatch-slack-app-build"]  # the first request found it ready

    elsewhere = _factory_module(monkeypatch, build)
    LazyASGIApp("mlbatch_test_factory:create", eager=False)  # scheduler, DAG processor, workers
    time.sleep(0.2)
    assert elsewhere == []  # nothing built, nothing heavy imported


def test_a_misconfigured_app_answers_503_with_the_reason_and_is_retried(monkeypatch):
    from mlbatch.slack_commands.lazy_app import LazyASGIApp

    def broken():
        raise ValueError("Airflow API credentials missing: set MLBATCH_AIRFLOW_TOKEN")

    calls = _factory_module(monkeypatch, broken)
    lazy = LazyASGIApp("mlbatch_test_factory:create", eager=False)
    for _ in range(2):
        response = asyncio.run(_get(lazy))
        assert response.status_code == 503
        assert "Slack commands are not configured: Airflow API credentials missing" in response.text
    assert len(calls) == 2  # each request tries again (the environment may have been fixed)


def test_the_plugin_module_imports_nothing_heavy():
    """Every Airflow component loads the plugin; only the API server may pay for FastAPI, Bolt, httpx."""
    import subprocess

    code = ("import sys, runpy; from airflow.plugins_manager import AirflowPlugin; before = set(sys.modules); "
            "runpy.run_path(sys.argv[1]); "
            "print(sorted(m for m in ('fastapi', 'starlette', 'slack_bolt', 'slack_sdk', 'httpx', 'aiohttp',"
            " 'mlbatch.slack_commands.bolt_app', 'mlbatch.slack_commands.http_app') if m in set(sys.modules) - before))")
    done = subprocess.run([sys.executable, "-c", code, str(REPO / "plugins" / "mlbatch_slack_commands.py")],
                          capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin",
                                                                            "AIRFLOW__CORE__UNIT_TEST_MODE": "True"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_user_groups_are_known_before_the_first_command_and_refreshed_behind_it():
    from mlbatch.slack_commands.usergroups import UsergroupDirectory

    slack = FakeSlack(usergroups={"S0ONCALL": [ALICE]}).start()
    try:
        directory = UsergroupDirectory("xoxb-test-bot-token", f"{slack.url}/api/", ttl_seconds=300)
        directory.prefetch({"S0ONCALL"})  # at app build time, synchronously
        assert slack.api_calls == ["usergroups.users.list"]

        async def scenario():
            assert await directory.groups_of(ALICE, {"S0ONCALL"}) == {"S0ONCALL"}
            assert slack.api_calls == ["usergroups.users.list"]  # the first command did not ask Slack
            slack.usergroups["S0ONCALL"] = [BOB]
            expires, members = directory._members["S0ONCALL"]
            directory._members["S0ONCALL"] = (time.monotonic() - 1, members)  # past its time, within a period
            assert await directory.groups_of(ALICE, {"S0ONCALL"}) == {"S0ONCALL"}  # answered from the cache ...
            for task in list(directory._refreshing.values()):
                await task  # ... while a lookup refreshes it
            assert len(slack.api_calls) == 2
            assert await directory.groups_of(BOB, {"S0ONCALL"}) == {"S0ONCALL"}
            directory._members["S0ONCALL"] = (time.monotonic() - 301, frozenset({BOB}))  # a whole period old
            slack.usergroups["S0ONCALL"] = []
            assert await directory.groups_of(BOB, {"S0ONCALL"}) == frozenset()  # looked up before answering

        asyncio.run(scenario())
    finally:
        slack.stop()


def test_a_burst_is_acknowledged_before_any_work_runs_and_work_runs_a_few_at_a_time(tmp_path):
    """20 commands at once: every ack is out before the first command's Airflow work starts, and no more
    than `work_concurrency` commands execute at once."""
    from mlbatch.slack_commands.http_app import create_app
    from mlbatch.slack_commands.router import Reply
    from mlbatch.slack_commands.settings import Settings

    (tmp_path / "policy.yaml").write_text(f"grants:\n  - users: [{ALICE}]\n    pipelines: ['*']\n    actions: [list]\n")
    settings = Settings(signing_secret=SIGNING_SECRET, airflow_username="u", airflow_password="p",
                        policy_path=str(tmp_path / "policy.yaml"), response_url_prefix="http://slack.invalid/",
                        work_concurrency=2)
    app = create_app(settings)
    commands = app.state.commands
    events: list[tuple[str, int]] = []
    running = {"now": 0, "most": 0}

    async def execute(request, command):
        running["now"] += 1
        running["most"] = max(running["most"], running["now"])
        events.append(("work", 0))
        await asyncio.sleep(0.01)
        running["now"] -= 1
        return Reply("done")

    commands.router.execute = execute
    replies: list[str] = []

    async def post(request, reply, respond):
        replies.append(reply.text)

    commands._post = post

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            async def one(i):
                body = slash_command_form("list", ALICE, f"http://slack.invalid/commands/{i}")
                response = await client.post("/commands", content=body, headers=signed(body))
                events.append(("ack", response.status_code))
                return response

            answers = await asyncio.gather(*(one(i) for i in range(20)))
            assert all(a.json()["text"].startswith("⏳ Working on") for a in answers)
            while len(replies) < 20:
                await asyncio.sleep(0.01)
            await commands.aclose()

    asyncio.run(scenario())
    kinds = [k for k, _ in events]
    assert kinds == ["ack"] * 20 + ["work"] * 20, kinds
    assert running["most"] == 2
    assert replies == ["done"] * 20  # every reply once


def test_bench_rewrites_only_its_own_section(tmp_path):
    spec = importlib.util.spec_from_file_location("slack_ack_bench", REPO / "bench" / "slack_ack.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = tmp_path / "results.md"
    results.write_text("# Scoring\nfigures\n\n<!-- whole-run:start -->\n## Whole run\nmore\n<!-- whole-run:end -->\n")
    bench.write_section(f"{bench.START_MARK}\n## Slack\nfirst\n{bench.END_MARK}\n", results)
    bench.write_section(f"{bench.START_MARK}\n## Slack\nsecond\n{bench.END_MARK}\n", results)
    text = results.read_text()
    assert text.count(bench.START_MARK) == 1 and "second" in text and "first" not in text
    assert text.startswith("# Scoring\nfigures\n\n<!-- whole-run:start -->\n## Whole run\nmore\n<!-- whole-run:end -->")
    assert bench.percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert json.loads(json.dumps(bench.POLICY))  # the policy is text for the stack's file
