"""One slack-bolt `AsyncApp` for both front doors (HTTP and Socket Mode).

Bolt does the Slack plumbing: parsing requests, `ack()` within Slack's 3 seconds, `respond()` to the
request's `response_url`, the Socket Mode envelopes. Listeners only acknowledge; the slow part runs in a
task of ours started after the ack (`_spawn`). Ours is also what Bolt does not know, as middleware:

- `_verified` (global, before authorisation; HTTP only — in Socket Mode the app-level token
  authenticates the connection): Slack's signature over the raw body, the 5-minute window, and the
  replay guard (`signature.RequestVerifier`), with the reason of every refusal in the log;
- `_authorised` (on the command listener): parse the command and check the policy
  (`Router.acknowledge`); help, malformed text and refusals are answered in the ack itself, so a
  refused user never sees "working on it" and nothing runs.

Acknowledgements come first. The work after an ack (Airflow REST calls, often to the very API server
this app runs in) waits until no request is being acknowledged and none has come in for `ACK_QUIET_S`
(at most `MAX_DEFER_S`), and at most `work_concurrency` commands execute at once: a burst of commands
is acknowledged before the CPU goes to the work, instead of every ack queueing behind every REST call
on a small machine (bench/slack_ack.py: 100 at once on 2 cores).

Replies go only to URLs under `response_url_prefix` (Slack's `https://hooks.slack.com/`): a signed
request is from Slack, but this keeps a leaked signing secret from turning the bot into a proxy for
arbitrary URLs. A reply that cannot be delivered is logged with its text, never dropped silently.
"""

from __future__ import annotations

import asyncio
import logging
import re

from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.response import BoltResponse
from slack_sdk.web.async_client import AsyncWebClient

from mlbatch.approval_buttons import DECISIONS, GATE_MESSAGE_XCOM, decided_blocks, decode_gate_value
from mlbatch.retry_button import RETRY_ACTION_ID, decode_retry_value
from mlbatch.slack_commands.assembly import build_router
from mlbatch.slack_commands.audit import audit
from mlbatch.slack_commands.commands import Command, RunRef
from mlbatch.slack_commands.policy import Actor
from mlbatch.slack_commands.router import Decision, Reply, SlackRequest
from mlbatch.slack_commands.settings import Settings
from mlbatch.slack_commands.signature import MemoryReplayGuard, RedisReplayGuard, RequestVerifier, UnverifiedRequest

log = logging.getLogger(__name__)

ANY = re.compile(".*")
ACK_QUIET_S = 0.02  # the work after an ack starts once no request is in hand or came in for this long ...
MAX_DEFER_S = 2.0  # ... or after this, whatever arrives


