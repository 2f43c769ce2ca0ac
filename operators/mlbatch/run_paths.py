"""Where one run reads and writes: rendered URIs plus its private scratch and staging folders.

Scratch and staging live beside the output partition (under `_work/`), on the same filesystem, so the
final commit is a rename and a failed run leaves nothing in the published partition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


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
        return f"{self.work}/{step}.result.json"


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


def local_path(uri: str) -> Path:
    """The local path of a file URI; other schemes are for the cloud backends."""
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    if "://" in uri:
        raise ValueError(f"{uri!r}: only local paths are supported by this step on the local runner")
    return Path(uri)


def empty_local_dir(uri: str) -> Path:
    """The local folder of `uri`, emptied (or created): a retry must not mix in an earlier try's files."""
    import shutil

    path = local_path(uri)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
