"""The Socket Mode front door: for workspaces without public ingress. Slack pushes commands and
button presses over a WebSocket the process opens with the app-level token (`SLACK_APP_TOKEN`,
scope `connections:write`); no signing secret is involved, the token authenticates the connection.

    python -m mlbatch.slack_commands.socket_mode

The same Bolt app as the HTTP front door, behind Bolt's asyncio Socket Mode handler: each envelope is
acknowledged at once (the command's first reply rides on the ack), the slow part is posted to the
`response_url`.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from mlbatch.slack_commands.settings import Settings

log = logging.getLogger(__name__)


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
    from slack_sdk.web.async_client import AsyncWebClient

    from mlbatch.slack_commands.bolt_app import SlackCommandsApp

    if not settings.app_token:
        raise SystemExit("SLACK_APP_TOKEN (xapp-..., scope connections:write) is not set")
    commands = SlackCommandsApp(settings)
    web_kwargs = {"base_url": settings.slack_api_url} if settings.slack_api_url else {}
    handler = AsyncSocketModeHandler(commands.app, settings.app_token, web_client=AsyncWebClient(**web_kwargs))
    stop = stop or asyncio.Event()
    await handler.connect_async()
    log.info("Slack Socket Mode connected; Airflow API at %s", settings.airflow_api_url)
    try:
        await stop.wait()
    finally:
        await handler.close_async()
        await commands.aclose()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(Settings.from_env(), stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
