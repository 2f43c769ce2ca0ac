"""The alert as Slack Block Kit, kept inside Slack's limits, plus a plain-text rendering of it.

Slack limits that shape this module (https://docs.slack.dev/reference/block-kit/blocks):
section/code text <= 3000 characters, <= 50 blocks per message, and in practice the whole message's
block text must stay under ~12k characters or chat.postMessage answers `msg_blocks_too_long`.
We budget `MAX_TOTAL_TEXT` for all block text and cut log excerpts (oldest lines first) to fit; the
complete log travels as a file in the alert's thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlbatch.retry_button import OPEN_LOGS_ACTION_ID, RETRY_ACTION_ID, RetryTarget, encode_retry_value

MAX_SECTION_TEXT = 3000
MAX_BLOCKS = 50
MAX_TOTAL_TEXT = 11_000
MAX_FALLBACK_TEXT = 3000  # the notification/preview text (`text`), not part of the block budget
CUT_MARK = "… (earlier lines cut; full log in the thread)"


@dataclass
class Link:
    label: str
    url: str


@dataclass
class Alert:
    """Everything one message says. Filled by the notifier, rendered by `blocks()` and `as_text()`."""

    kind: str  # "failure", "retry" or "success"
    pipeline: str
    dag_id: str
    task_id: str
    run_id: str
    try_number: int
    max_tries: int
    map_index: int = -1
    logical_date: str | None = None
    duration_s: float | None = None
    error_type: str | None = None
    error_message: str | None = None
    task_log: list[str] = field(default_factory=list)
    task_log_source: str = ""
    remote_backend: str | None = None
    remote_job: str | None = None
    remote_log: list[str] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    log_url: str | None = None
    mention: str | None = None
    facts: dict[str, str] = field(default_factory=dict)  # extra label -> value (success: rows, model, ...)
    repeat_of_thread: bool = False
    not_retried: str | None = None  # why the task failed at once although retries were left (docs/errors.md)

    @property
    def title(self) -> str:
        where = f"{self.dag_id}.{self.task_id}" + (f"[{self.map_index}]" if self.map_index >= 0 else "")
        if self.kind == "success":
            return f"✅ {self.pipeline} succeeded"
        if self.kind == "retry":
            return f"🔁 {where} failed try {self.try_number} of {self.max_tries}; retrying"
        again = "failed again" if self.repeat_of_thread else "failed"
        if self.not_retried:
            return f"🔴 {where} {again} (try {self.try_number}, not retried: a retry cannot fix it)"
        return f"🔴 {where} {again} (try {self.try_number} of {self.max_tries})"

    def fallback_text(self) -> str:
        """`text` of chat.postMessage: notifications, screen readers, clients without blocks."""
        parts = [self.title]
        if self.error_type:
            parts.append(f"{self.error_type}: {_one_line(self.error_message or '')}")
        if self.mention and self.kind == "failure":
            parts.insert(0, _mention_markup(self.mention))
        return _cut(" — ".join(parts), MAX_FALLBACK_TEXT)


def blocks(alert: Alert) -> list[dict]:
    """Block Kit blocks within Slack's limits (see module doc)."""
    out: list[dict] = [{"type": "header", "text": {"type": "plain_text", "text": _cut(alert.title, 150),
                                                   "emoji": True}}]
    if alert.mention and alert.kind == "failure" and not alert.repeat_of_thread:
        out.append(_section(f"{_mention_markup(alert.mention)} please take a look."))
    out.append({"type": "section", "fields": [_mrkdwn(f"*{k}*\n{_cut(v, 1900)}") for k, v in _fields(alert)][:10]})
    if alert.error_type:
        out.append(_section(f"*{alert.error_type}*\n```{_cut(_fence_safe(_escape(alert.error_message or '')), 1500)}```"))
    fixed = sum(_text_size(b) for b in out) + 800  # + links, buttons and context lines
    room = max(MAX_TOTAL_TEXT - fixed, 1000)
    excerpts = [(f"Task log, last lines ({alert.task_log_source})", alert.task_log)]
    if alert.remote_backend:
        excerpts.append((f"{alert.remote_backend} job {alert.remote_job or ''} log, last lines".replace("  ", " "),
                         alert.remote_log or ["(no lines returned)"]))
    shares = _shares([len("\n".join(lines)) for _, lines in excerpts if lines], room)
    for (label, lines), share in zip([e for e in excerpts if e[1]], shares):
        out.append(_section(f"*{label}*\n```{_tail_text(lines, min(share, MAX_SECTION_TEXT - len(label) - 20))}```"))
    if alert.links:
        out.append({"type": "context", "elements": [_mrkdwn(" · ".join(f"<{l.url}|{l.label}>" for l in alert.links))]})
    buttons = _buttons(alert)
    if buttons:
        out.append({"type": "actions", "block_id": "mlbatch_alert_actions", "elements": buttons})
    return out[:MAX_BLOCKS]


def _fields(alert: Alert) -> list[tuple[str, str]]:
    rows = [("Pipeline", alert.pipeline), ("Task", alert.task_id), ("Run", alert.run_id)]
    if alert.kind != "success":
        rows.append(("Try", f"{alert.try_number}, not retried: {alert.not_retried}" if alert.not_retried
                     else f"{alert.try_number} of {alert.max_tries}"))
    if alert.logical_date:
        rows.append(("Logical date", alert.logical_date))
    if alert.duration_s is not None:
        rows.append(("Duration", _duration(alert.duration_s)))
    rows.extend(alert.facts.items())
    return rows


