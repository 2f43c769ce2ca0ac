"""The direct-model job in one pass: raw input -> validate -> score -> prediction files, with the
rejected rows written as dead letters by the same pass.

Why: with the direct model nothing else needs a prepared copy of the input. Run as two jobs (prep
writes the prepared Parquet files, score reads them back) every run paid a second job process (Python,
Beam's import, a runner start: ~1.5 s here) and a write and a read of the whole data set
(bench/results.md, whole run). The steps are the two jobs' own: prep's read_and_validate (read with
its CSV typing, PrepareInput, DeadLetterWrite); score's ScoreBatches and WriteArrowBatches. The
result has both jobs' counts: rows_in, rows_valid, rows_rejected (prep's rules), rows_scored, model_loads.

    python -m mlbatch_beam.validate_and_score --input 'in/*.parquet' --input-format parquet \
        --schema-json '{...}' --dead-letter-dir rejected/ <mlbatch_beam.score's model and output flags>
"""
from __future__ import annotations

import argparse
import gc
import json
import logging

import apache_beam as beam

from mlbatch_beam.arrow_io import INPUT_FORMATS, WriteArrowBatches, match_paths
from mlbatch_beam.options import pipeline_options
from mlbatch_beam.prep import read_and_validate
from mlbatch_beam.quality.combine import RunStatistics, add_statistics_arguments, read_edges
from mlbatch_beam.results import counter_totals, run_to_completion, write_result
from mlbatch_beam.schema import FeatureSchema
from mlbatch_beam.score import ScoreBatches, add_scoring_arguments, checked, model_handler_from_args


def add_raw_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The raw input and how it is validated: shared with mlbatch_beam.endpoint_score."""
    parser.add_argument("--input", required=True, nargs="+",
                        help="file pattern(s) of the raw input (mlbatch_beam.shards passes files)")
    parser.add_argument("--input-format", required=True, choices=INPUT_FORMATS)
    parser.add_argument("--schema-json", required=True, help="FeatureSchema as JSON text")
    parser.add_argument("--dead-letter-dir", required=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mlbatch_beam.validate_and_score",
                                     description=__doc__.split("\n")[0])
    add_raw_input_arguments(parser)
    add_scoring_arguments(parser)  # --batch-rows: rows per read batch and per model call
    add_statistics_arguments(parser)
    return checked(parser, *parser.parse_known_args(argv))


def run(argv=None) -> dict:
    """Run the pipeline to completion and return (and write) its counts."""
    args, beam_args = parse_args(argv)
    schema = FeatureSchema.from_json(args.schema_json)
    handler = model_handler_from_args(args)
    options = pipeline_options(beam_args)  # also sets up the filesystems (S3 endpoint) for the match below
    match_paths(args.input)  # fail fast, before starting workers
    edges = read_edges(args.statistics_edges)
    pipeline = beam.Pipeline(options=options)
    valid = read_and_validate(pipeline, args, schema)
    scored = valid | "Score" >> ScoreBatches(handler)
    _ = scored | "Write" >> WriteArrowBatches(args.output_dir, args.output_format, prefix="predictions")
    if args.statistics_file:  # the quality gate's statistics, from the same pass (mlbatch_beam.quality)
        _ = (valid, scored) | "Statistics" >> RunStatistics(
            args.statistics_file, handler.feature_columns, args.id_column, edges)
    result = run_to_completion(pipeline, "validate_and_score")
    # rows_in is counted by both prep's and score's first steps: prep's is the input's.
    counts = {**counter_totals(result, ["rows_in", "rows_valid", "rows_rejected"], step="Prepare"),
              **counter_totals(result, ["rows_scored", "model_loads"])}
    return write_result(args.result_file, {
        **counts, "output_dir": args.output_dir, "dead_letter_dir": args.dead_letter_dir,
        **({"statistics_uri": args.statistics_file} if args.statistics_file else {})})


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    gc.freeze()  # as in mlbatch_beam.score: the imports' objects are not rescanned during the run
    print(json.dumps(run()), flush=True)
    gc.freeze()
