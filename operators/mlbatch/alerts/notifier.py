"""The pipeline notifier: failure alerts, optional retry and success notices, attached to every task.

Imported by the DAG factory, so this module stays light: slack_sdk, the provider hooks and the remote log
backends load inside `notify()`. A notification never raises into the task and never holds it for more
than `budget_s` (+ the remote-log share): Slack trouble must not break or stall a pipeline.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from datetime import datetime, timezone
from typing import Any

from airflow.sdk import BaseNotifier

from mlbatch.run.steps import PUBLISH, RECORD, RESOLVE_MODEL

log = logging.getLogger(__name__)

REMOTE_LOG_BUDGET_S = 2.5


class PipelineAlertNotifier(BaseNotifier):
    """Posts one Slack message per event of a pipeline task.

    :param kind: "failure" (on_failure_callback), "retry" (on_retry_callback, a quiet notice) or
        "success" (on_success_callback of the last step: row counts, duration, model, MLflow link).
    :param pipeline: the spec name.
    :param channel: Slack channel; default: the Slack connection's `extra.channel`.
    :param mention: who a failure alert pings (`@here`, `<@U123>`, `<!subteam^S123>`).
    :param slack_conn_id: Slack API connection (token in the password; `base_url`, `timeout` in extra).
        Without it, or without a token, alerts stay in the local outbox and are printed (local mode).
    :param webhook_conn_id: incoming-webhook connection used when the Web API fails.
    :param log_lines: how many task/remote log lines the message shows (the full log goes to the thread).
    :param thread_window_minutes: repeated failures of one task within this window reply in one thread.
    :param budget_s: longest the task waits on Slack (default 4 s, env `MLBATCH_ALERT_BUDGET_SECONDS`).
    :param outbox_dir: outbox folder (default `MLBATCH_ALERTS_DIR` or `$AIRFLOW_HOME/mlbatch_alerts`).
    """

    def __init__(self, *, kind: str = "failure", pipeline: str, channel: str | None = None,
                 mention: str | None = None, slack_conn_id: str = "slack_api_default",
                 webhook_conn_id: str | None = None, log_lines: int = 40, thread_window_minutes: float = 360,
                 budget_s: float | None = None, outbox_dir: str | None = None):
        super().__init__()
        if kind not in ("failure", "retry", "success"):
            raise ValueError(f"PipelineAlertNotifier kind must be failure, retry or success, got {kind!r}")
        self.kind = kind
        self.pipeline = pipeline
        self.channel = channel
        self.mention = mention
        self.slack_conn_id = slack_conn_id
        self.webhook_conn_id = webhook_conn_id
        self.log_lines = log_lines
        self.thread_window_minutes = thread_window_minutes
        self.budget_s = budget_s
        self.outbox_dir = outbox_dir
        self.last_result: Any = None  # for tests and the demo: what the last notify() did

    def notify(self, context: Any) -> None:
        try:
            self.last_result = self._notify(context)
        except Exception:  # an alert bug must not turn into a task failure
            log.exception("Slack %s notification of %s failed before sending", self.kind, self.pipeline)

    def _notify(self, context: Any):
        from mlbatch.alerts.delivery import DEFAULT_BUDGET_S
        from mlbatch.alerts.message import blocks
        from mlbatch.redaction import redact_text

        raised = time.monotonic()
        alert, full_log = self._alert(context)
        payload = redact_payload({"text": alert.fallback_text(), "blocks": blocks(alert),
                                  "unfurl_links": False, "unfurl_media": False}, redact_text)
        ti = context["ti"]
        budget = self.budget_s if self.budget_s is not None else float(
            os.environ.get("MLBATCH_ALERT_BUDGET_SECONDS", DEFAULT_BUDGET_S))
        return post(payload, kind=self.kind, channel=self.channel, slack_conn_id=self.slack_conn_id,
                    webhook_conn_id=self.webhook_conn_id, outbox_dir=self.outbox_dir, budget_s=budget,
                    thread_key=f"{ti.dag_id}.{ti.task_id}.{getattr(ti, 'map_index', -1)}" if self.kind == "failure"
                    else None, thread_window_s=self.thread_window_minutes * 60,
                    attachment=redact_text(full_log) if full_log else None,
                    attachment_name=_file_name(ti) if full_log else None, raised=raised)

    def _alert(self, context: Any):
        from mlbatch.alerts.message import Alert, Link
        from mlbatch.errors import retry_verdict
        from mlbatch.redaction import redact_text
        from mlbatch.alerts.task_log import read_try_log

        ti = context["ti"]
        error = context.get("exception")
        alert = Alert(
            kind=self.kind, pipeline=self.pipeline, dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id,
            try_number=int(ti.try_number or 1), max_tries=max(int(getattr(ti, "max_tries", 0) or 0) + 1,
                                                               int(ti.try_number or 1)),
            map_index=int(getattr(ti, "map_index", -1) if getattr(ti, "map_index", None) is not None else -1),
            logical_date=_iso(context.get("logical_date")),
            mention=self.mention,
        )
        full_log = ""
        if self.kind == "success":
            alert.duration_s = _run_duration(context)
            alert.facts, alert.links = _success_facts(ti)
            return alert, full_log
        alert.duration_s = _task_duration(ti)
        if error is not None:
            alert.error_type = type(error).__name__ if isinstance(error, BaseException) else "Error"
            alert.error_message = redact_text(str(error))
            verdict = retry_verdict(error) if isinstance(error, BaseException) else None
            if verdict is not None and not verdict.retry and alert.try_number < alert.max_tries:
                alert.not_retried = verdict.reason  # the fail-fast policy ended it; say so, not "try 1 of 2"
        task_log = read_try_log(ti)
        redacted = redact_text("\n".join(task_log.lines)).splitlines()
        full_log = "\n".join(redacted)
        alert.task_log = redacted[-self.log_lines:] if self.kind == "failure" else []
        alert.task_log_source = _short_source(task_log.source)
        alert.log_url = _safe("the log URL", lambda: ti.log_url)
        if alert.log_url:
            alert.links.append(Link("Airflow task log", alert.log_url))
        if self.kind == "failure":
            self._remote(ti, alert)
        alert.links.extend(mlflow_links(ti))
        if self.kind == "failure":
            from mlbatch.alerts.outbox import Outbox

            key = f"{ti.dag_id}.{ti.task_id}.{alert.map_index}"
            alert.repeat_of_thread = Outbox(self.outbox_dir).thread_for(key, self.thread_window_minutes * 60) is not None
        return alert, full_log if self.kind == "failure" else ""

    def _remote(self, ti: Any, alert) -> None:
        """The remote job's own log tail, fetched with a time limit (cloud log APIs can be slow)."""
        from mlbatch.alerts.message import Link
        from mlbatch.redaction import redact_text
        from mlbatch.remote_logs import REMOTE_JOB_KEY, remote_log_tail

        job = _safe("the remote job", lambda: ti.xcom_pull(task_ids=ti.task_id, key=REMOTE_JOB_KEY))
        if not isinstance(job, dict):
            return
        alert.remote_backend = str(job.get("backend") or "remote")
        alert.remote_job = str(job.get("job_name") or job.get("job_id") or "")
        if job.get("console_url"):
            alert.links.append(Link(f"{alert.remote_backend} console", str(job["console_url"])))
        lines: list[list[str]] = []
        worker = threading.Thread(target=lambda: lines.append(remote_log_tail(job, self.log_lines)), daemon=True)
        worker.start()
        worker.join(REMOTE_LOG_BUDGET_S)
        tail = lines[0] if lines else [f"(remote log not fetched within {REMOTE_LOG_BUDGET_S} s)"]
        alert.remote_log = redact_text("\n".join(tail)).splitlines()


