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
        timed_out = ended = False
        event = None
        try:
            # the first event, or the deadline, in this very task (the wrapped trigger may rely on the
            # task's context); never yield inside the timeout block (a suspended yield would be cut)
            async with asyncio.timeout(max(remaining, 0)):
                event = await anext(events)
        except TimeoutError:
            timed_out = True
        except StopAsyncIteration:
            ended = True
        await events.aclose()
        if timed_out:
            yield TriggerEvent({"status": TIMEOUT, "message": f"deadline {self.deadline} passed"})
        elif ended:
            yield TriggerEvent({"status": "error", "message": f"{self.classpath} ended without an event"})
        else:
            yield event
