"""One command router behind the Bolt app (`bolt_app`), whichever front door the request came through.

`acknowledge()` (run by the app's policy middleware) is cheap (parse, then authorise against the policy in memory and the cached user-group
membership): its reply is the answer Slack gets within its 3 seconds — final for `help`, malformed
text and refusals, "working on it" otherwise. So a user who may not do something is told so first, and
the audit trail never says "working on" for a refused command. `execute()` does the slow part after the
ack: the Airflow REST calls (and the authorisation that needs a run's pipeline); its reply goes to the
request's `response_url`. `execute()` never raises: every outcome, including Airflow being down,
becomes a reply the user sees and an audit line.

Why one module of this length: `Router` is the one place where each command is parsed, authorised and
answered (ack, then execute); the helpers after it format its replies and carry its refusals.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from mlbatch.approval_buttons import OPTION, REASON_PARAM, SLACK_USER_PARAM
from mlbatch.run.steps import QUALITY_GATE
from mlbatch.spec.broken import BROKEN_TAG
from mlbatch.slack_commands.airflow_api import AirflowApiError, AirflowClient, AirflowUnavailable
from mlbatch.slack_commands.audit import audit, retry_note, trigger_note
from mlbatch.slack_commands.commands import Command, CommandError, RunRef, help_text, parse_command
from mlbatch.slack_commands.params import describe, run_conf
from mlbatch.slack_commands.policy import Actor, Policy
from mlbatch.slack_commands.usergroups import UsergroupDirectory

log = logging.getLogger(__name__)

PIPELINE_TAG = "mlbatch"
ACK_LOOKUP_SECONDS = 1.5  # a cold user-group lookup may take this much of Slack's 3 s
LOG_LINES = 40
LOG_CHARS = 2800
FAILED_STATES = ("failed", "upstream_failed")  # what `retry` clears (the API's only_failed)
STATE_ICONS = {"success": "✅", "failed": "❌", "running": "▶️", "queued": "⏳", "upstream_failed": "⛔",
               "up_for_retry": "🔁", "skipped": "⏭️", "deferred": "💤", "scheduled": "🕒"}


@dataclass(frozen=True)
class SlackRequest:
    """What both front doors hand to the router: who asked, what, and where to answer."""

    actor: Actor
    text: str
    response_url: str | None
    command_name: str = "/mlops"
    channel_id: str = ""
    source: str = "http"  # "http" | "socket" (audit)
    button: Command | None = None  # set for a button press (Retry, Approve, Reject) instead of `text`

    @classmethod
    def from_slash_command(cls, form: dict[str, str], source: str) -> SlackRequest:
        actor = Actor(user_id=form.get("user_id", ""), user_name=form.get("user_name", ""),
                      team_id=form.get("team_id", ""))
        return cls(actor=actor, text=form.get("text", ""), response_url=form.get("response_url"),
                   command_name=form.get("command") or "/mlops", channel_id=form.get("channel_id", ""),
                   source=source)


@dataclass(frozen=True)
class Decision:
    """A quality gate answered from Slack: the app updates the gate's message with it."""

    dag_id: str
    run_id: str
    task_id: str
    action: str  # "approve" | "reject"
    user_id: str
    reason: str = ""

    def line(self) -> str:
        verb = "✅ Approved" if self.action == "approve" else "🚫 Rejected"
        return f"{verb} by <@{self.user_id}>" + (f": {self.reason}" if self.reason else "")


@dataclass
class Reply:
    text: str
    ephemeral: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    decided: Decision | None = None

    def to_slack(self) -> dict[str, Any]:
        return {"response_type": "ephemeral" if self.ephemeral else "in_channel", "text": self.text,
                "mrkdwn": True, **self.extra}


