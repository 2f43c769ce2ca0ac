"""The prep job: read raw input, validate it, write model-ready files.

Valid rows go to ``--output-dir`` (parquet with declared types, or flat
JSON Lines that cloud batch-prediction services read); rejected rows go to
``--dead-letter-dir`` as JSON Lines with a reason each; counts go to the
``--result-file`` JSON so Airflow can decide whether to continue.
"""
from __future__ import annotations

import argparse
import json
import logging

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

from mlbatch_beam.arrow_io import (
    INPUT_FORMATS, DeadLetterWrite, ReadArrowBatches, WriteArrowBatches,
    match_paths, piece_of, source_of, with_origin,
)
from mlbatch_beam.options import pipeline_options
from mlbatch_beam.progress import ProgressReporter
from mlbatch_beam.quality.combine import RunStatistics, add_statistics_arguments, read_edges
from mlbatch_beam.results import NAMESPACE, counter_totals, run_to_completion, write_result
from mlbatch_beam.schema import FeatureSchema
from mlbatch_beam.validate import split_valid

PREP_OUTPUT_FORMATS = ("parquet", "jsonl")


class _Validate(beam.DoFn):
    def __init__(self, schema: FeatureSchema):
        self._schema = schema
        self._rows_in = Metrics.counter(NAMESPACE, "rows_in")
        self._rows_valid = Metrics.counter(NAMESPACE, "rows_valid")
        self._rows_rejected = Metrics.counter(NAMESPACE, "rows_rejected")
        self._progress = ProgressReporter("read")

    def process(self, batch):
        source = source_of(batch)
        valid, rejected = split_valid(batch, self._schema, source)
        self._rows_in.inc(batch.num_rows)
        self._rows_valid.inc(valid.num_rows)
        self._rows_rejected.inc(len(rejected))
        self._progress.add(batch.num_rows)
        if valid.num_rows:
            yield with_origin(valid, source, piece_of(batch))
        if rejected:  # all of one batch's rejects together: their file is named after the batch
            yield beam.pvalue.TaggedOutput(PrepareInput.REJECTED, (piece_of(batch), rejected))

    def finish_bundle(self):
        self._progress.flush()


class PrepareInput(beam.PTransform):
    """RecordBatches -> tagged outputs ``valid`` (typed batches) and ``rejected``
    ((piece, [rejected dicts]) per input batch that had any)."""

    VALID = "valid"
    REJECTED = "rejected"

    def __init__(self, schema: FeatureSchema):
        super().__init__()
        self._schema = schema

    def expand(self, batches):
        return batches | "Validate" >> beam.ParDo(_Validate(self._schema)).with_outputs(
            self.REJECTED, main=self.VALID)


def csv_column_types(schema: FeatureSchema) -> dict[str, pa.DataType]:
    """Read schema columns from CSV as text so validation decides per row."""
    columns = schema.feature_names + ([schema.id_column] if schema.id_type else [])
    return {name: pa.string() for name in columns}


def read_and_validate(pipeline, args, schema: FeatureSchema):
    """Read --input, validate it, write the rejected rows to --dead-letter-dir; returns the valid
    batches (what this job writes as prepared files, and mlbatch_beam.validate_and_score scores)."""
    batches = pipeline | "Read" >> ReadArrowBatches(
        args.input, args.input_format, args.batch_rows,
        csv_column_types=csv_column_types(schema))
    prepared = batches | "Prepare" >> PrepareInput(schema)
    _ = prepared[PrepareInput.REJECTED] | "WriteRejected" >> DeadLetterWrite(args.dead_letter_dir)
    return prepared[PrepareInput.VALID]


def build(pipeline, args, schema: FeatureSchema) -> None:
    valid = read_and_validate(pipeline, args, schema)
    _ = valid | "WriteValid" >> WriteArrowBatches(args.output_dir, args.output_format, prefix="part")
    if getattr(args, "statistics_file", None):  # the quality gate's feature statistics, in this pass
        _ = (valid,) | "Statistics" >> RunStatistics(args.statistics_file, [f.name for f in schema.features],
                                                     schema.id_column, read_edges(args.statistics_edges))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mlbatch_beam.prep", description=__doc__)
    parser.add_argument("--input", required=True, nargs="+",
                        help="file pattern(s), e.g. gs://bucket/in/*.parquet (mlbatch_beam.shards passes files)")
    parser.add_argument("--input-format", required=True, choices=INPUT_FORMATS)
    parser.add_argument("--schema-json", required=True, help="FeatureSchema as JSON text")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--output-format", required=True, choices=PREP_OUTPUT_FORMATS)
    parser.add_argument("--dead-letter-dir", required=True)
    parser.add_argument("--result-file", required=True)
    parser.add_argument("--batch-rows", type=int, default=65536)
    add_statistics_arguments(parser)
    return parser.parse_known_args(argv)


def run(argv=None) -> dict:
    """Run the prep pipeline to completion and return (and write) its counts."""
    args, beam_args = parse_args(argv)
    schema = FeatureSchema.from_json(args.schema_json)
    options = pipeline_options(beam_args)  # also sets up the filesystems (S3 endpoint) for the match below
    match_paths(args.input)  # fail fast, before starting workers
    pipeline = beam.Pipeline(options=options)
    build(pipeline, args, schema)
    result = run_to_completion(pipeline, "prep")
    counts = counter_totals(result, ["rows_in", "rows_valid", "rows_rejected"])
    return write_result(args.result_file, {
        **counts,
        "output_dir": args.output_dir,
        "dead_letter_dir": args.dead_letter_dir,
        **({"statistics_uri": args.statistics_file} if args.statistics_file else {}),
    })


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    print(json.dumps(run()))
