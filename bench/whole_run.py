"""`make bench-whole-run` (and the last section of `make bench`): what a user pays for a whole run.

The `natality_daily` DAG runs end to end with `airflow dags test` (all six tasks, backend `dataflow`:
the direct-model job on the local FnApiRunner, validating and scoring in one pass in the predict step,
as `make demo` runs it), on 1K rows (the fixed cost of a run: nearly no data) and on larger
partitions, against the raw limit of the same work in one process (bench/cases.py `raw_run`: pyarrow
read, prep's own validation rules, dead letters written, one `predict` with the same MLflow model, one
Parquet write). Each is timed from spawn to exit: the
DAG run pays Airflow's start-up, the raw limit pays Python's and its imports, as a user would.

Per task, wall time, CPU time (the task's job processes included) and peak memory come from the
task's own `Resources of <task>` log line (mlbatch.run.resources, the same figures the `record` step puts
in MLflow). "Airflow" is the rest of the run: CLI start, DAG parse, task start-up and bookkeeping
between tasks. Under `airflow dags test` all six tasks run in one process, and the first task start
builds Airflow's execution API app in-process (Cadwyn's versioned routers, ~4 s of CPU at rest): a
deployment pays that once per api-server start, but pays instead one task process start per task.
For scale, the same command runs a DAG of six chained no-op tasks (`airflow_floor`): Airflow's own
cost of a run of this shape, which no pipeline can go below.
`compute.local_workers` 1 vs 2 is the scaling figure (a copy of the spec with `local_workers: 2`).
CPU time is given next to wall time: on a loaded machine it moves far less than wall time. Every process runs as in the scoring section: OMP_NUM_THREADS=1 and a warm
bytecode cache (.bench/pycache, filled by untimed warm-up runs). Without one (this machine sets
PYTHONDONTWRITEBYTECODE and `uv pip sync` compiled nothing) every process compiles Airflow, MLflow,
Beam and scikit-learn from source: about twice the import CPU. The load average is recorded with
each figure because other work shares this machine's cores.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import datasets  # noqa: E402
import run as bench  # noqa: E402

REPO = HERE.parent
HOME = datasets.ROOT / "whole_run"
PIPELINE = "natality_daily"
MODEL = "natality_weight"
TASKS = ("wait_for_data", "resolve_model", "prep", "predict", "publish", "record")
SIZES = {"1k": 1_000, "100k": 100_000, "1m": 1_000_000, "10m": 10_000_000}
DATES = {"1k": "2026-11-01", "100k": "2026-11-02", "1m": "2026-11-03", "10m": "2026-11-04"}
RESOURCES = re.compile(r"Resources of (\w+): (\{[^}]*\})")
START_MARK, END_MARK = "<!-- whole-run:start -->", "<!-- whole-run:end -->"


@dataclass
class RunFigures:
    case: str            # "dag w1", "dag w2" or "raw"
    size: str
    rows: int
    wall_s: float
    cpu_s: float
    peak_mb: float       # largest single process
    load: float          # 1-min load average when it ended
    tasks: dict = field(default_factory=dict)  # task -> {wall_s, cpu_s, peak_rss_mb}
    log: str = ""


def say(text: str) -> None:
    print(text, flush=True)


def spec_dir(workers: int) -> Path:
    """A pipelines folder holding natality_daily.yaml with `compute.local_workers` = workers."""
    text = (REPO / "include" / "pipelines" / f"{PIPELINE}.yaml").read_text()
    changed = text.replace("local_workers: 1", f"local_workers: {workers}")
    if workers != 1 and changed == text:
        raise RuntimeError(f"{PIPELINE}.yaml has no `local_workers: 1` to change")
    folder = HOME / "pipelines" / f"w{workers}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{PIPELINE}.yaml").write_text(changed)
    return folder


def dag_env(workers: int) -> dict[str, str]:
    from mlbatch.local.env import local_env

    # The scoring cases' environment (one thread per process, the warm bytecode cache of an installed
    # worker), then the demo's Airflow home, MLflow store and data root under HOME.
    env = local_env(HOME, pipelines=spec_dir(workers), keep_user_settings=False, base=bench.child_env())
    return {**env, "MLBATCH_ENV": "dev"}


def prepare(sizes: list[str]) -> tuple[dict, str]:
    """Airflow database, input partitions and the registered model (made once, reused)."""
    from mlbatch.local.demo.natality import write_partition
    from mlbatch.local.env import ensure_airflow_db

    env = dag_env(1)
    say("whole run: " + ensure_airflow_db(env))
    for size in sizes:
        folder = HOME / "data" / "natality" / f"ds={DATES[size]}"
        if not (folder / "_SUCCESS").exists():
            say(f"whole run: writing {SIZES[size]:,} rows to {folder}")
            write_partition(folder, SIZES[size], files=max(4, SIZES[size] // 1_250_000))
    # The model goes into this home's MLflow store; a child process so this one's MLflow settings stay.
    code = ("import json; from mlflow import MlflowClient; from mlflow.exceptions import MlflowException\n"
            "from mlbatch.local.demo.natality import train_and_register\n"
            f"c = MlflowClient()\ntry: v = c.get_model_version_by_alias({MODEL!r}, 'champion').version\n"
            f"except MlflowException: v = train_and_register({MODEL!r}, pip_requirements=['scikit-learn'])\n"
            f"print(json.dumps(c.get_model_version_download_uri({MODEL!r}, str(v))))")
    done = subprocess.run([sys.executable, "-c", code], env=env, text=True, capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"registering {MODEL} failed:\n{done.stderr[-3000:]}")
    return env, json.loads(done.stdout.strip().splitlines()[-1])


def timed(command: list[str], env: dict, log_path: Path) -> tuple[float, float, float, str]:
    """Run to exit: wall s, CPU s (its reaped descendants included), largest process's peak MB, stdout."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        memory = bench.TreeMemory(proc.pid)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    memory.stop()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command[:6])} failed; see {log_path}")
    return wall, usage.ru_utime + usage.ru_stime, memory.largest_mb, stdout


