"""The contract between an alert's buttons and the Slack commands app that handles them.

Both sides (`mlbatch.alerts` draws the button, `mlbatch.slack_commands` handles the press) import this
module and not each other, so the action id and the value's shape cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

RETRY_ACTION_ID = "mlbatch_retry"
OPEN_LOGS_ACTION_ID = "mlbatch_open_logs"  # a URL button: Slack opens the link, the app only gets an ack


@dataclass(frozen=True)
class RetryTarget:
    """Which task instance the Retry button clears."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1


def encode_retry_value(target: RetryTarget, what: str = "Retry button") -> str:
    """Button value: compact JSON (Slack allows 2000 characters; ids are far shorter)."""
    value = json.dumps(asdict(target), separators=(",", ":"), sort_keys=True)
    if len(value) > 2000:
        raise ValueError(f"{what} value is {len(value)} characters; Slack allows 2000: {value[:80]}...")
    return value


def decode_retry_value(value: str, what: str = "Retry button") -> RetryTarget:
    """Parse a button value naming a task instance; errors say which part was wrong (the value comes
    from Slack). `what`: the button, as the errors name it."""
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} value is not JSON: {value[:200]!r}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{what} value must be a JSON object, got {type(data).__name__}")
    missing = [k for k in ("dag_id", "run_id", "task_id") if not isinstance(data.get(k), str) or not data[k]]
    if missing:
        raise ValueError(f"{what} value lacks {', '.join(missing)}: {value[:200]!r}")
    map_index = data.get("map_index", -1)
    if not isinstance(map_index, int) or isinstance(map_index, bool):
        raise ValueError(f"{what} value map_index must be an integer, got {map_index!r}")
    unknown = set(data) - {"dag_id", "run_id", "task_id", "map_index"}
    if unknown:
        raise ValueError(f"{what} value has unknown keys {sorted(unknown)}")
    return RetryTarget(data["dag_id"], data["run_id"], data["task_id"], map_index)
