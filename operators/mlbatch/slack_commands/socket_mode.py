"""The Socket Mode front door: for workspaces without public ingress. Slack pushes commands and
button presses over a WebSocket the process opens with the app-level token (`SLACK_APP_TOKEN`,
scope `connections:write`); no signing secret is involved, the token authenticates the connection.

    python -m mlbatch.slack_commands.socket_mode

Each envelope is acknowledged at once (the command's first reply rides on the ack), the slow part is
posted to the `response_url`, exactly like the HTTP front door.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from mlbatch.slack_commands.assembly import build_dispatcher
from mlbatch.slack_commands.dispatch import Dispatcher
from mlbatch.slack_commands.interactions import handle_interaction
from mlbatch.slack_commands.router import SlackRequest
from mlbatch.slack_commands.settings import Settings

log = logging.getLogger(__name__)


class SocketModeFrontDoor:
    """A `socket_mode_request_listeners` entry of slack_sdk's asyncio Socket Mode clients."""

    def __init__(self, dispatcher: Dispatcher):
        self.dispatcher = dispatcher

    async def __call__(self, client, request) -> None:
        from slack_sdk.socket_mode.response import SocketModeResponse

        if request.type == "slash_commands":
            slack_request = SlackRequest.from_slash_command(request.payload, source="socket")
            reply, command = await self.dispatcher.router.acknowledge(slack_request)
            await client.send_socket_mode_response(
                SocketModeResponse(envelope_id=request.envelope_id, payload=reply.to_slack()))
            if command is not None:
                self.dispatcher.start(slack_request, command)
        elif request.type == "interactive":
            await client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))
            handle_interaction(self.dispatcher, request.payload, source="socket")
        else:  # events this app did not subscribe to: ack so Slack does not resend them
            await client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    from slack_sdk.socket_mode.aiohttp import SocketModeClient
    from slack_sdk.web.async_client import AsyncWebClient

    if not settings.app_token:
        raise SystemExit("SLACK_APP_TOKEN (xapp-..., scope connections:write) is not set")
    dispatcher = build_dispatcher(settings)
    web_kwargs = {"base_url": settings.slack_api_url} if settings.slack_api_url else {}
    client = SocketModeClient(app_token=settings.app_token, web_client=AsyncWebClient(**web_kwargs))
    client.socket_mode_request_listeners.append(SocketModeFrontDoor(dispatcher))
    stop = stop or asyncio.Event()
    await client.connect()
    log.info("Slack Socket Mode connected; Airflow API at %s", settings.airflow_api_url)
    try:
        await stop.wait()
    finally:
        await client.close()
        await dispatcher.aclose()
        await dispatcher.router.airflow.aclose()


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
