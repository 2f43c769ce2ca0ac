"""`make demo-cloud`: the demo pipeline with everything it reads and writes on object storage emulators.

`natality_daily` runs twice, each time with input, `_SUCCESS` marker, work folder, output and dead
letters in one bucket: on the GCS emulator (backend `dataflow`: the direct-model Beam job on the local
FnApiRunner, reading and writing gs://) and on moto's S3 server (backend `local`, reading and writing
s3://). Both emulators run in a child process started and stopped here (mlbatch.local.demo.emulators).
The settings that point a pipeline at them are `emulator_env` below; docs/production-path.md explains
each one. The MLflow registry is that of `make demo` (.demo/mlflow), so its model is reused; the Airflow home is
its own (.demo/cloud/airflow), as both runs publish the demo's asset names to other URIs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from mlbatch.local.demo.__main__ import DATE, PIPELINE, demo_env, done, prepare_model, run_pipeline, step

BUCKET = "mlbatch-demo"
REGION = "us-east-1"
STORES = {"gcs": ("gs", "dataflow"), "s3": ("s3", "local")}  # store -> (scheme, backend)


def emulator_env(gcs: str, s3: str) -> dict[str, str]:
    """What a pipeline needs to use the emulators instead of GCS and S3 (docs/production-path.md)."""
    return {
        # google-cloud-storage, gcsfs and Beam's GCS filesystem send their requests here instead of GCS
        "STORAGE_EMULATOR_HOST": gcs,
        # gcsfs >= 2026.10 probes each bucket over gRPC for zonal/HNS features, 60 s per bucket against
        # an emulator that speaks JSON/HTTP only; a standard bucket takes the same path without it
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        # the connections the `storage` block names by default; anonymous: no Google credentials needed
        "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT": json.dumps({
            "conn_type": "google_cloud_platform",
            "extra": {"is_anonymous": True, "project": "mlbatch-demo", "gcs.endpoint": gcs}}),
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps({
            "conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"endpoint_url": s3, "region_name": REGION}}),
        "AWS_DEFAULT_REGION": REGION,
        # a re-parsed DAG (other data root) must replace the serialized one at once, not after 30 s
        "AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL": "0",
    }


def make_buckets() -> None:
    """One bucket per emulator (once), through the same connections the pipeline uses."""
    from mlbatch.storage.layer import Storage

    for kind in ("gs", "s3"):
        fs = Storage().fs(f"{kind}://{BUCKET}")[0]
        if not fs.exists(BUCKET):
            fs.mkdir(BUCKET)


def upload_partition(data_root: str, rows: int, scratch: Path) -> str:
    """The demo's natality partition written locally, copied to the store, `_SUCCESS` last."""
    from mlbatch.local.demo.natality import write_partition
    from mlbatch.storage.layer import Storage, join

    folder = scratch / f"natality-{rows}"
    if not (folder / "_SUCCESS").exists():
        write_partition(folder, rows)
    storage = Storage()
    target = join(data_root, "natality", f"ds={DATE}")
    for part in sorted(folder.glob("*.parquet")):
        storage.copy(str(part), join(target, part.name))
    storage.write_bytes(join(target, "_SUCCESS"), b"")
    return target


def counted(data_root: str) -> dict:
    """The output partition's `_SUCCESS` record, with rows counted in the files it names."""
    import pyarrow.parquet as pq

    from mlbatch.storage.layer import Storage, join, nonblank_lines

    storage = Storage()
    out = join(data_root, "predictions", PIPELINE, f"ds={DATE}")
    record = storage.read_json(join(out, "_SUCCESS")) or {}
    scored = 0
    for uri in record.get("files", []):
        with storage.open(uri) as fh:
            scored += pq.ParquetFile(fh).metadata.num_rows
    rejected = 0
    for uri in (record.get("dead_letter") or {}).get("files", []):
        with storage.open(uri) as fh:
            rejected += sum(1 for _ in nonblank_lines(fh))
    return {"output": out, "record": record, "scored": scored, "rejected": rejected}


