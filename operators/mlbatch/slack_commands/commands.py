"""The text after `/mlops`, parsed into a `Command`; anything malformed becomes a `CommandError`
whose message is the helpful reply the user sees.

Grammar (values may be quoted; Slack's curly quotes are accepted):
    run <pipeline> [key=value ...]
    status [<pipeline> | <run id>]
    list
    logs <run id> [task]
    retry <run id> [task]
    approve <run id>
    reject <run id> [reason ...]
    help
A run id may be written `<pipeline>/<run id>` when the same id exists in several pipelines.
"""

from __future__ import annotations

import difflib
import re
import shlex
from dataclasses import dataclass, field

NAME = re.compile(r"^[a-z][a-z0-9_]*$")
TASK = re.compile(r"^[A-Za-z0-9_.-]+$")
RUN_ID = re.compile(r"^[A-Za-z0-9_.~:+-]+$")  # Airflow's default [scheduler] allowed_run_id_pattern

READ_ONLY_ACTIONS = ("status", "list", "logs")
ACTIONS = ("run", "status", "list", "logs", "retry", "approve", "reject", "help")
GRANTED_BY = {"reject": "approve"}  # the policy grant an action needs, where it is another action's

USAGE = {
    "run": "run <pipeline> [key=value ...]",
    "status": "status [<pipeline> | <run id>]",
    "list": "list",
    "logs": "logs <run id> [task]",
    "retry": "retry <run id> [task]",
    "approve": "approve <run id>",
    "reject": "reject <run id> [reason ...]",
    "help": "help",
}


class CommandError(ValueError):
    """The command text is not a valid command; the message says what was wrong and what works."""


@dataclass(frozen=True)
class RunRef:
    """A run the user named: its id, and the pipeline when written `<pipeline>/<run id>`."""

    run_id: str
    pipeline: str | None = None

    def __str__(self) -> str:
        return f"{self.pipeline}/{self.run_id}" if self.pipeline else self.run_id


@dataclass(frozen=True)
class Command:
    action: str
    pipeline: str | None = None  # run
    target: str | None = None  # status: a pipeline or a run id, decided against Airflow
    run: RunRef | None = None  # logs, retry
    task_id: str | None = None  # logs, retry
    map_index: int = -1  # the Retry button names one mapped task instance
    params: dict[str, str] = field(default_factory=dict)  # run
    reason: str = ""  # reject

    @property
    def grant(self) -> str:
        """The policy action this command needs (`reject` is granted with `approve`)."""
        return GRANTED_BY.get(self.action, self.action)


def parse_command(text: str, command_name: str = "/mlops") -> Command:
    tokens = _split(text)
    if not tokens:
        return Command("help")
    action, args = tokens[0].lower(), tokens[1:]
    if action not in ACTIONS:
        close = difflib.get_close_matches(action, ACTIONS, n=1)
        hint = f" Did you mean `{command_name} {close[0]}`?" if close else ""
        raise CommandError(f"Unknown command `{tokens[0]}`.{hint} `{command_name} help` lists the commands.")
    parse = _PARSERS[action]
    try:
        return parse(args)
    except CommandError as exc:
        raise CommandError(f"{exc}\nUsage: `{command_name} {USAGE[action]}`") from None


def parse_run_ref(text: str) -> RunRef:
    pipeline, _, run_id = text.rpartition("/")
    if pipeline and not NAME.match(pipeline):
        raise CommandError(f"`{pipeline}` is not a pipeline name (lowercase letters, digits, `_`).")
    if not RUN_ID.match(run_id):
        raise CommandError(f"`{text}` is not a run id (letters, digits and `_.~:+-`).")
    return RunRef(run_id=run_id, pipeline=pipeline or None)


def _split(text: str) -> list[str]:
    text = (text or "").replace("\u201c", '"').replace("\u201d", '"').replace("\u2018", "'").replace("\u2019", "'")
    try:
        return shlex.split(text)
    except ValueError as exc:  # unbalanced quotes
        raise CommandError(f"Could not read the command: {exc} (check the quotes).") from None


def _pipeline_name(token: str) -> str:
    if not NAME.match(token):
        raise CommandError(f"`{token}` is not a pipeline name (lowercase letters, digits, `_`).")
    return token


def _task_id(token: str) -> str:
    if not TASK.match(token):
        raise CommandError(f"`{token}` is not a task id.")
    return token


def _expect(args: list[str], least: int, most: int, what: str) -> None:
    if len(args) < least:
        raise CommandError(f"Missing {what}.")
    if len(args) > most:
        extra = " ".join(f"`{a}`" for a in args[most:])
        raise CommandError(f"Unexpected {extra}.")


def _run(args: list[str]) -> Command:
    _expect(args, 1, 1 + 50, "the pipeline name")
    pipeline = _pipeline_name(args[0])
    params: dict[str, str] = {}
    for token in args[1:]:
        key, sep, value = token.partition("=")
        if not sep:
            raise CommandError(f"Expected `key=value`, got `{token}`.")
        if not NAME.match(key):
            raise CommandError(f"`{key}` is not a parameter name.")
        if key in params:
            raise CommandError(f"Parameter `{key}` is given twice.")
        params[key] = value
    return Command("run", pipeline=pipeline, params=params)


def _status(args: list[str]) -> Command:
    _expect(args, 0, 1, "")
    if not args:
        return Command("status")
    target = args[0]
    if "/" in target or not NAME.match(target):
        return Command("status", run=parse_run_ref(target))
    return Command("status", target=target)


def _list(args: list[str]) -> Command:
    _expect(args, 0, 0, "")
    return Command("list")


def _logs_or_retry(action: str):
    def parse(args: list[str]) -> Command:
        _expect(args, 1, 2, "the run id")
        task = _task_id(args[1]) if len(args) > 1 else None
        return Command(action, run=parse_run_ref(args[0]), task_id=task)

    return parse


def _decision(action: str):
    def parse(args: list[str]) -> Command:
        _expect(args, 1, 1 if action == "approve" else 1 + 200, "the run id")
        return Command(action, run=parse_run_ref(args[0]), reason=" ".join(args[1:])[:500])

    return parse


def _help(args: list[str]) -> Command:
    return Command("help")


_PARSERS = {
    "run": _run,
    "status": _status,
    "list": _list,
    "logs": _logs_or_retry("logs"),
    "retry": _logs_or_retry("retry"),
    "approve": _decision("approve"),
    "reject": _decision("reject"),
    "help": _help,
}


def help_text(command_name: str = "/mlops") -> str:
    return "\n".join([
        f"*{command_name}* runs and inspects mlbatch pipelines. Replies are visible to you only.",
        f"• `{command_name} run <pipeline> [key=value ...]` start a run (e.g. `date=2026-11-20 backend=dataflow`)",
        f"• `{command_name} status [<pipeline> | <run id>]` recent runs, or one run's tasks",
        f"• `{command_name} list` pipelines with their last run",
        f"• `{command_name} logs <run id> [task]` the end of a task's log (the failed task by default)",
        f"• `{command_name} retry <run id> [task]` clear the failed tasks of a run so they run again",
        f"• `{command_name} approve <run id>` publish a run the quality gate holds",
        f"• `{command_name} reject <run id> [reason]` reject it: nothing is published, the run fails",
        "Write `<pipeline>/<run id>` when a run id exists in several pipelines.",
    ])
