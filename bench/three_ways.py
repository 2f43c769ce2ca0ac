"""`make bench-three-ways` (and part of `make bench`): seed 004's three ways to call a model from a batch
pipeline, each end to end as this product runs it, on the bench's natality data and model.

- (a) direct model: `python -m mlbatch_beam.validate_and_score` on the FnApiRunner (what `backend: dataflow`
  runs locally): one job process reads the raw input, validates, loads the model and scores.
- (b) prep + batch prediction (`backend: sagemaker`): `python -m mlbatch_beam.prep` writes the prepared
  Parquet files (the model's column types, files of `max_rows_per_request` rows), the model's container
  starts (a real `mlflow models serve`, one worker: the emulator, like the service with
  MaxConcurrentTransforms unset, sends one request at a time), then one process does the service's and
  publish's work: the backend's request files go to S3 (moto server), the SageMaker Batch Transform
  emulator (tests/dataplane/sagemaker_transform.py) posts each file to the container, and the `.out`
  answers are joined back to their ids (mlbatch_beam.predictions, as publish reads them).
- (c) endpoint (`backend: endpoint`, kind mlflow): `python -m mlbatch_beam.endpoint_score` against a live
  scoring server with one worker per core, started before and not timed (the endpoint is already up).

Wall time is spawn to exit of each step, summed; CPU time is each step's process and its reaped
descendants (wait4) plus the scoring server's processes (psutil, before/after), so (b) and (c) pay for
the server's work too. Processes run as in the scoring section: OMP_NUM_THREADS=1, warm bytecode cache.
Below 1M rows each way runs twice, in rounds, and the faster run counts (other work shares the cores).
10M rows only with `SIZES=10k,100k,1m,10m`: it would more than double the bench's time.
What a cloud service adds on top is not measured here and not added: a batch-prediction job provisions
machines and loads the model before its first request (seed 004, below).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "tests")]

import datasets  # noqa: E402
import run as bench  # noqa: E402
import whole_run  # noqa: E402

HOME = datasets.ROOT / "three_ways"
SPEC = REPO / "include" / "pipelines" / "natality_sagemaker.yaml"
SIZES = {"10k": 10_000, "100k": 100_000, "1m": 1_000_000, "10m": 10_000_000}
DEFAULT_SIZES = "10k,100k,1m"
WAYS = {"direct": "a. direct model (validate_and_score, FnApiRunner)",
        "batch": "b. prep + batch prediction (SageMaker transform emulator, real scoring server)",
        "endpoint": "c. endpoint (endpoint_score, live scoring server)"}
# Micro-batch sweep of the endpoint: rows per request -> the sample it runs on (and a tenth of it, for
# the fixed cost of the job): one row per request on 1M rows would take most of the bench's time.
SWEEP = {1: 1_000, 10: 10_000, 100: 100_000, 1_000: 100_000, 10_000: 100_000}
START_MARK, END_MARK = "<!-- three-ways:start -->", "<!-- three-ways:end -->"
# Seed 004 (Google Cloud, "comparing ML model calls in Dataflow pipelines"; ../shared/seeds/README.md):
# rows -> (prep + batch prediction, direct model), each (end-to-end time, vCPU-hours); n1-standard-1.
SEED_004 = {10_000: (("15m30s", 0.301), ("8m24s", 0.173)), 100_000: (("16m37s", 0.334), ("10m31s", 0.243)),
            1_000_000: (("21m11s", 0.446), ("17m12s", 1.115)), 10_000_000: (("33m08s", 5.251), ("25m02s", 7.878))}
# The batch prediction job's own share of those runs (the seed's per-step split): at 10K and 100K rows it
# is nearly all start-up, since its data grows 10x and its time by 15 s.
SEED_004_JOB = {10_000: "7m43s", 100_000: "7m58s", 1_000_000: "10m04s", 10_000_000: "20m53s"}


@dataclass
class Figures:
    way: str
    rows: int
    wall_s: float
    cpu_s: float
    load: float
    note: str = ""
    steps: dict = field(default_factory=dict)  # step -> (wall s, CPU s)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s


@dataclass
class Setup:
    ds: datasets.Dataset
    schema_json: str
    file_rows: int      # rows per prepared file (= per SageMaker request)
    batch_rows: int     # rows per read batch and per model call of the Beam jobs

    def input_for(self, rows: int) -> str:
        if rows == self.ds.rows:
            return self.ds.parquet_glob
        return bench.sample_file(self.ds, rows)


def say(text: str) -> None:
    print(text, flush=True)


def tree_cpu_s(pid: int) -> float:
    """CPU seconds so far of a live process and all its descendants (their reaped children included)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def setup(ds: datasets.Dataset) -> Setup:
    from mlbatch.spec.loader import load_spec
    from mlbatch.spec.prep_contract import prepared_file_rows

    spec = load_spec(SPEC)
    return Setup(ds, model_schema(ds.artifact_uri, ds.model_uri), prepared_file_rows(spec),
                 spec.predict.compute.batch_rows)