def report(store: str, found: dict) -> bool:
    """One line per store: rows in = scored + rejected, from the record and from the files."""
    record = found["record"]
    if not record:
        print(f"   {store}: no _SUCCESS record at {found['output']}")
        return False
    rows_in, scored, rejected = record["rows_in"], found["scored"], found["rejected"]
    ok = rows_in == scored + rejected and (scored, rejected) == (record["rows_scored"], record["rows_rejected"])
    print(f"   {store}: rows in {rows_in:,} = scored {scored:,} + rejected {rejected:,}  "
          f"({'consistent' if ok else 'MISMATCH with the record'}; model v{record.get('model_version')})")
    print(f"      output {found['output']}  ({len(record['files'])} files)")
    dead = record.get("dead_letter") or {}
    print(f"      dead letters {dead.get('uri', '(none)')}")
    return ok


def retire_assets() -> None:
    """Forget the URI each pipeline asset was last active with. Both runs publish `natality_daily`'s
    asset under one name with another URI (gs:// then s3://), and Airflow refuses an outlet whose name
    is still active with another URI; a deployment's scheduler retires the old one when it re-parses the
    DAG (asset orphanage), but `airflow dags test` runs no scheduler."""
    from airflow.models.asset import AssetActive
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        session.execute(delete(AssetActive).where(AssetActive.name.startswith("mlbatch/")))


def run_store(store: str, home: Path, env: dict[str, str], rows: int) -> dict | None:
    """Upload the input to the store's bucket, run the pipeline there, count what it wrote."""
    import os

    kind, backend = STORES[store]
    data_root = f"{kind}://{BUCKET}/natality"
    store_env = {**env, "MLBATCH_DATA_ROOT": data_root}
    os.environ.update(store_env)
    retire_assets()
    t = step(f"{store}: input partition ds={DATE} ({rows:,} rows) to {data_root}")
    done(t, f"uploaded {upload_partition(data_root, rows, home / 'cloud-input')} ")
    if kind == "gs":
        print("   (Beam's GCS client looks for Google credentials 4 times, ~25 s, before it connects to the "
              "emulator anonymously: the warnings about default credentials below are that)", flush=True)
    if not run_pipeline(home, store_env, backend, label=f"{store}-{backend}"):
        return None
    return counted(data_root)


def quiet() -> None:
    """Keep this process's own storage calls off the console (Airflow logs them at info)."""
    import logging

    for name in ("fsspec", "airflow", "botocore", "google"):
        logging.getLogger(name).setLevel(logging.WARNING)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path(".demo"))
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--stores", default="gcs,s3")
    args = parser.parse_args()
    import os

    from mlbatch.local.demo.emulators import running

    home = args.home.resolve()
    (home / "logs").mkdir(parents=True, exist_ok=True)
    quiet()
    started = time.perf_counter()
    t = step("Storage emulators (GCS: gcp-storage-emulator, S3: moto), in one child process")
    with running(home / "logs" / "emulators.log") as endpoints:
        done(t, f"GCS {endpoints.gcs}, S3 {endpoints.s3} ")
        env = {**demo_env(home, Path.cwd().resolve()), **emulator_env(endpoints.gcs, endpoints.s3),
               # an Airflow home of its own: `make demo` publishes the same asset names to local paths
               "AIRFLOW_HOME": str(home / "cloud" / "airflow")}
        os.environ.update(env)
        prepare_model(home, env)
        make_buckets()
        stores = args.stores.split(",")
        found = {store: run_store(store, home, env, args.rows) for store in stores}
    print("\n== Results (from each output's _SUCCESS record and its files)")
    ok = all([found[s] is not None and report(s, found[s]) for s in stores])
    print(f"\nCloud demo {'finished' if ok else 'FAILED'} in {time.perf_counter() - started:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
