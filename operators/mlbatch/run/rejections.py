"""The prep step's verdict on rejected rows: fail where the cause is, with the causes.

prep enforces `prep.max_rejected_fraction` itself and refuses a run with no valid row, so predict never
starts on an empty prepared set and the error says why rows were rejected (top rules with counts and
an example each) and where the dead letters are. Reading the dead letters happens only on failure.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from mlbatch.errors import NoValidRowsError, TooManyRejectedError
from mlbatch.storage.layer import nonblank_lines

TOP = 5


def top_rejections(folder: str, storage: Any, top: int = TOP) -> list[tuple[str, int, str]]:
    """(rule, rows, an example reason) for the most common rules in the dead-letter files (any URI,
    read through mlbatch.storage.layer)."""
    counts: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for uri in storage.files(folder):
        if not uri.endswith(".jsonl"):
            continue
        with storage.open(uri) as f:
            for line in nonblank_lines(f):
                rejected = json.loads(line)
                rule = rejected.get("rule") or rejected.get("reason", "?")
                counts[rule] += 1
                examples.setdefault(rule, rejected.get("reason", ""))
    return [(rule, n, examples[rule]) for rule, n in counts.most_common(top)]


def describe(folder: str, storage: Any) -> str:
    lines = [f"  {n} × {rule}   (e.g. {example})" for rule, n, example in top_rejections(folder, storage)]
    return "top reasons:\n" + "\n".join(lines) if lines else "no dead letters were written"


def check_prep(spec: Any, result: dict, dead_letters: str, storage: Any, predicted: bool = False) -> None:
    """Raise when prep left nothing to predict or rejected more than the spec allows.

    `result` is the prep job's counts: rows_in/rows_valid/rows_rejected (local runner) or
    prepared_files/rows_rejected (Dataflow, whose prepared files stay on GCS). `predicted`: the job
    validated and scored in one pass (mlbatch_beam.validate_and_score), so its predictions exist but
    are only staged.
    """
    rows_in, rows_valid = result.get("rows_in"), result.get("rows_valid")
    rows_rejected = result.get("rows_rejected", 0)
    where = f"dead letters: {dead_letters} (not published)"
    if rows_valid == 0 or result.get("prepared_files") == 0:
        total = f"{rows_rejected} of {rows_in}" if rows_in is not None else f"{rows_rejected}"
        raise NoValidRowsError(
            f"{spec.name}: prep found no valid row ({total} rows rejected); nothing to predict.\n"
            f"{describe(dead_letters, storage)}\n{where}")
    limit = spec.prep.max_rejected_fraction
    if rows_in and rows_rejected / rows_in > limit:
        raise TooManyRejectedError(
            f"{spec.name}: prep rejected {rows_rejected} of {rows_in} rows ({rows_rejected / rows_in:.2%}) "
            f"> prep.max_rejected_fraction {limit:.2%}; "
            f"{'nothing was published' if predicted else 'nothing was predicted or published'}.\n"
            f"{describe(dead_letters, storage)}\n{where}")
