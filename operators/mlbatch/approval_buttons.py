"""The contract between the quality gate's Slack message and the Slack commands app that answers it.

The gate (`mlbatch.operators.quality_gate`, through `mlbatch.alerts.gate_message`) draws Approve and
Reject buttons whose value names the waiting task instance (the Retry button's value shape); the app
(`mlbatch.slack_commands`) reads it back and answers Airflow's Human-in-the-loop request of that task
instance through the REST API. Both import this module and not each other, like `retry_button`.
"""

from __future__ import annotations

from mlbatch.retry_button import RetryTarget, decode_retry_value, encode_retry_value

APPROVE_ACTION_ID = "mlbatch_gate_approve"
REJECT_ACTION_ID = "mlbatch_gate_reject"
DECISIONS = {APPROVE_ACTION_ID: "approve", REJECT_ACTION_ID: "reject"}
APPROVE, REJECT = "Approve", "Reject"  # the HITL request's options (Airflow's ApprovalOperator's names)
OPTION = {"approve": APPROVE, "reject": REJECT}
REASON_PARAM, SLACK_USER_PARAM = "reason", "slack_user"  # the request's form fields (params_input)
GATE_ACTIONS_BLOCK = "mlbatch_gate_actions"  # the buttons' block, replaced by the decision once answered
GATE_HOW_BLOCK = "mlbatch_gate_how"  # the "or /mlops approve ..." line, dropped with the buttons
GATE_MESSAGE_XCOM = "slack_message"  # the gate task's XCom: where its message went (channel_id, ts, blocks)

GateTarget = RetryTarget  # dag_id, run_id, task_id, map_index: the waiting task instance


def encode_gate_value(target: GateTarget) -> str:
    return encode_retry_value(target, what="gate button")


def decode_gate_value(value: str) -> GateTarget:
    return decode_retry_value(value, what="gate button")


def decided_blocks(blocks: list[dict], line: str) -> list[dict]:
    """The gate's message once answered: its buttons (and the line on how to answer) replaced by `line`,
    who decided what ("✅ Approved by <@U0ALICE>")."""
    kept = [b for b in blocks if b.get("block_id") not in (GATE_ACTIONS_BLOCK, GATE_HOW_BLOCK)]
    return [*kept, {"type": "section", "block_id": GATE_ACTIONS_BLOCK, "text": {"type": "mrkdwn", "text": line[:3000]}}]
