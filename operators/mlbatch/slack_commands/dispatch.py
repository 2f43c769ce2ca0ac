"""The slow part of a command, after the ack: run it in the background, post its reply to the
request's `response_url` (valid for 30 minutes, up to 5 replies).

Replies go only to URLs under `response_url_prefix` (Slack's `https://hooks.slack.com/`): a signed
request is from Slack, but this keeps a leaked signing secret from turning the bot into a proxy for
arbitrary URLs. A reply that cannot be delivered is logged with its text, never dropped silently.
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from mlbatch.slack_commands.commands import Command
from mlbatch.slack_commands.router import Reply, Router, SlackRequest

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(self, router: Router, *, response_url_prefix: str, timeout_seconds: float = 60.0):
        self.router = router
        self.response_url_prefix = response_url_prefix
        self.timeout_seconds = timeout_seconds
        self._tasks: set[asyncio.Task] = set()
        self._http: httpx.AsyncClient | None = None

    def start(self, request: SlackRequest, command: Command) -> asyncio.Task:
        """Execute `command` in the background and post its reply."""
        return self._track(self._work(request, command))

    def reply_later(self, request: SlackRequest, reply: Reply) -> asyncio.Task:
        """Post an already known reply in the background."""
        return self._track(self.post(request, reply))

    def _track(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)  # keep a reference until done: the loop holds tasks only weakly
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self) -> None:
        """Wait for the commands still running (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        await self.drain()
        if self._http is not None:
            await self._http.aclose()

    async def _work(self, request: SlackRequest, command: Command) -> None:
        try:
            reply = await asyncio.wait_for(self.router.execute(request, command), self.timeout_seconds)
        except asyncio.TimeoutError:
            log.error("Slack command %s by %s took longer than %.0f s", command.action, request.actor,
                      self.timeout_seconds)
            reply = Reply(f"⚠️ `{command.action}` took longer than {self.timeout_seconds:.0f} s and was "
                          "abandoned; check Airflow before trying again.")
        except Exception:
            log.exception("Slack command %s by %s failed", command.action, request.actor)
            reply = Reply(f"⚠️ `{command.action}` failed with an internal error (logged on the server).")
        await self.post(request, reply)

    async def post(self, request: SlackRequest, reply: Reply) -> None:
        url = request.response_url
        if not url or not url.startswith(self.response_url_prefix):
            log.error("Reply to %s not delivered: response_url %r is not under %r. Reply: %s",
                      request.actor, url, self.response_url_prefix, reply.text)
            return
        body = reply.to_slack()
        if request.button is not None:
            body["replace_original"] = False  # keep the alert; the answer comes as a new message
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=10.0)
        try:
            response = await self._http.post(url, json=body)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            log.error("Reply to %s not delivered to response_url: %s. Reply: %s", request.actor, exc, reply.text)