def model_schema(artifact_uri: str, model_uri: str) -> str:
    """The sagemaker example's feature schema with the model's column types, as resolve_model gives prep."""
    from mlbatch.operators.resolve_model import check_signature
    from mlbatch.spec.loader import load_spec
    from mlbatch.spec.prep_contract import schema_json

    spec = load_spec(SPEC)
    types = check_signature(spec, {"artifact_uri": artifact_uri, "uri": model_uri})
    return schema_json(spec, {"input_types": types})


def _job(module: str, args: list[str], name: str) -> tuple[float, float, dict]:
    """Run `python -m module args` to exit: wall s, CPU s (with reaped descendants), its result file."""
    result_file = HOME / "out" / f"{name}.result.json"
    wall, cpu, _, _ = whole_run.timed([sys.executable, "-m", module, *args, "--result-file", str(result_file)],
                                      bench.child_env(), HOME / "logs" / f"{name}.log")
    return wall, cpu, json.loads(result_file.read_text())


def _raw_args(s: Setup, rows: int, out: Path) -> list[str]:
    """The raw input and the validation/output flags the direct-model and endpoint jobs share."""
    shutil.rmtree(out, ignore_errors=True)
    return ["--input", s.input_for(rows), "--input-format", "parquet", "--schema-json", s.schema_json,
            "--dead-letter-dir", str(out / "rejected"), "--id-column", "id",
            "--feature-columns", ",".join(s.ds.features), "--output-dir", str(out / "output"),
            "--output-format", "parquet", "--batch-rows", str(s.batch_rows), "--runner=FnApiRunner"]


def _checked(way: str, rows: int, result: dict) -> None:
    if result.get("rows_scored") != rows:
        raise RuntimeError(f"{way} on {rows:,} rows scored {result.get('rows_scored')} rows: {result}")


def direct(s: Setup, rows: int) -> Figures:
    name = f"direct-{rows}"
    wall, cpu, result = _job("mlbatch_beam.validate_and_score",
                             _raw_args(s, rows, HOME / "out" / name) + ["--model-uri", s.ds.artifact_uri], name)
    _checked("direct", rows, result)
    return Figures("direct", rows, wall, cpu, os.getloadavg()[0], steps={"job": (wall, cpu)})


