"""The quality gate's Slack side without a stack (the live path: tests/test_live_gate.py): the message
within Slack's limits and its text rendering, the decision that replaces its buttons, the button value,
the `approve` / `reject` grammar and the policy's `approve` grant that both need."""

from __future__ import annotations

import pytest

from fake_slack import block_problem
from mlbatch.alerts.gate_message import GateNotice, as_plain_text, payload
from mlbatch.alerts.message import Link
from mlbatch.approval_buttons import (APPROVE_ACTION_ID, GATE_ACTIONS_BLOCK, REJECT_ACTION_ID, GateTarget,
                                      decided_blocks, decode_gate_value, encode_gate_value)
from mlbatch.slack_commands.commands import CommandError, parse_command
from mlbatch.slack_commands.policy import Actor, Policy
from mlbatch.slack_commands.router import Decision

TARGET = GateTarget("natality_gate", "manual__2026-11-04T00:00:00+00:00", "quality_gate")
LINES = [f"feature gestation_weeks psi {2.5 - i / 10:.3f} >= block 0.25" for i in range(5)]


def notice(level: str = "block", summary: list[str] | None = None) -> GateNotice:
    return GateNotice(level=level, pipeline="natality_gate", target=TARGET, summary=LINES if summary is None else summary,
                      baseline="last 3 committed runs (ds=2026-11-01 .. ds=2026-11-03)",
                      links=[Link("Airflow run", "http://airflow/dags/natality_gate/runs/x")], mention="@ml-oncall",
                      timeout="in 12 h the run is rejected (quality.on_timeout)")


def test_a_held_run_asks_with_both_buttons_and_says_what_drifted():
    message = payload(notice())
    assert block_problem(message["blocks"]) is None
    actions = [b for b in message["blocks"] if b.get("type") == "actions"]
    assert [e["action_id"] for e in actions[0]["elements"]] == [APPROVE_ACTION_ID, REJECT_ACTION_ID]
    assert decode_gate_value(actions[0]["elements"][0]["value"]) == TARGET
    text = as_plain_text(message)
    assert "drift holds the run" in text and LINES[0] in text and "quality.on_timeout" in text
    assert f"/mlops approve {TARGET.dag_id}/{TARGET.run_id}" in text
    assert message["text"].startswith("@ml-oncall 🛑 natality_gate: drift holds the run") and TARGET.run_id in message["text"]


def test_a_warning_has_no_buttons_and_a_long_summary_stays_within_slack_limits():
    message = payload(notice("warn", [f"feature f{i} " + "x" * 300 for i in range(40)]))
    assert block_problem(message["blocks"]) is None
    assert not [b for b in message["blocks"] if b.get("type") == "actions"]
    assert "the run publishes" in message["text"]


def test_the_decision_replaces_the_buttons_and_the_how_to_line():
    blocks = payload(notice())["blocks"]
    decided = decided_blocks(blocks, Decision(TARGET.dag_id, TARGET.run_id, TARGET.task_id, "reject", "U0ALICE",
                                              "feed switched to days").line())
    assert not [b for b in decided if b.get("type") == "actions" or "/mlops approve" in str(b)]
    assert decided[-1] == {"type": "section", "block_id": GATE_ACTIONS_BLOCK, "text": {
        "type": "mrkdwn", "text": "🚫 Rejected by <@U0ALICE>: feed switched to days"}}
    assert decided[:-1] == [b for b in blocks if b.get("type") != "actions" and "/mlops approve" not in str(b)]


@pytest.mark.parametrize("value, error", [
    ("nope", "gate button value is not JSON"),
    ('{"dag_id": "d", "run_id": "r"}', "gate button value lacks task_id"),
    ('{"dag_id": "d", "run_id": "r", "task_id": "t", "x": 1}', "unknown keys ['x']"),
])
def test_a_bad_button_value_says_what_is_wrong(value, error):
    with pytest.raises(ValueError, match=error.replace("[", r"\[").replace("]", r"\]")):
        decode_gate_value(value)
    assert decode_gate_value(encode_gate_value(TARGET)) == TARGET


def test_approve_and_reject_commands():
    approve = parse_command("approve natality_gate/manual__1")
    assert (approve.action, approve.run.pipeline, approve.run.run_id, approve.grant) == (
        "approve", "natality_gate", "manual__1", "approve")
    reject = parse_command("reject manual__1 the feed “switched” units")
    assert (reject.action, reject.reason, reject.grant) == ("reject", "the feed switched units", "approve")
    with pytest.raises(CommandError, match="Missing the run id"):
        parse_command("reject")
    with pytest.raises(CommandError, match="Unexpected `now`"):
        parse_command("approve manual__1 now")


def test_only_an_approve_grant_allows_approving_or_rejecting():
    policy = Policy.model_validate({"read_only_for_everyone": True, "grants": [
        {"users": ["U0ALICE"], "pipelines": ["natality_*"], "actions": ["approve"]},
        {"users": ["U0BOB"], "pipelines": ["*"], "actions": ["run", "retry"]}]})
    alice, bob = Actor("U0ALICE"), Actor("U0BOB")
    assert policy.allows(alice, "approve", "natality_gate") and not policy.allows(alice, "approve", "other")
    assert not policy.allows(bob, "approve", "natality_gate") and not policy.allows_somewhere(bob, "approve")
    assert not policy.allows(alice, "run", "natality_gate")
