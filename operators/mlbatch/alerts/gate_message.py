"""The quality gate's Slack message: what drifted, links, and (when the run is held) Approve / Reject.

Built by the gate step and sent through the alert outbox like every alert (so it survives a Slack
outage); the chart of the worst column goes into the message's thread as a PNG file (the outbox's
attachment, files.getUploadURLExternal flow: Slack shows it inline). The buttons' values name the
waiting task instance (`mlbatch.approval_buttons`); the Slack app answers Airflow with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlbatch.alerts.message import Link, _cut, _escape, _mention_markup, _mrkdwn, _section, as_text
from mlbatch.approval_buttons import (APPROVE_ACTION_ID, GATE_ACTIONS_BLOCK, GATE_HOW_BLOCK, REJECT_ACTION_ID,
                                      GateTarget, decided_blocks, encode_gate_value)

MAX_SUMMARY_CHARS = 2500


@dataclass
class GateNotice:
    """Everything the message says. `level` is the verdict's: "warn" (published, told) or "block" (held)."""

    level: str
    pipeline: str
    target: GateTarget
    summary: list[str]
    baseline: str = ""
    links: list[Link] = field(default_factory=list)
    mention: str | None = None
    timeout: str = ""  # block: "in 12 h the run is rejected (quality.on_timeout)"
    command_name: str = "/mlops"

    @property
    def title(self) -> str:
        if self.level == "block":
            return f"🛑 {self.pipeline}: drift holds the run, approve or reject"
        return f"⚠️ {self.pipeline}: drift seen, the run publishes"

    def fallback_text(self) -> str:
        first = self.summary[0] if self.summary else ""
        mention = f"{_mention_markup(self.mention)} " if self.mention and self.level == "block" else ""
        return _cut(f"{mention}{self.title} — run {self.target.run_id}: {first}", 3000)


def payload(notice: GateNotice) -> dict:
    """chat.postMessage arguments (without the channel)."""
    return {"text": notice.fallback_text(), "blocks": blocks(notice), "unfurl_links": False, "unfurl_media": False}


def blocks(notice: GateNotice) -> list[dict]:
    out: list[dict] = [{"type": "header", "text": {"type": "plain_text", "text": _cut(notice.title, 150),
                                                   "emoji": True}}]
    if notice.mention and notice.level == "block":
        out.append(_section(f"{_mention_markup(notice.mention)} a decision is needed."))
    fields = [("Pipeline", notice.pipeline), ("Run", notice.target.run_id), ("Baseline", notice.baseline or "-")]
    if notice.timeout:
        fields.append(("If nobody answers", notice.timeout))
    out.append({"type": "section", "fields": [_mrkdwn(f"*{k}*\n{_cut(v, 1900)}") for k, v in fields]})
    lines = "\n".join(_escape(line) for line in notice.summary) or "(no finding)"
    out.append(_section(f"*What drifted (worst first)*\n```{_cut(lines, MAX_SUMMARY_CHARS)}```"))
    if notice.links:
        out.append({"type": "context", "elements": [
            _mrkdwn(" · ".join(f"<{link.url}|{link.label}>" for link in notice.links))]})
    if notice.level == "block":
        value = encode_gate_value(notice.target)
        out.append({"type": "actions", "block_id": GATE_ACTIONS_BLOCK, "elements": [
            {"type": "button", "action_id": APPROVE_ACTION_ID, "style": "primary", "value": value,
             "text": {"type": "plain_text", "text": "Approve"}},
            {"type": "button", "action_id": REJECT_ACTION_ID, "style": "danger", "value": value,
             "text": {"type": "plain_text", "text": "Reject"},
             "confirm": {"title": {"type": "plain_text", "text": "Reject this run?"},
                         "text": {"type": "plain_text", "text": "Nothing is published and the run fails."},
                         "confirm": {"type": "plain_text", "text": "Reject"},
                         "deny": {"type": "plain_text", "text": "Cancel"}}},
        ]})
        run = f"{notice.target.dag_id}/{notice.target.run_id}"
        out.append({"type": "context", "block_id": GATE_HOW_BLOCK, "elements": [_mrkdwn(
            f"Or `{notice.command_name} approve {run}` / `{notice.command_name} reject {run} [reason]`, "
            "or the run's Required Actions in Airflow.")]})
    return out


def update_decided(slack_conn_id: str, sent: dict, line: str, timeout_s: float = 10.0) -> None:
    """Replace the sent message's buttons with `line` (chat.update through the pipeline's Slack
    connection): for decisions made outside Slack (the Airflow UI, REST, the timeout's default); the
    Slack app updates the message itself for its own. Raises what Slack raises; callers log it."""
    from airflow.providers.slack.hooks.slack import SlackHook

    client = SlackHook(slack_conn_id=slack_conn_id, timeout=int(timeout_s)).client
    client.chat_update(channel=sent["channel_id"], ts=sent["ts"], text=sent.get("text") or line,
                       blocks=decided_blocks(sent.get("blocks") or [], line))


def as_plain_text(message: dict) -> str:
    return as_text(message.get("blocks") or [], message.get("text", ""))
