"""The HTTP front door: the Bolt app behind Bolt's FastAPI adapter, mounted by the plugin in the Airflow
API server at `/slack`.

    POST /slack/commands       the slash command's Request URL
    POST /slack/interactions   the app's Interactivity Request URL (the alerts' Retry button)

Both routes hand the request to the same Bolt app; a bad, stale or replayed signature gets 401 from its
`_verified` middleware before anything else is looked at.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from slack_bolt.adapter.fastapi.async_handler import AsyncSlackRequestHandler

from mlbatch.slack_commands.bolt_app import SlackCommandsApp
from mlbatch.slack_commands.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    commands = SlackCommandsApp(settings or Settings.from_env())
    handler = AsyncSlackRequestHandler(commands.app)
    app = FastAPI(title="mlbatch Slack commands", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.commands = commands

    @app.post("/commands")
    @app.post("/interactions")
    async def slack(request: Request):
        return await handler.handle(request)

    return app
