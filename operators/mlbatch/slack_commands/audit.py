"""Every Slack action leaves a trace: one log line per request (allowed or refused), and on the DAG
run a note saying who did it from Slack."""

from __future__ import annotations

import logging

from mlbatch.slack_commands.policy import Actor

log = logging.getLogger("mlbatch.slack_commands.audit")


def audit(actor: Actor, action: str, outcome: str, *, source: str, pipeline: str | None = None,
          run_id: str | None = None, detail: str = "") -> None:
    log.info("slack command: user=%s name=%s team=%s source=%s action=%s pipeline=%s run_id=%s outcome=%s%s",
             actor.user_id, actor.user_name or "-", actor.team_id or "-", source, action, pipeline or "-",
             run_id or "-", outcome, f" detail={detail}" if detail else "")


def trigger_note(actor: Actor, command_text: str) -> str:
    return f"triggered from Slack by {actor}: `/mlops {command_text}`"[:1000]


def retry_note(actor: Actor) -> str:
    return f"retried from Slack by {actor}"
