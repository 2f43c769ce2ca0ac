"""This try's task log, as readable lines, from inside a task callback.

Two sources, because Airflow 3 runs tasks two ways:
- Under a supervisor (Local/Celery/Kubernetes executors): the supervisor writes the try's log as JSON
  lines to `[logging] base_log_folder` / `log_filename_template`, on the same machine as the task
  process that runs the callback. That file is what the Airflow UI shows; we read its end.
- In process (`dag.test()`, `airflow dags test`): there is no file; log events go straight to the
  console. `LogTap`, started by the task's `on_execute_callback`, keeps the last events in memory.

Callers get lines either way; `source` says which one was used.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_TAIL_BYTES = 2_000_000  # the full-log attachment keeps at most the last ~2 MB of a try's log


@dataclass
class TaskLog:
    lines: list[str]
    source: str  # the file path, "memory (in-process run)" or "unavailable: <why>"


def read_try_log(ti: Any, max_bytes: int = MAX_TAIL_BYTES) -> TaskLog:
    """The current try's log: the supervisor's file if there is one, else the in-memory tap."""
    path = try_log_path(ti)
    if path is not None and path.is_file():
        return TaskLog(_render_file(path, max_bytes), str(path))
    tapped = TAP.lines_for(ti)
    if tapped is not None:
        return TaskLog(tapped, "memory (in-process run)")
    why = f"no file at {path}" if path is not None else "no log folder configured"
    return TaskLog([], f"unavailable: {why} and no in-process capture")


def try_log_path(ti: Any) -> Path | None:
    """Where the supervisor writes this try's log (same template the Airflow log reader uses)."""
    try:
        from airflow.sdk.configuration import conf
        import jinja2

        folder = conf.get("logging", "base_log_folder", fallback=None)
        template = conf.get("logging", "log_filename_template", fallback=None)
        if not folder or not template:
            return None
        relative = jinja2.Environment().from_string(template).render(ti=ti, try_number=ti.try_number)
        return Path(folder).expanduser() / relative
    except Exception as exc:  # a log excerpt is a nicety; never break the alert over it
        logging.getLogger(__name__).warning("Cannot work out the task log path: %s", exc)
        return None


