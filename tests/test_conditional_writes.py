"""Compare-and-swap on local disk, the GCS emulator (preconditions honoured as GCS documents them, see
tests/emulators.py) and the moto S3 server (honours If-None-Match / If-Match itself): the mechanism the
partition lease and the fenced pointer writes stand on."""

from __future__ import annotations

import uuid

import pytest

from mlbatch.storage.conditional import PreconditionFailed, delete_if, read_versioned, write_if
from mlbatch.storage.layer import Storage, join


def test_create_only_if_absent_then_swap_only_from_the_version_read(store_root):
    storage = Storage()
    uri = join(store_root, "part", "_lease")
    assert read_versioned(storage, uri) == (None, None)
    first = write_if(storage, uri, b"one", None)
    with pytest.raises(PreconditionFailed):
        write_if(storage, uri, b"again", None)  # a second creator loses
    assert read_versioned(storage, uri) == (b"one", first)
    second = write_if(storage, uri, b"two", first)
    assert second != first
    with pytest.raises(PreconditionFailed):
        write_if(storage, uri, b"stale", first)  # a writer holding the old version loses
    with pytest.raises(PreconditionFailed):
        delete_if(storage, uri, first)
    assert read_versioned(storage, uri) == (b"two", second)
    delete_if(storage, uri, second)
    assert read_versioned(storage, uri) == (None, None)
    delete_if(storage, uri, second)  # gone already is fine


@pytest.fixture
def gcs_root(gcs_emulator, monkeypatch) -> str:
    from stores import GCS_BUCKET, connect_gcs, ensure_gcs_bucket

    connect_gcs(gcs_emulator, monkeypatch)
    ensure_gcs_bucket(gcs_emulator, GCS_BUCKET)
    return f"gs://{GCS_BUCKET}/{uuid.uuid4().hex[:8]}"


def _between_lookup_and_download(monkeypatch, act) -> None:
    """Run `act` once, right before the reader's download request (after its generation look-up)."""
    from google.cloud.storage import Blob

    download, pending = Blob.download_as_bytes, [act]

    def interleaved(blob, *args, **kwargs):
        while pending:
            pending.pop()()
        return download(blob, *args, **kwargs)

    monkeypatch.setattr(Blob, "download_as_bytes", interleaved)


def test_a_lease_deleted_between_lookup_and_download_reads_as_absent(gcs_root, monkeypatch):
    """A holder releasing its lease while another run reads it (seen once in a full run)."""
    storage, uri = Storage(), join(gcs_root, "_lease")
    version = write_if(storage, uri, b"holder", None)
    _between_lookup_and_download(monkeypatch, lambda: delete_if(storage, uri, version))
    assert read_versioned(storage, uri) == (None, None)
    assert write_if(storage, uri, b"next holder", None)  # and the reader can take it


def test_a_lease_replaced_between_lookup_and_download_reads_the_new_one_with_its_version(gcs_root, monkeypatch):
    """Content and version always belong together: a renewal between the two requests makes GCS answer
    412 to the download (its generation precondition), and the reader reads again."""
    storage, uri = Storage(), join(gcs_root, "_lease")
    first = write_if(storage, uri, b"held", None)
    renewed = []
    _between_lookup_and_download(monkeypatch, lambda: renewed.append(write_if(storage, uri, b"renewed", first)))
    assert read_versioned(storage, uri) == (b"renewed", renewed[0])
    with pytest.raises(PreconditionFailed):
        write_if(storage, uri, b"taken over", first)