class Router:
    def __init__(self, *, policy: Policy, airflow: AirflowClient, links_base: str,
                 usergroups: UsergroupDirectory | None = None, policy_problem: str | None = None):
        self.policy, self.airflow, self.links_base = policy, airflow, links_base.rstrip("/")
        self.usergroups = usergroups or UsergroupDirectory(None)
        self.policy_problem = policy_problem  # why everything is refused, when the policy did not load

    # -- within Slack's 3 seconds --------------------------------------------------------------------
    async def acknowledge(self, request: SlackRequest) -> tuple[Reply, Command | None]:
        """The immediate answer, and the command still to execute (None when the answer is final)."""
        try:
            command = request.button or parse_command(request.text, request.command_name)
        except CommandError as exc:
            audit(request.actor, "?", "rejected", source=request.source, detail=_one_line(str(exc)))
            return Reply(f"⚠️ {exc}"), None
        if command.action == "help":
            return Reply(help_text(request.command_name)), None
        actor = await self._with_groups(request.actor, ACK_LOOKUP_SECONDS)
        pipeline = command.pipeline or (command.run.pipeline if command.run else None)
        try:
            if pipeline is not None:
                self._authorise(actor, command.grant, pipeline)
            elif self.policy_problem or not self.policy.allows_somewhere(actor, command.grant):
                self._authorise(actor, command.grant, None)
        except _Refused as exc:
            audit(actor, command.action, "refused", source=request.source, pipeline=pipeline)
            reply = Reply(f"⛔ {exc}")
            reply.ephemeral = self.policy.ephemeral(command.grant)
            return reply, None
        return Reply(f"⏳ Working on `{request.command_name} {request.text.strip()}` …"), command

    async def _with_groups(self, actor: Actor, timeout: float | None = None) -> Actor:
        """The actor with the policy's user groups they are in (cached lookups; a lookup that does not
        answer within `timeout` counts as no group: deny, never allow)."""
        if not self.policy.usergroup_ids:
            return actor
        lookup = self.usergroups.groups_of(actor.user_id, self.policy.usergroup_ids)
        try:
            groups = await (asyncio.wait_for(lookup, timeout) if timeout else lookup)
        except asyncio.TimeoutError:
            log.error("Slack user groups of %s not known within %.1f s: treated as none", actor, timeout)
            groups = frozenset()
        return Actor(actor.user_id, actor.user_name, actor.team_id, groups)

    # -- after the ack -------------------------------------------------------------------------------
    async def execute(self, request: SlackRequest, command: Command) -> Reply:
        actor = request.actor
        try:
            actor = await self._with_groups(actor)
            handler = getattr(self, f"_{command.action}")
            reply = await handler(request, actor, command)
        except CommandError as exc:
            audit(actor, command.action, "rejected", source=request.source, pipeline=command.pipeline,
                  detail=_one_line(str(exc)))
            reply = Reply(f"⚠️ {exc}")
        except _Refused as exc:
            audit(actor, command.action, "refused", source=request.source, pipeline=exc.pipeline)
            reply = Reply(f"⛔ {exc}")
        except AirflowUnavailable as exc:
            log.error("Slack command %s by %s: %s", command.action, actor, exc)
            audit(actor, command.action, "error", source=request.source, detail=_one_line(str(exc)))
            reply = Reply("⚠️ Airflow cannot be reached right now; nothing was changed. Try again shortly.")
        except AirflowApiError as exc:
            log.error("Slack command %s by %s: %s", command.action, actor, exc)
            audit(actor, command.action, "error", source=request.source, detail=_one_line(str(exc)))
            reply = Reply(f"⚠️ Airflow refused the request ({exc.status}): {exc.detail}")
        if command.action != "help":
            reply.ephemeral = self.policy.ephemeral(command.grant)
        return reply

    # -- commands ------------------------------------------------------------------------------------
    async def _run(self, request: SlackRequest, actor: Actor, command: Command) -> Reply:
        pipeline = command.pipeline
        self._authorise(actor, "run", pipeline)
        details = await self.airflow.dag_details(pipeline)
        if details is None or PIPELINE_TAG not in _tag_names(details) or details.get("is_stale"):
            raise CommandError(await self._unknown_pipeline(pipeline, details))
        if BROKEN_TAG in _tag_names(details):
            raise CommandError(f"`{pipeline}` is not loaded: its spec is broken, so it cannot run. "
                               f"{details.get('description') or ''}\nThe DAG's docs in Airflow show the "
                               "whole error; `mlbatch validate` checks a fix.")
        params = details.get("params") or {}
        try:
            conf = run_conf(pipeline, params, command.params)
        except CommandError as exc:
            raise CommandError(f"{exc}\nParameters of `{pipeline}`:\n{describe(params)}") from None
        try:
            run = await self.airflow.trigger(pipeline, conf, trigger_note(actor, request.text.strip()))
        except AirflowApiError as exc:
            if exc.status == 400:  # Airflow's own param validation disagreed
                raise CommandError(f"Airflow refused the parameters of `{pipeline}`: {exc.detail}") from None
            raise
        run_id = run["dag_run_id"]
        audit(actor, "run", "triggered", source=request.source, pipeline=pipeline, run_id=run_id,
              detail=" ".join(f"{k}={v}" for k, v in conf.items()))
        given = ", ".join(f"`{k}={v}`" for k, v in conf.items()) or "defaults"
        paused = "\n⏸️ The pipeline is paused: the run waits until it is unpaused." if details.get("is_paused") else ""
        return Reply(f"🚀 Started `{pipeline}` run `{run_id}` with {given}.\n"
                     f"<{self._run_link(pipeline, run_id)}|Open the run in Airflow>{paused}")

    async def _status(self, request: SlackRequest, actor: Actor, command: Command) -> Reply:
        if command.run is None and command.target is not None:
            pipelines = {p["dag_id"] for p in await self.airflow.pipelines(PIPELINE_TAG)}
            if command.target in pipelines:
                return await self._pipeline_status(request, actor, command.target)
            command = Command("status", run=RunRef(command.target))
        if command.run is not None:
            return await self._run_status(request, actor, command.run)
        readable = [p["dag_id"] for p in await self.airflow.pipelines(PIPELINE_TAG)
                    if self.policy.allows(actor, "status", p["dag_id"])]
        if not readable:
            raise _Refused("You are not allowed to see the status of any pipeline.", None)
        runs = [r for r in await self.airflow.runs("~", limit=100) if r["dag_id"] in readable][:10]
        audit(actor, "status", "answered", source=request.source)
        if not runs:
            return Reply("No runs yet.")
        return Reply("*Recent runs*\n" + "\n".join(self._run_line(r, with_pipeline=True) for r in runs))

    async def _pipeline_status(self, request: SlackRequest, actor: Actor, pipeline: str) -> Reply:
        self._authorise(actor, "status", pipeline)
        runs = await self.airflow.runs(pipeline, limit=5)
        audit(actor, "status", "answered", source=request.source, pipeline=pipeline)
        lines = [self._run_line(r) for r in runs] or ["No runs yet."]
        return Reply(f"*{pipeline}*: last {len(runs)} run(s)\n" + "\n".join(lines))

    async def _run_status(self, request: SlackRequest, actor: Actor, ref: RunRef) -> Reply:
        run = await self._find_run(actor, "status", ref)
        tasks = await self.airflow.task_instances(run["dag_id"], run["dag_run_id"])
        audit(actor, "status", "answered", source=request.source, pipeline=run["dag_id"], run_id=run["dag_run_id"])
        lines = [f"{_icon(t.get('state'))} `{t['task_id']}`{_map_suffix(t)} {t.get('state') or 'not started'}"
                 f"{_try_suffix(t)}" for t in sorted(tasks, key=_task_order)]
        note = f"\n_{run['note']}_" if run.get("note") else ""
        return Reply(f"{self._run_line(run, with_pipeline=True)}{note}\n" + "\n".join(lines))

    async def _list(self, request: SlackRequest, actor: Actor, command: Command) -> Reply:
        loaded = await self.airflow.pipelines(PIPELINE_TAG)
        if not loaded:
            raise CommandError("No pipeline is loaded in Airflow (no active DAG tagged `mlbatch`): check "
                               "the DAG processor and the import errors in the Airflow UI.")
        pipelines = [p for p in loaded if self.policy.allows(actor, "list", p["dag_id"])]
        if not pipelines:
            raise _Refused(f"You are not allowed to `list` any of the {len(loaded)} loaded pipeline(s): "
                           f"{self._missing(actor, 'list')}", None)
        last_runs = await asyncio.gather(*(self.airflow.runs(p["dag_id"], limit=1) for p in pipelines))
        audit(actor, "list", "answered", source=request.source)
        lines = []
        for p, runs in zip(pipelines, last_runs):
            paused = " ⏸️ paused" if p.get("is_paused") else ""
            if BROKEN_TAG in _tag_names(p):
                paused = f" 🚫 spec broken: {p.get('description') or ''}"
            last = (f"last run {_icon(runs[0]['state'])} {runs[0]['state']} `{runs[0]['dag_run_id']}`"
                    if runs else "no runs yet")
            lines.append(f"• <{self.links_base}/dags/{quote(p['dag_id'])}|{p['dag_id']}>{paused}: {last}")
        return Reply("*Pipelines*\n" + "\n".join(lines))

    async def _logs(self, request: SlackRequest, actor: Actor, command: Command) -> Reply:
        run = await self._find_run(actor, "logs", command.run)
        dag_id, run_id = run["dag_id"], run["dag_run_id"]
        tasks = await self.airflow.task_instances(dag_id, run_id)
        task = self._pick_task(tasks, command.task_id, run)
        if not task.get("try_number"):
            raise CommandError(f"Task `{task['task_id']}` of run `{run_id}` has not run yet: no log.")
        from mlbatch.redaction import redact_text

        content = await self.airflow.log(dag_id, run_id, task["task_id"], task["try_number"],
                                         task.get("map_index", -1))
        lines = [_log_line(entry) for entry in content]
        excerpt = redact_text("\n".join(line for line in lines if line.strip())[-20_000:])
        excerpt = "\n".join(excerpt.splitlines()[-LOG_LINES:])[-LOG_CHARS:].replace("```", "'''")
        audit(actor, "logs", "answered", source=request.source, pipeline=dag_id, run_id=run_id,
              detail=f"task={task['task_id']} try={task['try_number']}")
        link = self._run_link(dag_id, run_id, task["task_id"])
        return Reply(f"*{dag_id}* `{run_id}` task `{task['task_id']}`{_map_suffix(task)} "
                     f"try {task['try_number']} ({task.get('state')}), last lines:\n"
                     f"```{excerpt or '(empty log)'}```\n<{link}|Full log in Airflow>")

    async def _retry(self, request: SlackRequest, actor: Actor, command: Command) -> Reply:
        run = await self._find_run(actor, "retry", command.run)
        dag_id, run_id = run["dag_id"], run["dag_run_id"]
        task_ids, tasks = None, None
        if command.task_id:
            tasks = await self.airflow.task_instances(dag_id, run_id)
            self._pick_task(tasks, command.task_id, run)
            task_ids = [[command.task_id, command.map_index]] if command.map_index >= 0 else [command.task_id]
        named = [t for t in tasks or [] if t["task_id"] == command.task_id
                 and (command.map_index < 0 or t.get("map_index", -1) == command.map_index)]
        if command.task_id and not any(t.get("state") in FAILED_STATES for t in named):
            cleared = []  # not failed: nothing to clear (the clear would take its failed downstream tasks)
        else:
            cleared = await self.airflow.clear_failed(dag_id, run_id, task_ids, retry_note(actor))
        if not cleared:
            audit(actor, "retry", "nothing to retry", source=request.source, pipeline=dag_id, run_id=run_id)
            if tasks is None and run.get("state") != "success":
                tasks = await self.airflow.task_instances(dag_id, run_id)
            return Reply(_nothing_to_retry(run, tasks or [], command, request.command_name))
        note = "\n".join(filter(None, [run.get("note"), retry_note(actor)]))
        await self.airflow.set_run_note(dag_id, run_id, note)
        cleared = sorted(cleared, key=lambda t: (t["task_id"], t.get("map_index", -1)))
        names = ", ".join(f"`{t['task_id']}`{_map_suffix(t)}" for t in cleared)
        audit(actor, "retry", "cleared", source=request.source, pipeline=dag_id, run_id=run_id,
              detail=f"tasks={','.join(t['task_id'] for t in cleared)}")
        return Reply(f"🔁 Cleared {names} of `{dag_id}` run `{run_id}`; the run is queued again.\n"
                     f"<{self._run_link(dag_id, run_id)}|Open the run in Airflow>")

    async def _approve(self, request: SlackRequest, actor: Actor, command: Command) -> Reply:
        return await self._decide(request, actor, command)

    async def _reject(self, request: SlackRequest, actor: Actor, command: Command) -> Reply:
        return await self._decide(request, actor, command)

    async def _decide(self, request: SlackRequest, actor: Actor, command: Command) -> Reply:
        """Answer the run's quality gate (Airflow's Human-in-the-loop request) as the actor decided; the
        Slack user goes into the answer's `slack_user` field (the REST call is the service account's)."""
        run = await self._find_run(actor, command.grant, command.run)
        dag_id, run_id = run["dag_id"], run["dag_run_id"]
        task_id = command.task_id or QUALITY_GATE
        detail = await self.airflow.hitl_detail(dag_id, run_id, task_id, command.map_index)
        if detail is None:
            raise CommandError(f"Run `{run_id}` of `{dag_id}` has no quality gate waiting for a decision "
                               f"(run state: {run.get('state')}).")
        if detail.get("response_received"):
            raise CommandError(_already_decided(dag_id, run_id, detail))
        reason = command.reason or ("rejected with the Slack button" if command.action == "reject" else "")
        who = f"{actor.user_name} ({actor.user_id})" if actor.user_name else actor.user_id
        try:
            await self.airflow.answer_hitl(dag_id, run_id, task_id, OPTION[command.action],
                                           {REASON_PARAM: reason, SLACK_USER_PARAM: who}, command.map_index)
        except AirflowApiError as exc:
            if exc.status == 409:  # someone answered between our read and our write
                raise CommandError(f"Run `{run_id}` of `{dag_id}` was decided already: {exc.detail}") from None
            raise
        audit(actor, command.action, "answered", source=request.source, pipeline=dag_id, run_id=run_id,
              detail=reason)
        decision = Decision(dag_id, run_id, task_id, command.action, actor.user_id, reason)
        outcome = ("it publishes now" if command.action == "approve"
                   else "nothing is published and the run fails")
        return Reply(f"{decision.line()} — `{dag_id}` run `{run_id}`: {outcome}.\n"
                     f"<{self._run_link(dag_id, run_id)}|Open the run in Airflow>", decided=decision)

    # -- helpers -------------------------------------------------------------------------------------
    def _authorise(self, actor: Actor, action: str, pipeline: str | None) -> None:
        """`pipeline` None: may the actor do `action` on any pipeline at all."""
        if self.policy_problem:
            raise _Refused(f"Slack commands are switched off: {self.policy_problem}", pipeline)
        if pipeline is None and not self.policy.allows_somewhere(actor, action):
            raise _Refused(f"You are not allowed to `{action}` any pipeline: {self._missing(actor, action)}",
                           None)
        if pipeline is not None and not self.policy.allows(actor, action, pipeline):
            raise _Refused(f"You are not allowed to `{action}` `{pipeline}`: "
                           f"{self._missing(actor, action, pipeline)}", pipeline)

    def _missing(self, actor: Actor, action: str, pipeline: str | None = None) -> str:
        """Which grant is missing, in words an admin can act on."""
        groups = ", ".join(f"`{g}`" for g in sorted(actor.usergroups)) or "none of the policy's"
        scope = f"a pipeline pattern matching `{pipeline}`" if pipeline else "any pipeline pattern"
        return (f"no grant of the Slack command policy gives action `{action}` with {scope} to your user "
                f"`{actor.user_id}` or your user groups ({groups}). Ask the mlbatch admins for a grant with "
                f"`actions: [{action}]`" + (f" and `pipelines: [{pipeline}]`." if pipeline else "."))

    async def _find_run(self, actor: Actor, action: str, ref: RunRef) -> dict:
        if ref.pipeline:
            run = await self.airflow.run(ref.pipeline, ref.run_id)
            runs = [run] if run else []
        else:
            runs = await self.airflow.find_runs(ref.run_id)
        pipelines = {p["dag_id"] for p in await self.airflow.pipelines(PIPELINE_TAG)}
        runs = [r for r in runs if r["dag_id"] in pipelines]
        if not runs:
            raise CommandError(f"No run `{ref}` in the mlbatch pipelines. `status <pipeline>` lists recent runs.")
        if len(runs) > 1:
            options = ", ".join(f"`{r['dag_id']}/{r['dag_run_id']}`" for r in runs)
            raise CommandError(f"Run id `{ref.run_id}` exists in several pipelines: write one of {options}.")
        self._authorise(actor, action, runs[0]["dag_id"])
        return runs[0]

    @staticmethod
    def _pick_task(tasks: list[dict], task_id: str | None, run: dict) -> dict:
        if task_id:
            matching = [t for t in tasks if t["task_id"] == task_id]
            if not matching:
                names = ", ".join(sorted({f"`{t['task_id']}`" for t in tasks}))
                raise CommandError(f"Run `{run['dag_run_id']}` has no task `{task_id}`. Tasks: {names}.")
            return matching[0]
        failed = [t for t in tasks if t.get("state") == "failed"]
        started = sorted((t for t in tasks if t.get("start_date")), key=lambda t: t["start_date"])
        if failed:
            return failed[0]
        if started:
            return started[-1]
        raise CommandError(f"No task of run `{run['dag_run_id']}` has started yet: no log.")

    def _run_link(self, dag_id: str, run_id: str, task_id: str | None = None) -> str:
        link = f"{self.links_base}/dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}"
        return f"{link}/tasks/{quote(task_id)}" if task_id else link

    def _run_line(self, run: dict, with_pipeline: bool = False) -> str:
        state = run.get("state") or "?"
        when = (run.get("run_after") or run.get("logical_date") or "")[:16].replace("T", " ")
        who = f" by {run['triggering_user_name']}" if run.get("triggering_user_name") else ""
        name = f"*{run['dag_id']}* " if with_pipeline else ""
        link = self._run_link(run["dag_id"], run["dag_run_id"])
        return f"{_icon(state)} {name}<{link}|{run['dag_run_id']}> {state} ({when}{who})"

    async def _unknown_pipeline(self, name: str, details: dict | None = None) -> str:
        known = sorted(p["dag_id"] for p in await self.airflow.pipelines(PIPELINE_TAG))
        if details is not None and details.get("is_stale"):
            why = (f"`{name}` is not loaded: Airflow knows the DAG but the DAG processor no longer finds it "
                   "(stale: its spec was removed or its DAG file fails to import).")
        elif details is not None:
            why = f"`{name}` is a DAG in Airflow but not an mlbatch pipeline."
        else:
            why = f"No such pipeline `{name}`: it is not loaded in Airflow."
        return f"{why} Pipelines: " + (", ".join(f"`{p}`" for p in known) or "none loaded") + "."


