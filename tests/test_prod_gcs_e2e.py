"""`natality_daily` with MLBATCH_ENV=prod, end to end on gs://: input, marker, Dataflow temp/staging and
output all on the GCS emulator. prep and the direct-model job are the real Beam job code, run on the
FnApiRunner over gs:// (Beam's GCS filesystem pointed at the emulator); only the Dataflow service is
faked at its client boundary (tests/test_backend_dataflow.py: REST API, async client, launcher): the fake
launcher runs the very command BeamHook built, with FnApiRunner in place of DataflowRunner, and the job
ends DONE or FAILED by that run's exit code."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from test_backend_dataflow import FakeDataflowService, install

from stores import connect_gcs, ensure_gcs_bucket

BUCKET = "example-ml-prod"  # the prod environment's data_root and temp_location bucket
DATE = "2026-11-23"
ROWS = 4_000


class RunningDataflowService(FakeDataflowService):
    """Registers the job as the service would, then runs it to its end on the local FnApiRunner."""

    def launch(self, cmd, log, process_line_callback=None, working_directory=None,
               is_dataflow_job_id_exist_callback=None):
        super().launch(cmd, log, process_line_callback, working_directory, is_dataflow_job_id_exist_callback)
        job_id = list(self.jobs)[-1]  # the job the launcher just registered
        local = [a if a != "--runner=DataflowRunner" else "--runner=FnApiRunner" for a in cmd]
        done = subprocess.run([sys.executable, *local[1:]], capture_output=True, text=True, timeout=600)
        self.finish(job_id, "JOB_STATE_DONE" if done.returncode == 0 else "JOB_STATE_FAILED")
        assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture
def prod_on_gcs(gcs_emulator, monkeypatch):
    connect_gcs(gcs_emulator, monkeypatch, project=BUCKET)
    ensure_gcs_bucket(gcs_emulator, BUCKET)
    monkeypatch.setenv("MLBATCH_ENV", "prod")
    service = RunningDataflowService()
    install(service, monkeypatch)
    return service


def test_prod_natality_daily_runs_on_gcs_end_to_end(prod_on_gcs, airflow_db, registered_model):
    from datetime import datetime, timezone

    from airflow.dag_processing.dagbag import DagBag

    from cloud_backends import pipeline_outputs_moved

    from mlbatch.local.demo.natality import LABEL, make_frame
    from mlbatch.storage.layer import Storage

    storage = Storage()
    data = f"gs://{BUCKET}/natality/natality/ds={DATE}"
    bad = 0
    for i in range(2):
        frame = make_frame(ROWS // 2, seed=21 + i, id_offset=i * ROWS // 2).drop(columns=[LABEL])
        bad += int((frame.gestation_weeks.isna() | (frame.mother_age > 60) | (frame.plurality < 1)).sum())
        sink = io.BytesIO()
        frame.to_parquet(sink, row_group_size=1_000)
        storage.write_bytes(f"{data}/part-{i}.parquet", sink.getvalue())
    storage.write_bytes(f"{data}/_SUCCESS", b"")

    bag = DagBag(dag_folder="dags")
    assert not bag.import_errors
    dag = bag.dags["natality_daily"]
    assert dag.params["backend"] is not None
    with pipeline_outputs_moved():  # to gs://, from the dev paths of other tests
        run = dag.test(logical_date=datetime.fromisoformat(DATE).replace(tzinfo=timezone.utc))
    assert run.state == "success"

    # two Dataflow jobs: prep and predict, each the real job code over gs://
    launched = [cmd[2] for cmd in prod_on_gcs.launches]
    assert launched == ["mlbatch_beam.prep", "mlbatch_beam.score"]
    assert all(any(a.startswith(f"--temp_location=gs://{BUCKET}/tmp") for a in cmd) for cmd in prod_on_gcs.launches)

    out = f"gs://{BUCKET}/natality/predictions/natality_daily/ds={DATE}"
    record = storage.read_json(f"{out}/_SUCCESS")
    assert record["rows_in"] == ROWS and record["rows_rejected"] == bad > 0
    assert record["rows_scored"] == ROWS - bad
    assert record["model_version"] == registered_model["version"]
    ids = []
    for uri in record["files"]:
        assert uri.startswith(f"{out}/_attempts/{record['attempt']}/")
        with storage.open(uri) as fh:
            table = pq.read_table(fh).to_pandas()
        assert list(table.columns) == ["id", "predicted_weight_pounds"]
        assert table.predicted_weight_pounds.between(0, 15).all()
        ids += table.id.tolist()
    assert len(ids) == len(set(ids)) == ROWS - bad
    rejected = [json.loads(line) for uri in record["dead_letter"]["files"] for line in storage.open(uri)]
    assert len(rejected) == bad and all(r["reason"] for r in rejected)
    # the manifest for BigQuery names the same files; staging and the work folder are gone
    assert storage.read_bytes(f"{out}/_manifest").decode().split() == record["files"]
    left = storage.walk(f"gs://{BUCKET}/tmp/mlbatch/natality_daily") + storage.walk(
        f"gs://{BUCKET}/natality/predictions/_work/natality_daily")
    assert [u for u in left if "/_expiry/" not in u] == []
