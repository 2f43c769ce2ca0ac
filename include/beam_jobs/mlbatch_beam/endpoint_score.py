"""The endpoint job (`predict.backend: endpoint`): raw input -> validate -> score through a live model
endpoint -> prediction files, rejected rows and rows the endpoint failed on written as dead letters.

Like mlbatch_beam.validate_and_score (prep's read_and_validate, the same prediction files and id column
through mlbatch_beam.outputs, so publish reads them unchanged), but each valid batch is split into
micro-batches (rows and encoded bytes, mlbatch_beam.endpoint_handler) that Beam's RunInference sends
through a RemoteModelHandler. A micro-batch that still fails after the retries is never dropped: its
rows go to --dead-letter-dir as `endpoint-failed-*.jsonl`, in prep's record shape ({"row", "reason",
"rule", "source"}), the reason being the service's (status or error code, and its message). Answers
are joined back per input batch (one prediction file per input batch, not per request).

Result: rows_in, rows_valid, rows_rejected (prep's rules), rows_scored, rows_failed (the endpoint's),
requests, retries, throttled_ms, endpoint_model (what the endpoint said served the rows: Vertex's
{model, modelVersionId, deployedModelId}, SageMaker's production variant; null when it does not say,
as MLflow's server; a list when several answered). rows_in = rows_scored + rows_rejected + rows_failed.

    python -m mlbatch_beam.endpoint_score --input 'in/*.parquet' --input-format parquet \
        --schema-json '{...}' --dead-letter-dir rejected/ --id-column id --feature-columns a,b \
        --output-dir out/ --output-format parquet --result-file result.json \
        --endpoint-json '{"kind": "mlflow", "url": "http://127.0.0.1:5001"}'

Secrets are not arguments: MLBATCH_ENDPOINT_AUTHORIZATION (mlflow: the Authorization header),
MLBATCH_ENDPOINT_ACCESS_TOKEN (vertex; else Application Default Credentials), the AWS chain (sagemaker).
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import uuid

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference

from mlbatch_beam.arrow_io import (
    DeadLetterWrite, WriteArrowBatches, match_paths, piece_of, source_of, with_origin, write_bytes,
)
from mlbatch_beam.endpoint_handler import (
    EndpointConfig, EndpointModelHandler, Failure, micro_batches,
)
from mlbatch_beam.model_handler import DEFAULT_BATCH_ROWS
from mlbatch_beam.options import pipeline_options
from mlbatch_beam.outputs import PredictionOutput
from mlbatch_beam.prep import read_and_validate
from mlbatch_beam.quality.combine import RunStatistics, add_statistics_arguments, read_edges
from mlbatch_beam.results import NAMESPACE, counter_totals, run_to_completion, write_result
from mlbatch_beam.schema import FeatureSchema
from mlbatch_beam.score import add_output_arguments, columns_and_output
from mlbatch_beam.validate import _json_safe
from mlbatch_beam.validate_and_score import add_raw_input_arguments

FAILED, SERVED = "failed", "served"


def dead_letters(rows: pa.RecordBatch, failure: Failure, source: str) -> list[dict]:
    """Prep's dead-letter record for each row the endpoint did not score."""
    return [{"row": _json_safe(row), "reason": f"endpoint: {failure}", "rule": f"endpoint: {failure.code}",
             "source": source} for row in rows.to_pylist()]


class _ToRequests(beam.DoFn):
    def __init__(self, config: EndpointConfig, columns: list[str], features: list[str]):
        self._config, self._columns, self._features = config, columns, features
        self._failed = Metrics.counter(NAMESPACE, "rows_failed")

    def process(self, batch):
        key = piece_of(batch) or uuid.uuid4().hex
        rows = with_origin(batch.select(self._columns), source_of(batch), key)
        requests, too_big = micro_batches(rows, key, self._features, self._config.rows_limit,
                                          self._config.bytes_limit)
        yield from requests
        for index, failure in too_big:
            self._failed.inc()
            yield beam.pvalue.TaggedOutput(FAILED, (f"{key}#row{index}", dead_letters(
                rows.slice(index, 1), failure, source_of(batch))))


class _Sort(beam.DoFn):
    """PredictionResult(micro-batch, Scored | Failure) -> (input piece, (index, prediction batch)), or a
    dead-letter file's (piece, records), and what the endpoint said served it."""

    def __init__(self, id_column: str):
        self._id_column = id_column
        self._scored = Metrics.counter(NAMESPACE, "rows_scored")
        self._failed = Metrics.counter(NAMESPACE, "rows_failed")

    def process(self, result):
        micro, outcome = result.example, result.inference
        rows = micro.rows
        if isinstance(outcome, Failure):
            self._failed.inc(rows.num_rows)
            yield beam.pvalue.TaggedOutput(FAILED, (f"{micro.key}#{micro.index}",
                                                    dead_letters(rows, outcome, source_of(rows))))
            return
        self._scored.inc(rows.num_rows)
        if outcome.served_by:
            yield beam.pvalue.TaggedOutput(SERVED, outcome.served_by)
        batch = pa.RecordBatch.from_pydict({self._id_column: rows.column(self._id_column), **outcome.columns})
        yield micro.key, (micro.index, batch)


