"""The flusher: delivers pending alerts on its own, so an alert that Slack did not take when it was
raised does not wait for the next failure.

    python -m mlbatch.alerts flush --loop      # runs until SIGTERM/SIGINT, then exits 0

One per outbox (per machine or per shared outbox volume; a second one is harmless: whoever holds the
outbox's flush lock sends, the other waits). Every `poll_s` seconds it looks for due pending alerts and
sends them oldest first (`SlackDelivery.round`). After a failure the route backs off, 5 s doubling up to
30 s, and never tries before Slack's 429 `Retry-After` has passed; the state lives in the outbox, so
task processes and a restarted flusher honour it too. Slack coming back is thus noticed within 30 s
(or the Retry-After Slack asked for), and the backlog goes out in one round, each alert marked as
delayed. Connections are looked up again every `ROUTE_TTL_S` (a rotated token is picked up).

The clock and the sleep are injectable: the outage test drives a 10-minute outage on a simulated clock
through this same loop, real HTTP and the real outbox.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mlbatch.alerts.delivery import Deadline, Route, SlackDelivery
from mlbatch.alerts.outbox import Outbox

log = logging.getLogger(__name__)

POLL_S = 2.0
ROUND_BUDGET_S = 60.0  # real seconds one round may spend sending before it lets go of the lock
ROUND_SIZE = 20  # alerts per round: the lock is released between rounds
REQUEST_TIMEOUT_S = 5.0  # per Slack call; a SIGTERM waits at most this for the call in flight
ROUTE_TTL_S = 300.0
PRUNE_EVERY_S = 3600.0


class Flusher:
    def __init__(self, outbox: Outbox, *, conn_id: str = "slack_api_default", poll_s: float = POLL_S,
                 stop: threading.Event | None = None, sleep: Callable[[float], object] | None = None,
                 round_size: int = ROUND_SIZE, request_timeout_s: float = REQUEST_TIMEOUT_S,
                 heartbeat: str | None = None):
        self.outbox = outbox
        self.heartbeat = Path(heartbeat) if heartbeat else None  # touched after every round (healthchecks)
        self.poll_s = poll_s
        self.stop = stop or threading.Event()
        self.sleep = sleep or self.stop.wait
        self.round_size = round_size
        self.delivery = SlackDelivery(outbox, conn_id=conn_id, request_timeout_s=request_timeout_s,
                                      in_call_retries=False)
        self._routes: dict[tuple[str, str | None], tuple[float, Route]] = {}
        self._pruned = outbox.clock()
        self._said: dict[str, tuple[str, float]] = {}  # conn id -> (what the log last said, when)
        self.delivered = 0

    def run(self) -> None:
        """Until `stop` is set. Never raises: a failing round is logged and tried again."""
        log.info("Alert flusher on %s (default connection %r): polling every %.0f s", self.outbox.path,
                 self.delivery.conn_id, self.poll_s)
        while not self.stop.is_set():
            try:
                wait = self.run_once()
            except Exception:
                log.exception("Alert flusher round failed; trying again in %.0f s", self.poll_s * 5)
                wait = self.poll_s * 5
            if self.heartbeat is not None:
                self.heartbeat.touch()
            if wait > 0 and not self.stop.is_set():
                self.sleep(wait)
        log.info("Alert flusher stopped (%d alerts delivered)", self.delivered)

    def run_once(self, honour_backoff: bool = True, budget_s: float = ROUND_BUDGET_S) -> float:
        """One round; returns how long to wait before the next (0: more alerts are due now)."""
        now = self.outbox.clock()
        if now - self._pruned > PRUNE_EVERY_S:
            self.outbox.prune()
            self._pruned = now
        with self.outbox.flush_lock() as mine:
            if not mine:  # another sender (a task or a second flusher) is at it
                return self.poll_s
            done = self.delivery.round(self._route, Deadline(budget_s), honour_backoff=honour_backoff,
                                       limit=self.round_size, stop=self.stop.is_set)
        if done.sent:
            self.delivered += done.sent
            log.info("Delivered %d pending alert(s)", done.sent)
        now = self.outbox.clock()
        for conn_id, (why, until) in done.held.items():
            said, when = self._said.get(conn_id, ("", 0.0))
            if why != said or now - when >= 60:  # a new reason, else once a minute
                pending = len(self.outbox.entries("pending", limit=100_000))
                log.warning("Slack alerts through %r wait (%d pending): %s; next try in %.0f s", conn_id, pending,
                            why, max(0.0, until - now))
                self._said[conn_id] = (why, now)
            for key in [k for k in self._routes if k[0] == conn_id]:  # read the connection again next time
                del self._routes[key]
        for conn_id in [c for c in self._said if c not in done.held]:
            del self._said[conn_id]
        return 0.0 if done.more and not done.held else self.poll_s

    def _route(self, conn_id: str, webhook_conn_id: str | None) -> Route:
        key = (conn_id, webhook_conn_id)
        cached = self._routes.get(key)
        if cached and time.monotonic() - cached[0] < ROUTE_TTL_S:
            return cached[1]
        route = self.delivery._route(conn_id, webhook_conn_id, None)
        self._routes[key] = (time.monotonic(), route)
        return route
