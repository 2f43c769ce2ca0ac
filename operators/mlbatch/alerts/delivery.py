"""Getting an outbox entry to Slack within a time budget, never raising into the task.

Through the slack provider's `SlackHook` (its connection holds the token and may set `base_url`), with
slack_sdk retry handlers that honour 429 Retry-After and retry a 500/503 once, but only while the
deadline allows: a task must never wait on Slack for more than a few seconds. Whatever does not get
through stays `pending` in the outbox, with the error, for the next flush; an optional incoming-webhook
connection is the fallback channel. Local mode (no Slack connection or no token) keeps alerts as
`local` in the outbox and prints them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from mlbatch.alerts.outbox import Outbox, OutboxEntry

log = logging.getLogger(__name__)

DEFAULT_BUDGET_S = 4.0
REQUEST_TIMEOUT_S = 3.0
LOCAL = "local"
FRESH_S = 60.0  # a never-tried alert this young belongs to the process that queued it


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())


@dataclass
class SendResult:
    status: str  # "sent", "pending" (kept for later) or "local"
    detail: str = ""
    ts: str | None = None
    channel_id: str | None = None


def slack_connection_status(conn_id: str) -> str | None:
    """None when `conn_id` exists and has a token; otherwise why alerts stay local.

    Only a connection that does not exist means local mode. Any other error of the look-up (secrets
    backend or API server unreachable, a malformed connection) is raised: the caller keeps the alert
    pending for the next flush instead of filing it as local, where it would never be sent.
    """
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception as exc:
        if type(exc).__name__ != "AirflowNotFoundException":  # core and task SDK each have one
            raise
        return f"no Slack connection {conn_id!r}"
    if not conn.password:
        return f"Slack connection {conn_id!r} has no token (password)"
    return None


def default_channel(conn_id: str) -> str | None:
    """The Slack connection's `extra.channel`: the channel for pipelines whose spec names none."""
    try:
        from airflow.sdk import BaseHook

        return BaseHook.get_connection(conn_id).extra_dejson.get("channel")
    except Exception as exc:
        log.warning("No default Slack channel from connection %r: %s: %s", conn_id, type(exc).__name__, exc)
        return None


@dataclass
class Route:
    """Clients made in the calling thread (connection look-ups go through the task's supervisor channel,
    which belongs to that thread); only the HTTP calls run in the worker thread."""

    client: Any
    default_channel: str | None
    webhook: Any | None


