"""An ASGI app that builds the real one off the request path: at API server start-up, in a thread.

Airflow loads plugins in every component (scheduler, workers, DAG processor); only the API server
serves them. So the plugin module stays tiny and imports nothing heavy, and this wrapper starts building
the Slack app (FastAPI routes, slack_bolt, slack_sdk, httpx; settings; the user-group cache) in a
background thread as soon as it is created *in the API server* -- the plugin is loaded when the server
starts -- so the first Slack request finds the app ready instead of paying for the build (~0.7 s, more
on a busy machine). Elsewhere nothing is built. Where the process is not recognised as the API server
(`serving_api`), the first request builds it, in a thread so the event loop keeps serving.
`MLBATCH_SLACK_APP_EAGER=1|0` overrides the detection.

In the API server it also freezes the garbage collector's view of the start-up heap (`gc.freeze()`,
once the app is built and again at the first Slack request): the ~1 million objects Airflow creates at
start-up are then left out of every later full collection. Measured on the live API server: a full
collection took 550-770 ms of CPU and held the event loop that long (2-6 s wall on a busy 2-core
machine), so the first burst of commands after start-up, and every later one that met a full
collection, waited for it. `MLBATCH_SLACK_GC_FREEZE=0` leaves the collector alone.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import os
import sys
import threading
import time

log = logging.getLogger(__name__)


def serving_api(argv: list[str] | None = None, env: dict[str, str] | None = None) -> bool:
    """Is this process an Airflow API server (`airflow api-server`, its uvicorn/gunicorn workers, which
    keep the parent's argv, or a server started as `uvicorn`/`gunicorn` itself)?"""
    forced = (os.environ if env is None else env).get("MLBATCH_SLACK_APP_EAGER", "").strip().lower()
    if forced:
        return forced in ("1", "true", "yes", "on")
    argv = sys.argv if argv is None else argv
    return "api-server" in argv[1:2] or any(os.path.basename(a) in ("uvicorn", "gunicorn") for a in argv[:1])


class LazyASGIApp:
    def __init__(self, factory: str, eager: bool | None = None):
        self.factory = factory  # "package.module:function"
        self._app = None
        self._error: Exception | None = None
        self._lock = threading.Lock()
        self.build_seconds: float | None = None
        self.eager = serving_api() if eager is None else eager
        self._freeze = self.eager and os.environ.get("MLBATCH_SLACK_GC_FREEZE", "1").strip().lower() not in (
            "0", "false", "no", "off")
        self._served = False
        if self.eager:
            threading.Thread(target=self._build, name="mlbatch-slack-app-build", daemon=True).start()

    def _build(self) -> None:
        """Build once (the start-up thread, or the first request when there was none). Thread-safe."""
        with self._lock:
            if self._app is not None:
                return
            started = time.perf_counter()
            module_name, _, function = self.factory.partition(":")
            try:
                self._app = getattr(importlib.import_module(module_name), function)()
                self._error = None
                self.build_seconds = time.perf_counter() - started
                log.info("Slack commands app %s built in %.2f s", self.factory, self.build_seconds)
                self._freeze_heap("Slack app built")
            except Exception as exc:  # misconfiguration: answer 503 with the reason, log it in full
                log.exception("Slack commands app %s could not start", self.factory)
                self._error = exc

    def _freeze_heap(self, when: str) -> None:
        """Move every object alive now to the collector's permanent generation (O(1), no collection)."""
        if self._freeze:
            gc.freeze()  # (gc.get_freeze_count() would walk the whole list: not on the request path)
            log.info("%s: the objects alive now are left out of later garbage collections", when)

    async def __call__(self, scope, receive, send):
        if not self._served:
            self._served = True
            self._freeze_heap("first Slack request")  # the server's own start-up is complete by now
        if self._app is None:
            await asyncio.to_thread(self._build)  # waits for the start-up build, or builds (retries) here
            if self._app is None:
                if scope["type"] == "http":
                    await _plain(send, 503, f"Slack commands are not configured: {self._error}")
                return
        await self._app(scope, receive, send)


async def _plain(send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
