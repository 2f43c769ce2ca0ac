"""What a run leaves behind besides its partition, and when it goes: the run's work folder (prepared
input, staged output, dead letters) and the files its cloud jobs staged (Dataflow temp_location,
SageMaker s3_staging_uri, Vertex gcs_staging_uri, per run).

With `storage.keep_staged_days: 0` they are deleted as soon as the partition is committed. Otherwise
publish writes an expiry note under `<work root>/<pipeline>/_expiry/` and every later publish of the
pipeline deletes what expired, so nothing piles up and nothing is deleted before its time.

Runs that never reach their own clean-up (killed, crashed, failed) are swept by the next publish of the
pipeline: each run notes its id in its work folder (`_run.json`, `note_run`), and a folder goes once
Airflow says its run is over (success, or failed for longer than `keep_staged_days`) or gone; a running
or queued run's folder is never touched.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from mlbatch.run.paths import RunPaths, run_key
from mlbatch.spec.models import PipelineSpec
from mlbatch.storage.layer import Storage, join, parent

DAY = 86400.0


def staged_prefixes(spec: PipelineSpec, run_id: str) -> list[str]:
    """The per-run prefixes the spec's cloud jobs stage files under (see each backend's `start`)."""
    key = run_key(run_id)
    predict = spec.predict
    prefixes = []
    on_dataflow = predict.backend in ("dataflow", "endpoint") and predict.dataflow.runner == "dataflow"
    if on_dataflow and predict.dataflow.temp_location:
        prefixes.append(join(predict.dataflow.temp_location, "mlbatch", spec.name, key))
    if predict.backend == "sagemaker" and predict.sagemaker.s3_staging_uri:
        prefixes.append(join(predict.sagemaker.s3_staging_uri, spec.name, key))
    if predict.backend == "vertex" and predict.vertex.gcs_staging_uri:
        prefixes.append(join(predict.vertex.gcs_staging_uri, spec.name, key))
    return prefixes


def clean_up_after_commit(storage: Storage, spec: PipelineSpec, run_id: str, paths: RunPaths,
                          extra: list[str] = ()) -> dict:
    """Delete (or schedule the deletion of) this run's staged files; sweep expired ones of earlier runs."""
    targets = sorted({paths.work, *staged_prefixes(spec, run_id), *(u for u in extra if _owned(u, paths, spec, run_id))})
    expiry_dir = join(parent(paths.work), "_expiry")
    now = time.time()
    if spec.storage.keep_staged_days == 0:
        for uri in targets:
            storage.rm(uri)
        done = {"deleted": targets}
    else:
        expires = now + spec.storage.keep_staged_days * DAY
        storage.write_json(join(expiry_dir, f"{run_key(run_id)}.json"), {"expires": expires, "uris": targets})
        done = {"kept_until": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)), "uris": targets}
    expired = []
    for note in storage.files(expiry_dir):
        entry = storage.read_json(note) or {}
        if entry.get("expires", 0) <= now:
            for uri in entry.get("uris", []):
                storage.rm(uri)
            storage.rm(note)
            expired += entry.get("uris", [])
    done["expired_deleted"] = expired
    return done


def _owned(uri: str, paths: RunPaths, spec: PipelineSpec, run_id: str) -> bool:
    """Only ever delete under this run's own work folder or staging prefixes."""
    roots = [paths.work, *staged_prefixes(spec, run_id)]
    return any(uri.rstrip("/").startswith(r.rstrip("/") + "/") or uri.rstrip("/") == r.rstrip("/") for r in roots)


RUN_NOTE = "_run.json"
ACTIVE = ("queued", "running")


def note_run(storage: Storage, paths: RunPaths, dag_id: str, run_id: str) -> None:
    """Say which run a work folder belongs to, so a later sweep can ask Airflow whether it is over."""
    uri = join(paths.work, RUN_NOTE)
    if not storage.exists(uri):
        storage.write_json(uri, {"dag_id": dag_id, "run_id": run_id, "noted": time.time()})


def sweep_abandoned_runs(storage: Storage, spec: PipelineSpec, paths: RunPaths,
                         run_state: Callable[[str, str], str | None], now: float | None = None) -> list[str]:
    """Delete the work folders and cloud staging of this pipeline's other runs that no run can use any
    more; `run_state(dag_id, run_id)` is Airflow's state of a run (None: no such run). Returns what went."""
    now = time.time() if now is None else now
    removed = []
    fs, root = storage.fs(parent(paths.work))
    fs.invalidate_cache()
    for found in fs.glob(f"{root}/*/{RUN_NOTE}"):
        note_uri = storage.uri(paths.work, found)
        if parent(note_uri).rstrip("/") == paths.work.rstrip("/"):
            continue
        note = storage.read_json(note_uri) or {}
        state = run_state(note.get("dag_id", spec.name), note["run_id"])
        finished_failing = state == "failed" and now - note.get("noted", now) >= spec.storage.keep_staged_days * DAY
        if state in ACTIVE or not (state is None or state == "success" or finished_failing):
            continue
        for uri in [parent(note_uri), *staged_prefixes(spec, note["run_id"])]:
            storage.rm(uri)
            removed.append(uri)
    return removed
