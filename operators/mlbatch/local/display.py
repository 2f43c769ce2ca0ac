"""Turn the output of `airflow dags test` into one readable line per task, with rows and timings.

`RunWatcher.feed(line)` reads Airflow's structured log lines as they stream; the display shows the
step running now (a progress bar with rows/total and rate when the job reports `mlbatch-progress`
lines, see mlbatch_beam.progress) and prints a line when each task ends. Without a terminal it prints
the task lines only. The full log always goes to a file; this is the summary a person reads.
"""

from __future__ import annotations

import ast
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

STARTING = re.compile(r"\[DAG TEST\] starting task_id=(\w+)")
ENDED = re.compile(r"\[DAG TEST\] end task task_id=(\w+)")
NEW_STATE = re.compile(r"new_state=(\w+)")
PROGRESS = re.compile(r"mlbatch-progress (\w+) \+(\d+)")
FACTS = {  # message patterns of the pipeline steps -> what the summary line says
    "input": re.compile(r"Input is there and complete: (\S+)"),
    "pinned": re.compile(r"Pinned (models:/\S+) \(alias (\S+)\)"),
    "prep": re.compile(r"\] prep: (\{.*?'rows_in'.*?\})"),
    "prep_in_predict": re.compile(r"prep runs inside predict"),
    "predict": re.compile(r"\] predict \((\w+), model v(\d+)\): (\{.*?\})"),
    # publish: "Committed attempt A: OUT (N rows in K files) and DEAD (M rows)" (older: "Published OUT (N rows) ...")
    "published": re.compile(r"(?:Published|Committed attempt \S+:) (\S+) \((\d+) rows[^)]*\) and (\S+) \((\d+) rows\)"),
    "mlflow_run": re.compile(r"MLflow run (\w+) in experiment (\S+)"),
}
LEVEL = re.compile(r"^\S+ \[(error|warning|critical)\s*\] (.*)$")
STRUCTURED_TAIL = re.compile(r"\s+\[[\w.]+\](?: \S+=\S+)*\s*$")  # ` [logger] key=value ...` after a message
# a traceback's last line: `[module.]Name: message`, whatever the name (AirflowSensorTimeout, NoSuchBucket, ...)
EXCEPTION = re.compile(r"^(?:[a-z_]\w*\.)*[A-Z]\w*: \S.*$")
WAITING = re.compile(r"(Still waiting for .*? left.*?)(?:\s+\[[\w.]+\]|$)")  # triggers.deadline, once a minute
STEP_WORK = {"prep": ("read", "rows read"), "predict": ("scored", "rows scored")}


class _BarWhenTotal(BarColumn):
    """A bar only when the total is known; otherwise the count and rate say enough."""

    def render(self, task):
        return super().render(task) if task.total else Text("")


@dataclass
class TaskState:
    task_id: str
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None
    state: str = "running"
    rows: int = 0  # from progress lines
    first_progress: float | None = None
    first_rows: int = 0
    lines: deque = field(default_factory=lambda: deque(maxlen=2000))

    @property
    def seconds(self) -> float:
        return (self.ended or time.perf_counter()) - self.started


