"""Deterministic remote-job names, so a retried or crashed task finds the job it already started.

The name is built from (pipeline, run id, task, attempt). `attempt` is not Airflow's try number: it
only moves on when the job of the previous attempt *failed*. `find_attempt` walks the attempts:

- no job under the name            -> submit it under that name,
- a job that is running/succeeded  -> re-attach to it (never a second job),
- a job that failed/was stopped    -> look at the next attempt.

So a task retry after a worker crash or a kill re-attaches; a retry after a failed job submits a new,
distinctly named job. The run id is hashed: it contains characters and lengths no service accepts.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Verdict = Literal["absent", "active", "succeeded", "failed"]
MAX_ATTEMPTS = 20


@dataclass(frozen=True)
class Attempt:
    number: int
    name: str
    verdict: Verdict
    job: Any = None  # the service's description of the job, when it exists


def job_name(pipeline: str, run_id: str, task_id: str, attempt: int, *, max_len: int = 63) -> str:
    """`<pipeline>-<task>-<hash of run id>-a<attempt>`: lower-case letters, digits and dashes, starting
    with a letter, at most `max_len` long (SageMaker: 63; Dataflow: lower-case, starts with a letter)."""
    run_hash = hashlib.sha256(run_id.encode()).hexdigest()[:10]
    suffix = f"-{task_id}-{run_hash}-a{attempt}"
    suffix = re.sub(r"[^a-z0-9-]+", "-", suffix.lower())
    head = re.sub(r"[^a-z0-9]+", "-", pipeline.lower()).strip("-") or "mlbatch"
    if not head[0].isalpha():
        head = "p" + head
    return (head[: max_len - len(suffix)].rstrip("-") + suffix)[:max_len]


def find_attempt(name_of: Callable[[int], str], describe: Callable[[str], tuple[Verdict, Any]]) -> Attempt:
    """The first attempt whose job is absent, running or succeeded (see the module docstring)."""
    for number in range(1, MAX_ATTEMPTS + 1):
        name = name_of(number)
        verdict, job = describe(name)
        if verdict != "failed":
            return Attempt(number, name, verdict, job)
    raise RuntimeError(f"{MAX_ATTEMPTS} attempts of this job failed already ({name_of(1)} ...); "
                       "clear the task after fixing the cause, or start a new DAG run")