def run_dag(size: str, workers: int, tag: str = "") -> RunFigures:
    log_path = HOME / "logs" / f"dag-{size}-w{workers}{tag}.log"
    command = [sys.executable, "-m", "airflow", "dags", "test", PIPELINE, DATES[size]]
    env = dag_env(workers)
    wall, cpu, peak, stdout = timed(command, {**env, "PYTHONUNBUFFERED": "1"}, log_path)
    with open(log_path, "a") as log:
        log.write(stdout)
    tasks = {name: ast.literal_eval(figures) for name, figures in RESOURCES.findall(stdout)}
    missing = [t for t in TASKS if t not in tasks]
    if missing:
        raise RuntimeError(f"DAG run on {size} rows did not finish tasks {missing}; see {log_path}")
    return RunFigures(f"dag w{workers}", size, SIZES[size], wall, cpu, peak, os.getloadavg()[0], tasks,
                      str(log_path))


FLOOR_DAG = f'''"""Airflow's own cost of a run shaped like {PIPELINE}: six chained tasks that do nothing."""
import pendulum
from airflow.sdk import DAG, task

with DAG("airflow_floor", schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False):
    previous = None
    for name in {TASKS!r}:
        step = task(task_id=name)(lambda upstream=None: {{"done": True}})(previous)
        previous = step
'''


def run_floor(tag: str = "") -> RunFigures:
    """The same `airflow dags test` on a DAG of six no-op tasks: what Airflow alone costs per run."""
    folder = HOME / "floor_dags"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "airflow_floor.py").write_text(FLOOR_DAG)
    env = {**dag_env(1), "AIRFLOW__CORE__DAGS_FOLDER": str(folder), "PYTHONUNBUFFERED": "1"}
    log_path = HOME / "logs" / f"floor{tag}.log"
    wall, cpu, peak, stdout = timed([sys.executable, "-m", "airflow", "dags", "test", "airflow_floor", DATES["1k"]],
                                    env, log_path)
    ended = stdout.count("[DAG TEST] end task")
    if ended != len(TASKS):
        raise RuntimeError(f"the floor DAG ran {ended} of {len(TASKS)} tasks; see {log_path}")
    return RunFigures("floor", "1k", 0, wall, cpu, peak, os.getloadavg()[0])


