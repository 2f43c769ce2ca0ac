"""Policy, parameters and signatures without a server: default deny, typed params, Slack's v0 scheme."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from mlbatch.slack_commands.commands import CommandError
from mlbatch.slack_commands.params import run_conf
from mlbatch.slack_commands.policy import Actor, PolicyError, load_policy
from mlbatch.slack_commands.signature import MemoryReplayGuard, RedisReplayGuard, RequestVerifier, UnverifiedRequest
from slack_support import signed

REPO = Path(__file__).resolve().parents[1]


def test_example_policy_loads_and_denies_writes_by_default():
    policy = load_policy(REPO / "include" / "slack_policy.yaml")
    stranger = Actor("U0STRANGER")
    assert not policy.allows(stranger, "run", "natality_daily")
    assert not policy.allows(stranger, "retry", "natality_daily")
    assert policy.allows(stranger, "help", "natality_daily")


def test_grants_by_user_group_and_pipeline_pattern(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("grants:\n  - usergroups: [S1]\n    pipelines: ['natality_*']\n    actions: [run, status]\n")
    policy = load_policy(path)
    member, other = Actor("U1", usergroups=frozenset({"S1"})), Actor("U2")
    assert policy.allows(member, "run", "natality_daily")
    assert not policy.allows(member, "run", "churn_daily")
    assert not policy.allows(member, "retry", "natality_daily")
    assert not policy.allows(other, "status", "natality_daily")  # read-only is not open by default
    assert policy.usergroup_ids == {"S1"}


def test_broken_policy_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("grants:\n  - users: [U1]\n    pipelines: ['*']\n    actions: [run, deploy]\n")
    with pytest.raises(PolicyError, match=r"policy.yaml: invalid Slack command policy: grants.0.actions.1"):
        load_policy(path)
    path.write_text("read_only_for_everyone: true\nallow_all: true\n")
    with pytest.raises(PolicyError, match="allow_all"):
        load_policy(path)


PARAMS = {
    "backend": {"value": "dataflow", "schema": {"type": "string", "enum": ["dataflow", "local"]}},
    "date": {"value": None, "schema": {"type": ["string", "null"], "format": "date"}},
    "rows": {"value": 10, "schema": {"type": "integer", "minimum": 1}},
}


def test_params_are_typed_and_checked_against_the_schema():
    assert run_conf("p", PARAMS, {"backend": "local", "date": "2026-11-20", "rows": "5"}) == {
        "backend": "local", "date": "2026-11-20", "rows": 5}
    assert run_conf("p", PARAMS, {"date": "null"}) == {"date": None}
    for given, message in [({"rows": "0"}, "`rows=0` is not allowed"), ({"rows": "many"}, "expected integer"),
                           ({"date": "2026-13-01"}, "expected a date"), ({"x": "1"}, "`p` has no parameter `x`")]:
        with pytest.raises(CommandError, match=message):
            run_conf("p", PARAMS, given)


def verify(verifier, body, headers):
    return asyncio.run(verifier.verify(body.encode(), {k.lower(): v for k, v in headers.items()}))


def test_signature_window_and_replay():
    verifier = RequestVerifier("secret")
    body = "text=status&user_id=U1"
    verify(verifier, body, signed(body, "secret"))
    with pytest.raises(UnverifiedRequest, match="replayed"):
        verify(verifier, body, signed(body, "secret"))
    with pytest.raises(UnverifiedRequest, match=r"timestamp is 30\d s from now \(allowed: 300 s\)"):
        verify(verifier, body, signed(body, "secret", timestamp=int(time.time()) - 301))
    with pytest.raises(UnverifiedRequest, match="not a number"):
        verify(verifier, body, {**signed(body, "secret"), "X-Slack-Request-Timestamp": "soon"})
    with pytest.raises(UnverifiedRequest, match="SLACK_SIGNING_SECRET is not set"):
        verify(RequestVerifier(None), body, signed(body, "secret"))


def test_memory_guard_forgets_signatures_after_the_window():
    now = [1000.0]
    guard = MemoryReplayGuard(clock=lambda: now[0])
    assert asyncio.run(guard.first_time("sig", expires_at=1300))
    assert not asyncio.run(guard.first_time("sig", expires_at=1300))
    now[0] = 1301
    assert asyncio.run(guard.first_time("sig", expires_at=1600))


def test_redis_guard_is_shared_between_workers():
    prefix = f"mlbatch-test-{time.time_ns()}:"

    async def scenario():
        import redis.asyncio

        first, second = (RedisReplayGuard("redis://127.0.0.1:6379/0", prefix) for _ in range(2))
        try:
            return [await first.first_time("sig", time.time() + 60), await second.first_time("sig", time.time() + 60)]
        finally:
            client = redis.asyncio.Redis.from_url("redis://127.0.0.1:6379/0")
            await client.delete(prefix + "sig")
            await client.aclose()
            for guard in (first, second):
                await guard._redis.aclose()

    assert asyncio.run(scenario()) == [True, False]
