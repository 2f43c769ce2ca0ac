"""The commit protocol on local disk, the GCS emulator and the moto S3 server: a crash before any step
leaves the previous complete run or the new one visible to a reader following docs/storage.md, never a
mix; a rerun converges; superseded attempts are collected. Two publishes of one partition, interleaved
at every step (the second while the first holds the lease, or after the first stalled past its lease),
end in one complete run whose every named file exists, and the loser says why."""

from __future__ import annotations

import io
import json
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlbatch.run.commit import (ATTEMPTS, FILE_LIST, RECORD, STEPS, Partition, commit, committed, committed_files,
                                new_attempt)
from mlbatch.errors import PartitionBusyError, PartitionLeaseLostError
from mlbatch.run.lease import LEASE
from mlbatch.storage.layer import Storage, join


class Crash(Exception):
    pass


def stage(storage: Storage, root: str, run: str, rows: int, rejected: int) -> tuple[Partition, Partition]:
    """Stage a run's output (two files) and dead letters as the jobs do, under the run's work folder."""
    work = join(root, "_work", run)
    for i in range(2):
        table = pa.table({"id": [f"{run}-{i}-{r}" for r in range(rows)], "prediction": [1.0] * rows})
        sink = io.BytesIO()
        pq.write_table(table, sink)
        storage.write_bytes(join(work, "output", f"part-{i}.parquet"), sink.getvalue())
    storage.write_bytes(join(work, "rejected", "rejected-0.jsonl"), "".join(
        json.dumps({"row": {"id": f"{run}-bad-{r}"}, "reason": "x"}) + "\n" for r in range(rejected)).encode())
    return (Partition(join(root, "out", "ds=2026-11-20"), join(work, "output")),
            Partition(join(root, "out", "_rejected", "ds=2026-11-20"), join(work, "rejected")))


def read_as_documented(storage: Storage, output: str) -> tuple[str, set, set] | None:
    """docs/storage.md's reader: the commit record, then exactly the files it names."""
    record = committed(storage, output)
    if record is None:
        return None
    ids = set()
    for uri in committed_files(storage, output):
        with storage.open(uri) as fh:
            ids |= set(pq.read_table(fh).column("id").to_pylist())
    bad = set()
    for uri in record["dead_letter"]["files"]:
        with storage.open(uri) as fh:
            bad |= {json.loads(line)["row"]["id"] for line in fh if line.strip()}
    runs = {i.split("-")[0] for i in ids | bad}
    assert len(runs) == 1, f"a mix of runs is visible: {runs}"
    assert record["run_id"] in runs
    assert len(ids) == record["rows_scored"] and len(bad) == record["rows_rejected"]
    manifest = storage.read_bytes(join(output, "_manifest")).decode().split()
    manifest_runs = set()
    for uri in manifest:  # the BigQuery/Athena manifest names one complete attempt too
        with storage.open(uri) as fh:
            manifest_runs |= {i.split("-")[0] for i in pq.read_table(fh).column("id").to_pylist()}
    assert len(manifest_runs) == 1
    return record["run_id"], ids, bad


def publish(storage, root, run, rows, rejected, before_step=lambda step: None, **lease_options):
    output, dead = stage(storage, root, run, rows, rejected)
    return commit(storage, output, dead, new_attempt(run),
                  {"run_id": run, "rows_scored": 2 * rows, "rows_rejected": rejected}, before_step,
                  **lease_options)


def attempt_of(uri: str) -> str:
    return uri.split(f"/{ATTEMPTS}/")[1].split("/")[0]


def assert_pointers_agree(storage: Storage, partition: str) -> dict:
    """After a completed commit the two pointers of a partition name the same run: `_manifest` lists
    exactly the files of the `_SUCCESS` record, of the attempt that record names (a reader of either
    sees one run). Returns the record."""
    record = committed(storage, partition)
    assert record is not None, f"no {RECORD} in {partition}"
    manifest = storage.read_bytes(join(partition, FILE_LIST)).decode().split()
    assert sorted(manifest) == sorted(record["files"]), (
        f"{FILE_LIST} and {RECORD} of {partition} disagree: {manifest} vs {record['files']}")
    assert {attempt_of(uri) for uri in manifest} <= {record["attempt"]}, (manifest, record["attempt"])
    return record


def assert_one_complete_run(storage: Storage, root: str) -> str:
    """Every file that the output's record, its dead-letter record and both manifests name exists, all
    of one attempt; each partition's `_manifest` and `_SUCCESS` agree; the partition holds no lease
    afterwards. Returns the committed run."""
    output, dead = join(root, "out", "ds=2026-11-20"), join(root, "out", "_rejected", "ds=2026-11-20")
    run, _, _ = read_as_documented(storage, output)
    assert_pointers_agree(storage, output)
    assert_pointers_agree(storage, dead)
    record, dead_record = committed(storage, output), committed(storage, dead)
    named = [*record["files"], *record["dead_letter"]["files"], *dead_record["files"],
             *storage.read_bytes(join(output, "_manifest")).decode().split(),
             *storage.read_bytes(join(dead, "_manifest")).decode().split()]
    missing = [uri for uri in named if not storage.exists(uri)]
    assert not missing, f"committed pointers name missing files: {missing}"
    assert {attempt_of(u) for u in named} == {record["attempt"]}
    assert dead_record["attempt"] == record["attempt"]
    assert not storage.exists(join(output, LEASE))
    return run


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("pause_at", STEPS)
def test_a_second_publish_while_the_first_holds_the_lease_is_refused_naming_it(store_root, pause_at):
    storage = Storage()
    outcome = {}

    def second_run(step):
        if step == pause_at:
            try:
                outcome["B"] = publish(storage, store_root, "runB", rows=5, rejected=2, wait_seconds=0)["run_id"]
            except PartitionBusyError as error:
                outcome["B"] = error

    publish(storage, store_root, "runA", rows=3, rejected=1, before_step=second_run, wait_seconds=0)
    assert assert_one_complete_run(storage, store_root) == "runA"
    if pause_at == "lease":  # B went first, whole; A then replaced it
        assert outcome["B"] == "runB"
    else:
        assert isinstance(outcome["B"], PartitionBusyError) and "'runA'" in str(outcome["B"])


