"""`make demo-cloud`'s own parts, fast: the emulator process it starts and stops, the settings that point
the storage layer at it, the lease's precondition honoured there, the partition upload and the count.
The whole demo (two pipeline runs, ~3 min) is `make demo-cloud`; its pipeline path on gs:// is also
tests/test_prod_gcs_e2e.py."""

from __future__ import annotations

import json
import socket

import pytest

from mlbatch.local.demo.cloud import BUCKET, counted, emulator_env, make_buckets, report, upload_partition
from mlbatch.local.demo.emulators import running


@pytest.fixture(scope="module")
def emulators(tmp_path_factory):
    log = tmp_path_factory.mktemp("demo-cloud") / "emulators.log"
    with running(log) as endpoints:
        yield endpoints
    for url in (endpoints.gcs, endpoints.s3):  # stopped with the block: nothing answers any more
        host, port = url.removeprefix("http://").split(":")
        with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=2):
            pass


@pytest.fixture
def on_emulators(emulators, monkeypatch):
    """The demo's settings, as in its own process: Airflow keeps one filesystem per protocol and
    connection id for the life of a process, so the session's (other emulators) is set aside."""
    from airflow.sdk.io import store

    for key, value in emulator_env(emulators.gcs, emulators.s3).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(store, "_STORE_CACHE", {})
    make_buckets()
    return emulators


@pytest.mark.parametrize("kind", ["gs", "s3"])
def test_the_lease_precondition_holds_on_the_demo_emulators(on_emulators, kind):
    """Two writers that both saw "no object": the second is refused (GCS: the emulator process's
    ifGenerationMatch check; S3: moto's If-None-Match), as on the real stores."""
    import uuid

    from mlbatch.storage.conditional import PreconditionFailed, read_versioned, write_if
    from mlbatch.storage.layer import Storage

    storage, uri = Storage(), f"{kind}://{BUCKET}/lease-{uuid.uuid4().hex[:8]}"
    version = write_if(storage, uri, b"first", None)
    with pytest.raises(PreconditionFailed):
        write_if(storage, uri, b"second", None)
    assert read_versioned(storage, uri) == (b"first", version)


@pytest.mark.parametrize("kind", ["gs", "s3"])
def test_partition_upload_and_count_on_each_store(on_emulators, kind, tmp_path, capsys):
    """The input arrives with its marker; the count reads the files an output record names and says
    rows in = scored + rejected only when the files agree with the record."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlbatch.local.demo.cloud import DATE, PIPELINE
    from mlbatch.storage.layer import Storage

    storage, root = Storage(), f"{kind}://{BUCKET}/count-test"
    partition = upload_partition(root, 2_000, tmp_path)
    assert storage.exists(f"{partition}/_SUCCESS") and len(storage.files(partition)) == 4

    out = f"{root}/predictions/{PIPELINE}/ds={DATE}"
    with storage.open(f"{out}/part-0.parquet", "wb") as fh:
        pq.write_table(pa.table({"id": list(range(1_990))}), fh)
    storage.write_bytes(f"{out}/_rejected.jsonl", b"".join(b'{"reason": "x"}\n' for _ in range(10)))
    record = {"rows_in": 2_000, "rows_scored": 1_990, "rows_rejected": 10, "model_version": 1,
              "files": [f"{out}/part-0.parquet"], "dead_letter": {"uri": out, "files": [f"{out}/_rejected.jsonl"]}}
    storage.write_bytes(f"{out}/_SUCCESS", json.dumps(record).encode())
    assert report(kind, counted(root))
    assert f"{kind}: rows in 2,000 = scored 1,990 + rejected 10  (consistent" in capsys.readouterr().out

    storage.write_bytes(f"{out}/_SUCCESS", json.dumps({**record, "rows_in": 2_001}).encode())
    assert not report(kind, counted(root))