def batch_prediction(s: Setup, rows: int) -> Figures:
    from scoring_server import serve_model

    name = f"batch-{rows}"
    out = HOME / "out" / name
    shutil.rmtree(out, ignore_errors=True)
    prep_wall, prep_cpu, prep = _job("mlbatch_beam.prep", [
        "--input", s.input_for(rows), "--input-format", "parquet", "--schema-json", s.schema_json,
        "--output-dir", str(out / "prepared"), "--output-format", "parquet",
        "--dead-letter-dir", str(out / "rejected"), "--batch-rows", str(s.file_rows), "--runner=FnApiRunner"],
        f"{name}-prep")
    if prep.get("rows_valid") != rows:
        raise RuntimeError(f"prep on {rows:,} rows: {prep}")
    started = time.perf_counter()
    with serve_model(s.ds.artifact_uri, HOME / "logs" / f"{name}-server.log", env=bench.child_env()) as server:
        start_wall = time.perf_counter() - started
        config = {"prepared": str(out / "prepared"), "work": str(out), "container": server.url}
        job_wall, job_cpu, _, stdout = whole_run.timed(
            [sys.executable, __file__, "transform", json.dumps(config)], bench.child_env(),
            HOME / "logs" / f"{name}-transform.log")
        server_cpu = tree_cpu_s(server.pid)
    _checked("batch prediction", rows, json.loads(stdout.strip().splitlines()[-1]))
    return Figures("batch", rows, prep_wall + start_wall + job_wall, prep_cpu + job_cpu + server_cpu,
                   os.getloadavg()[0], steps={"prep": (prep_wall, prep_cpu), "container start": (start_wall, None),
                                              "transform + join": (job_wall, job_cpu),
                                              "scoring server (start + requests)": (None, server_cpu)})


def transform(config: dict) -> dict:
    """The batch-prediction step in one process: request files to S3, the transform, ids joined back."""
    import boto3
    import pyarrow as pa
    import pyarrow.parquet as pq
    from dataplane.sagemaker_transform import run_transform
    from moto.server import ThreadedMotoServer

    from mlbatch.backends.sagemaker import transform_config, write_request_files
    from mlbatch.local.demo.emulators import free_port
    from mlbatch.spec.loader import load_spec
    from mlbatch.storage.layer import Storage
    from mlbatch_beam.predictions import read_batch_predictions

    spec, work = load_spec(SPEC), Path(config["work"])
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    try:
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket="bench")
        for path in write_request_files(spec, Storage(), config["prepared"], str(work / "requests")):
            s3.upload_file(path, "bench", f"in/{Path(path).name}")
        request = transform_config(spec, "bench-three-ways", {"sagemaker_model": "bench"}, "s3://bench/in/",
                                   "s3://bench/out", "bench")
        raw = work / "raw_predictions"
        raw.mkdir(parents=True, exist_ok=True)
        for key in run_transform(request, s3, config["container"]):
            s3.download_file("bench", key, str(raw / Path(key).name))
    finally:
        moto.stop()
    tables = list(read_batch_predictions(Storage(), str(raw), "sagemaker", input_dir=config["prepared"]))
    (work / "output").mkdir(exist_ok=True)
    pq.write_table(pa.concat_tables(tables), work / "output" / "predictions.parquet")
    return {"rows_scored": sum(t.num_rows for t in tables)}


def endpoint(s: Setup, server, rows: int, per_request: int, in_flight: int, tag: str = "") -> Figures:
    name = f"endpoint-{rows}-{per_request}{tag}"
    settings = {"kind": "mlflow", "url": server.url, "max_rows_per_request": per_request,
                "max_in_flight": in_flight}
    before = tree_cpu_s(server.pid)
    wall, cpu, result = _job("mlbatch_beam.endpoint_score",
                             _raw_args(s, rows, HOME / "out" / name) + ["--endpoint-json", json.dumps(settings)],
                             name)
    server_cpu = tree_cpu_s(server.pid) - before
    _checked("endpoint", rows, result)
    return Figures("endpoint", rows, wall, cpu + server_cpu, os.getloadavg()[0],
                   note=f"{per_request:,} rows per request", steps={"job": (wall, cpu), "scoring server": (None, server_cpu)})


def fit(points: list[Figures]) -> tuple[float, float]:
    """Least-squares fixed cost (s) and per-row cost (s/row) of wall time over the measured sizes."""
    n = len(points)
    mx, my = sum(p.rows for p in points) / n, sum(p.wall_s for p in points) / n
    sxx = sum((p.rows - mx) ** 2 for p in points)
    slope = sum((p.rows - mx) * (p.wall_s - my) for p in points) / sxx
    return my - slope * mx, slope


