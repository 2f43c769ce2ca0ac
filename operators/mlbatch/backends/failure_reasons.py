"""The one line that says why a model container refused a request, out of what the services hand back.

Why: the MLflow scoring server (what the SageMaker and Vertex containers run) answers a bad request with
a JSON body whose message repeats the whole request as a DataFrame dump, twice, before the reason
("... Error: Incompatible input types for column mother_age. Can not safely convert int64 to float64.").
Cut to a few hundred characters, the reason is gone; shown whole, it buries the reason. `reason_line`
keeps the reason only (column, types), so that the raised error, the task log's last line, the CLI and
the Slack alert all show it.

Light: no imports beyond the standard library (backends import it at parse time through their modules).
"""

from __future__ import annotations

import json
import re

MAX_REASON = 300
# MLflow's schema enforcement (mlflow/models/utils.py, _enforce_mlflow_datatype / _enforce_schema)
_COLUMN_TYPES = re.compile(r"Incompatible input types for column (?P<column>.+?)\. Can not safely convert "
                           r"(?P<source>\S+) to (?P<target>\S+?)\.(?P<nulls> Hint: the type mismatch is likely "
                           r"caused by missing values)?")
_LAST_ERROR = re.compile(r"(?:^|\s)Error: (?P<why>(?:(?!\sError: ).)+)$", re.S)
# the scoring server's own 60 s limit (mlflow/pyfunc/scoring_server, timeout_middleware: 504)
TIMEOUT_BODY = "Request processing time exceeded limit"
_AGENT = re.compile(r":\[sagemaker logs\]: (?:[^:\s]+: )?(?P<text>.*)$")
_CLIENT_ERROR = re.compile(r"ClientError: (\d{3})")
_WOULD_ANSWER = re.compile(r"the scoring server would answer (?P<status>\d{3}): (?P<reason>.+)$")


# 4xx answers a retry may get past: the request's own timeout, throttling
RETRIED_4XX = frozenset({408, 429})
# google.rpc.Code of a failed Vertex instance that the same instance gets again: INVALID_ARGUMENT,
# FAILED_PRECONDITION, OUT_OF_RANGE (the container's 4xx)
REFUSED_RPC_CODES = frozenset({3, 9, 11})


class Reason(str):
    """A reason line that also says whether the model container refused the request (`refused`: an
    HTTP 4xx from /invocations other than a timeout or throttling). The verdict comes from the status
    the service recorded, not from the text; a plain `str` reason counts as not refused."""

    refused: bool

    def __new__(cls, text: str, refused: bool = False) -> Reason:
        reason = super().__new__(cls, text)
        reason.refused = refused
        return reason


def refused_status(status: int) -> bool:
    """Does this HTTP status of the container's answer refuse the request for good?"""
    return 400 <= status < 500 and status not in RETRIED_4XX


def is_refusal(reason: str) -> bool:
    """Whether a `failure_reason` says the container refused the job's requests (see `Reason`)."""
    return bool(getattr(reason, "refused", False))


def reason_line(text: str) -> str:
    """The reason in an MLflow scoring-server answer (its JSON body, or the message inside it), else the
    text's last non-empty line; one line, at most MAX_REASON characters."""
    message = _message(text.strip())
    if TIMEOUT_BODY in message:
        return f"the model server's request timeout: {TIMEOUT_BODY} (504)"
    last = _LAST_ERROR.search(message)
    why = last.group("why").strip() if last else _last_line(message)
    column = _COLUMN_TYPES.search(why)
    if column:
        why = (f"column {column.group('column')}: Can not safely convert {column.group('source')} to "
               f"{column.group('target')}" + (" (it has missing values)" if column.group("nulls") else ""))
    return _one_line(why)


def container_reason(lines: list[str]) -> str:
    """The reason in a SageMaker transform job's data-log lines, where the agent writes each refused
    request as `<time>:[sagemaker logs]: <bucket/key>: ClientError: <status>`, then `...: Message:` and
    the container's answer, one log line per line of it. The last refusal counts; "" when none."""
    status, body, in_message = None, [], False
    for line in lines:
        agent = _AGENT.search(line)
        if not agent:
            continue
        text = agent.group("text")
        refused = _CLIENT_ERROR.fullmatch(text.strip())
        if refused:
            status, body, in_message = refused.group(1), [], False
        elif text.strip() == "Message:":
            in_message = True
        elif in_message:
            body.append(text)
    if status is None:
        return ""
    text = (reason_line("\n".join(body)) if any(b.strip() for b in body) else "") or \
        f"the model container answered {status}"
    return Reason(text, refused_status(int(status)))


def errors_file_reason(lines: list[str]) -> str:
    """The reason in a Vertex batch prediction job's errors files (`prediction.errors_stats-*`,
    `errors_*`): how many lines, and the first one's reason. A line is a failed instance with its
    `error` {code, message}, or any other text (the service's own error statistics); "" when empty."""
    failed = [line for line in lines if line.strip()]
    if not failed:
        return ""
    message, code = failed[0], None
    try:
        first = json.loads(failed[0])
        if isinstance(first, dict) and "error" in first:
            message, code = first["error"]["message"], first["error"].get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    text = _one_line(f"{len(failed)} lines in the job's errors files; the first: {reason_line(str(message))}")
    return Reason(text, isinstance(code, int) and code in REFUSED_RPC_CODES)


def job_messages_reason(messages: list[dict]) -> str:
    """The reason in a Dataflow job's messages (`JobMessage` dicts, oldest first): the first error that
    carries a worker's traceback gives its exception line (a model container's answer in it reduced by
    `reason_line`), else the last error's text ("Workflow failed. Causes: ..."); "" when no error."""
    errors = [str(m.get("messageText", "")) for m in messages if m.get("messageImportance") == "JOB_MESSAGE_ERROR"]
    tracebacks = [text for text in errors if "Traceback (most recent call last)" in text]
    if tracebacks:
        line = _last_line(tracebacks[0])
        return reason_line(line) if "Incompatible input types" in line or "error_code" in line else _one_line(line)
    return _one_line(errors[-1]) if errors else ""


def job_output_reason(output: str) -> str:
    """The reason in a local job process's last lines (mlbatch.run.job_process puts them in its error):
    the last refusal the job reports as the scoring server's (mlbatch_beam.local_predict.ContainerRefused,
    "<file>: the scoring server would answer <status>: <reason>"); "" when there is none."""
    for line in reversed(output.splitlines()):
        refused = _WOULD_ANSWER.search(line)
        if refused:
            return Reason(reason_line(refused.group("reason")), refused_status(int(refused.group("status"))))
    return ""


def _message(text: str) -> str:
    """The `message` of a JSON error body; the text itself when it is not one."""
    try:
        body = json.loads(text)
    except ValueError:
        return text
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or text)
    return text


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_REASON else flat[: MAX_REASON - 1] + "…"
