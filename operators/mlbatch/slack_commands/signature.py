"""Is this HTTP request really from Slack, and new?

Slack signs `v0:<timestamp>:<raw body>` with the app's signing secret (HMAC-SHA256, header
`X-Slack-Signature: v0=<hex>`, timestamp in `X-Slack-Request-Timestamp`). The HMAC is checked by
slack_sdk's `SignatureVerifier`; this module adds what it does not do: a reason for every refusal
(logged, never shown to the caller) and refusing a replayed request. A signature is remembered for as
long as its timestamp stays inside the 5-minute window, so a captured request cannot be sent again.
With several API-server workers or replicas, give them one Redis (`MLBATCH_SLACK_REPLAY_REDIS_URL`):
an in-memory guard only protects its own process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

WINDOW_SECONDS = 5 * 60


class UnverifiedRequest(Exception):
    """The request must be refused (HTTP 401); the message says why, for the log."""


class MemoryReplayGuard:
    """Signatures seen by this process, forgotten once their timestamp leaves the window."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._seen: dict[str, float] = {}
        self._clock = clock
        self._kept = 0  # entries left by the last sweep: the next sweep waits until the dict doubles

    async def first_time(self, key: str, expires_at: float) -> bool:
        now = self._clock()
        if len(self._seen) > max(1000, 2 * self._kept):  # amortised O(1): not a sweep per request under load
            self._seen = {k: t for k, t in self._seen.items() if t > now}
            self._kept = len(self._seen)
        if self._seen.get(key, 0) > now:
            return False
        self._seen[key] = expires_at
        return True


class RedisReplayGuard:
    """Signatures seen by any worker sharing this Redis (`SET key NX EXAT`)."""

    def __init__(self, url: str, prefix: str = "mlbatch:slack:seen:"):
        import redis.asyncio

        self._redis = redis.asyncio.Redis.from_url(url)
        self._prefix = prefix

    async def first_time(self, key: str, expires_at: float) -> bool:
        return bool(await self._redis.set(self._prefix + key, b"1", nx=True, exat=int(expires_at) + 1))


class RequestVerifier:
    def __init__(self, signing_secret: str | None, replay_guard=None, clock: Callable[[], float] = time.time):
        self._secret = signing_secret
        self._guard = replay_guard or MemoryReplayGuard(clock)
        self._clock = clock

    async def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        """Raise `UnverifiedRequest` unless the request is signed by Slack, fresh and not seen before."""
        if not self._secret:
            raise UnverifiedRequest("SLACK_SIGNING_SECRET is not set: every request is refused")
        from slack_sdk.signature import SignatureVerifier

        timestamp = headers.get("x-slack-request-timestamp")
        signature = headers.get("x-slack-signature")
        if not timestamp or not signature:
            raise UnverifiedRequest("X-Slack-Request-Timestamp or X-Slack-Signature header missing")
        try:
            sent_at = int(timestamp)
        except ValueError:
            raise UnverifiedRequest(f"X-Slack-Request-Timestamp {timestamp[:20]!r} is not a number") from None
        age = self._clock() - sent_at
        if abs(age) > WINDOW_SECONDS:
            raise UnverifiedRequest(f"timestamp is {age:.0f} s from now (allowed: {WINDOW_SECONDS} s)")
        verifier = SignatureVerifier(self._secret, clock=_FixedClock(self._clock()))
        if not verifier.is_valid(body=body, timestamp=timestamp, signature=signature):
            raise UnverifiedRequest("signature does not match the body (wrong signing secret or altered body)")
        if not await self._guard.first_time(signature, expires_at=sent_at + WINDOW_SECONDS):
            raise UnverifiedRequest("replayed request: this signature was already used")


class _FixedClock:
    def __init__(self, now: float):
        self._now = now

    def now(self) -> float:
        return self._now