def run_raw(size: str, artifact_uri: str, tag: str = "") -> RunFigures:
    from mlbatch.spec.loader import load_spec

    spec = load_spec(spec_dir(1) / f"{PIPELINE}.yaml")
    schema = {"id_column": spec.input.id_column, "features": [f.model_dump() for f in spec.input.features]}
    folder = HOME / "data" / "natality" / f"ds={DATES[size]}"
    ds = datasets.Dataset(
        name=f"natality_{size}", rows=SIZES[size], features=[f.name for f in spec.input.features],
        parquet_glob=str(folder / "*.parquet"), jsonl_glob="", model_uri=f"models:/{MODEL}",
        artifact_uri=artifact_uri, sklearn_pickle="", schema_json=json.dumps(schema),
        prediction_column=spec.output.prediction_column)
    out = HOME / "raw_out" / f"{size}{tag}"
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, str(HERE / "cases.py"), "raw_run", ds.to_json(), str(out)]
    wall, cpu, peak, stdout = timed(command, bench.child_env(), HOME / "logs" / f"raw-{size}{tag}.log")
    info = json.loads(stdout.strip().splitlines()[-1])
    if info["rows_scored"] + info["rows_rejected"] != SIZES[size]:
        raise RuntimeError(f"raw_run on {size}: {info} does not add up to {SIZES[size]:,} rows")
    return RunFigures("raw", size, SIZES[size], wall, cpu, peak, os.getloadavg()[0],
                      {"job_s": wall - info["import_s"], **info})


def measure(sizes: list[str], repeats: int = 2, each_size=None) -> list[RunFigures]:
    """Warm-up, then per size: the raw limit and the DAG with 1 worker (best of `repeats` below 100K rows:
    the fixed cost), and from 100K rows also the DAG with 2 workers (one run each). `each_size(results)`
    is called after every size, so a run cut short still leaves the sizes it finished."""
    t = time.perf_counter()
    _, artifact_uri = prepare(sizes)
    say(f"whole run: data and model ready ({time.perf_counter() - t:.0f} s); warm-up runs (not timed)")
    run_raw(sizes[0], artifact_uri, tag="-warmup")
    run_dag(sizes[0], 1, tag="-warmup")  # first parse/serialisation of the DAG, bytecode caches
    run_floor(tag="-warmup")
    results: list[RunFigures] = []
    for size in sizes:
        small = SIZES[size] < 100_000
        rounds = repeats if small else 1
        cases = [("raw", 0), ("dag", 1)] + ([("floor", 0)] if size == sizes[0] else []) + (
            [] if small else [("dag", 2)])
        found: dict = {}
        for i in range(rounds):  # rounds, not back-to-back repeats: load changes hit every case
            for kind, workers in cases:
                r = (run_raw(size, artifact_uri, f"-{i}") if kind == "raw" else run_floor(f"-{i}")
                     if kind == "floor" else run_dag(size, workers, f"-{i}"))
                if (kind, workers) not in found or r.wall_s < found[(kind, workers)].wall_s:
                    found[(kind, workers)] = r
        for r in found.values():
            results.append(r)
            say(f"  whole run {r.case:6s} {r.rows:>11,} rows  {r.wall_s:7.2f} s wall  {r.cpu_s:7.2f} s CPU  "
                f"{r.peak_mb:6.0f} MB  load {r.load:.1f}")
        if each_size:
            each_size(results)
    return results


def _find(results, case, size):
    return next((r for r in results if r.case == case and r.size == size), None)


def goal_lines(results: list[RunFigures]) -> list[str]:
    sizes = list(dict.fromkeys(r.size for r in results))
    fixed = min((r for r in results if r.case == "dag w1"), key=lambda r: r.rows)
    big = max(sizes, key=SIZES.get)
    dag, raw, w2 = _find(results, "dag w1", big), _find(results, "raw", big), _find(results, "dag w2", big)
    floor = next((r for r in results if r.case == "floor"), None)
    lines = [f"whole-run: {dag.wall_s / raw.wall_s:.1f}x the raw limit at {SIZES[big]:,} rows, "
             f"fixed cost {fixed.wall_s:.1f} s per run"
             + (f" (Airflow alone {floor.wall_s:.1f} s: six no-op tasks, same command)" if floor else "")]
    if w2:
        step = dag.tasks["predict"]["wall_s"] / w2.tasks["predict"]["wall_s"]
        lines.append(f"scaling: 2 workers {dag.wall_s / w2.wall_s:.2f}x one worker at {SIZES[big]:,} rows "
                     f"(the predict step's one-pass job: {step:.2f}x)")
    return lines


