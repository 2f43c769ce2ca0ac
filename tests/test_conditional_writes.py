"""Compare-and-swap on local disk, the GCS emulator (preconditions honoured as GCS documents them, see
tests/emulators.py) and the moto S3 server (honours If-None-Match / If-Match itself): the mechanism the
partition lease and the fenced pointer writes stand on."""

from __future__ import annotations

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
