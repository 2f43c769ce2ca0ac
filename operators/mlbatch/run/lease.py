"""One writer per partition: a lease object (`<partition>/_lease`) taken and renewed with the store's own
compare-and-swap (mlbatch.storage.conditional), with an expiry so a crashed writer blocks nobody for long.

While a run holds the lease it is the only one that stages, commits or collects in the partition. The
lease alone cannot stop a writer that stalled past its expiry (a frozen VM, a SIGSTOP) from waking up and
writing, so every pointer write is fenced too: `_manifest` and `_SUCCESS` are written only if they are
still the versions this holder read when it took the lease (or wrote itself since). A stale writer's write
is refused by the store, and it fails without having named its files anywhere.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import uuid
from collections.abc import Callable

from mlbatch.storage.conditional import PreconditionFailed, delete_if, read_versioned, write_if
from mlbatch.errors import PartitionBusyError, PartitionLeaseLostError
from mlbatch.storage.layer import Storage, join

LEASE = "_lease"
LEASE_SECONDS = 900.0   # renewed before every commit step; a crashed holder blocks the partition this long
POLL_SECONDS = 5.0

log = logging.getLogger(__name__)


class PartitionLease:
    """The lease of one partition for one holder (a run id); `with` acquires and releases it."""

    def __init__(self, storage: Storage, partition: str, holder: str, *, seconds: float = LEASE_SECONDS,
                 wait_seconds: float | None = None, poll_seconds: float = POLL_SECONDS, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep):
        self.storage, self.partition, self.holder = storage, partition, holder
        self.uri = join(partition, LEASE)
        self.seconds = seconds
        self.wait_seconds = seconds * 1.2 if wait_seconds is None else wait_seconds
        self.poll_seconds, self.clock, self.sleep = poll_seconds, clock, sleep
        self.token = uuid.uuid4().hex
        self.version = None
        self.acquired = 0.0
        self.fenced: dict[str, object] = {}  # pointer URI -> the version this holder may overwrite

    def __enter__(self) -> PartitionLease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # --- the lease -----------------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the lease: when it is free, expired, or left by an earlier try of the same run (Airflow
        runs one try of a task at a time). Otherwise wait for it, then fail naming the holder."""
        deadline = self.clock() + self.wait_seconds
        said = None
        while True:
            data, version = read_versioned(self.storage, self.uri)
            held = json.loads(data) if data else None
            if held is None or held["expires"] <= self.clock() or held["holder"] == self.holder:
                self.acquired = self.clock()
                try:
                    self.version = write_if(self.storage, self.uri, self._document(), version)
                    if held and held["holder"] != self.holder:
                        log.warning("Took over the expired lease of %s from run %s", self.partition, held["holder"])
                    return
                except PreconditionFailed:
                    continue  # another writer got there first: look again
            left = deadline - self.clock()
            if left <= 0:
                raise PartitionBusyError(
                    f"{self.partition} is being published by run {held['holder']!r} (lease held since "
                    f"{_stamp(held['acquired'])} on {held.get('host', '?')}, expires {_stamp(held['expires'])}); "
                    f"run {self.holder!r} waited {self.wait_seconds:.0f} s and published nothing")
            if said != held["token"]:
                log.info("Waiting for run %r to finish publishing %s (lease expires %s; waiting up to %.0f s)",
                         held["holder"], self.partition, _stamp(held["expires"]), left)
                said = held["token"]
            self.sleep(min(self.poll_seconds, left))

    def renew(self) -> None:
        """Extend the lease; fails if it was lost (expired and taken by another writer)."""
        try:
            self.version = write_if(self.storage, self.uri, self._document(), self.version)
        except PreconditionFailed as error:
            raise self._lost("its lease was taken over") from error

    def release(self) -> None:
        """Give the lease back (only our own: a taken-over lease is left to its new holder)."""
        if self.version is None:
            return
        try:
            delete_if(self.storage, self.uri, self.version)
        except PreconditionFailed:
            log.warning("Lease of %s was taken over before release", self.partition)
        self.version = None

    # --- fenced pointer writes -----------------------------------------------------------------

    def fence(self, *pointers: str) -> None:
        """Remember the current versions of pointer objects this holder will overwrite."""
        for uri in pointers:
            self.fenced[uri] = read_versioned(self.storage, uri)[1]

    def write_pointer(self, uri: str, data: bytes) -> None:
        """Renew the lease, then write `uri` only if nobody else wrote it since `fence` (or our last write)."""
        self.renew()
        try:
            self.fenced[uri] = write_if(self.storage, uri, data, self.fenced[uri])
        except PreconditionFailed as error:
            raise self._lost(f"{uri} was written by another writer meanwhile") from error

    def _lost(self, why: str) -> PartitionLeaseLostError:
        return PartitionLeaseLostError(
            f"run {self.holder!r} lost the partition {self.partition}: {why}; this run committed nothing "
            "there (a retry publishes again)")

    def _document(self) -> bytes:
        now = self.clock()
        return json.dumps({"holder": self.holder, "token": self.token, "acquired": self.acquired,
                           "expires": now + self.seconds, "host": socket.gethostname()}).encode()


def _stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