def _nothing_to_retry(run: dict, tasks: list[dict], command: Command, command_name: str) -> str:
    """What is true when `retry` cleared nothing: what succeeded says so and points to `run`."""
    dag_id, run_id = run["dag_id"], run["dag_run_id"]
    again = f"use `run` to score again: `{command_name} run {dag_id}{_conf_args(run.get('conf'))}`"
    if command.task_id:
        mine = [t for t in tasks if t["task_id"] == command.task_id
                and (command.map_index < 0 or t.get("map_index", -1) == command.map_index)]
        states = sorted({t.get("state") or "not started" for t in mine}) or ["not started"]
        name = f"`{command.task_id}`" + (f"[{command.map_index}]" if command.map_index >= 0 else "")
        if states == ["success"]:
            return f"Nothing failed: task {name} of `{dag_id}` run `{run_id}` succeeded; {again}."
        return (f"Nothing to retry: task {name} of `{dag_id}` run `{run_id}` has not failed "
                f"(state: {', '.join(states)}).")
    if run.get("state") == "success":
        return f"Nothing failed: `{dag_id}` run `{run_id}` succeeded; {again}."
    return f"Nothing to retry: no task of `{dag_id}` run `{run_id}` has failed (run state: {run.get('state')})."


def _already_decided(dag_id: str, run_id: str, detail: dict) -> str:
    chosen = ", ".join(detail.get("chosen_options") or []) or "?"
    user = (detail.get("responded_by_user") or {}).get("name") or "the timeout's default"
    slack_user = (detail.get("params_input") or {}).get(SLACK_USER_PARAM)
    by = f"{slack_user} in Slack" if slack_user else user
    return f"Run `{run_id}` of `{dag_id}` was decided already: {chosen} by {by} at {detail.get('responded_at')}."


