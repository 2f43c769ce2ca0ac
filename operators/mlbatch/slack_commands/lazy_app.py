"""An ASGI app that builds the real one on its first request.

Airflow loads plugins in every component (scheduler, workers, DAG processor); only the API server
serves them. Deferring the build keeps FastAPI routes, httpx and slack_sdk out of the others, and
reads settings when the server actually starts taking Slack traffic.
"""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger(__name__)


class LazyASGIApp:
    def __init__(self, factory: str):
        self.factory = factory  # "package.module:function"
        self._app = None

    async def __call__(self, scope, receive, send):
        if self._app is None:
            module_name, _, function = self.factory.partition(":")
            try:
                self._app = getattr(importlib.import_module(module_name), function)()
            except Exception as exc:  # misconfiguration: answer 503 with the reason, log it in full
                log.exception("Slack commands app %s could not start", self.factory)
                if scope["type"] == "http":
                    await _plain(send, 503, f"Slack commands are not configured: {exc}")
                return
        await self._app(scope, receive, send)


async def _plain(send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
