"""Run another trigger until a deadline; at the deadline fire `{"status": "timeout"}`.

The triggerer enforces `defer(timeout=...)` itself, but `airflow dags test` / `dag.test()` run a
deferred task's trigger in-process and ignore that timeout: a wait for input that never comes would
hang forever there. Wrapping the trigger puts the deadline inside the trigger, so it holds wherever the
trigger runs; the operator treats the timeout event like a deferral timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

TIMEOUT = "timeout"


class DeadlineTrigger(BaseTrigger):
    """Fires the first event of `classpath(**kwargs)`, or a timeout event at `deadline`.

    :param classpath: import path of the wrapped trigger class.
    :param kwargs: its serialized keyword arguments.
    :param deadline: ISO-8601 time (with zone) at which waiting stops.
    """

    def __init__(self, *, classpath: str, kwargs: dict[str, Any], deadline: str):
        super().__init__()
        self.classpath, self.kwargs, self.deadline = classpath, kwargs, deadline

    @classmethod
    def wrap(cls, trigger: BaseTrigger, deadline: datetime) -> DeadlineTrigger:
        classpath, kwargs = trigger.serialize()
        return cls(classpath=classpath, kwargs=kwargs, deadline=deadline.isoformat())

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"classpath": self.classpath, "kwargs": self.kwargs, "deadline": self.deadline})

    def inner(self) -> BaseTrigger:
        import importlib

        module, _, name = self.classpath.rpartition(".")
        return getattr(importlib.import_module(module), name)(**self.kwargs)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        remaining = (datetime.fromisoformat(self.deadline) - datetime.now(timezone.utc)).total_seconds()
        events = self.inner().run()
        try:
            # the first event, or the deadline; never yield inside the timeout (a suspended yield
            # would be cancelled by it)
            event = await asyncio.wait_for(anext(events), timeout=max(remaining, 0))
        except (asyncio.TimeoutError, StopAsyncIteration) as exc:
            await events.aclose()
            message = (f"deadline {self.deadline} passed" if isinstance(exc, asyncio.TimeoutError)
                       else "the trigger ended without an event")
            yield TriggerEvent({"status": TIMEOUT if isinstance(exc, asyncio.TimeoutError) else "error",
                                "message": message})
            return
        await events.aclose()
        yield event
