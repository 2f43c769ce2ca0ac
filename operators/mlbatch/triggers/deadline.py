"""Run another trigger until a deadline; at the deadline fire `{"status": "timeout"}`. While it waits
it logs what it waits for and how long is left, once a minute (the task log shows the triggerer's lines
of a deferred task; `mlbatch run` prints them).

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
REPORT_SECONDS = 60.0


class DeadlineTrigger(BaseTrigger):
    """Fires the first event of `classpath(**kwargs)`, or a timeout event at `deadline`.

    :param classpath: import path of the wrapped trigger class.
    :param kwargs: its serialized keyword arguments.
    :param deadline: ISO-8601 time (with zone) at which waiting stops.
    :param waiting_for: what is awaited, in words, for the progress lines.
    :param report_seconds: how often a progress line is logged.
    """

    def __init__(self, *, classpath: str, kwargs: dict[str, Any], deadline: str, waiting_for: str = "",
                 report_seconds: float = REPORT_SECONDS):
        super().__init__()
        self.classpath, self.kwargs, self.deadline = classpath, kwargs, deadline
        self.waiting_for, self.report_seconds = waiting_for, report_seconds

    @classmethod
    def wrap(cls, trigger: BaseTrigger, deadline: datetime, waiting_for: str = "") -> DeadlineTrigger:
        classpath, kwargs = trigger.serialize()
        return cls(classpath=classpath, kwargs=kwargs, deadline=deadline.isoformat(), waiting_for=waiting_for)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"classpath": self.classpath, "kwargs": self.kwargs, "deadline": self.deadline,
                 "waiting_for": self.waiting_for, "report_seconds": self.report_seconds})

    async def _report(self) -> None:
        """One line a minute: what is awaited and how long is left."""
        deadline = datetime.fromisoformat(self.deadline)
        what = self.waiting_for or self.classpath.rpartition(".")[2]
        while True:
            left = (deadline - datetime.now(timezone.utc)).total_seconds()
            self.log.info("Still waiting for %s: %d min %02d s left (until %s)", what, left // 60, left % 60,
                          deadline.strftime("%H:%M:%S UTC"))
            await asyncio.sleep(self.report_seconds)

    def inner(self) -> BaseTrigger:
        import importlib

        module, _, name = self.classpath.rpartition(".")
        return getattr(importlib.import_module(module), name)(**self.kwargs)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        remaining = (datetime.fromisoformat(self.deadline) - datetime.now(timezone.utc)).total_seconds()
        events = self.inner().run()
        timed_out = ended = False
        event = None
        reporter = asyncio.create_task(self._report())
        try:
            # the first event, or the deadline, in this very task (the wrapped trigger may rely on the
            # task's context); never yield inside the timeout block (a suspended yield would be cut)
            async with asyncio.timeout(max(remaining, 0)):
                event = await anext(events)
        except TimeoutError:
            timed_out = True
        except StopAsyncIteration:
            ended = True
        finally:
            reporter.cancel()
        await events.aclose()
        if timed_out:
            yield TriggerEvent({"status": TIMEOUT, "message": f"deadline {self.deadline} passed"})
        elif ended:
            yield TriggerEvent({"status": "error", "message": f"{self.classpath} ended without an event"})
        else:
            yield event
