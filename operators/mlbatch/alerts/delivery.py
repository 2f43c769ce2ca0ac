"""Getting outbox entries to Slack, in the order they were raised, never raising into the task.

Two callers, one sending path (`SlackDelivery.round`):

- the task that raised an alert (`send_within`): it waits at most a few seconds (the budget) for the
  flush lock and for Slack, sends the pending alerts queued before its own and then its own, and leaves
  whatever did not get through `pending` for the flusher;
- the flusher (`mlbatch.alerts.flusher`, `python -m mlbatch.alerts flush --loop`), which retries pending
  alerts on its own, with backoff, honouring Slack's 429 `Retry-After`.

Whoever sends holds the outbox's flush lock, so one alert is posted once and alerts go out oldest first.
A failure is sorted (`classify`): Slack or its connection failing (5xx, 429, network, a refused token)
stops the round and backs the route off (`Outbox.route_failed`); Slack refusing one alert (a channel
that does not exist, ...) delays that alert alone, so it cannot hold up the others. An alert that goes
out late says so in a context line: when it was raised, how late, and why.

Through the slack provider's `SlackHook` (its connection holds the token and may set `base_url`). In the
task, slack_sdk retry handlers retry a 429 after `Retry-After` and a 500/503 once, but only while the
budget allows; the flusher makes no retries inside a call (its loop is the retry). An optional
incoming-webhook connection is the fallback channel. Local mode (no Slack connection or no token) keeps
alerts as `local` in the outbox and prints them.

Why one module of this length: the task's send and the flusher share one sending path
(`SlackDelivery.round`), and its failure sorting, backoff and retry handlers decide together whether an
alert is posted once and in order.
"""

from __future__ import annotations

import http.client
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlbatch.alerts.outbox import Outbox, OutboxEntry, RouteState

log = logging.getLogger(__name__)

DEFAULT_BUDGET_S = 4.0
REQUEST_TIMEOUT_S = 3.0
LATE_S = 60.0  # an alert sent later than this after it was raised is marked as delayed
BACKOFF_FIRST_S = 5.0  # after a failure, the flusher's next try; doubles per failure ...
BACKOFF_MAX_S = 30.0  # ... up to this: an alert goes out within ~30 s of Slack coming back (Retry-After aside)
ALERT_BACKOFF_MAX_S = 3600.0  # an alert Slack itself refused (bad channel, ...) is retried at most hourly

# Slack error codes that say "Slack, not this message": the whole route waits.
TRANSIENT_CODES = {"ratelimited", "fatal_error", "internal_error", "service_unavailable", "request_timeout",
                   "team_added_to_org"}
AUTH_CODES = {"invalid_auth", "not_authed", "token_revoked", "token_expired", "account_inactive",
              "missing_scope", "no_permission", "ekm_access_denied", "org_login_required"}


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


@dataclass
class Failure:
    """A failed try, sorted. `scope`: "route" (Slack or the connection failed: stop, back off) or
    "alert" (Slack refused this alert: it alone waits)."""

    scope: str
    error: str  # the detail (outbox `last_error`, logs)
    reason: str  # in words, for the delayed note ("Slack was unreachable (HTTP 500: fatal_error)")
    retry_after: float | None = None


@dataclass
class Round:
    """What one pass over the outbox did."""

    results: dict[int, SendResult] = field(default_factory=dict)
    held: dict[str, tuple[str, float]] = field(default_factory=dict)  # conn id -> (why its alerts wait, until)
    more: bool = False  # stopped at the round's size with more alerts due

    def why_held(self, now: float) -> str:
        return "; ".join(f"{why}; next try in {max(0.0, until - now):.0f} s" for why, until in self.held.values())

    @property
    def sent(self) -> int:
        return sum(r.status == "sent" for r in self.results.values())


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
    webhook_conn_id: str | None = None


class NoChannel(ValueError):
    """The alert names no channel and its connection has no default one."""