class RunWatcher:
    """Follows one `airflow dags test` run; `facts` collects what the final summary needs."""

    def __init__(self, console: Console | None = None, rows_total: dict[str, int] | None = None):
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.facts: dict[str, Any] = {}
        self.tasks: dict[str, TaskState] = {}
        self.current: TaskState | None = None
        self.totals = dict(rows_total or {})  # rows expected per step, when known beforehand
        self.work = {task: word for task, (word, _) in STEP_WORK.items()}  # which progress lines count
        self._progress: Progress | None = None
        self._bar = None

    # -- display -------------------------------------------------------------------------------
    def __enter__(self) -> RunWatcher:
        if self.console.is_terminal:
            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), _BarWhenTotal(bar_width=30),
                TextColumn("{task.fields[count]}"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                console=self.console, transient=True,
            )
            self._progress.start()
            self._show("starting Airflow (parsing DAGs, creating the run)", None)
        return self

    def __exit__(self, *exc) -> None:
        if self._progress:
            self._progress.stop()

    def _show(self, description: str, total: int | None) -> None:
        if not self._progress:
            return
        if self._bar is not None:
            self._progress.remove_task(self._bar)
        self._bar = self._progress.add_task(description, total=total, rate="", count="")

    def _advance(self, task: TaskState) -> None:
        if not (self._progress and self._bar is not None):
            return
        now = time.perf_counter()
        if task.first_progress is None:  # rate from the first report on: model loading is not scoring
            task.first_progress, task.first_rows = now, task.rows
        span = now - task.first_progress
        rate = f"{(task.rows - task.first_rows) / span:,.0f} rows/s" if span > 0.2 else ""
        total = self.totals.get(task.task_id)
        count = f"{task.rows:,}/{total:,} rows" if total else f"{task.rows:,} rows"
        self._progress.update(self._bar, completed=task.rows, count=count, rate=rate)

    # -- parsing -------------------------------------------------------------------------------
    def feed(self, line: str) -> None:
        started = STARTING.search(line)
        if started:
            self._start(started.group(1))
            return
        ended = ENDED.search(line)
        if ended:
            self._end(ended.group(1))
            return
        waiting = WAITING.search(line)
        if waiting:  # a deferred wait's trigger runs with no task current: say it as it comes
            self.console.print(f"  wait_for_data  {waiting.group(1)}", markup=False)
        task = self.current
        if task is None:
            return
        task.lines.append(line.rstrip())
        state = NEW_STATE.search(line)
        if state:
            task.state = state.group(1)
        progress = PROGRESS.search(line)
        if progress and progress.group(1) == self.work.get(task.task_id):
            task.rows += int(progress.group(2))
            self._advance(task)
            return
        for name, pattern in FACTS.items():
            found = pattern.search(line)
            if found:
                self.facts[name] = found.groups()
                if name == "prep":  # the rows the scoring step will work through
                    self.totals["predict"] = _literal(found.group(1)).get("rows_valid")
                if name == "prep_in_predict":  # one pass: predict's progress is the input read
                    self.totals["predict"], self.work["predict"] = self.totals.get("prep"), "read"

    def _start(self, task_id: str) -> None:
        task = self.tasks.get(task_id)
        if task is None or task.ended is not None:  # a new try (or a task resumed after deferral)
            task = self.tasks[task_id] = TaskState(task_id)
        self.current = task
        self._show(task_id, self.totals.get(task_id))

    def _end(self, task_id: str) -> None:
        task = self.tasks.get(task_id) or TaskState(task_id)
        task.ended = time.perf_counter()
        if task.state == "running":
            task.state = "success"
        self.console.print(self.task_line(task))
        if task.state not in ("success", "skipped", "deferred"):
            self.console.print(self.failure_excerpt(task), markup=False)
        if task.state == "up_for_retry":
            self.console.print(f"  {task_id} will be retried after the spec's tasks.retry_delay_minutes "
                               "(Ctrl-C stops the run)")
        self.current = None

    def task_line(self, task: TaskState) -> Text:
        word, style = {"success": ("ok", "green"), "skipped": ("skipped", "yellow"),
                       "up_for_retry": ("failed, will retry", "red")}.get(task.state, (task.state, "red"))
        line = Text(f"  {task.task_id:<14} ")
        line.append(f"{word:<7}", style=style)
        line.append(f" {task.seconds:6.1f} s  {self.detail(task.task_id)}".rstrip())
        return line

    def detail(self, task_id: str) -> str:
        f = self.facts
        if task_id == "wait_for_data" and "input" in f:
            return f"input ready: {f['input'][0]}"
        if task_id == "resolve_model" and "pinned" in f:
            return f"{f['pinned'][0]} (alias {f['pinned'][1]})"
        if task_id == "prep" and "prep" in f:
            r = _literal(f["prep"][0])
            return f"{r.get('rows_in', 0):,} rows in: {r.get('rows_valid', 0):,} valid, " \
                   f"{r.get('rows_rejected', 0):,} rejected"
        if task_id == "prep" and "prep_in_predict" in f:
            return "validation runs in predict's job (one pass over the input)"
        if task_id == "predict" and "predict" in f:
            backend, version, result = f["predict"]
            r = _literal(result)
            scored = f"{r.get('rows_scored', 0):,} rows scored by model v{version} on backend {backend}"
            if "rows_valid" not in r:
                return scored
            failed = f", {r['rows_failed']:,} failed at the endpoint" if r.get("rows_failed") else ""
            return f"{r.get('rows_in', 0):,} rows in, {r.get('rows_rejected', 0):,} rejected{failed}; {scored}"
        if task_id == "publish" and "published" in f:
            _, scored, _, rejected = f["published"]
            return f"{int(scored):,} predictions published, {int(rejected):,} rows to dead letters"
        if task_id == "record" and "mlflow_run" in f:
            return f"MLflow run {f['mlflow_run'][0]}"
        return ""

    def failure_excerpt(self, task: TaskState, lines: int = 15) -> str:
        """What went wrong in a failed task: its error log lines and the exception that ended it."""
        shown = []
        for line in task.lines:
            level = LEVEL.match(line)
            if level and level.group(1) != "warning":
                shown.append(STRUCTURED_TAIL.sub("", level.group(2)))
            elif EXCEPTION.match(line):
                shown.append(line)
        shown = list(dict.fromkeys(shown))[-lines:] or list(task.lines)[-lines:]  # no repeats, in order
        return "\n".join("      " + line[:400] for line in shown)


def _literal(text: str) -> dict:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {}
    return value if isinstance(value, dict) else {}