def _cell(f: dict) -> str:
    return f"{f['wall_s']:.1f} / {f['cpu_s']:.1f} / {f['peak_rss_mb']:.0f}"


def task_table(results: list[RunFigures]) -> str:
    runs = [r for r in results if r.case.startswith("dag")]
    floor = next((r for r in results if r.case == "floor"), None)
    head = "| task | " + " | ".join(f"{r.rows:,} rows, {r.case.split()[1]} (load {r.load:.1f})" for r in runs) + " |"
    lines = [head, "|---|" + "---:|" * len(runs)]
    for task in TASKS:
        lines.append(f"| {task} | " + " | ".join(_cell(r.tasks[task]) for r in runs) + " |")
    rest = []
    for r in runs:
        wall = r.wall_s - sum(r.tasks[t]["wall_s"] for t in TASKS)
        cpu = r.cpu_s - sum(r.tasks[t]["cpu_s"] for t in TASKS)
        rest.append(f"{wall:.1f} / {cpu:.1f} / —")
    lines.append("| Airflow (CLI start, DAG parse, task start-up) | " + " | ".join(rest) + " |")
    if floor:
        lines.append(f"| *for scale: the same command on six no-op tasks* | *{floor.wall_s:.1f} / {floor.cpu_s:.1f} / "
                     f"{floor.peak_mb:.0f}* |" + " |" * (len(runs) - 1))
    lines.append("| **whole run** | " + " | ".join(f"**{r.wall_s:.1f}** / {r.cpu_s:.1f} / {r.peak_mb:.0f}"
                                                    for r in runs) + " |")
    return "\n".join(lines)


