"""The first check every backend's `complete` makes: the trigger's event says success.

It is only the first: a provider trigger once reported a failed SageMaker transform job as a success,
so each backend then re-reads its job's own state."""

from __future__ import annotations

from mlbatch.errors import RemoteJobError


def require_success_event(spec_name: str, job: str, event: dict | None, console_url: str) -> None:
    """Raise `RemoteJobError` unless `event` is a `{"status": "success", ...}` trigger event."""
    if not event or event.get("status") != "success":
        detail = (event or {}).get("message", event)
        raise RemoteJobError(f"{spec_name}: {job} did not succeed: {detail!r}; see {console_url}")