class SlackDelivery:
    """Sends outbox entries. One instance per notification; cheap to make."""

    def __init__(self, outbox: Outbox, *, conn_id: str = "slack_api_default", webhook_conn_id: str | None = None,
                 thread_window_s: float = 6 * 3600, request_timeout_s: float = REQUEST_TIMEOUT_S):
        self.outbox = outbox
        self.conn_id = conn_id
        self.webhook_conn_id = webhook_conn_id
        self.thread_window_s = thread_window_s
        self.request_timeout_s = request_timeout_s

    def send_within(self, entry_id: int | None, budget_s: float, flush: bool = True) -> SendResult:
        """Send entry `entry_id` (None: only flush), then older pending entries while time is left; wait
        at most `budget_s`. What is not sent by then stays pending for the next flush."""
        deadline = Deadline(budget_s)
        try:
            route = self._route(deadline)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning("Slack alert %s not delivered (kept in %s): %s", entry_id, self.outbox.path, error)
            if entry_id is not None:
                self.outbox.mark_failed(entry_id, error)
            return SendResult("pending", error)
        results: list[SendResult] = []

        def work() -> None:
            if entry_id is not None:
                results.append(self._send_safely(entry_id, route, deadline))
            if flush and (entry_id is None or results[0].status == "sent"):
                self._flush(route, deadline, exclude=entry_id, into=results)

        worker = threading.Thread(target=work, name=f"mlbatch-alert-{entry_id}", daemon=True)
        worker.start()
        worker.join(timeout=budget_s + 0.2)
        if entry_id is None:
            sent = sum(r.status == "sent" for r in results)
            return SendResult("sent" if sent else "pending", f"{sent} of {len(results)} pending alerts sent")
        if results:
            return results[0]
        self.outbox.mark_failed(entry_id, f"not sent within the {budget_s:.1f} s budget")
        return SendResult("pending", f"not sent within the {budget_s:.1f} s budget")

    def _flush(self, route: Route, deadline: Deadline, exclude: int | None, into: list[SendResult]) -> None:
        """Re-send pending alerts, oldest first, while the budget lasts; stop at the first failure.
        One flusher per outbox at a time: another process flushing means nothing to do here."""
        with self.outbox.flush_lock() as mine:
            if mine:
                self._flush_locked(route, deadline, exclude, into)

    def _flush_locked(self, route: Route, deadline: Deadline, exclude: int | None,
                      into: list[SendResult]) -> None:
        for entry in self.outbox.entries("pending", limit=50):
            if entry.id == exclude:
                continue
            if entry.attempts == 0 and time.time() - entry.created < FRESH_S:
                continue  # its own process is sending it right now: not ours to post
            if deadline.remaining() < 0.5:
                break
            into.append(self._send_safely(entry.id, route, deadline, delayed=True))
            if into[-1].status != "sent":
                break

    def _route(self, deadline: Deadline) -> Route:
        why_local = slack_connection_status(self.conn_id)
        if why_local:
            raise RuntimeError(why_local)
        from airflow.providers.slack.hooks.slack import SlackHook

        timeout = max(0.5, min(self.request_timeout_s, deadline.remaining()))
        hook = SlackHook(slack_conn_id=self.conn_id, timeout=timeout,  # type: ignore[arg-type]
                         retry_handlers=retry_handlers(deadline))
        webhook = None
        if self.webhook_conn_id:
            try:
                from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

                webhook = SlackWebhookHook(slack_webhook_conn_id=self.webhook_conn_id, timeout=timeout,  # type: ignore[arg-type]
                                           retry_handlers=retry_handlers(deadline))
                webhook.client  # noqa: B018  (resolves the connection here, in the calling thread)
            except Exception as exc:
                log.warning("Webhook fallback %r unusable: %s", self.webhook_conn_id, exc)
                webhook = None
        return Route(client=hook.client, default_channel=default_channel(self.conn_id), webhook=webhook)

    def _send_safely(self, entry_id: int, route: Route, deadline: Deadline, delayed: bool = False) -> SendResult:
        try:
            return self._send(self.outbox.get(entry_id), route, deadline, delayed)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning("Slack alert %s not delivered (kept in %s): %s", entry_id, self.outbox.path, error)
            self.outbox.mark_failed(entry_id, error)
            return self._webhook_fallback(entry_id, route, deadline, error) or SendResult("pending", error)

    def _send(self, entry: OutboxEntry, route: Route, deadline: Deadline, delayed: bool) -> SendResult:
        from slack_sdk.errors import SlackApiError

        channel = entry.channel or route.default_channel
        if not channel:
            raise ValueError(f"no channel: set alerts.slack_channel in the spec or extra.channel of "
                             f"connection {self.conn_id!r}")
        client = route.client
        payload = dict(entry.payload, channel=channel)
        if delayed:
            payload = _mark_delayed(payload, entry)
        thread = self.outbox.thread_for(entry.thread_key, self.thread_window_s) if entry.thread_key else None
        if thread:
            payload["channel"], payload["thread_ts"] = thread
        try:
            response = client.chat_postMessage(**payload)
        except SlackApiError as exc:
            if exc.response.get("error") not in ("invalid_blocks", "msg_blocks_too_long"):
                raise
            # Never lose an alert over its formatting: resend as plain text, say so.
            log.warning("Slack refused the blocks (%s); sending the alert as plain text", exc.response.get("error"))
            self.outbox.note(entry.id, f"blocks refused: {exc.response.get('error')}")
            payload.pop("blocks", None)
            response = client.chat_postMessage(**payload)
        ts, channel_id = response.get("ts"), response.get("channel")
        self.outbox.mark_sent(entry.id, ts=ts, channel_id=channel_id)
        if entry.thread_key and not thread and ts and channel_id:
            self.outbox.remember_thread(entry.thread_key, channel_id, ts)
        if entry.attachment and channel_id and ts:
            self._attach(client, entry, channel_id, thread[1] if thread else ts, deadline)
        return SendResult("sent", ts=ts, channel_id=channel_id)

    def _attach(self, client: Any, entry: OutboxEntry, channel_id: str, thread_ts: str, deadline: Deadline) -> None:
        """The full log as a file in the alert's thread (files.getUploadURLExternal flow)."""
        if deadline.remaining() < 0.5:
            self.outbox.note(entry.id, "full log not attached: out of time budget")
            return
        try:
            client.files_upload_v2(channel=channel_id, thread_ts=thread_ts, content=entry.attachment,
                                   filename=entry.attachment_name or "task.log", title=entry.attachment_name,
                                   initial_comment="Full task log of this try (secrets masked).")
        except Exception as exc:
            log.warning("Alert %s sent, but the full log could not be attached: %s", entry.id, exc)
            self.outbox.note(entry.id, f"full log not attached: {type(exc).__name__}: {exc}")

    def _webhook_fallback(self, entry_id: int, route: Route, deadline: Deadline, error: str) -> SendResult | None:
        if route.webhook is None or deadline.remaining() < 0.5:
            return None
        try:
            entry = self.outbox.get(entry_id)
            route.webhook.send(text=entry.payload.get("text"), blocks=entry.payload.get("blocks"))
        except Exception as exc:
            log.warning("Webhook fallback for alert %s failed too: %s", entry_id, exc)
            return None
        self.outbox.mark_sent(entry_id, ts=None, channel_id=None)
        self.outbox.note(entry_id, f"sent through webhook {self.webhook_conn_id!r} after: {error}")
        return SendResult("sent", detail=f"webhook fallback after: {error}")