def summary_table(results: list[RunFigures]) -> str:
    lines = ["| rows | raw limit s | DAG, 1 worker s | ratio | DAG, 2 workers s | 2 vs 1 worker | "
             "raw CPU s / MB | DAG 1 worker CPU s / MB | CPU ratio | load (raw / w1 / w2) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for size in dict.fromkeys(r.size for r in results):
        raw, w1, w2 = (_find(results, c, size) for c in ("raw", "dag w1", "dag w2"))
        two = f"{w2.wall_s:.2f} | {w1.wall_s / w2.wall_s:.2f}x" if w2 else "— | —"
        lines.append(
            f"| {SIZES[size]:,} | {raw.wall_s:.2f} | {w1.wall_s:.2f} | {w1.wall_s / raw.wall_s:.1f}x | {two} | "
            f"{raw.cpu_s:.1f} / {raw.peak_mb:.0f} | {w1.cpu_s:.1f} / {w1.peak_mb:.0f} | "
            f"{w1.cpu_s / raw.cpu_s:.1f}x | {raw.load:.1f} / {w1.load:.1f} / {f'{w2.load:.1f}' if w2 else '—'} |")
    return "\n".join(lines)


def marginal(results: list[RunFigures]) -> str:
    """Per-row cost of the DAG vs the raw limit, between the smallest and largest size: the fixed
    costs cancel, so this is what the ratio tends to with ever more rows."""
    sizes = sorted(dict.fromkeys(r.size for r in results), key=SIZES.get)
    if len(sizes) < 2:
        return ""
    lo, hi = sizes[0], sizes[-1]
    d = {(c, k): _find(results, c, hi).__dict__[k] - _find(results, c, lo).__dict__[k]
         for c in ("dag w1", "raw") for k in ("wall_s", "cpu_s")}
    return (f"Per row (from {SIZES[lo]:,} to {SIZES[hi]:,} rows, fixed costs cancel): the DAG adds "
            f"{d['dag w1', 'wall_s']:.1f} s wall / {d['dag w1', 'cpu_s']:.1f} s CPU, the raw limit "
            f"{d['raw', 'wall_s']:.1f} s / {d['raw', 'cpu_s']:.1f} s: "
            f"{d['dag w1', 'wall_s'] / d['raw', 'wall_s']:.1f}x wall, "
            f"{d['dag w1', 'cpu_s'] / d['raw', 'cpu_s']:.1f}x CPU, the ratio a much larger run tends to.")


def bounds(results: list[RunFigures]) -> str:
    """What the fixed cost and the 2-worker figure are made of, from this run's own figures."""
    fixed = min((r for r in results if r.case == "dag w1"), key=lambda r: r.rows)
    floor = next((r for r in results if r.case == "floor"), None)
    big = max(dict.fromkeys(r.size for r in results), key=SIZES.get)
    w1, w2 = _find(results, "dag w1", big), _find(results, "dag w2", big)
    t = fixed.tasks
    ours = t["resolve_model"]["wall_s"] + t["predict"]["wall_s"]
    text = (f"What bounds them. The fixed cost ({fixed.wall_s:.1f} s)"
            + (f" is Airflow alone ({floor.wall_s:.1f} s for six no-op tasks, same command) plus "
               f"{fixed.wall_s - floor.wall_s:.1f} s" if floor else " is mostly Airflow's; of it")
            + f": resolve_model {t['resolve_model']['wall_s']:.1f} s (MLflow's import and one registry call), "
              f"predict {t['predict']['wall_s']:.1f} s (one job process importing Beam, MLflow and the model's "
              f"library, then {fixed.rows:,} rows)"
            + (f" and {fixed.wall_s - floor.wall_s - ours:.1f} s more of Airflow's time around these tasks than "
               "around no-op ones (parsing and serialising a larger DAG: ~0.4 s in a py-spy profile; one more "
               "XCom per task, its resource figures)." if floor else "."))
    if w2:
        serial = w1.wall_s - w1.tasks["predict"]["wall_s"]
        text += (f" With 2 workers only the predict step's job is split ({w1.tasks['predict']['wall_s']:.1f} -> "
                 f"{w2.tasks['predict']['wall_s']:.1f} s; each shard pays its own process start and model load); "
                 f"the rest of the run ({serial:.1f} s at 1 worker: Airflow, resolve_model, publish, record) is "
                 "serial and does not shrink.")
    return text


def section(results: list[RunFigures], seconds: float) -> str:
    method = __doc__.split("\n\n", 1)[1].strip()
    return f"""{START_MARK}
## Whole run: the `natality_daily` DAG end to end vs the raw limit

Generated by `make bench-whole-run` ({seconds / 60:.1f} min; part of `make bench`). {bench.conditions()}.

**{'** / **'.join(goal_lines(results))}**

{method}

{summary_table(results)}

{marginal(results)}

{bounds(results)}

Per task: wall s / CPU s / peak RSS MB (the task process or its job process, whichever is larger).

{task_table(results)}
{END_MARK}
"""


def write_section(text: str, path: Path, start: str = START_MARK, end: str = END_MARK) -> None:
    """Replace one section of results.md between its markers (or append it), leaving the others."""
    old = path.read_text() if path.exists() else ""
    if start in old and end in old:
        head, rest = old.split(start, 1)
        new = head + text.rstrip("\n") + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new)


def run_and_report(sizes: list[str], results_path: Path, repeats: int = 2) -> list[str]:
    started = time.perf_counter()
    results = measure(sizes, repeats, each_size=lambda done: write_section(
        section(done, time.perf_counter() - started), results_path))
    say("\n" + summary_table(results) + "\n\n" + task_table(results))
    say(f"\nwrote the whole-run section of {results_path}")
    return goal_lines(results)


def direct_model_line(path: Path) -> str | None:
    """The scoring section's goal line, as the last `make bench` wrote it."""
    found = re.search(r"\*\*(direct-model: [^*]+)\*\*", path.read_text()) if path.exists() else None
    return found.group(1) if found else None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="bench/whole_run.py", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1k,1m,10m", help=f"comma-separated from {', '.join(SIZES)}; "
                        "the smallest gives the fixed cost, the largest the goal lines")
    parser.add_argument("--repeats", type=int, default=2, help="runs of the small sizes (the best counts)")
    parser.add_argument("--results", default=str(HERE / "results.md"))
    args = parser.parse_args(argv)
    sizes = sorted((s.strip() for s in args.sizes.split(",") if s.strip()), key=SIZES.get)
    path = Path(args.results)
    lines = run_and_report(sizes, path, args.repeats)
    previous = direct_model_line(path)
    for line in ([previous] if previous else []) + lines:
        say(line)


if __name__ == "__main__":
    main()