def post(payload: dict, *, kind: str, channel: str | None, slack_conn_id: str, webhook_conn_id: str | None,
         outbox_dir: str | None, budget_s: float, thread_key: str | None = None, thread_window_s: float = 0,
         attachment: str | bytes | None = None, attachment_name: str | None = None,
         raised: float | None = None) -> dict:
    """Queue a message in the outbox, then send it within `budget_s` (what is not sent stays pending for
    the flusher); without a Slack token it stays local and is printed. Returns what happened."""
    from mlbatch.alerts.delivery import SlackDelivery, slack_connection_status
    from mlbatch.alerts.message import as_text
    from mlbatch.alerts.outbox import Outbox

    raised = time.monotonic() if raised is None else raised
    outbox = Outbox(outbox_dir)
    try:
        why_local = slack_connection_status(slack_conn_id)
    except Exception as exc:  # not "no connection": keep the alert pending, the delivery says why
        log.warning("Looking up Slack connection %r failed: %s", slack_conn_id, exc)
        why_local = None
    entry_id = outbox.add(kind=kind, channel=channel, payload=payload, thread_key=thread_key, attachment=attachment,
                          attachment_name=attachment_name, status="local" if why_local else "pending",
                          conn_id=slack_conn_id, webhook_conn_id=webhook_conn_id)
    if why_local:
        log.warning("Slack alert kept locally in %s (local mode: %s):\n%s", outbox.path, why_local,
                    as_text(payload["blocks"], payload["text"]))
        return {"status": "local", "entry_id": entry_id, "outbox": str(outbox.path), "seconds":
                time.monotonic() - raised}
    delivery = SlackDelivery(outbox, conn_id=slack_conn_id, webhook_conn_id=webhook_conn_id,
                             thread_window_s=thread_window_s)
    result = delivery.send_within(entry_id, budget_s)
    seconds = time.monotonic() - raised
    if result.status == "sent":
        log.info("Slack %s alert sent to %s (ts %s) in %.2f s", kind, result.channel_id, result.ts, seconds)
    else:
        log.warning("Slack %s alert not sent (%s); kept in outbox %s as entry %s", kind, result.detail,
                    outbox.path, entry_id)
    return {"status": result.status, "entry_id": entry_id, "outbox": str(outbox.path), "seconds": seconds,
            "ts": result.ts, "channel_id": result.channel_id}


