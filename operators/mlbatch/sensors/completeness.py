"""Is the input complete? `wait.checks` over the files of `input.uri`, after the wait condition holds.

A marker says a producer finished; these checks catch a producer that finished badly (too few rows,
a truncated file, yesterday's data left in place). Each failed check is one plain sentence, so the
reason shows in the log and, at the deadline, in the failure or skip message.
"""

from __future__ import annotations

from datetime import datetime, timezone

from mlbatch.sensors.objects import ObjectInfo, find
from mlbatch.spec.models import PipelineSpec


def input_files(pattern: str, spec: PipelineSpec) -> list[ObjectInfo]:
    """Data files of the input: markers and hidden files (`_SUCCESS`, `.crc`) are not data."""
    found = find(pattern, aws_conn_id=spec.wait.aws_conn_id, gcp_conn_id=spec.wait.gcp_conn_id)
    return [f for f in found if not f.name.startswith(("_", "."))]


def incomplete_reasons(spec: PipelineSpec, pattern: str, now: datetime | None = None) -> list[str]:
    """Empty when every configured check passes."""
    checks = spec.wait.checks
    if not checks.any:
        return []
    files = input_files(pattern, spec)
    if not files:
        return [f"no input files match {pattern}"]
    reasons = []
    if checks.min_bytes is not None:
        total = sum(f.size for f in files)
        if total < checks.min_bytes:
            reasons.append(f"{total} bytes in {len(files)} files < min_bytes {checks.min_bytes}")
    if checks.max_age_minutes is not None:
        now = now or datetime.now(timezone.utc)
        newest = max(files, key=lambda f: f.updated)
        age = (now - newest.updated).total_seconds() / 60
        if age > checks.max_age_minutes:
            reasons.append(f"newest input file {newest.uri} is {age:.1f} min old > max_age_minutes "
                           f"{checks.max_age_minutes:g}")
    if checks.min_rows is not None:
        from mlbatch.run.row_counts import count_rows
        from mlbatch.storage.layer import Storage

        rows, counted = count_rows(pattern, spec.input.format,
                                    Storage(spec.wait.aws_conn_id, spec.wait.gcp_conn_id))
        if rows < checks.min_rows:
            reasons.append(f"{rows} rows in {counted} files < min_rows {checks.min_rows}")
    return reasons
