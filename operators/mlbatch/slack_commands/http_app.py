"""The HTTP front door: a FastAPI app that the plugin mounts in the Airflow API server at `/slack`.

    POST /slack/commands       the slash command's Request URL
    POST /slack/interactions   the app's Interactivity Request URL (the alerts' Retry button)

Every request is checked against Slack's signature over the raw body before anything else is read;
a bad, stale or replayed one gets 401 and is not looked at further.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask

from mlbatch.slack_commands.assembly import build_dispatcher
from mlbatch.slack_commands.interactions import handle_interaction
from mlbatch.slack_commands.router import SlackRequest
from mlbatch.slack_commands.settings import Settings
from mlbatch.slack_commands.signature import MemoryReplayGuard, RedisReplayGuard, RequestVerifier, UnverifiedRequest

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    dispatcher = build_dispatcher(settings)
    guard = RedisReplayGuard(settings.replay_redis_url) if settings.replay_redis_url else MemoryReplayGuard()
    verifier = RequestVerifier(settings.signing_secret, guard)
    app = FastAPI(title="mlbatch Slack commands", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.dispatcher = dispatcher

    async def verified_form(request: Request) -> dict[str, str] | None:
        body = await request.body()
        try:
            await verifier.verify(body, request.headers)
        except UnverifiedRequest as exc:
            log.warning("Slack request to %s refused (401): %s", request.url.path, exc)
            return None
        return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))

    @app.post("/commands")
    async def commands(request: Request) -> Response:
        form = await verified_form(request)
        if form is None:
            return _unauthorized()
        slack_request = SlackRequest.from_slash_command(form, source="http")
        reply, command = await dispatcher.router.acknowledge(slack_request)
        # the slow part starts once the ack is on the wire, so it cannot delay this or other acks
        later = BackgroundTask(_start, dispatcher, slack_request, command) if command is not None else None
        return JSONResponse(reply.to_slack(), background=later)

    @app.post("/interactions")
    async def interactions(request: Request) -> Response:
        form = await verified_form(request)
        if form is None:
            return _unauthorized()
        try:
            payload = json.loads(form.get("payload") or "")
        except ValueError:
            log.warning("Slack interaction without a JSON payload refused (400)")
            return JSONResponse({"detail": "form field `payload` must be JSON"}, status_code=400)
        handle_interaction(dispatcher, payload, source="http")
        return Response(status_code=200)

    return app


async def _start(dispatcher, slack_request: SlackRequest, command) -> None:
    dispatcher.start(slack_request, command)  # on the event loop, not awaited: the work runs on its own


def _unauthorized() -> Response:
    return JSONResponse({"detail": "request not signed by Slack, stale or replayed"}, status_code=401)
