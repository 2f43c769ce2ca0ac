"""The direct-model scoring job: prepared files -> [id, prediction] files.

Used when the model is scored inside Beam (Dataflow or local runners)
rather than by a cloud batch-prediction service.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import uuid

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from mlbatch_beam.arrow_io import (
    INPUT_FORMATS, OUTPUT_FORMATS, ReadArrowBatches, WriteArrowBatches,
    match_paths, piece_of, with_origin,
)
from mlbatch_beam.model_handler import DEFAULT_BATCH_ROWS, MLflowPyfuncModelHandler
from mlbatch_beam.options import pipeline_options
from mlbatch_beam.outputs import PredictionOutput
from mlbatch_beam.progress import ProgressReporter
from mlbatch_beam.quality.combine import RunStatistics, add_statistics_arguments, read_edges
from mlbatch_beam.results import NAMESPACE, counter_totals, run_to_completion, write_result


class _ToKeyedFrame(beam.DoFn):
    """RecordBatch -> (piece, DataFrame of id + features); the key names the output file."""

    def __init__(self, columns):
        self._columns = columns
        self._rows_in = Metrics.counter(NAMESPACE, "rows_in")

    def process(self, batch):
        missing = [c for c in self._columns if c not in batch.schema.names]
        if missing:
            raise ValueError(f"scoring input lacks columns {missing}; has {batch.schema.names}")
        self._rows_in.inc(batch.num_rows)
        yield piece_of(batch) or uuid.uuid4().hex, batch.select(self._columns).to_pandas()


class _ToArrow(beam.DoFn):
    def __init__(self):
        self._rows_scored = Metrics.counter(NAMESPACE, "rows_scored")
        self._progress = ProgressReporter("scored")

    def process(self, keyed):
        piece, frame = keyed
        self._rows_scored.inc(len(frame))
        self._progress.add(len(frame))
        batch = pa.RecordBatch.from_pandas(frame, preserve_index=False)
        yield with_origin(batch, "", piece)

    def finish_bundle(self):
        self._progress.flush()


class ScoreBatches(beam.PTransform):
    """RecordBatches holding id + features -> RecordBatches of [id, prediction columns].

    Columns come from the model handler (its id_column / feature_columns),
    so there is one place that says what the model reads.
    """

    def __init__(self, model_handler: MLflowPyfuncModelHandler):
        super().__init__()
        self._handler = model_handler

    def expand(self, batches):
        return (
            batches
            | "ToPandas" >> beam.ParDo(_ToKeyedFrame(self._handler.columns))
            | "Predict" >> RunInference(KeyedModelHandler(self._handler))
            | "ToArrow" >> beam.ParDo(_ToArrow())
        )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mlbatch_beam.score", description=__doc__)
    parser.add_argument("--input", required=True, nargs="+",
                        help="pattern(s) of prepared files (mlbatch_beam.shards passes files)")
    parser.add_argument("--input-format", default="parquet", choices=INPUT_FORMATS)
    add_scoring_arguments(parser)
    add_statistics_arguments(parser)
    return checked(parser, *parser.parse_known_args(argv))


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, its columns and the output: shared with mlbatch_beam.validate_and_score."""
    parser.add_argument("--model-uri", required=True, help="models:/name/version or an artifact URI")
    add_output_arguments(parser)
    parser.add_argument("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS,
                        help="rows per model call (see mlbatch_beam.model_handler for the measurements)")
    parser.add_argument("--large-model", action="store_true",
                        help="load the model once per machine in a shared process, not once per worker process")
    parser.add_argument("--model-copies", type=int, default=None,
                        help="exactly this many model copies per machine, shared by its worker processes")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """The columns scored and the prediction files: every scoring job's (mlbatch_beam.endpoint_score too)."""
    parser.add_argument("--id-column", required=True)
    parser.add_argument("--feature-columns", required=True, help="comma-separated, in model order")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--output-format", required=True, choices=OUTPUT_FORMATS)
    parser.add_argument("--prediction-column", default="prediction")
    parser.add_argument("--prediction-output", default=None,
                        help="JSON of mlbatch_beam.outputs.PredictionOutput (kind, classes, ...); "
                             "default: one --prediction-column")
    parser.add_argument("--result-file", required=True)


def columns_and_output(args) -> tuple[list[str], PredictionOutput]:
    """--feature-columns as a list, and which columns the model's answer becomes."""
    features = [c.strip() for c in args.feature_columns.split(",") if c.strip()]
    if not features:
        raise ValueError("--feature-columns is empty")
    output = (PredictionOutput.from_json(args.prediction_output) if args.prediction_output
              else PredictionOutput(column=args.prediction_column))
    return features, output


def checked(parser: argparse.ArgumentParser, args, beam_args):
    if args.model_copies is not None and args.model_copies < 1:
        parser.error(f"--model-copies must be at least 1, got {args.model_copies}")
    return args, beam_args


def model_handler_from_args(args) -> MLflowPyfuncModelHandler:
    """The ModelHandler the CLI arguments describe (model, columns, sharing across processes)."""
    features, output = columns_and_output(args)
    return MLflowPyfuncModelHandler(
        args.model_uri, args.id_column, features, output=output,
        large_model=args.large_model, model_copies=args.model_copies)


def run(argv=None) -> dict:
    """Run the scoring pipeline to completion and return (and write) its counts."""
    args, beam_args = parse_args(argv)
    handler = model_handler_from_args(args)
    options = pipeline_options(beam_args)  # also sets up the filesystems (S3 endpoint) for the match below
    match_paths(args.input)  # fail fast, before starting workers
    edges = read_edges(args.statistics_edges)
    pipeline = beam.Pipeline(options=options)
    batches = pipeline | "Read" >> ReadArrowBatches(args.input, args.input_format, args.batch_rows)
    scored = batches | "Score" >> ScoreBatches(handler)
    _ = scored | "Write" >> WriteArrowBatches(args.output_dir, args.output_format, prefix="predictions")
    if args.statistics_file:  # the quality gate's statistics, from the same pass (mlbatch_beam.quality)
        _ = (batches, scored) | "Statistics" >> RunStatistics(
            args.statistics_file, handler.feature_columns, args.id_column, edges)
    result = run_to_completion(pipeline, "score")
    counts = counter_totals(result, ["rows_in", "rows_scored", "model_loads"])
    return write_result(args.result_file, {
        **counts, "output_dir": args.output_dir,
        **({"statistics_uri": args.statistics_file} if args.statistics_file else {})})


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    # Beam, MLflow and sklearn leave millions of long-lived objects from their imports; freezing
    # them keeps the garbage collector from rescanning them during the run and at exit (~0.8 s
    # of a 1M-row job here).
    gc.freeze()
    print(json.dumps(run()), flush=True)
    gc.freeze()
