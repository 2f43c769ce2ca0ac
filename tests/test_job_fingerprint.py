"""Job fingerprints from object metadata (issue 21, item 6): a try names its job from the prepared files'
names and versions (size + generation on GCS, ETag on S3, size + inode + mtime locally), on the GCS
emulator, the moto S3 server and a local folder, without reading a byte of them."""

from __future__ import annotations

import time

import pytest
from stores import store_root  # noqa: F401

from mlbatch.backends.job_names import files_fingerprint
from mlbatch.storage.layer import Storage, join


def fingerprint(storage: Storage, root: str) -> str:
    return files_fingerprint(storage, storage.files(join(root, "prepared")))


@pytest.fixture
def prepared(store_root):  # noqa: F811
    storage = Storage()
    for i in range(2):
        storage.write_bytes(join(store_root, "prepared", f"part-{i:05d}.parquet"), f"rows of part {i}\n".encode())
    return storage, store_root


def test_the_fingerprint_is_stable_over_tries_and_reads_no_content(prepared, monkeypatch):
    storage, root = prepared
    first = fingerprint(storage, root)

    def no_reading(self, uri, mode="rb"):
        raise AssertionError(f"the fingerprint read {uri}")

    monkeypatch.setattr(Storage, "open", no_reading)
    monkeypatch.setattr(Storage, "read_bytes", no_reading)
    assert fingerprint(Storage(), root) == first == fingerprint(storage, root)  # a new process: same name


def test_the_fingerprint_changes_with_the_data(prepared):
    storage, root = prepared
    first = fingerprint(storage, root)
    time.sleep(0.05)  # local: past the file system's timestamp granularity (a few ms), as a re-prep is
    storage.write_bytes(join(root, "prepared", "part-00001.parquet"), b"rows of part X\n")  # same size
    changed = fingerprint(storage, root)
    assert changed != first
    storage.write_bytes(join(root, "prepared", "part-00002.parquet"), b"one more file\n")
    assert fingerprint(storage, root) not in (first, changed)
    storage.rm(join(root, "prepared", "part-00002.parquet"))
    assert fingerprint(storage, root) == changed


def test_each_store_answers_with_its_own_version_field(prepared):
    storage, root = prepared
    uri = join(root, "prepared", "part-00000.parquet")
    size, _, rest = storage.version(uri).partition(":")
    assert int(size) == len(b"rows of part 0\n") and rest
    if uri.startswith("s3://"):
        import hashlib

        assert rest.strip('"') == hashlib.md5(b"rows of part 0\n").hexdigest()  # ETag: single-part MD5
    elif uri.startswith("gs://"):
        assert rest.isdigit()  # generation