def _render_file(path: Path, max_bytes: int) -> list[str]:
    with path.open("rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - max_bytes))
        data = f.read().decode("utf-8", errors="replace")
    raw = data.splitlines()
    if size > max_bytes and raw:
        raw = [f"(first {size - max_bytes} bytes of the log left out)"] + raw[1:]
    lines: list[str] = []
    for line in raw:
        lines.extend(render_json_line(line))
    return lines


def render_json_line(line: str) -> list[str]:
    """One JSON log line of the supervisor -> readable lines (`time LEVEL logger: event` + traceback)."""
    try:
        event = json.loads(line)
    except ValueError:
        return [line]
    if not isinstance(event, dict):
        return [line]
    return render_event(event)


def render_event(event: dict) -> list[str]:
    if str(event.get("event", "")).startswith(("::group::", "::endgroup::")):
        return []  # Airflow's UI folding markers, not news
    stamp = str(event.get("timestamp", ""))[11:23]  # HH:MM:SS.mmm
    level = str(event.get("level", "")).upper()
    logger = str(event.get("logger", ""))
    text = str(event.get("event", ""))
    head = " ".join(p for p in (stamp, level, f"{logger}:" if logger else "") if p)
    out = [f"{head} {text}".strip()] if text or head else []
    for detail in event.get("error_detail") or []:
        out.extend(_render_error_detail(detail))
    if isinstance(event.get("exception"), str):
        out.extend(event["exception"].rstrip().splitlines())
    return out


TRACEBACK_FRAMES = 6  # innermost frames kept: where it broke, not how Airflow got there


def _render_error_detail(detail: dict) -> list[str]:
    """Airflow's structured traceback (`error_detail`) -> a compact text form, innermost frames last."""
    frames = [(f.get("filename"), f.get("lineno"), f.get("name")) for f in detail.get("frames", [])]
    return _compact_traceback(frames, str(detail.get("exc_type", "Exception")), str(detail.get("exc_value", "")))


def _compact_traceback(frames: list[tuple], exc_type: str, exc_value: str) -> list[str]:
    skipped = len(frames) - TRACEBACK_FRAMES
    lines = ["Traceback (most recent call last):"] + ([f"  … {skipped} outer frames"] if skipped > 0 else [])
    lines += [f'  File "{_short_path(f)}", line {n}, in {name}' for f, n, name in frames[-TRACEBACK_FRAMES:]]
    return lines + [f"{exc_type}: {exc_value}"]


def _format_exception(exc: BaseException) -> list[str]:
    frames = [(f.filename, f.lineno, f.name) for f in traceback.extract_tb(exc.__traceback__)]
    return _compact_traceback(frames, type(exc).__qualname__, str(exc))


def _short_path(path: str | None) -> str:
    """Site-packages paths from the package on: `…/mlflow/tracking/client.py`."""
    path = str(path)
    marker = "site-packages/"
    return "…/" + path.split(marker, 1)[1] if marker in path else path


class LogTap:
    """Keeps the last log events of the running task in memory (for in-process runs, see module doc).

    `start(context)` is an `on_execute_callback`: it hooks a structlog processor (the task's own and
    Airflow's loggers) and a root logging handler (stdlib loggers, e.g. job output) for this try.
    """

    def __init__(self, max_lines: int = 2000):
        self._lines: deque[str] = deque(maxlen=max_lines)
        self._key: tuple | None = None
        self._lock = threading.Lock()
        self._handler = _TapHandler(self)
        self._hooked = False

    def start(self, context: Any) -> None:
        ti = context["ti"]
        with self._lock:
            self._key = _key(ti)
            self._lines.clear()
        self._hook()

    def lines_for(self, ti: Any) -> list[str] | None:
        with self._lock:
            return list(self._lines) if self._key == _key(ti) else None

    def add(self, lines: list[str]) -> None:
        with self._lock:
            if self._key is not None:
                self._lines.extend(lines)

    def __call__(self, logger: Any, method_name: str, event_dict: dict) -> dict:
        """structlog processor: record the event as a readable line, pass it on unchanged."""
        try:
            event = {"timestamp": event_dict.get("timestamp", ""), "level": event_dict.get("level", method_name),
                     "logger": event_dict.get("logger", ""), "event": _event_text(event_dict)}
            lines = render_event(event)
            exc = event_dict.get("exc_info")
            if exc:
                info = sys.exc_info()[1] if exc is True else exc
                if isinstance(info, tuple):
                    info = info[1]
                if isinstance(info, BaseException):
                    lines.extend(_format_exception(info))
            self.add(lines)
        except Exception:  # the tap must never disturb logging itself
            pass
        return event_dict

    def _hook(self) -> None:
        if self._hooked:
            return
        import structlog

        processors = structlog.get_config()["processors"]
        if self not in processors:
            # Bound loggers share this list object, so inserting in place reaches loggers created earlier.
            processors.insert(max(len(processors) - 1, 0), self)
        root = logging.getLogger()
        if self._handler not in root.handlers:
            root.addHandler(self._handler)
        self._hooked = True


class _TapHandler(logging.Handler):
    def __init__(self, tap: LogTap):
        super().__init__(level=logging.INFO)
        self.tap = tap

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stamp = time.strftime("%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}"
            lines = [f"{stamp} {record.levelname} {record.name}: {record.getMessage()}"]
            if record.exc_info and record.exc_info[1] is not None:
                lines.extend(_format_exception(record.exc_info[1]))
            self.tap.add(lines)
        except Exception:
            pass


def _event_text(event_dict: dict) -> str:
    text = str(event_dict.get("event", ""))
    args = event_dict.get("positional_args")
    if args:
        try:
            text = text % args
        except (TypeError, ValueError):
            pass
    return text


def _key(ti: Any) -> tuple:
    return (ti.dag_id, ti.run_id, ti.task_id, getattr(ti, "map_index", -1), ti.try_number)


TAP = LogTap()


def start_log_tap(context: Any) -> None:
    """`on_execute_callback` of every pipeline task (see the DAG factory)."""
    try:
        TAP.start(context)
    except Exception as exc:  # never fail a task over its log excerpt
        logging.getLogger(__name__).warning("Log tap not started: %s", exc)