def _conf_args(conf: Any) -> str:
    """A run's conf as `run` parameters (the simple values; trigger params are strings, numbers, flags)."""
    if not isinstance(conf, dict):
        return ""
    parts = []
    for key, value in conf.items():
        if isinstance(value, bool):
            value = str(value).lower()
        if isinstance(value, (str, int, float)) and str(value) and " " not in str(value):
            parts.append(f"{key}={value}")
    return "".join(f" {p}" for p in parts)


class _Refused(Exception):
    def __init__(self, message: str, pipeline: str | None):
        super().__init__(message)
        self.pipeline = pipeline


def _tag_names(details: dict) -> set[str]:
    return {t["name"] if isinstance(t, dict) else t for t in details.get("tags") or []}


def _icon(state: str | None) -> str:
    return STATE_ICONS.get(state or "", "▫️")


def _map_suffix(task: dict) -> str:
    return f"[{task['map_index']}]" if task.get("map_index", -1) >= 0 else ""


def _try_suffix(task: dict) -> str:
    return f" (try {task['try_number']})" if task.get("try_number", 0) > 1 else ""


def _task_order(task: dict) -> tuple:
    return (task.get("start_date") or "9999", task["task_id"], task.get("map_index", -1))


def _log_line(entry: Any) -> str:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        level = entry.get("level")
        event = str(entry.get("event", ""))
        return f"{level.upper()}: {event}" if level and event else event
    return str(entry)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]
