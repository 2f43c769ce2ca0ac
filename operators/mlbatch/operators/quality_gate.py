"""quality_gate: between predict and publish, only in pipelines with a `quality:` block.

Today's statistics against the baseline (`mlbatch.quality.gate.evaluate`): `pass` -> publish; `warn` ->
publish and post the drift summary to Slack; `block` -> post the summary, the chart and Approve /
Reject buttons, then wait for a person on Airflow's Human-in-the-loop request (the standard
provider's `HITLOperator`): on Airflow 3.3 the task parks in `awaiting_input`, holding no worker slot
and no trigger, and the UI's Required Actions, the REST API (`PATCH .../hitlDetails`) and the Slack app
answer it. Nobody within `quality.timeout_minutes` -> the scheduler applies the request's default,
`quality.on_timeout`. Reject -> `GateRejectedError` (not retried): nothing published, the run fails
saying who decided and why. Approve -> the result names the approver; publish writes it into the
`_SUCCESS` record and record into the MLflow run.

Imported by the DAG factory only for specs with `quality:` (the HITL module costs ~6 ms on top of
`airflow.sdk`); the gate's statistics and chart load inside `run`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param

from mlbatch.approval_buttons import (APPROVE, GATE_MESSAGE_XCOM, OPTION, REASON_PARAM, REJECT, SLACK_USER_PARAM,
                                      GateTarget)
from mlbatch.errors import GateRejectedError
from mlbatch.operators.base import PipelineStepOperator, effective_spec
from mlbatch.run.paths import RunPaths
from mlbatch.run.steps import PREDICT
from mlbatch.spec.models import PipelineSpec

VERDICT_KEY = "verdict"  # XCom: the verdict's JSON (the Slack app and reviewers read it)
HELD_BUDGET_S = 20.0  # a held run waits for people anyway: time for the message and its chart (a loaded
# worker spends the alerts' 4 s on the Slack connection and the message; the chart is not sent later)


class QualityGateOperator(PipelineStepOperator, HITLOperator):
    ui_color = "#fff3e0"
    template_fields = PipelineStepOperator.template_fields  # subject and body are set at run time

    def __init__(self, *, spec: PipelineSpec, **kwargs: Any):
        quality = spec.quality
        form = {REASON_PARAM: Param("", type=["string", "null"], title="Reason",
                                    description="Why (shown in the run's failure when rejected)."),
                SLACK_USER_PARAM: Param("", type=["string", "null"], title="Slack user",
                                        description="Filled by the Slack app; leave empty here.")}
        super().__init__(
            spec=spec, subject=f"{spec.name}: drift holds the run. Publish it?", options=[APPROVE, REJECT],
            defaults=[OPTION[quality.on_timeout]], multiple=False,
            response_timeout=timedelta(minutes=quality.timeout_minutes),
            params={**(kwargs.pop("params", None) or {}), **form}, **kwargs)

    @property
    def serialized_params(self) -> dict[str, dict[str, Any]]:
        """The request's form: only the reason and the Slack user. The task's params also hold the DAG's
        trigger params (Airflow merges them in; the steps read this run's overrides from them)."""
        return {k: self.params.get_param(k).serialize() for k in (REASON_PARAM, SLACK_USER_PARAM)}

    def run(self, context: Any, spec: PipelineSpec, paths: RunPaths) -> dict:
        from mlbatch.quality.gate import evaluate

        ti = context["ti"]
        verdict = evaluate(spec, paths, ti.xcom_pull(task_ids=PREDICT) or {})
        ti.xcom_push(key=VERDICT_KEY, value=verdict.to_json())
        lines = verdict.summary_lines(top=5)
        self.log.info("Quality verdict %s against %s:\n%s", verdict.level, verdict.baseline, "\n".join(lines))
        if verdict.level == "pass":
            return {"level": "pass", "decision": "publish"}
        sent = self._post(context, spec, paths, verdict, lines)
        if verdict.level == "warn":
            return {"level": "warn", "decision": "publish", "slack": sent.get("status")}
        # this run's spec (a trigger param may override quality.*): what the request waits for and defaults to
        self.response_timeout = timedelta(minutes=spec.quality.timeout_minutes)
        self.defaults = [OPTION[spec.quality.on_timeout]]
        self.body = "\n".join(["**What drifted (worst first)**", "", "```", *lines, "```", "",
                               f"No answer within {_minutes(spec.quality.timeout_minutes)}: "
                               f"**{OPTION[spec.quality.on_timeout]}** (quality.on_timeout)."])
        return HITLOperator.execute(self, context)  # writes the request, then parks the task (awaiting_input)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict:
        """The answer (a person's, or the timeout's default): approve returns who; reject raises."""
        answer = HITLOperator.execute_complete(self, context, event)
        params = answer["params_input"] or {}
        reason = str(params.get(REASON_PARAM) or "").strip()
        quality = effective_spec(self.spec, context["params"]).quality
        if event.get("timedout"):
            who = f"nobody within {_minutes(quality.timeout_minutes)} (quality.on_timeout: {quality.on_timeout})"
        else:
            who = decided_by(answer.get("responded_by_user"), params.get(SLACK_USER_PARAM))
        rejected = answer["chosen_options"] == [REJECT]
        if not params.get(SLACK_USER_PARAM):  # decided outside Slack: the message still shows its buttons
            self._mark_message(context, f"{'🚫 Rejected' if rejected else '✅ Approved'} by {who}"
                                        + (f": {reason}" if reason else ""))
        if rejected:
            raise GateRejectedError(
                f"{self.spec.name}: run {context['run_id']} rejected at the quality gate by {who}"
                f"{': ' + reason if reason else ' (no reason given)'}; nothing was published")
        self.log.info("Approved by %s%s", who, f": {reason}" if reason else "")
        return {"level": "block", "decision": "approve", "approved_by": who, "reason": reason,
                "timed_out": bool(event.get("timedout"))}

    def _post(self, context: Any, spec: PipelineSpec, paths: RunPaths, verdict: Any, lines: list[str]) -> dict:
        """The summary (warn), or summary, chart and buttons (block), through the alert outbox."""
        import os

        from mlbatch.alerts.delivery import DEFAULT_BUDGET_S
        from mlbatch.alerts.gate_message import GateNotice, payload
        from mlbatch.alerts.notifier import mlflow_links, post
        from mlbatch.quality.gate import chart_png

        ti, a = context["ti"], spec.alerts
        target = GateTarget(ti.dag_id, ti.run_id, ti.task_id, getattr(ti, "map_index", -1))
        notice = GateNotice(level=verdict.level, pipeline=spec.name, target=target, summary=lines,
                            baseline=verdict.baseline, links=self._links(context) + mlflow_links(ti),
                            mention=a.mention)
        chart = None
        if verdict.level == "block":
            notice.timeout = (f"in {_minutes(spec.quality.timeout_minutes)} the run is "
                              f"{'approved' if spec.quality.on_timeout == 'approve' else 'rejected'} "
                              "(quality.on_timeout)")
            try:
                chart = chart_png(verdict, spec, paths, ti.xcom_pull(task_ids=PREDICT) or {})
            except Exception as exc:  # the decision needs the text, not the picture
                self.log.warning("Drift chart not drawn: %s: %s", type(exc).__name__, exc)
        message = payload(notice)
        sent = post(message, kind=f"gate_{verdict.level}", channel=a.slack_channel,
                    slack_conn_id=a.slack_conn_id, webhook_conn_id=a.webhook_conn_id, outbox_dir=None,
                    budget_s=max(float(os.environ.get("MLBATCH_ALERT_BUDGET_SECONDS", DEFAULT_BUDGET_S)),
                                 HELD_BUDGET_S if verdict.level == "block" else 0),
                    attachment=chart or None, attachment_name=f"{spec.name}_drift.png" if chart else None)
        if sent.get("ts"):
            ti.xcom_push(key=GATE_MESSAGE_XCOM, value={"channel_id": sent.get("channel_id"), "ts": sent["ts"],
                                                        "text": message["text"], "blocks": message["blocks"]})
        return sent

    def _mark_message(self, context: Any, line: str) -> None:
        """The gate's Slack message, when one was sent, with its buttons replaced by the decision."""
        sent = context["ti"].xcom_pull(task_ids=self.task_id, key=GATE_MESSAGE_XCOM)
        if not isinstance(sent, dict) or not sent.get("ts"):
            return
        from mlbatch.alerts.gate_message import update_decided

        try:
            update_decided(self.spec.alerts.slack_conn_id, sent, line)
        except Exception as exc:  # the decision stands; the message keeps its buttons (a press says "decided")
            self.log.warning("Slack message %s not updated with the decision: %s: %s", sent["ts"],
                             type(exc).__name__, exc)

    def _links(self, context: Any) -> list:
        """The run in Airflow and its Required Actions page (Airflow's `api.base_url`)."""
        from airflow.configuration import conf

        from mlbatch.alerts.message import Link

        base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
        if not base:
            return []
        ti = context["ti"]
        return [Link("Airflow run", f"{base}/dags/{ti.dag_id}/runs/{ti.run_id}"),
                Link("Required action in Airflow", self.generate_link_to_ui(task_instance=ti, base_url=base))]


def decided_by(responded_by: dict | None, slack_user: str | None) -> str:
    """Who answered: the Slack user the app names (it answers as its Airflow service account), else the
    Airflow user who answered in the UI or the REST API."""
    airflow_user = (responded_by or {}).get("name") or (responded_by or {}).get("id") or "unknown"
    if slack_user:
        return f"{slack_user} in Slack (through Airflow user {airflow_user})"
    return f"{airflow_user} in Airflow"


def _minutes(minutes: float) -> str:
    return f"{minutes / 60:g} h" if minutes >= 120 else f"{minutes:g} min"