class _Unexpected(beam.DoFn):
    """RunInference's own dead letters ((micro-batches, exception) for an error no retry handled, a bug):
    written as the endpoint's failures so no row is lost."""

    def __init__(self):
        self._failed = Metrics.counter(NAMESPACE, "rows_failed")

    def process(self, bad):
        batch, error = bad
        message = error[1] if isinstance(error, tuple) and len(error) > 1 else error
        failure = Failure("error", " ".join(str(message).split())[:1000])
        for micro in batch:
            self._failed.inc(micro.rows.num_rows)
            yield f"{micro.key}#{micro.index}", dead_letters(micro.rows, failure, source_of(micro.rows))


def _joined(keyed) -> pa.RecordBatch:
    """An input batch's answered micro-batches, in their order, as one batch named after the input piece."""
    key, parts = keyed
    table = pa.Table.from_batches([b for _, b in sorted(parts, key=lambda p: p[0])]).combine_chunks()
    return with_origin(table.to_batches()[0], "", key)


class ScoreThroughEndpoint(beam.PTransform):
    """Valid batches (id + features) -> prediction batches; tagged outputs `failed` (dead-letter files'
    (piece, records)) and `served` (distinct descriptions of what served the rows)."""

    def __init__(self, config: EndpointConfig, id_column: str, features: list[str], output: PredictionOutput):
        super().__init__()
        self._config, self._id_column, self._features, self._output = config, id_column, features, output

    def expand(self, batches):
        split = batches | "ToRequests" >> beam.ParDo(_ToRequests(
            self._config, [self._id_column, *self._features], self._features)).with_outputs(FAILED, main="requests")
        answered, dlq = split.requests | "Call" >> RunInference(
            EndpointModelHandler(self._config, self._output)).with_exception_handling()
        sorted_ = answered | "Sort" >> beam.ParDo(_Sort(self._id_column)).with_output_types(
            tuple[str, tuple]).with_outputs(FAILED, SERVED, main="scored")
        unexpected = dlq.failed_inferences | "Unexpected" >> beam.ParDo(_Unexpected())
        predictions = (sorted_.scored | "GroupByInputBatch" >> beam.GroupByKey()
                       | "Join" >> beam.Map(_joined))
        failed = ((split[FAILED], sorted_[FAILED], unexpected) | "AllFailed" >> beam.Flatten())
        served = sorted_[SERVED] | "DistinctServed" >> beam.Distinct()
        return predictions, failed, served


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mlbatch_beam.endpoint_score",
                                     description=__doc__.split("\n")[0])
    add_raw_input_arguments(parser)
    add_output_arguments(parser)
    parser.add_argument("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS,
                        help="rows per read batch (each is split into requests by the endpoint's limits)")
    parser.add_argument("--endpoint-json", required=True,
                        help="mlbatch_beam.endpoint_handler.EndpointConfig as JSON (no secrets)")
    add_statistics_arguments(parser)
    return parser.parse_known_args(argv)


def run(argv=None) -> dict:
    """Run the pipeline to completion and return (and write) its counts."""
    args, beam_args = parse_args(argv)
    schema = FeatureSchema.from_json(args.schema_json)
    config = EndpointConfig.from_json(args.endpoint_json)
    features, output = columns_and_output(args)
    options = pipeline_options(beam_args)  # also sets up the filesystems (S3 endpoint) for the match below
    match_paths(args.input)  # fail fast, before starting workers
    served_file = f"{args.result_file}.served-{uuid.uuid4().hex}.json"  # read back and removed below
    edges = read_edges(args.statistics_edges)
    pipeline = beam.Pipeline(options=options)
    valid = read_and_validate(pipeline, args, schema)
    predictions, failed, served = valid | "Score" >> ScoreThroughEndpoint(config, args.id_column, features, output)
    if args.statistics_file:  # the quality gate's statistics, from the same pass (mlbatch_beam.quality)
        _ = (valid, predictions) | "Statistics" >> RunStatistics(args.statistics_file, features, args.id_column, edges)
    _ = predictions | "Write" >> WriteArrowBatches(args.output_dir, args.output_format, prefix="predictions")
    _ = failed | "WriteFailed" >> DeadLetterWrite(args.dead_letter_dir, prefix="endpoint-failed")
    _ = (served | "AllServed" >> beam.combiners.ToList()
         | "WriteServed" >> beam.Map(lambda found: write_bytes(served_file, json.dumps(sorted(found)).encode())))
    result = run_to_completion(pipeline, "endpoint_score")
    counts = {**counter_totals(result, ["rows_in", "rows_valid", "rows_rejected"], step="Prepare"),
              **counter_totals(result, ["rows_scored", "rows_failed", "requests", "retries"])}
    throttled = counter_totals(result, ["cumulativeThrottlingSeconds"])["cumulativeThrottlingSeconds"]
    return write_result(args.result_file, {
        **counts, "throttled_ms": throttled * 1000, "endpoint_model": _served(served_file),
        "output_dir": args.output_dir, "dead_letter_dir": args.dead_letter_dir,
        **({"statistics_uri": args.statistics_file} if args.statistics_file else {})})


def _served(path: str):
    """What the endpoint reported serving: one description (parsed JSON or the variant's name), a list of
    them when several answered, None when it never said."""
    with FileSystems.open(path) as fh:
        found = json.loads(fh.read())
    FileSystems.delete([path])
    parsed = [_maybe_json(f) for f in found]
    return None if not parsed else parsed[0] if len(parsed) == 1 else parsed


def _maybe_json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    gc.freeze()  # as in mlbatch_beam.score: the imports' objects are not rescanned during the run
    print(json.dumps(run()), flush=True)
    gc.freeze()
