"""Deterministic remote-job names, so a retried or crashed task finds the job it already started, and
a rerun whose result would differ never re-uses a job that computed something else.

The name is built from (pipeline, run id, task, *identity*, attempt). The identity is a hash of what
determines the job's result: the model version, a fingerprint of the input it reads (its files' names
and versions from the store's metadata, `files_fingerprint`), the settings that
change predictions (`result_identity`). A cleared run whose alias moved to another version, or whose
input changed, gets a new name and so a new job; a retry of the same work finds the same name.

`attempt` is not Airflow's try number: it only moves on when the job of the previous attempt *failed*.
`find_attempt` walks the attempts:

- no job under the name            -> submit it under that name,
- a job that is running/succeeded  -> re-attach to it (never a second job),
- a job that is stopping           -> wait until it has stopped, then treat it as failed,
- a job that failed/was stopped    -> look at the next attempt.

Names are cut to the service's limit; a cut pipeline name ends in a hash of the whole name, so two
long names never collide.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

Verdict = Literal["absent", "active", "ending", "succeeded", "failed"]
MAX_ATTEMPTS = 20
ENDING_WAIT_S = 600.0   # how long a new try waits for a stopping/cancelling job to end
ENDING_POLL_S = 5.0


@dataclass(frozen=True)
class Attempt:
    number: int
    name: str
    verdict: Verdict
    job: Any = None  # the service's description of the job, when it exists


def short_hash(*parts: Any, length: int = 10) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def fit(text: str, max_len: int, separator: str = "-") -> str:
    """`text` if it fits, else its head plus a hash of the whole text, exactly `max_len` long."""
    if len(text) <= max_len:
        return text
    tag = short_hash(text, length=8)
    return text[: max_len - len(tag) - 1].rstrip(separator) + separator + tag


def job_name(pipeline: str, run_id: str, task_id: str, attempt: int, *, identity: str = "",
             max_len: int = 63) -> str:
    """`<pipeline>-<task>-<hash of run id and identity>-a<attempt>`: lower-case letters, digits and
    dashes, starting with a letter, at most `max_len` long (SageMaker: 63; Dataflow: lower-case, starts
    with a letter)."""
    key = short_hash(run_id, identity) if identity else hashlib.sha256(run_id.encode()).hexdigest()[:10]
    suffix = f"-{task_id}-{key}-a{attempt}"
    suffix = re.sub(r"[^a-z0-9-]+", "-", suffix.lower())
    head = re.sub(r"[^a-z0-9]+", "-", pipeline.lower()).strip("-") or "mlbatch"
    if not head[0].isalpha():
        head = "p" + head
    return fit(head, max_len - len(suffix)) + suffix


def files_fingerprint(storage: Any, uris: Iterable[str]) -> str:
    """A hash of the files' names and versions (`Storage.version`: size and generation, ETag or mtime,
    from the store's metadata, any store): the same on every try over the same files, another one once a
    file is written again. Reads no content: a try over gigabytes of prepared input costs one metadata
    request per file."""
    digest = hashlib.sha256()
    for uri in sorted(uris):
        digest.update(f"{uri.rsplit('/', 1)[-1]}\0{storage.version(uri)}\0".encode())
    return digest.hexdigest()[:16]


def result_identity(model: dict, input_fingerprint: str, settings: Any) -> str:
    """What determines a job's result: model name and version, input fingerprint, prediction settings."""
    return short_hash(model.get("name"), model.get("version"), input_fingerprint, settings, length=16)


def find_attempt(name_of: Callable[[int], str], describe: Callable[[str], tuple[Verdict, Any]], *,
                 ending_wait_s: float | None = None, poll_s: float | None = None) -> Attempt:
    """The first attempt whose job is absent, running or succeeded (see the module docstring)."""
    ending_wait_s = ENDING_WAIT_S if ending_wait_s is None else ending_wait_s
    poll_s = ENDING_POLL_S if poll_s is None else poll_s
    for number in range(1, MAX_ATTEMPTS + 1):
        name = name_of(number)
        verdict, job = describe(name)
        deadline = time.monotonic() + ending_wait_s
        while verdict == "ending":  # re-attaching to a job on its way out would fail: wait it out
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {name} is still stopping after {ending_wait_s:.0f} s; "
                                   "retry when it has stopped")
            time.sleep(poll_s)
            verdict, job = describe(name)
        if verdict != "failed":
            return Attempt(number, name, verdict, job)
    raise RuntimeError(f"{MAX_ATTEMPTS} attempts of this job failed already ({name_of(1)} ...); "
                       "clear the task after fixing the cause, or start a new DAG run")
