"""Where one run reads and writes: rendered URIs plus its private scratch and staging folders.

Scratch and staging live beside the output partition (under `_work/`), on the same store (local, gs://
or s3://), so the commit copies server-side and a failed run leaves nothing in the published partition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class RunPaths:
    input_pattern: str
    marker: str | None
    output: str          # the published partition
    dead_letter: str     # the published partition of rejected rows
    work: str            # this run's scratch folder

    @property
    def prepared(self) -> str:
        return f"{self.work}/prepared"

    @property
    def rejected_staging(self) -> str:
        return f"{self.work}/rejected"

    @property
    def raw_predictions(self) -> str:
        return f"{self.work}/raw_predictions"

    @property
    def output_staging(self) -> str:
        return f"{self.work}/output"

    def result_file(self, step: str) -> str:
        """A job's result JSON: in the work folder when local, else in a local folder of this run
        (jobs and the task read it as a plain file)."""
        if "://" not in self.work.replace("file://", ""):
            return f"{self.work.removeprefix('file://')}/{step}.result.json"
        import hashlib
        import tempfile

        key = hashlib.sha256(self.work.encode()).hexdigest()[:16]
        return f"{tempfile.gettempdir()}/mlbatch-results/{key}/{step}.result.json"


def run_key(run_id: str) -> str:
    """A filesystem-safe, stable name for one DAG run."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)


def default_dead_letter(output: str) -> str:
    parent, leaf = _split(output)
    return f"{parent}/_rejected/{leaf}"


def default_work_root(output: str) -> str:
    parent, _ = _split(output)
    return f"{parent}/_work"


def _split(uri: str) -> tuple[str, str]:
    uri = uri.rstrip("/")
    parent, _, leaf = uri.rpartition("/")
    return parent or ".", leaf
