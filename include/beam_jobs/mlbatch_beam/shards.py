"""Run one local Beam job (prep, score, or both in one pass) as N independent in-memory jobs over disjoint groups of its files.

Why: FnApiRunner's multi_processing mode routes every bundle through its one runner process; on this
2-core machine two workers are slower than one, and on 16 cores it stops scaling at ~4 (bench/results.md,
issue 14). Jobs over disjoint input files share nothing but their output folders, where file names come
from the input pieces, so they never collide, and they scale with cores. Their counts add up.

    python -m mlbatch_beam.shards --shards N --job mlbatch_beam.score <the job's own arguments>

Local runs only (`compute.local_workers` > 1): on Dataflow the service spreads the work. Each shard loads
its own model copy. Files are balanced by size (largest first onto the least-loaded shard); a job over
fewer files than N runs that many shards. A shard that fails stops the others and fails the whole job;
its log is in the job's log (every shard writes to the same stdout/stderr).

The launcher itself imports no Beam for local files (listing, result files): Beam's import (~1.2 s
here) would be paid once more, serially, before the shards start, on every sharded step. Local
patterns follow Beam's own match rule (mlbatch_beam.local_files); gs:// and s3:// ones are matched by Beam.
The job's other arguments are checked by each shard: a bad one fails every shard, and so the job.
"""
from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import time

from mlbatch_beam.local_files import local_matches

log = logging.getLogger("mlbatch_beam.shards")
JOBS = ("mlbatch_beam.prep", "mlbatch_beam.score", "mlbatch_beam.validate_and_score")
# The runner modes a shard must not inherit: each shard is one in-memory FnApiRunner job.
_RUNNER_MODE_FLAGS = ("--direct_running_mode", "--direct_num_workers")


def balanced_groups(sizes: dict[str, int], shards: int) -> list[list[str]]:
    """Paths split into at most `shards` non-empty groups of near-equal total size."""
    groups: list[tuple[int, list[str]]] = [(0, []) for _ in range(min(shards, len(sizes)))]
    for path in sorted(sizes, key=lambda p: (-sizes[p], p)):
        total, members = min(groups, key=lambda g: g[0])
        groups[groups.index((total, members))] = (total + sizes[path], members + [path])
    return [sorted(members) for _, members in groups]


def file_sizes(patterns: list[str], job: str, job_argv: list[str]) -> dict[str, int]:
    """Non-empty files matching any pattern, with their sizes; a pattern matching nothing fails here,
    as in the job itself (mlbatch_beam.arrow_io.matched_sizes)."""
    if any("://" in pattern for pattern in patterns):  # the job's own parsing and Beam's filesystems
        from mlbatch_beam.arrow_io import matched_sizes
        from mlbatch_beam.options import pipeline_options

        pipeline_options(importlib.import_module(job).parse_args(job_argv)[1])  # S3 endpoint, credentials
        return matched_sizes(patterns)
    sizes = {}
    for pattern in patterns:
        found = local_matches(pattern)
        if not found:
            raise FileNotFoundError(f"No input files match pattern {pattern!r}")
        sizes.update((path, size) for path, size in found.items() if size > 0)
    return sizes


def job_paths(argv: list[str]):
    """The job's --input patterns and --result-file, read without importing the job (and Beam)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--input", required=True, nargs="+")
    parser.add_argument("--result-file", required=True)
    return parser.parse_known_args(argv)[0]


def pop_result(path: str) -> dict:
    """A shard's result file, read and then deleted (Beam's filesystems only for gs:// and s3://)."""
    if "://" not in path:
        with open(path) as f:
            result = json.load(f)
        os.remove(path)
        return result
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        result = json.loads(f.read())
    FileSystems.delete([path])
    return result


def write_result(path: str, result: dict) -> dict:
    """mlbatch_beam.results.write_result (same JSON), without Beam for a local path."""
    if "://" in path:
        from mlbatch_beam.results import write_result as beam_write_result

        return beam_write_result(path, result)
    with open(path, "w") as f:
        f.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def _without(argv: list[str], option: str, takes_values: bool) -> list[str]:
    """argv without `option` (and, if it takes values, every value up to the next --option)."""
    out, skipping = [], False
    for arg in argv:
        if arg == option or arg.startswith(option + "="):
            skipping = takes_values and "=" not in arg
            continue
        if skipping and not arg.startswith("--"):
            continue
        skipping = False
        out.append(arg)
    return out


def shard_commands(job: str, argv: list[str], groups: list[list[str]], result_file: str) -> list[list[str]]:
    base = _without(_without(argv, "--input", True), "--result-file", True)
    for flag in _RUNNER_MODE_FLAGS:
        base = _without(base, flag, True)
    return [[sys.executable, "-u", "-m", job, *base, "--input", *group, "--result-file", f"{result_file}.shard-{k}"]
            for k, group in enumerate(groups)]


def combined(results: list[dict]) -> dict:
    """Counts summed; every other field (the output folders) is the same in every shard."""
    out: dict = {}
    for result in results:
        for key, value in result.items():
            if isinstance(value, int) and not isinstance(value, bool):
                out[key] = out.get(key, 0) + value
            elif out.setdefault(key, value) != value:
                raise ValueError(f"shards disagree on {key!r}: {out[key]!r} vs {value!r}")
    return out


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m mlbatch_beam.shards", description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, required=True)
    parser.add_argument("--job", required=True, choices=JOBS)
    ours, job_argv = parser.parse_known_args(argv)
    if ours.shards < 1:
        parser.error(f"--shards must be at least 1, got {ours.shards}")
    job_args = job_paths(job_argv)
    groups = balanced_groups(file_sizes(job_args.input, ours.job, job_argv), ours.shards)
    log.info("%s: %d shards over %d files", ours.job, len(groups), sum(map(len, groups)))
    procs = [subprocess.Popen(command, preexec_fn=_die_with_parent)
             for command in shard_commands(ours.job, job_argv, groups, job_args.result_file)]
    failed, running = [], dict(enumerate(procs))
    while running:  # in the order they end: one failure fails the job, so the rest are stopped at once
        for k, proc in list(running.items()):
            code = proc.poll()  # Popen reaps its own child (terminate() may reap it too: no os.wait here)
            if code is None:
                continue
            del running[k]
            if code != 0 and not failed:
                failed.append(f"shard {k} of {len(procs)} failed (exit {code})")
                for other in running.values():
                    other.terminate()
                if running:
                    failed.append(f"stopped shard(s) {sorted(running)}")
        if running:
            time.sleep(0.05)
    if failed:
        raise RuntimeError(f"{ours.job}: {'; '.join(failed)}; the failing shard's error is in the log above")
    results = [pop_result(f"{job_args.result_file}.shard-{k}") for k in range(len(procs))]
    return write_result(job_args.result_file, {**combined(results), "shards": len(procs)})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(run()), flush=True)