@pytest.mark.parametrize("pause_at", STEPS)
def test_a_publish_that_stalls_past_its_lease_cannot_commit_over_the_one_that_took_it(store_root, pause_at):
    """The stalled writer's GC-deleted attempt is never named: its next fenced write is refused."""
    storage, clock = Storage(), Clock()
    outcome = {}

    def stall_then_second_run(step):
        if step == pause_at:
            clock.now += 901  # the first run's lease (900 s) expires while it is stalled here
            outcome["B"] = publish(storage, store_root, "runB", rows=5, rejected=2, clock=clock)["run_id"]

    try:
        outcome["A"] = publish(storage, store_root, "runA", rows=3, rejected=1, before_step=stall_then_second_run,
                               clock=clock)["run_id"]
    except PartitionLeaseLostError as error:
        outcome["A"] = error
    assert outcome["B"] == "runB"
    if pause_at == "lease":  # A had not taken the lease yet: it waits for nothing and commits after B
        assert outcome["A"] == "runA" and assert_one_complete_run(storage, store_root) == "runA"
    else:
        assert isinstance(outcome["A"], PartitionLeaseLostError) and "committed nothing" in str(outcome["A"])
        assert assert_one_complete_run(storage, store_root) == "runB"


def test_the_second_publish_waits_for_the_first_then_replaces_it(store_root):
    storage = Storage()
    holding, go_on, errors = threading.Event(), threading.Event(), []

    def first_holds(step):
        if step == "commit":
            holding.set()
            go_on.wait(60)

    def run(name, **kwargs):
        try:
            publish(storage, store_root, name, rows=2, rejected=1, **kwargs)
        except Exception as error:  # surfaced by the assert below
            errors.append(error)

    first = threading.Thread(target=run, args=("runA",), kwargs={"before_step": first_holds})
    first.start()
    assert holding.wait(60)
    second = threading.Thread(target=run, args=("runB",), kwargs={"wait_seconds": 120, "poll_seconds": 0.05})
    second.start()
    second.join(0.5)
    assert second.is_alive(), "the second publish waits while the first holds the lease"
    go_on.set()
    first.join(60)
    second.join(120)
    assert not errors
    assert assert_one_complete_run(storage, store_root) == "runB"


@pytest.mark.parametrize("crash_before", STEPS)
def test_a_crash_before_any_step_leaves_one_complete_run_and_a_rerun_converges(store_root, crash_before):
    storage = Storage()
    publish(storage, store_root, "runA", rows=3, rejected=1)
    output = join(store_root, "out", "ds=2026-11-20")
    assert read_as_documented(storage, output)[0] == "runA"
    assert assert_pointers_agree(storage, output)["run_id"] == "runA"

    def crash(step):
        if step == crash_before:
            raise Crash(step)

    with pytest.raises(Crash):
        publish(storage, store_root, "runB", rows=5, rejected=2, before_step=crash)
    seen = read_as_documented(storage, output)
    expected = "runB" if STEPS.index(crash_before) > STEPS.index("commit") else "runA"
    assert seen[0] == expected

    record = publish(storage, store_root, "runB", rows=5, rejected=2)  # the retry of publish
    run, ids, bad = read_as_documented(storage, output)
    assert run == "runB" and len(ids) == 10 and len(bad) == 2
    assert assert_pointers_agree(storage, output)["attempt"] == record["attempt"]
    attempts = {attempt_of(u) for u in storage.walk(join(output, ATTEMPTS))}
    assert attempts == {record["attempt"]}, "superseded and crashed attempts are collected"
    dead_record = assert_pointers_agree(storage, join(store_root, "out", "_rejected", "ds=2026-11-20"))
    assert dead_record["attempt"] == record["attempt"] and dead_record["files"] == record["dead_letter"]["files"]


def test_stray_top_level_files_are_collected_and_an_empty_output_commits(store_root):
    storage = Storage()
    output = join(store_root, "out", "ds=2026-11-20")
    storage.write_bytes(join(output, "part-old-layout.parquet"), b"not parquet")
    publish(storage, store_root, "runC", rows=0, rejected=3)
    assert storage.files(output) == []
    record = assert_pointers_agree(storage, output)  # both empty of data files, still one attempt
    assert record["rows_rejected"] == 3 and len(record["dead_letter"]["files"]) == 1