class SlackCommandsApp:
    """The Bolt app (`.app`) with our router behind it; `aclose()` waits for the work still running."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.router = build_router(settings)
        guard = RedisReplayGuard(settings.replay_redis_url) if settings.replay_redis_url else MemoryReplayGuard()
        self.verifier = RequestVerifier(settings.signing_secret, guard)
        self._running: set[asyncio.Task] = set()
        self._acking = 0  # requests between arrival and acknowledgement
        self._quiet: asyncio.Event | None = None  # set while no ack is in hand (made in the serving loop)
        self._quiet_timer: asyncio.TimerHandle | None = None
        self._slots: asyncio.Semaphore | None = None  # made in the serving event loop
        self.router.usergroups.prefetch(self.router.policy.usergroup_ids)  # no Slack lookup on the first ack
        web_kwargs = {"base_url": settings.slack_api_url} if settings.slack_api_url else {}
        # Bolt passes listener and middleware arguments by parameter name: plain functions, no `self`
        async def verified(req, next):
            return await self._verified(req, next)

        async def authorize(enterprise_id, team_id, user_id):
            """One workspace, the bot token from the settings: nothing to look up (no `auth.test`)."""
            return AuthorizeResult(enterprise_id=enterprise_id, team_id=team_id, user_id=user_id,
                                   bot_token=settings.bot_token)

        async def authorised(req, body, context, next):
            return await self._authorised(req, body, context, next)

        async def command(ack, context, respond):
            await ack(context["mlbatch_ack"])  # "⏳ Working on …", decided by `_authorised`
            self._spawn(self._work(context["mlbatch_request"], context["mlbatch_command"], respond))

        async def retry_button(ack, req, body, action, respond):
            await ack()
            self._spawn(self._retry_button(_source(req), body, action, respond))

        self.app = AsyncApp(
            client=AsyncWebClient(**web_kwargs),
            signing_secret=settings.signing_secret or "",
            request_verification_enabled=False,  # `_verified` does it, with the replay guard
            before_authorize=verified,
            authorize=authorize,
            ignoring_self_events_enabled=False,
            # Listeners only acknowledge (the work is our own task, `_spawn`): run them inline. Bolt's
            # default would run each in a task and poll every 10 ms for its ack, and its lazy listeners
            # deep-copy the request (~1 ms of CPU per command).
            process_before_response=True,
        )
        self.app.command(ANY, middleware=[authorised])(command)
        async def gate_button(ack, req, body, action, respond):
            await self._gate_button(ack, _source(req), body, action, respond)

        self.app.action(RETRY_ACTION_ID)(retry_button)
        for action_id in DECISIONS:  # the quality gate's Approve / Reject
            self.app.action(action_id)(gate_button)
        self.app.action(ANY)(_ack)  # the alert's URL buttons: Slack needs only the ack
        self.app.event(ANY)(_ack)  # events this app did not subscribe to: ack so Slack does not resend

    # -- middleware ----------------------------------------------------------------------------------
    async def _verified(self, req, next):
        self._ack_started()
        try:
            if req.mode == "socket_mode":
                return await next()
            headers = {name: values[0] for name, values in req.headers.items() if values}
            try:
                await self.verifier.verify(req.raw_body.encode("utf-8"), headers)
            except UnverifiedRequest as exc:
                log.warning("Slack request refused (401): %s", exc)
                return BoltResponse(status=401, body={"detail": "request not signed by Slack, stale or replayed"})
            return await next()
        finally:
            self._ack_done()

    async def _authorised(self, req, body, context, next):
        request = SlackRequest.from_slash_command(body, source=_source(req))
        reply, command = await self.router.acknowledge(request)
        if command is None:  # final: help, malformed text, refused
            return BoltResponse(status=200, body=reply.to_slack())
        context["mlbatch_request"], context["mlbatch_command"] = request, command
        context["mlbatch_ack"] = reply.to_slack()
        return await next()

    # -- after the ack -------------------------------------------------------------------------------
    def _spawn(self, work) -> None:
        task = asyncio.ensure_future(work)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _gate_button(self, ack, source: str, body, action, respond):
        """Approve / Reject on the gate's message: parsed and authorised (the `approve` grant) before the
        ack, so a refusal is the ack's answer. Slack shows no text of a button's ack, so the refusal is also
        posted to the response_url, visible to the presser only. The answer to Airflow runs after the ack."""
        actor = _button_actor(body)
        channel = (body.get("channel") or {}).get("id", "")
        try:
            target = decode_gate_value(action.get("value") or "")
        except ValueError as exc:
            await ack()
            audit(actor, DECISIONS[action["action_id"]], "rejected", source=source, detail=f"bad button value: {exc}")
            request = SlackRequest(actor=actor, text="gate (button)", response_url=body.get("response_url"),
                                   channel_id=channel, source=source, button=Command("help"))
            await self._post(request, Reply(f"⚠️ This button cannot be used: {exc}"), respond)
            return
        command = Command(DECISIONS[action["action_id"]], run=RunRef(target.run_id, target.dag_id),
                          task_id=target.task_id, map_index=target.map_index)
        request = SlackRequest(actor=actor, text=f"{command.action} {target.dag_id}/{target.run_id}",
                               response_url=body.get("response_url"), channel_id=channel, source=source,
                               button=command)
        reply, command = await self.router.acknowledge(request)
        if command is None:
            await ack(text=reply.text, response_type="ephemeral")
            await self._post(request, reply, respond)
            return
        await ack()
        self._spawn(self._work(request, command, respond, original=body.get("message")))

    async def _gate_message_updated(self, decision: Decision, original: dict | None, respond) -> None:
        """The gate's message with its buttons replaced by the decision: through the button's response_url
        (`replace_original`), or, for `/mlops approve|reject`, chat.update of the message the gate task
        recorded in XCom. Best effort: the decision is already Airflow's, the reply says it."""
        try:
            if original is not None:
                await respond(text=original.get("text") or decision.line(), replace_original=True,
                              blocks=decided_blocks(original.get("blocks") or [], decision.line()))
                return
            sent = await self.router.airflow.xcom(decision.dag_id, decision.run_id, decision.task_id,
                                                  GATE_MESSAGE_XCOM)
            if isinstance(sent, str):
                import json

                sent = json.loads(sent)
            if not isinstance(sent, dict) or not sent.get("ts"):
                log.info("Gate message of %s/%s not updated: no message was recorded", decision.dag_id,
                         decision.run_id)
                return
            await self.app.client.chat_update(token=self.settings.bot_token, channel=sent["channel_id"], ts=sent["ts"],
                                              text=sent.get("text", ""),
                                              blocks=decided_blocks(sent.get("blocks") or [], decision.line()))
        except Exception as exc:
            log.error("Gate message of %s/%s not updated with %s: %s", decision.dag_id, decision.run_id,
                      decision.line(), exc)

    async def _retry_button(self, source: str, body, action, respond):
        """A press on an alert's Retry button: a `retry` of that task instance, authorised like the command."""
        actor = _button_actor(body)
        request = SlackRequest(actor=actor, text="retry (button)", response_url=body.get("response_url"),
                               channel_id=(body.get("channel") or {}).get("id", ""), source=source)
        try:
            target = decode_retry_value(action.get("value") or "")
        except ValueError as exc:
            audit(actor, "retry", "rejected", source=request.source, detail=f"bad button value: {exc}")
            await self._post(request, Reply(f"⚠️ This Retry button cannot be used: {exc}"), respond)
            return
        command = Command("retry", run=RunRef(target.run_id, target.dag_id), task_id=target.task_id,
                          map_index=target.map_index)
        request = SlackRequest(actor=actor, text=f"retry {target.dag_id}/{target.run_id} {target.task_id}",
                               response_url=request.response_url, channel_id=request.channel_id,
                               source=request.source, button=command)
        await self._work(request, command, respond)

    async def _work(self, request: SlackRequest, command: Command, respond, original: dict | None = None) -> None:
        timeout = self.settings.work_timeout_seconds
        await self._after_acks()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.settings.work_concurrency)
        try:
            async with self._slots:
                reply = await asyncio.wait_for(self.router.execute(request, command), timeout)
        except asyncio.TimeoutError:
            log.error("Slack command %s by %s took longer than %.0f s", command.action, request.actor, timeout)
            reply = Reply(f"⚠️ `{command.action}` took longer than {timeout:.0f} s and was "
                          "abandoned; check Airflow before trying again.")
        except Exception:
            log.exception("Slack command %s by %s failed", command.action, request.actor)
            reply = Reply(f"⚠️ `{command.action}` failed with an internal error (logged on the server).")
        await self._post(request, reply, respond)
        if reply.decided is not None:
            await self._gate_message_updated(reply.decided, original, respond)

    # -- acks first ----------------------------------------------------------------------------------
    def _ack_started(self) -> None:
        self._acking += 1
        if self._quiet is not None:
            self._quiet.clear()
        if self._quiet_timer is not None:
            self._quiet_timer.cancel()
            self._quiet_timer = None

    def _ack_done(self) -> None:
        self._acking -= 1
        if self._acking == 0 and self._quiet is not None:
            self._quiet_timer = asyncio.get_running_loop().call_later(ACK_QUIET_S, self._set_quiet)

    def _set_quiet(self) -> None:
        self._quiet_timer = None
        if self._acking == 0 and self._quiet is not None:
            self._quiet.set()

    async def _after_acks(self) -> None:
        """Let the acknowledgements of a burst go first: wait until no request is being acknowledged and
        none has come in for `ACK_QUIET_S` (at most `MAX_DEFER_S`). One event, no polling."""
        if self._quiet is None:
            self._quiet = asyncio.Event()
            if self._acking == 0:
                self._quiet_timer = asyncio.get_running_loop().call_later(ACK_QUIET_S, self._set_quiet)
        try:
            await asyncio.wait_for(self._quiet.wait(), MAX_DEFER_S)
        except asyncio.TimeoutError:
            pass

    async def _post(self, request: SlackRequest, reply: Reply, respond) -> None:
        url, prefix = request.response_url, self.settings.response_url_prefix
        if not url or not url.startswith(prefix):
            log.error("Reply to %s not delivered: response_url %r is not under %r. Reply: %s",
                      request.actor, url, prefix, reply.text)
            return
        message = reply.to_slack()
        try:
            sent = await respond(text=message["text"], response_type=message["response_type"],
                                 # a button's answer comes as a new message: keep the alert
                                 replace_original=False if request.button is not None else None)
        except Exception as exc:  # aiohttp/network errors: the reply is in the log instead
            log.error("Reply to %s not delivered to response_url: %s. Reply: %s", request.actor, exc, reply.text)
            return
        if sent.status_code != 200:
            log.error("Reply to %s not delivered to response_url: HTTP %s %s. Reply: %s", request.actor,
                      sent.status_code, sent.body[:200], reply.text)

    async def aclose(self) -> None:
        """Wait for the commands still running (shutdown), then close the Airflow client."""
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)
        await self.router.airflow.aclose()


async def _ack(ack):
    await ack()


def _button_actor(body) -> Actor:
    user, team = body.get("user") or {}, body.get("team") or {}
    return Actor(user_id=user.get("id", ""), user_name=user.get("username") or user.get("name", ""),
                 team_id=team.get("id", ""))


def _source(req) -> str:
    return "socket" if req.mode == "socket_mode" else "http"
