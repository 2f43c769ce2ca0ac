"""What a run leaves behind besides its partition, and when it goes: the run's work folder (prepared
input, staged output, dead letters) and the files its cloud jobs staged (Dataflow temp_location,
SageMaker s3_staging_uri, Vertex gcs_staging_uri, per run).

With `storage.keep_staged_days: 0` they are deleted as soon as the partition is committed. Otherwise
publish writes an expiry note under `<work root>/<pipeline>/_expiry/` and every later publish of the
pipeline deletes what expired, so nothing piles up and nothing is deleted before its time.
"""

from __future__ import annotations

import time

from mlbatch.run_paths import RunPaths, run_key
from mlbatch.spec import PipelineSpec
from mlbatch.storage import Storage, join, parent

DAY = 86400.0


def staged_prefixes(spec: PipelineSpec, run_id: str) -> list[str]:
    """The per-run prefixes the spec's cloud jobs stage files under (see each backend's `start`)."""
    key = run_key(run_id)
    predict = spec.predict
    prefixes = []
    if predict.backend == "dataflow" and predict.dataflow.runner == "dataflow" and predict.dataflow.temp_location:
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