class SlackDelivery:
    """Sends outbox entries. Cheap to make: one per notification, one per flusher."""

    def __init__(self, outbox: Outbox, *, conn_id: str = "slack_api_default", webhook_conn_id: str | None = None,
                 thread_window_s: float = 6 * 3600, request_timeout_s: float = REQUEST_TIMEOUT_S,
                 in_call_retries: bool = True):
        self.outbox = outbox
        self.conn_id = conn_id
        self.webhook_conn_id = webhook_conn_id
        self.thread_window_s = thread_window_s
        self.request_timeout_s = request_timeout_s
        self.in_call_retries = in_call_retries

    # -- the task's path -------------------------------------------------------------------------
    def send_within(self, entry_id: int | None, budget_s: float, flush: bool = True) -> SendResult:
        """Send entry `entry_id` (None: only flush) after the pending alerts queued before it, then later
        ones while time is left (`flush`); wait at most `budget_s`. What is not sent by then stays
        pending for the flusher. Slack's Retry-After is honoured; the flusher's backoff is not (a new
        alert is worth one try)."""
        deadline = Deadline(budget_s)
        try:
            route = self._route(self.conn_id, self.webhook_conn_id, deadline)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning("Slack alert %s not delivered (kept in %s): %s", entry_id, self.outbox.path, error)
            if entry_id is not None:
                self.outbox.mark_failed(entry_id, error, reason=_lookup_reason(self.conn_id, exc))
            return SendResult("pending", error)
        rounds: list[Round | None] = []

        def work() -> None:
            with self.outbox.flush_lock(wait_s=max(0.0, deadline.remaining() - 0.5)) as mine:
                if not mine:
                    rounds.append(None)
                    return
                own = {self.conn_id: route}
                rounds.append(self.round(lambda conn_id, webhook_conn_id: own.get(conn_id), deadline,
                                         upto=None if flush else entry_id, honour_backoff=False))

        worker = threading.Thread(target=work, name=f"mlbatch-alert-{entry_id}", daemon=True)
        worker.start()
        worker.join(timeout=budget_s + 0.2)
        done = rounds[0] if rounds else None
        if entry_id is None:
            sent = done.sent if done else 0
            tried = len(done.results) if done else 0
            return SendResult("sent" if sent else "pending", f"{sent} of {tried} pending alerts sent")
        if done is not None and entry_id in done.results:
            return done.results[entry_id]
        entry = self.outbox.get(entry_id)
        if entry.status == "sent":  # a flusher (or an earlier alert's round) sent it
            return SendResult("sent", "sent by another process", ts=entry.ts, channel_id=entry.channel_id)
        if not rounds:
            why = f"not sent within the {budget_s:.1f} s budget"
            self.outbox.mark_failed(entry_id, why, reason="Slack did not answer in time")
        elif done is None:
            why = "another process is sending the outbox; it sends this alert next"
        else:
            why = done.why_held(self.outbox.clock()) or "out of time budget behind older pending alerts"
        return SendResult("pending", why)

    # -- one pass, for the task and the flusher ----------------------------------------------------
    def round(self, routes: Callable[[str, str | None], Route | None], deadline: Deadline, *,
              upto: int | None = None, honour_backoff: bool = True, limit: int = 50,
              stop: Callable[[], bool] = lambda: False) -> Round:
        """Send due pending alerts oldest first, while `deadline` lasts. Call with the flush lock held.

        `routes(conn_id, webhook_conn_id)` gives the route of a connection (None: not this caller's
        to send; raising: the connection cannot be used now). A route that fails stops for this round,
        and its later alerts wait too (order); an alert Slack refused waits alone."""
        out = Round()
        due = self.outbox.due(limit + 1)
        out.more = len(due) > limit
        for entry in due[:limit]:
            if upto is not None and entry.id > upto:
                break
            if stop() or deadline.remaining() < 0.5:
                out.more = True
                break
            conn_id = entry.conn_id or self.conn_id
            if conn_id in out.held:
                self._hold(entry, out.held[conn_id][0])
                continue
            state = self.outbox.route(conn_id)
            if self._backing_off(entry, conn_id, state, honour_backoff, out):
                continue
            try:
                route = routes(conn_id, entry.webhook_conn_id or self.webhook_conn_id)
            except Exception as exc:
                failure = Failure("route", f"{type(exc).__name__}: {exc}", _lookup_reason(conn_id, exc))
                self._route_failed(entry, conn_id, state.failures, failure, out)
                continue
            if route is not None:
                self._send_one(entry, conn_id, state, route, deadline, out)
        return out

    def _backing_off(self, entry: OutboxEntry, conn_id: str, state: RouteState, honour_backoff: bool,
                     out: Round) -> bool:
        """Whether the route waits (Slack's Retry-After, or our backoff when honoured): then the alert
        and the route's later alerts are held for this round."""
        now = self.outbox.clock()
        wait_until = max(state.retry_after_until or 0.0, (state.backoff_until or 0.0) if honour_backoff else 0.0)
        if wait_until <= now:
            return False
        out.held[conn_id] = (state.reason or "Slack failed", wait_until)
        self._hold(entry, state.reason or "Slack failed")
        return True

    def _send_one(self, entry: OutboxEntry, conn_id: str, state: RouteState, route: Route, deadline: Deadline,
                  out: Round) -> None:
        """Send one alert into `out.results`: a route failure backs the route off, Slack refusing the
        alert delays it alone; either way the webhook fallback may still post it."""
        try:
            out.results[entry.id] = self._send(entry, route, deadline)
        except Exception as exc:
            failure = classify(exc)
            log.warning("Slack alert %s not delivered (kept in %s): %s", entry.id, self.outbox.path,
                        failure.error)
            if failure.scope == "route":
                self._route_failed(entry, conn_id, state.failures, failure, out)
            else:
                self.outbox.mark_failed(entry.id, failure.error, reason=failure.reason,
                                        next_try=self.outbox.clock() + _alert_backoff(entry.attempts + 1))
                out.results[entry.id] = SendResult("pending", failure.error)
            fallback = self._webhook_fallback(entry.id, route, deadline, failure.error)
            if fallback is not None:
                out.results[entry.id] = fallback
            return
        if state.failures or state.retry_after_until:
            self.outbox.route_ok(conn_id)

    def _route_failed(self, entry: OutboxEntry, conn_id: str, failures: int, failure: Failure, out: Round) -> None:
        self.outbox.mark_failed(entry.id, failure.error, reason=failure.reason)
        backoff = backoff_s(failures + 1)
        self.outbox.route_failed(conn_id, backoff_s=backoff, retry_after_s=failure.retry_after, reason=failure.reason)
        wait = max(backoff, failure.retry_after or 0.0)
        out.held[conn_id] = (failure.reason, self.outbox.clock() + wait)
        out.results[entry.id] = SendResult("pending", failure.error)

    def _hold(self, entry: OutboxEntry, reason: str) -> None:
        if entry.first_error is None:
            self.outbox.hold(entry.id, reason)

    def _route(self, conn_id: str, webhook_conn_id: str | None, deadline: Deadline | None) -> Route:
        """The Slack client of a connection. Raises when it has no token or cannot be read."""
        why_local = slack_connection_status(conn_id)
        if why_local:
            raise RuntimeError(why_local)
        from airflow.providers.slack.hooks.slack import SlackHook

        timeout = self.request_timeout_s if deadline is None else max(0.5, min(self.request_timeout_s,
                                                                               deadline.remaining()))
        handlers = retry_handlers(deadline) if self.in_call_retries and deadline is not None else []
        hook = SlackHook(slack_conn_id=conn_id, timeout=timeout,  # type: ignore[arg-type]
                         retry_handlers=handlers)
        webhook = None
        if webhook_conn_id:
            try:
                from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

                webhook = SlackWebhookHook(slack_webhook_conn_id=webhook_conn_id, timeout=timeout,  # type: ignore[arg-type]
                                           retry_handlers=handlers)
                webhook.client  # noqa: B018  (resolves the connection here, in the calling thread)
            except Exception as exc:
                log.warning("Webhook fallback %r unusable: %s", webhook_conn_id, exc)
                webhook = None
        return Route(client=hook.client, default_channel=default_channel(conn_id), webhook=webhook,
                     webhook_conn_id=webhook_conn_id)

    def _send(self, entry: OutboxEntry, route: Route, deadline: Deadline) -> SendResult:
        from slack_sdk.errors import SlackApiError

        channel = entry.channel or route.default_channel
        if not channel:
            raise NoChannel(f"no channel: set alerts.slack_channel in the spec or extra.channel of "
                            f"connection {entry.conn_id or self.conn_id!r}")
        client = route.client
        payload = dict(entry.payload, channel=channel)
        now = self.outbox.clock()
        if entry.first_error is not None or now - entry.created > LATE_S:
            payload = mark_delayed(payload, entry, now)
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
        if entry.first_error is not None:
            log.info("Slack alert %s delivered %.0f s after it was raised (%s)", entry.id, now - entry.created,
                     entry.first_error)
        if entry.thread_key and not thread and ts and channel_id:
            self.outbox.remember_thread(entry.thread_key, channel_id, ts)
        if entry.attachment and channel_id and ts:
            self._attach(client, entry, channel_id, thread[1] if thread else ts, deadline)
        return SendResult("sent", ts=ts, channel_id=channel_id)

    def _attach(self, client: Any, entry: OutboxEntry, channel_id: str, thread_ts: str, deadline: Deadline) -> None:
        """The full log (text) or the gate's chart (PNG bytes) as a file in the alert's thread
        (files.getUploadURLExternal flow)."""
        if deadline.remaining() < 0.5:
            self.outbox.note(entry.id, "full log not attached: out of time budget")
            return
        try:
            client.files_upload_v2(channel=channel_id, thread_ts=thread_ts, content=entry.attachment,
                                   filename=entry.attachment_name or "task.log", title=entry.attachment_name,
                                   initial_comment="Baseline vs today of the column that drifted most."
                                   if isinstance(entry.attachment, bytes) else
                                   "Full task log of this try (secrets masked).")
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
        self.outbox.note(entry_id, f"sent through webhook {route.webhook_conn_id!r} after: {error}")
        return SendResult("sent", detail=f"webhook fallback after: {error}")


