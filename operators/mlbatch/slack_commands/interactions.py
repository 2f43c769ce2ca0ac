"""Button presses (Slack `block_actions` payloads), for both front doors. Only the alerts' Retry
button does work here; other buttons (the alert's URL buttons) need nothing but the ack."""

from __future__ import annotations

import asyncio

from mlbatch.alerts.actions import RETRY_ACTION_ID, decode_retry_value
from mlbatch.slack_commands.audit import audit
from mlbatch.slack_commands.commands import Command, RunRef
from mlbatch.slack_commands.dispatch import Dispatcher
from mlbatch.slack_commands.policy import Actor
from mlbatch.slack_commands.router import Reply, SlackRequest


def handle_interaction(dispatcher: Dispatcher, payload: dict, source: str) -> asyncio.Task | None:
    """Start the work for a Retry press (a `retry` of that task instance, authorised like the
    command); the caller acks with an empty 200 at once. Returns the started task, if any."""
    if payload.get("type") != "block_actions":
        return None
    action = next((a for a in payload.get("actions") or [] if a.get("action_id") == RETRY_ACTION_ID), None)
    if action is None:
        return None
    user, team = payload.get("user") or {}, payload.get("team") or {}
    actor = Actor(user_id=user.get("id", ""), user_name=user.get("username") or user.get("name", ""),
                  team_id=team.get("id", ""))
    request = SlackRequest(actor=actor, text="retry (button)", response_url=payload.get("response_url"),
                           channel_id=(payload.get("channel") or {}).get("id", ""), source=source)
    try:
        target = decode_retry_value(action.get("value") or "")
    except ValueError as exc:
        audit(actor, "retry", "rejected", source=source, detail=f"bad button value: {exc}")
        return dispatcher.reply_later(request, Reply(f"⚠️ This Retry button cannot be used: {exc}"))
    command = Command("retry", run=RunRef(target.run_id, target.dag_id), task_id=target.task_id,
                      map_index=target.map_index)
    request = SlackRequest(actor=actor, text=f"retry {target.dag_id}/{target.run_id} {target.task_id}",
                           response_url=request.response_url, channel_id=request.channel_id, source=source,
                           button=command)
    return dispatcher.start(request, command)
