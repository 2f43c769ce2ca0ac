"""Nothing secret reaches a channel: Airflow's secrets masker, then patterns for tokens and keys.

The masker knows every connection password and sensitive variable the task process has touched. The
patterns catch what it cannot know: credentials a library printed on its own (AWS keys, Slack tokens,
bearer tokens, private key blocks, `password=` in URLs and key-value pairs).
"""

from __future__ import annotations

import functools
import logging
import re

log = logging.getLogger(__name__)

MASK = "***"

PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (  # a `secret` group masks only that part
    ("private key", re.compile(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----.*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|$)", re.S)),
    ("slack token", re.compile(r"\bxox[abposer]-[A-Za-z0-9-]{8,}")),
    ("slack app token", re.compile(r"\bxapp-\d-[A-Za-z0-9-]{8,}")),
    ("slack webhook", re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]+")),
    ("aws access key id", re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b")),
    ("aws secret key", re.compile(
        r"(?i)(?:aws_secret_access_key|secret_access_key|secretaccesskey)\W{1,4}(?P<secret>[A-Za-z0-9/+=]{40})")),
    ("bearer token", re.compile(r"(?i)\b(?:bearer|token)\s+(?P<secret>[A-Za-z0-9._~+/=-]{16,})")),
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    ("google api key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    ("github token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("url credentials", re.compile(r"(?i)[a-z][a-z0-9+.-]*://[^:/@\s]+:(?P<secret>[^@\s/]+)@")),
    ("key=value secret", re.compile(
        r"(?i)\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token|client[_-]?secret)"
        r"[\"']?\s*[:=]\s*[\"']?(?P<secret>[^\s\"',;&]{4,})")),
)


def redact_text(text: str) -> str:
    """Masked by Airflow's secrets masker (when running in Airflow), then by `PATTERNS`."""
    if not text:
        return text
    text = _airflow_masker(text)
    for _name, pattern in PATTERNS:
        text = pattern.sub(_mask, text)
    return text


def _mask(match: re.Match[str]) -> str:
    if "secret" not in match.re.groupindex:
        return MASK
    whole_start, whole_end = match.span()
    start, end = match.span("secret")
    return match.string[whole_start:start] + MASK + match.string[end:whole_end]


def _airflow_masker(text: str) -> str:
    redact = airflow_redact()
    return redact(text) if redact is not None else text


@functools.cache
def airflow_redact():
    """Airflow's secrets masker, as the Task SDK's log pipeline applies it to every task log line.

    Airflow 3 makes `airflow.sdk.log.mask_secret` public (register a secret) but no function to redact
    a string; `airflow.sdk.log` is where both live, so that is the one place we take `redact` from. A
    test checks that a secret registered with the public `mask_secret` is masked here; if an upgrade
    moves it, the alert still goes out masked by `PATTERNS` and the log says so at ERROR, once."""
    try:
        from airflow.sdk.log import redact
    except ImportError as exc:
        log.error("Airflow's secrets masker not found (%s): Slack messages are masked by mlbatch's "
                  "patterns only, not by Airflow's registered secrets", exc)
        return None
    return redact