def classify(exc: BaseException) -> Failure:
    """Is Slack (or the way to it) failing, or did Slack refuse this one alert?"""
    from slack_sdk.errors import SlackApiError

    error = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, SlackApiError):
        response = exc.response
        status = int(getattr(response, "status_code", 200) or 200)
        code = response.get("error") if isinstance(getattr(response, "data", None), dict) else None
        if not (isinstance(code, str) and re.fullmatch(r"[a-z0-9_]{1,60}", code)):
            code = None  # e.g. slack_sdk's "Received a response in a non-JSON format: <html>..."
        if status == 429 or code == "ratelimited":
            wait = _retry_after(response)
            return Failure("route", error, f"Slack rate-limited the alerts (HTTP 429, Retry-After {wait:g} s)", wait)
        if status >= 500 or code in TRANSIENT_CODES:
            return Failure("route", error, f"Slack was unreachable (HTTP {status}" + (f": {code})" if code else ")"))
        if code in AUTH_CODES:
            return Failure("route", error, f"Slack refused the token ({code})")
        return Failure("alert", error, f"Slack refused the alert ({code or f'HTTP {status}'})")
    if isinstance(exc, NoChannel):
        return Failure("alert", error, "the alert has no channel")
    if isinstance(exc, (OSError, http.client.HTTPException)):  # URLError, timeouts, resets, refused
        return Failure("route", error, f"Slack was unreachable ({type(exc).__name__})")
    return Failure("alert", error, f"sending it failed ({type(exc).__name__})")


