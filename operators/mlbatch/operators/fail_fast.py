"""Fail at once on what a retry cannot fix; retry the rest as the spec's `tasks.retries` say.

Airflow's own mechanism: a task's `retry_policy` is evaluated in the task process, with the exception
object itself, after the task failed (`airflow.sdk.definitions.retry_policy`). Ours asks
`mlbatch.errors.retry_verdict` and answers FAIL (no retry, no retry wait) or DEFAULT (Airflow's
retries and retry delay, unchanged). The exception is left as it was raised: the task log's traceback
and the Slack alert show its own name and message; the log adds a line saying it is not retried, and
why (Airflow's own "Retry policy decision" line carries the reason only as a structured field). Only a flag is serialized with the DAG; the worker re-parses the DAG file and finds the
live policy (Airflow's `_HAS_FLAG_FIELDS`).

The table of which error is which: docs/errors.md.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.definitions.retry_policy import RetryDecision, RetryPolicy

from mlbatch.errors import retry_verdict

log = logging.getLogger(__name__)


class FailFastRetryPolicy(RetryPolicy):
    """FAIL for errors a retry cannot fix (`mlbatch.errors.retry_verdict`), DEFAULT otherwise."""

    def evaluate(self, exception: BaseException, try_number: int, max_tries: int,
                 context: Any = None) -> RetryDecision:
        verdict = retry_verdict(exception)
        if verdict.retry:
            return RetryDecision.default()
        reason = f"not retried: {verdict.reason} (see docs/errors.md)"
        # the task log's last words name what was wrong (the bucket, the connection...), not only its class
        log.error("Failing at try %s of %s, %s -- %s", try_number, max_tries, reason, " ".join(str(exception).split())[:600])
        return RetryDecision.fail(reason=reason)

    def serialize(self) -> dict[str, Any]:
        return {"__type": type(self).__name__}

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> FailFastRetryPolicy:
        return cls()

    def __eq__(self, other: object) -> bool:  # one policy is as good as another: it has no state
        return isinstance(other, FailFastRetryPolicy)

    def __hash__(self) -> int:
        return hash(type(self))


FAIL_FAST = FailFastRetryPolicy()
