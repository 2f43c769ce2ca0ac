"""The alert side's name for the button contract; it lives in `mlbatch.retry_button`, shared with the
Slack commands, which must not import alerts."""

from mlbatch.retry_button import (  # noqa: F401
    OPEN_LOGS_ACTION_ID, RETRY_ACTION_ID, RetryTarget, decode_retry_value, encode_retry_value,
)
