"""Work folders and cloud staging of runs that never cleaned up after themselves (killed, crashed, failed)
go with the next publish of the pipeline once Airflow says their run is over, on local disk, the GCS
emulator and moto; a running run's folder is never touched."""

from __future__ import annotations

from mlbatch.run.paths import RunPaths
from mlbatch.spec.models import PipelineSpec
from mlbatch.run.staged_files import RUN_NOTE, note_run, sweep_abandoned_runs
from mlbatch.storage.layer import Storage, join

DAY = 86400.0


def spec_for(keep_days: float) -> PipelineSpec:
    from mlbatch.spec.loader import load_spec, with_overrides

    return with_overrides(load_spec("include/pipelines/natality_daily.yaml"), {"storage.keep_staged_days": keep_days})


def paths_for(root: str, run: str) -> RunPaths:
    return RunPaths(input_pattern=join(root, "in", "*.parquet"), marker=None, output=join(root, "out", "ds=1"),
                    dead_letter=join(root, "out", "_rejected", "ds=1"), work=join(root, "_work", "natality_daily", run))


def test_finished_or_deleted_runs_are_swept_running_and_recent_failures_kept(store_root):
    storage = Storage()
    states = {"crashed_ok": "success", "failed_old": "failed", "failed_new": "failed", "running": "running",
              "queued": "queued"}
    runs = [*states, "deleted"]
    for run in runs:
        paths = paths_for(store_root, run)
        note_run(storage, paths, "natality_daily", run)
        for i in range(3):
            storage.write_bytes(join(paths.work, "output", f"part-{i}.parquet"), b"x")
    old = join(paths_for(store_root, "failed_old").work, RUN_NOTE)
    storage.write_json(old, {**storage.read_json(old), "noted": 0.0})  # failed two days before `now` below
    me = paths_for(store_root, "publishing_now")
    note_run(storage, me, "natality_daily", "publishing_now")

    removed = sweep_abandoned_runs(storage, spec_for(keep_days=1), me,
                                   lambda dag_id, run_id: {**states, "publishing_now": "running"}.get(run_id),
                                   now=2 * DAY)
    gone = {r.rstrip("/").rsplit("/", 1)[1] for r in removed}
    assert gone == {"crashed_ok", "failed_old", "deleted"}
    for run in runs:
        left = storage.walk(paths_for(store_root, run).work)
        assert (not left) == (run in gone), (run, left)
    assert storage.exists(join(me.work, RUN_NOTE))