def retry_handlers(deadline: Deadline) -> list:
    """429: wait exactly Retry-After and retry, if that fits the deadline; 500/503: one quick retry."""
    from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler, ServerErrorRetryHandler

    class RateLimitWithinDeadline(RateLimitErrorRetryHandler):
        def _can_retry(self, *, state, request, response=None, error=None) -> bool:
            return (response is not None and response.status_code == 429
                    and _retry_after(response) + 0.3 < deadline.remaining())

        def prepare_for_next_attempt(self, *, state, request, response=None, error=None) -> None:
            wait = _retry_after(response)
            log.info("Slack rate limit: waiting %.1f s (Retry-After) before retrying", wait)
            time.sleep(wait)
            state.next_attempt_requested = True
            state.increment_current_attempt()

    class ServerErrorWithinDeadline(ServerErrorRetryHandler):
        def _can_retry(self, *, state, request, response=None, error=None) -> bool:
            return super()._can_retry(state=state, request=request, response=response,
                                      error=error) and deadline.remaining() > 1.0

        def prepare_for_next_attempt(self, *, state, request, response=None, error=None) -> None:
            time.sleep(0.2)
            state.next_attempt_requested = True
            state.increment_current_attempt()

    return [RateLimitWithinDeadline(max_retry_count=2), ServerErrorWithinDeadline(max_retry_count=1)]


def _retry_after(response: Any) -> float:
    for key, value in response.headers.items():
        if key.lower() == "retry-after":
            try:
                return float(value[0] if isinstance(value, list) else value)
            except (TypeError, ValueError):
                return 1.0
    return 1.0


def _mark_delayed(payload: dict, entry: OutboxEntry) -> dict:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(entry.created))
    note = f"⏱ Delayed alert, raised {stamp}; first sending failed: {(entry.last_error or '?')[:300]}"
    blocks = list(payload.get("blocks") or [])
    if blocks:
        blocks.insert(1, {"type": "context", "elements": [{"type": "mrkdwn", "text": note}]})
        blocks = blocks[:50]
    return dict(payload, blocks=blocks) if blocks else dict(payload, text=f"{note}\n{payload.get('text', '')}")