def backoff_s(failures: int) -> float:
    """The flusher's wait after `failures` consecutive failed tries: 5, 10, 20, 30, 30, ... s."""
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(0, failures - 1))


def _alert_backoff(attempts: int) -> float:
    return min(ALERT_BACKOFF_MAX_S, 60.0 * 2 ** max(0, attempts - 1))


def _lookup_reason(conn_id: str, exc: BaseException) -> str:
    return f"the Slack connection {conn_id!r} could not be used ({type(exc).__name__}: {str(exc)[:200]})"


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
    for key, value in (getattr(response, "headers", None) or {}).items():
        if key.lower() == "retry-after":
            try:
                return max(0.0, float(value[0] if isinstance(value, list) else value))
            except (TypeError, ValueError):
                return 1.0
    return 1.0


def mark_delayed(payload: dict, entry: OutboxEntry, now: float) -> dict:
    """The alert with a context line under its title: raised when, delivered how late, and why."""
    note = delayed_note(entry, now)
    blocks = list(payload.get("blocks") or [])
    if blocks:
        blocks.insert(1, {"type": "context", "elements": [{"type": "mrkdwn", "text": note}]})
        blocks = blocks[:50]
    return dict(payload, blocks=blocks) if blocks else dict(payload, text=f"{note}\n{payload.get('text', '')}")


def delayed_note(entry: OutboxEntry, now: float) -> str:
    raised, sent = time.gmtime(entry.created), time.gmtime(now)
    stamp = time.strftime("%H:%M UTC" if raised[:3] == sent[:3] else "%Y-%m-%d %H:%M UTC", raised)
    late = max(0.0, now - entry.created)
    after = f"{late:.0f} s" if late < 90 else f"{late / 60:.0f} min" if late < 5400 else f"{late / 3600:.1f} h"
    why = (entry.first_error or "it could not be sent at once").strip().rstrip(".")
    return f"⏱ Delayed: raised {stamp}, delivered after {after} because {why}."
