"""The commit protocol of an output partition, the same on local disk, gs:// and s3:// (object stores
have no atomic rename). The reader's side is in docs/storage.md.

A partition folder holds:
  _attempts/<attempt>/part-*   the files of each publish attempt; written once, never changed
  _manifest                    the committed attempt's data files, one URI per line
                               (a BigQuery/Athena "manifest" external table reads exactly these)
  _SUCCESS                     the commit record (JSON): attempt, files, the dead-letter files of the same
                               run, row counts, model version, run id. Written last: the commit point.

Commit steps, all under the partition's lease (mlbatch.run.lease: one writer at a time, pointer
writes fenced); a crash between any two leaves the previous complete partition or the new one visible:
  0. `lease`       take the output partition's lease (wait while another run holds it)
  1. `stage`       copy the staged files into fresh `_attempts/<attempt>/` of output and dead letters
  2. `file_list`   write the output's `_manifest`
  3. `commit`      write the output's `_SUCCESS`          <- the new run is visible from here on
  4. `dead_letter` write the dead-letter partition's `_manifest` and `_SUCCESS` (a convenience copy:
                   the output's record names its dead letters, so the two are always read together)
  5. `collect`     delete every attempt no pointer names (superseded runs, crashed attempts) and stray
                   data files at the partition's top; safe because no other writer can hold the lease
  then the lease is released.
Rerunning a commit after a crash at any step converges to the new partition.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from mlbatch.run.lease import PartitionLease
from mlbatch.storage.layer import Storage, join

ATTEMPTS = "_attempts"
RECORD = "_SUCCESS"
FILE_LIST = "_manifest"
STEPS = ("lease", "stage", "file_list", "commit", "dead_letter", "collect")


@dataclass(frozen=True)
class Partition:
    """One published folder (output or dead letters) and its staged files."""

    uri: str
    staging: str

    def attempt_uri(self, attempt: str) -> str:
        return join(self.uri, ATTEMPTS, attempt)


def new_attempt(run_key: str) -> str:
    """Unique per publish try: a rerun of the same run never writes into the committed attempt."""
    return f"{run_key}.{uuid.uuid4().hex[:8]}"


def commit(storage: Storage, output: Partition, dead_letter: Partition, attempt: str, record: dict,
           before_step: Callable[[str], None] = lambda step: None, sidecars: dict[str, tuple[str, bytes]] | None = None,
           **lease_options) -> dict:
    """Publish the staged output and dead letters as one run; returns the commit record.

    The holder of the partition's lease is `record["run_id"]`; `lease_options` go to `PartitionLease`
    (expiry, wait, clock). `before_step(name)` is called before each step (crash injection in tests).
    `sidecars` ({record key: (file name, bytes)}): files kept with the attempt but not data (the run's
    statistics): written into the attempt beside its files, named in the record under their key, not
    in `files` nor `_manifest`."""
    before_step("lease")
    output_pointers = [join(output.uri, FILE_LIST), join(output.uri, RECORD)]
    dead_pointers = [join(dead_letter.uri, FILE_LIST), join(dead_letter.uri, RECORD)]
    with PartitionLease(storage, output.uri, record["run_id"], **lease_options) as lease:
        lease.fence(*output_pointers, *dead_pointers)
        before_step("stage")
        lease.renew()
        files = storage.copy_tree(output.staging, output.attempt_uri(attempt))
        rejected = storage.copy_tree(dead_letter.staging, dead_letter.attempt_uri(attempt))
        for key, (file_name, data) in (sidecars or {}).items():
            record = {**record, key: join(output.attempt_uri(attempt), file_name)}
            storage.write_bytes(record[key], data)
        record = {**record, "attempt": attempt, "files": files,
                  "dead_letter": {"uri": dead_letter.uri, "files": rejected}}
        before_step("file_list")
        lease.write_pointer(output_pointers[0], _lines(files))
        before_step("commit")
        lease.write_pointer(output_pointers[1], _json(record))
        before_step("dead_letter")
        lease.write_pointer(dead_pointers[0], _lines(rejected))
        lease.write_pointer(dead_pointers[1], _json({**record, "files": rejected, "output": output.uri}))
        before_step("collect")
        lease.renew()
        collect_garbage(storage, output.uri)
        collect_garbage(storage, dead_letter.uri)
    return record


def committed(storage: Storage, partition: str) -> dict | None:
    """The commit record of a partition, or None when nothing was committed there."""
    return storage.read_json(join(partition, RECORD))


def committed_files(storage: Storage, partition: str) -> list[str]:
    """The reader's rule: exactly the files the commit record names (none when nothing is committed)."""
    record = committed(storage, partition)
    return list(record["files"]) if record else []


def collect_garbage(storage: Storage, partition: str) -> list[str]:
    """Delete the attempts that neither pointer (`_SUCCESS`, `_manifest`) names, and data files lying
    at the partition's top (left by other writers or an older layout); returns what went."""
    keep = set()
    record = committed(storage, partition)
    if record:
        keep.add(record["attempt"])
    try:
        listed = storage.read_bytes(join(partition, FILE_LIST)).decode().split()
    except FileNotFoundError:
        listed = []
    keep |= {_attempt_of(uri) for uri in listed}
    attempts = {_attempt_of(uri) for uri in storage.walk(join(partition, ATTEMPTS))}
    superseded = sorted(a for a in attempts - keep if a)
    for attempt in superseded:
        storage.rm(join(partition, ATTEMPTS, attempt))
    strays = storage.files(partition)
    for uri in strays:
        storage.rm(uri)
    return superseded + strays


def _attempt_of(uri: str) -> str:
    head, sep, rest = uri.partition(f"/{ATTEMPTS}/")
    return rest.split("/", 1)[0] if sep else ""


def _json(document: dict) -> bytes:
    return json.dumps(document, indent=2, sort_keys=True).encode()


def _lines(uris: list[str]) -> bytes:
    return "".join(f"{u}\n" for u in uris).encode()


__all__ = ["ATTEMPTS", "FILE_LIST", "RECORD", "STEPS", "Partition", "collect_garbage", "commit",
           "committed", "committed_files", "new_attempt"]