def sweep(s: Setup, server, in_flight: int) -> list[tuple[int, Figures, Figures, float]]:
    """Per rows-per-request: the sample run, a tenth of it, and 1M rows extrapolated through both."""
    found = []
    for per_request, rows in SWEEP.items():
        small = endpoint(s, server, rows // 10, per_request, in_flight, tag="-sweep")
        big = endpoint(s, server, rows, per_request, in_flight, tag="-sweep")
        fixed, per_row = fit([small, big])
        found.append((per_request, small, big, fixed + per_row * 1_000_000))
        say(f"  sweep {per_request:>6,} rows/request: {small.rows:,} rows {small.wall_s:.2f} s, {big.rows:,} rows "
            f"{big.wall_s:.2f} s -> 1M rows ~{found[-1][3]:.0f} s")
    return found


def crossover(results: list[Figures]) -> tuple[int | None, str]:
    """Rows below which the endpoint is no slower than both (a) and (b), from each way's linear fit over
    the sizes up to 1M (a 10M point would set the slope alone and leave the fixed cost to its noise)."""
    fits = {w: fit([r for r in results if r.way == w and r.rows <= 1_000_000]) for w in WAYS}
    ce, se = fits["endpoint"]
    limits = []
    for way in ("direct", "batch"):
        cx, sx = fits[way]
        if ce > cx:
            limits.append(0 if se >= sx else None)  # slower at the start (and, if slope is worse, always)
        elif se <= sx:
            limits.append(None)  # no slower at any size
        else:
            limits.append(int((cx - ce) / (se - sx)))
    finite = [x for x in limits if x is not None]
    n = min(finite) if finite else None
    detail = "; ".join(f"{w} {c:.1f} s + {s * 1e6:.1f} s per 1M rows" for w, (c, s) in fits.items())
    return n, detail


def _round(n: int) -> str:
    if n <= 0:
        return "0"
    digits = len(str(n)) - 2
    return f"{round(n, -digits) if digits > 0 else n:,}"


def summary_line(results: list[Figures], best: int) -> str:
    top = max(r.rows for r in results)
    if top < 1_000_000:
        raise RuntimeError("the three-ways line needs the 1M-row runs")
    a, b, c = (next(r for r in results if r.way == w and r.rows == 1_000_000) for w in WAYS)
    return (f"three-ways: direct {b.wall_s / a.wall_s:.1f}x faster than batch prediction, "
            f"{c.wall_s / a.wall_s:.1f}x faster than endpoint at 1M rows; endpoint best at {best:,} rows per request")


def main_table(results: list[Figures]) -> str:
    lines = ["| rows | way | wall s (measured here) | CPU s | rows/s (wall) | load | steps: wall s / CPU s |",
             "|---:|---|---:|---:|---:|---:|---|"]
    for r in results:
        steps = "; ".join(f"{k} {'—' if w is None else f'{w:.1f}'} / {'—' if c is None else f'{c:.1f}'}"
                          for k, (w, c) in r.steps.items())
        lines.append(f"| {r.rows:,} | {WAYS[r.way]}{' (' + r.note + ')' if r.note else ''} | {r.wall_s:.2f} | "
                     f"{r.cpu_s:.1f} | {r.rows_per_s:,.0f} | {r.load:.1f} | {steps} |")
    return "\n".join(lines)


def seed_table(sizes: list[int]) -> str:
    lines = ["| rows | prep + batch prediction: time (vCPU-h) | of which the batch prediction job | "
             "direct model: time (vCPU-h) | direct faster by |",
             "|---:|---|---|---|---:|"]
    for rows, ((bt, bh), (dt, dh)) in SEED_004.items():
        if rows in sizes:
            secs = [int(t.split("m")[0]) * 60 + int(t.split("m")[1][:-1]) for t in (bt, dt)]
            lines.append(f"| {rows:,} | {bt} ({bh}) | {SEED_004_JOB[rows]} | {dt} ({dh}) | {secs[0] / secs[1]:.1f}x |")
    return "\n".join(lines)


def sweep_table(found) -> str:
    lines = ["| rows per request | sample rows | sample wall s | sample rows/s | a tenth: rows / wall s | "
             "1M rows, extrapolated s | CPU s per 1K rows (job + server) |", "|---:|---:|---:|---:|---|---:|---:|"]
    for per_request, small, big, at_1m in found:
        lines.append(f"| {per_request:,} | {big.rows:,} | {big.wall_s:.2f} | {big.rows_per_s:,.0f} | "
                     f"{small.rows:,} / {small.wall_s:.2f} | {at_1m:.0f} | {1000 * big.cpu_s / big.rows:.2f} |")
    return "\n".join(lines)


def ordering(results: list[Figures]) -> str:
    parts = []
    for rows in sorted({r.rows for r in results}):
        ranked = sorted((r for r in results if r.rows == rows), key=lambda r: r.wall_s)
        parts.append(f"{rows:,}: " + " < ".join(f"{r.way} {r.wall_s:.1f} s" for r in ranked))
    return "; ".join(parts)


def section(results: list[Figures], found, best: int, n_cross, cross_detail: str, minutes: float,
            in_flight: int, command: str = "make bench-three-ways") -> str:
    by = {(r.way, r.rows): r for r in results}
    a, b, c = (by[(w, 1_000_000)] for w in WAYS)
    prep_steps = b.steps
    method = __doc__.split("\n\n", 1)[1].strip()
    cross = ("endpoint crossover: 0 rows (its fixed cost per run is not below the direct model's or the batch "
             "path's, so it is slower from the first row)" if n_cross == 0 else
             "endpoint crossover: none (the endpoint is no slower at any size measured)" if n_cross is None else
             f"endpoint crossover: {_round(n_cross)} rows")
    per_row_a = fit([r for r in results if r.way == "direct" and r.rows <= 1_000_000])[1]
    per_row_c = fit([r for r in results if r.way == "endpoint" and r.rows <= 1_000_000])[1]
    return f"""{START_MARK}
## Three ways: direct model vs prep + batch prediction vs endpoint (seed 004, reproduced)

Generated by `{command}` ({minutes:.1f} min; `make bench` runs it with the default sizes). Conditions: {bench.conditions()}.
The endpoint's server: {os.cpu_count()} workers (one per core); the job keeps at most {in_flight} requests in flight.

**{summary_line(results, best)}**

{method}

Measured here (wall: spawn to exit of each step, summed; CPU: the steps' processes and the scoring server's):

{main_table(results)}

Seed 004 on Google Cloud (n1-standard-1 workers, autoscaling; end to end, vCPU-hours), beside ours:

{seed_table(sorted(set(r.rows for r in results)))}

Service start-up is not in our figures: in seed 004 the batch prediction job alone took
{SEED_004_JOB[10_000]} for 10K rows and {SEED_004_JOB[100_000]} for 100K (AI Platform provisioning its
nodes and loading the model before the first row; SageMaker Batch Transform and Vertex batch prediction
likewise start instances per job, minutes), and the direct model's Dataflow job {SEED_004[10_000][1][0]} for 10K
rows (Dataflow's worker start-up). Locally the equivalents are seconds: the job process's start
(Python, Beam, the model) and, for (b), the container's start ({prep_steps['container start'][0]:.1f} s at 1M rows).

Ordering by wall time, per size: {ordering(results)}. Seed 004 has the direct model ahead of prep + batch
prediction at every size ({seed_table_ratio()}); {agreement(results)}. The reason differs at small
sizes: no provisioning locally, so (b) pays a second job (prep writes the data and the transform reads it
back) and the container's start instead of minutes of machines. CPU: {cpu_sentence(results)}.
The endpoint pays HTTP and JSON per row ((b) posts whole Parquet files): {per_row_c * 1e6:.1f} s per 1M rows of wall time (the fits
below) against the direct model's {per_row_a * 1e6:.1f} s (the model's own predict is the same work; encoding rows as JSON, parsing
them into a DataFrame on the server and back is not), and micro-batching is what keeps that cost
bounded: {sweep_sentence(found)}. Seed 004 saw the same lever on its HTTP endpoint (streaming, 50 msg/s:
9m34s -> 7m44s with 1 s micro-batches) and did not run its endpoint on batch data at all: one request per data point "makes the volume of HTTP
requests very large" (its batch section, translated).

**{cross}** (fits of wall time over the sizes up to 1M: {cross_detail}; the endpoint's fixed cost has no
model load and no server start, the endpoint being up; `backend: auto` uses this figure).

Micro-batch sweep of the endpoint (rows per request = `max_rows_per_request`; each on a sample of the
1M-row input and on a tenth of it, 1M rows extrapolated linearly through both, fixed cost + per-row cost):

{sweep_table(found)}
{END_MARK}
"""


def _label(rows: int) -> str:
    return f"{rows // 1_000_000}M" if rows >= 1_000_000 else f"{rows // 1000}K"


def seed_table_ratio() -> str:
    out = []
    for rows, ((bt, _), (dt, _)) in SEED_004.items():
        secs = [int(t.split("m")[0]) * 60 + int(t.split("m")[1][:-1]) for t in (bt, dt)]
        out.append(f"{secs[0] / secs[1]:.1f}x at {_label(rows)}")
    return ", ".join(out)


def agreement(results: list[Figures]) -> str:
    by = {(r.way, r.rows): r for r in results}
    sizes = sorted({r.rows for r in results})
    ahead = [n for n in sizes if by[("direct", n)].wall_s < by[("batch", n)].wall_s]
    ratios = ", ".join(f"{by[('batch', n)].wall_s / by[('direct', n)].wall_s:.1f}x at {_label(n)}" for n in sizes)
    if len(ahead) == len(sizes):
        return f"here too, at every size measured ({ratios})"
    return f"here only at {', '.join(_label(n) for n in ahead) or 'no size'} ({ratios}): the order differs"


def cpu_sentence(results: list[Figures]) -> str:
    by = {(r.way, r.rows): r for r in results}
    a, b, c = (by[(w, 1_000_000)] for w in WAYS)
    (_, seed_b), (_, seed_a) = SEED_004[1_000_000]
    return (f"at 1M rows seed 004's direct model used {seed_a / seed_b:.1f}x the vCPU-hours of prep + batch "
            f"prediction (Dataflow's autoscaled workers, billed while the run lasts); here (a) uses "
            f"{a.cpu_s:.1f} s, (b) {b.cpu_s:.1f} s and (c) {c.cpu_s:.1f} s of CPU ({a.cpu_s / b.cpu_s:.2f}x and "
            f"{a.cpu_s / c.cpu_s:.2f}x): a local process is not billed for idle time, so only the work counts")


def sweep_sentence(found) -> str:
    first, best = found[0], min(found, key=lambda f: f[3])
    return (f"one row per request would take ~{first[3]:.0f} s for 1M rows, {best[0]:,} rows per request "
            f"~{best[3]:.0f} s ({first[3] / best[3]:.1f}x less)")


def measure(sizes: list[int], in_flight: int) -> tuple[list[Figures], list, int]:
    from scoring_server import serve_model

    ds = datasets.ensure("natality_1m", log=say)
    big = datasets.ensure("natality_10m", log=say) if 10_000_000 in sizes else None
    s = setup(ds)
    (HOME / "logs").mkdir(parents=True, exist_ok=True)
    say("three ways: warm-up (not timed)")
    direct(s, 10_000)
    results: list[Figures] = []
    with serve_model(ds.artifact_uri, HOME / "logs" / "endpoint-server.log", env=bench.child_env(),
                     workers=os.cpu_count()) as server:
        endpoint(s, server, 10_000, 1_000, in_flight, tag="-warmup")
        found = sweep(s, server, in_flight)
        best = min(found, key=lambda f: f[3])[0]
        for rows in sizes:
            setup_for = s if rows <= ds.rows else setup(big)
            found_here: dict[str, Figures] = {}
            for _ in range(2 if rows < 1_000_000 else 1):  # rounds: a load change hits every way alike
                for figures in (direct(setup_for, rows), batch_prediction(setup_for, rows),
                                endpoint(setup_for, server, rows, best, in_flight)):
                    if figures.way not in found_here or figures.wall_s < found_here[figures.way].wall_s:
                        found_here[figures.way] = figures
            for figures in found_here.values():
                if rows < 1_000_000:
                    figures.note = "; ".join(filter(None, [figures.note, "best of 2"]))
                results.append(figures)
                say(f"  {figures.way:8s} {rows:>11,} rows  {figures.wall_s:7.2f} s wall  {figures.cpu_s:7.2f} s CPU  "
                    f"load {figures.load:.1f}")
            if rows == 1_000_000 and 10_000_000 not in sizes:
                slowest = max(r.wall_s for r in results if r.rows == rows)
                say(f"  slowest way at 1M rows: {slowest:.0f} s" + (" (< 60 s: --sizes 10k,100k,1m,10m adds 10M)"
                                                                     if slowest < 60 else ""))
    return results, found, best


def update_readme(line: str, path: Path) -> None:
    """README's Measured list holds the last three-ways line (replaced in place, or added after scoring)."""
    text = path.read_text()
    entry = (f"- Three ways (`make bench-three-ways`, seed 004 reproduced): `{line}`; table, seed 004's figures "
             "beside ours and the endpoint crossover for `backend: auto` in `bench/results.md` (three ways).\n")
    lines = text.splitlines(keepends=True)
    for i, existing in enumerate(lines):
        if existing.startswith("- Three ways (`make bench-three-ways`"):
            lines[i] = entry
            path.write_text("".join(lines))
            return
    marker = "## Measured\n"
    if marker not in text:
        raise RuntimeError(f"{path} has no '## Measured' section")
    path.write_text(text.replace(marker, marker + entry, 1))


def main(argv=None) -> None:
    if argv is None and sys.argv[1:2] == ["transform"]:
        print(json.dumps(transform(json.loads(sys.argv[2]))), flush=True)
        return
    parser = argparse.ArgumentParser(prog="bench/three_ways.py", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help=f"comma-separated from {', '.join(SIZES)} "
                        "(1m is needed for the three-ways line)")
    parser.add_argument("--in-flight", type=int, default=os.cpu_count(),
                        help="requests in flight per endpoint job (default: one per server worker)")
    parser.add_argument("--results", default=str(HERE / "results.md"))
    parser.add_argument("--readme", default=str(REPO / "README.md"))
    args = parser.parse_args(argv)
    sizes = sorted(SIZES[x.strip()] for x in args.sizes.split(",") if x.strip())
    if 1_000_000 not in sizes or len([n for n in sizes if n <= 1_000_000]) < 2:
        parser.error(f"--sizes {args.sizes}: needs 1m (the three-ways line) and a smaller size (the crossover's fit)")
    started = time.perf_counter()
    results, found, best = measure(sizes, args.in_flight)
    n_cross, detail = crossover(results)
    command = "make bench-three-ways" + (f" SIZES={args.sizes}" if args.sizes != DEFAULT_SIZES else "")
    text = section(results, found, best, n_cross, detail, (time.perf_counter() - started) / 60, args.in_flight,
                   command)
    whole_run.write_section(text, Path(args.results), START_MARK, END_MARK)
    line = summary_line(results, best)
    update_readme(line, Path(args.readme))
    say(f"\nwrote the three-ways section of {args.results}")
    say(f"endpoint crossover: {'none' if n_cross is None else _round(n_cross)} rows ({detail})")
    say(line)


if __name__ == "__main__":
    main()