def redact_payload(node: Any, redact: Any) -> Any:
    """Every string of the message through the redactor (defence in depth: fields were redacted already)."""
    if isinstance(node, str):
        return redact(node)
    if isinstance(node, list):
        return [redact_payload(v, redact) for v in node]
    if isinstance(node, dict):
        return {k: (v if k in ("action_id", "type", "block_id") else redact_payload(v, redact)) for k, v in node.items()}
    return node


def _success_facts(ti: Any):
    facts: dict[str, str] = {}
    published = _safe("publish's result", lambda: ti.xcom_pull(task_ids=PUBLISH)) or {}
    if isinstance(published, dict) and "rows_in" in published:
        facts["Rows"] = (f"{published.get('rows_in', 0):,} in = {published.get('rows_scored', 0):,} scored"
                         f" + {published.get('rows_rejected', 0):,} rejected"
                         + (f" + {published['rows_failed']:,} failed at the endpoint" if published.get("rows_failed")
                            else ""))
    if isinstance(published, dict) and published.get("output_uri"):
        facts["Output"] = str(published["output_uri"])
    model = _safe("the pinned model", lambda: ti.xcom_pull(task_ids=RESOLVE_MODEL)) or {}
    if isinstance(model, dict) and model.get("uri"):
        facts["Model"] = f"{model['uri']}" + (f" (alias {model['alias']})" if model.get("alias") else "")
    return facts, mlflow_links(ti)


def mlflow_links(ti: Any) -> list:
    """MLflow links when the tracking server has a web UI (http/https tracking URI)."""
    from mlbatch.alerts.message import Link

    links = []
    model = _safe("the pinned model", lambda: ti.xcom_pull(task_ids=RESOLVE_MODEL)) or {}
    if isinstance(model, dict) and str(model.get("tracking_uri", "")).startswith("http"):
        base = model["tracking_uri"].rstrip("/")
        links.append(Link(f"MLflow model v{model.get('version')}",
                          f"{base}/#/models/{model.get('name')}/versions/{model.get('version')}"))
    record = _safe("the MLflow run", lambda: ti.xcom_pull(task_ids=RECORD)) or {}
    if isinstance(record, dict) and str(record.get("tracking_uri", "")).startswith("http"):
        base = record["tracking_uri"].rstrip("/")
        links.append(Link("MLflow run", f"{base}/#/experiments/{record.get('experiment_id')}/runs/"
                                        f"{record.get('mlflow_run_id')}"))
    return links


def _task_duration(ti: Any) -> float | None:
    start = getattr(ti, "start_date", None)
    if not start:
        return None
    end = getattr(ti, "end_date", None) or datetime.now(timezone.utc)
    return max(0.0, (end - start).total_seconds())


def _run_duration(context: Any) -> float | None:
    run = context.get("dag_run")
    start = getattr(run, "start_date", None) if run is not None else None
    return (datetime.now(timezone.utc) - start).total_seconds() if start else None


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _short_source(source: str) -> str:
    return "memory, in-process run" if source.startswith("memory") else (
        f"…/{'/'.join(source.split('/')[-2:])}" if "/" in source else source)


def _file_name(ti: Any) -> str:
    raw = f"{ti.dag_id}.{ti.task_id}.{ti.run_id}.try{ti.try_number}.log"
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", raw)[:200]


def _safe(what: str, fn):
    """A detail of the alert; when it cannot be read the alert still goes out, and the log says why."""
    try:
        return fn()
    except Exception as exc:
        log.warning("Alert sent without %s: %s: %s", what, type(exc).__name__, exc)
        return None


def pipeline_callbacks(spec: Any) -> dict[str, list]:
    """Task callbacks for a spec's `alerts:` block: what the DAG factory attaches to every task.

    Failure alerts always; the log tap at execute (log excerpt for in-process runs); a quiet retry notice
    if `notify_retries`. The success message is attached by the factory to the last step only."""
    from mlbatch.alerts.task_log import start_log_tap

    a = spec.alerts
    common = dict(pipeline=spec.name, channel=a.slack_channel, mention=a.mention, slack_conn_id=a.slack_conn_id,
                  webhook_conn_id=a.webhook_conn_id, log_lines=a.log_lines,
                  thread_window_minutes=a.thread_window_minutes)
    callbacks: dict[str, list] = {
        "on_execute_callback": [start_log_tap],
        "on_failure_callback": [PipelineAlertNotifier(kind="failure", **common)],
    }
    if a.notify_retries:
        callbacks["on_retry_callback"] = [PipelineAlertNotifier(kind="retry", **{**common, "mention": None})]
    return callbacks


def success_callback(spec: Any) -> PipelineAlertNotifier:
    a = spec.alerts
    return PipelineAlertNotifier(kind="success", pipeline=spec.name, channel=a.slack_channel, mention=None,
                                 slack_conn_id=a.slack_conn_id, webhook_conn_id=a.webhook_conn_id)
