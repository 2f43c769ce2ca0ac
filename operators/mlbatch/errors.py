"""Every exception the bundle raises on purpose, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SpecProblem:
    where: str  # dotted field path, "" for the whole document
    value: Any
    expected: str


class SpecError(ValueError):
    """A pipeline spec is invalid. The message names the file, the field (and line), the value and
    what was expected, one problem per line."""

    def __init__(self, path: Path, problems: list[SpecProblem], lines: dict[str, int] | None = None):
        self.path, self.problems = path, problems
        lines = lines or {}
        rendered = []
        for p in problems:
            line = _nearest_line(p.where, lines)
            at = f"{path}:{line}" if line else str(path)
            field = p.where or "<document>"
            value = "" if p.value is None else f" = {_short(p.value)}"
            rendered.append(f"{at}: {field}{value}: expected {p.expected}")
        super().__init__("\n".join(rendered))


class BrokenSpecError(ValueError):
    """A run of a broken spec's placeholder DAG (see `mlbatch.broken_spec`): says why it cannot run."""


class CountMismatchError(RuntimeError):
    """Rows in != rows scored + rows rejected: refuse to publish rather than lose rows silently."""


class TooManyRejectedError(RuntimeError):
    """The rejected fraction of the input exceeds the spec's `prep.max_rejected_fraction`."""


class NoValidRowsError(TooManyRejectedError):
    """prep found no valid row: there is nothing to predict."""


class ModelNotFoundError(LookupError):
    """The spec's model, alias or version is not in the registry."""


class ModelMismatchError(ValueError):
    """The spec's features do not fit the model's signature."""


class RemoteJobError(RuntimeError):
    """A Beam or batch-prediction job ended in failure."""


class WaitFailedError(RuntimeError):
    """Waiting for the input ended without it: the trigger reported an error, or the upstream task or
    DAG run it waited for failed or was skipped."""


def _nearest_line(where: str, lines: dict[str, int]) -> int | None:
    parts = where.split(".") if where else []
    while parts:
        key = ".".join(parts)
        if key in lines:
            return lines[key]
        parts.pop()
    return None


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