def _buttons(alert: Alert) -> list[dict]:
    buttons: list[dict] = []
    if alert.kind == "failure":
        target = RetryTarget(alert.dag_id, alert.run_id, alert.task_id, alert.map_index)
        buttons.append({"type": "button", "action_id": RETRY_ACTION_ID, "style": "danger",
                        "text": {"type": "plain_text", "text": "Retry"}, "value": encode_retry_value(target),
                        "confirm": {"title": {"type": "plain_text", "text": "Retry this task?"},
                                    "text": {"type": "plain_text",
                                             "text": _cut(f"Clears {alert.dag_id}.{alert.task_id} in run "
                                                          f"{alert.run_id} so the scheduler runs it again.", 300)},
                                    "confirm": {"type": "plain_text", "text": "Retry"},
                                    "deny": {"type": "plain_text", "text": "Cancel"}}})
    if alert.log_url and alert.kind != "success":
        buttons.append({"type": "button", "action_id": OPEN_LOGS_ACTION_ID, "url": alert.log_url[:3000],
                        "text": {"type": "plain_text", "text": "Open logs"}})
    return buttons


def as_text(blocks_: list[dict], fallback: str = "") -> str:
    """Readable plain-text rendering of blocks (console in local mode, `make demo-alert`, reports)."""
    lines: list[str] = []
    for block in blocks_:
        kind = block.get("type")
        if kind == "header":
            lines += [block["text"]["text"], "=" * min(len(block["text"]["text"]), 80)]
        elif kind == "section":
            if "text" in block:
                lines.append(_plain(block["text"]["text"]))
            for f in block.get("fields", []):
                label, _, value = f["text"].partition("\n")
                lines.append(f"{label.strip('*') + ':':<14} {value}")
        elif kind == "context":
            lines.append(" · ".join(_plain(e.get("text", "")) for e in block["elements"]))
        elif kind == "actions":
            rendered = []
            for e in block["elements"]:
                label = e["text"]["text"]
                rendered.append(f"[{label}] {e['url']}" if "url" in e else f"[{label}] ({e['action_id']}: {e.get('value', '')})")
            lines.append("   ".join(rendered))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n" if lines else fallback


def total_text(blocks_: list[dict]) -> int:
    return sum(_text_size(b) for b in blocks_)


def _plain(mrkdwn: str) -> str:
    """mrkdwn -> plain text: links as `label (url)`, *bold* unmarked, code blocks indented verbatim."""
    import re

    out = []
    for i, part in enumerate(mrkdwn.split("```")):
        if i % 2:  # inside a code block
            out.append("\n" + "\n".join("    " + line for line in part.splitlines()) + "\n")
        else:
            part = re.sub(r"<([^|>]+)\|([^>]+)>", r"\2 (\1)", part)
            out.append(re.sub(r"\*([^*\n]+)\*", r"\1", part))
    return "".join(out).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").rstrip()


def _text_size(block: dict) -> int:
    size = 0
    stack: list = [block]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "text" and isinstance(v, str):
                    size += len(v)
                else:
                    stack.append(v)
        elif isinstance(node, list):
            stack.extend(node)
    return size


def _shares(sizes: list[int], room: int) -> list[int]:
    """Split `room` characters between excerpts: small ones keep everything, big ones share the rest."""
    shares = [0] * len(sizes)
    left, pending = room, sorted(range(len(sizes)), key=lambda i: sizes[i])
    while pending:
        fair = left // len(pending)
        i = pending.pop(0)
        shares[i] = min(sizes[i] + 100, fair)  # + room for escaping
        left -= shares[i]
    return shares


def _tail_text(lines: list[str], limit: int) -> str:
    """The last lines that fit in `limit` characters (Slack mrkdwn-escaped), newest kept."""
    limit = max(limit, 200)
    escaped = [_fence_safe(_escape(line))[:500] for line in lines]
    if sum(len(line) + 1 for line in escaped) <= limit:
        return "\n".join(escaped) or " "
    kept: list[str] = []
    size = 0
    for line in reversed(escaped):
        if size + len(line) + 1 > limit - len(CUT_MARK) - 1:
            kept.append(CUT_MARK)
            break
        kept.append(line)
        size += len(line) + 1
    return "\n".join(reversed(kept)) or " "


def _section(text: str) -> dict:
    return {"type": "section", "text": _mrkdwn(_cut(text, MAX_SECTION_TEXT))}


def _mrkdwn(text: str) -> dict:
    return {"type": "mrkdwn", "text": text}


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _fence_safe(text: str) -> str:
    """A code block cannot contain its own fence."""
    return text.replace("```", "ˋˋˋ")


def _mention_markup(mention: str) -> str:
    """`@here`/`@channel` -> Slack's special mentions; `<@U…>`/`<!subteam^…>` pass through."""
    if mention in ("@here", "@channel", "@everyone"):
        return f"<!{mention[1:]}>"
    return mention


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m} min"
