"""Before a run waits or scores anything: every connection the spec needs exists (or the environment
stands in for it), every endpoint answers, and every bucket the run reads or writes exists.

`connection_problems` is what `mlbatch validate --connections` prints; `require_reachable` is what the
first task (`wait_for_data`) runs with the run's rendered URIs, so a missing output bucket fails the
run at once, naming the bucket and the connection, instead of after scoring everything (a Beam job's
write to a missing GCS bucket failed only at the end, with `InvalidResponse: (404, 'Expected one
of', ...)` and nothing named).
"""

from __future__ import annotations

from typing import Any

from mlbatch.errors import ConnectionNotFoundError, StorageError
from mlbatch.spec.connections import Need, needed_connections
from mlbatch.storage.connections import check_endpoint, lookup, reach
from mlbatch.storage.layer import Storage, bucket, join


def connection_problems(spec: Any, find=lookup, probe: bool = True) -> list[Exception]:
    """One error per connection the spec needs that is missing or whose endpoint does not answer."""
    problems: list[Exception] = []
    seen: set[tuple[str, str]] = set()
    for need in needed_connections(spec):
        if (need.kind, need.conn_id) in seen:
            continue
        seen.add((need.kind, need.conn_id))
        try:
            found = reach(need.kind, need.conn_id, need.field, need.explicit, need.uri, need.purpose, find)
            if probe:
                check_endpoint(found, need.uri)
        except (ConnectionNotFoundError, StorageError) as exc:
            problems.append(exc)
    return problems


def require_reachable(spec: Any, rendered: dict[str, list[str]], find=lookup) -> None:
    """Raise the first problem of `connection_problems`, then check the buckets of the run's URIs
    (`rendered`: purpose -> the run's URIs, e.g. "output.uri" -> [the partition])."""
    problems = connection_problems(spec, find)
    if problems:
        raise problems[0]
    checked: set[tuple[str, str]] = set()
    for need in needed_connections(spec):
        for uri in rendered.get(need.purpose, [need.uri]):
            name = bucket(uri)
            if name and "{{" not in name and (need.conn_id, name) not in checked:
                checked.add((need.conn_id, name))
                _bucket_exists(need, uri)


def _bucket_exists(need: Need, uri: str) -> None:
    """`BucketNotFoundError` (from the storage layer) when the bucket of `uri` is missing: listing a
    folder in it lists little and says so on every store."""
    storage = Storage(**{f"{need.kind}_conn_id": need.conn_id})
    folder = uri.split("{{", 1)[0].rsplit("/", 1)[0] if "{{" in uri or any(c in uri for c in "*?[") else uri
    try:
        storage.files(join(folder, "_mlbatch_preflight"))
    except StorageError as exc:  # name the run's own URI, not the probe's
        raise type(exc)(uri, exc.conn_id, exc.fix, exc.cause, endpoint=exc.endpoint) from exc
