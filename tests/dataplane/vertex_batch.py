"""Vertex AI batch prediction's data plane for custom containers, as Google documents it, posting to a
real model server.

`run_batch_prediction(job, model, gcs, container_url)` takes the real `BatchPredictionJob` and `Model`
protos the backend built and:
- reads every `input_config.gcs_source.uris` object (`instances_format` jsonl: one JSON value per line;
  csv: a header line, then rows);
- turns each line into the instance the model gets (`instance_config`): `key_field` is taken out and
  comes back as `key`; `included_fields` / `excluded_fields` select fields; `instance_type` object or
  array (array from JSON objects needs `included_fields` for the order; csv defaults to array);
- checks the container's `health_route` first (must answer 200), then POSTs
  `{"instances": [...]}` batches (`manual_batch_tuning_parameters.batch_size`, default 64) to its
  `predict_route`; the answer must be `{"predictions": [...]}` with one prediction per instance;
- writes, under `<output_uri_prefix>/prediction-<model display name>-<create time>/`,
  `prediction.results-NNNNN-of-MMMMM` (one per input file) with `{"instance"|"key", "prediction"}`
  lines, and `prediction.errors_stats-00000-of-00001` with the failed instances, each followed by an
  `error` {code, message}.
Returns (output directory, succeeded count, failed count). The doc pages are quoted in
tests/dataplane/SOURCES.md.
"""

from __future__ import annotations

import csv
import io
import json

import requests


class HealthCheckFailed(Exception):
    pass


def _parse_lines(data: bytes, fmt: str) -> list:
    if fmt == "jsonl":
        return [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(data.decode())))
        header, body = rows[0], rows[1:]
        return [dict(zip(header, (_csv_value(v) for v in row))) for row in body]
    raise ValueError(f"instances_format {fmt!r} is not emulated")


def _csv_value(text: str):
    try:
        return json.loads(text)  # numbers and true/false as JSON would read them
    except ValueError:
        return text


def to_instance(line, config, fmt: str):
    """One input line -> (key or None, instance sent to the model)."""
    key = None
    if not isinstance(line, dict):
        return None, line
    line = dict(line)
    if config.key_field:
        key = line.pop(config.key_field)
    if config.included_fields:
        line = {f: line[f] for f in config.included_fields}
    for field in config.excluded_fields:
        line.pop(field, None)
    instance_type = config.instance_type or ("array" if fmt == "csv" else "object")
    if instance_type == "array":
        if fmt == "jsonl" and not config.included_fields:
            raise ValueError("instance_type array from JSON objects needs included_fields for the order")
        return key, list(line.values())
    return key, line


def _gcs_objects(gcs, uri: str) -> list[tuple[str, bytes]]:
    bucket, name = uri[len("gs://"):].split("/", 1)
    if name.endswith("*"):
        blobs = sorted(gcs.list_blobs(bucket, prefix=name[:-1]), key=lambda b: b.name)
    else:
        blobs = [gcs.bucket(bucket).blob(name)]
    return [(f"gs://{bucket}/{b.name}", b.download_as_bytes()) for b in blobs]


def run_batch_prediction(job, model, gcs, container_url: str, served_port: int = 8080) -> tuple[str, int, int]:
    """`container_url` is where the image's server listens; `served_port` the port it listens on
    inside the container (the MLflow image: 8080). Vertex sends to the first declared port (8080 when
    none is declared)."""
    spec = model.container_spec
    declared = spec.ports[0].container_port if spec.ports else 8080
    if declared != served_port:
        raise HealthCheckFailed(f"the container spec declares port {declared}, the image listens on "
                                f"{served_port}: no health check ever succeeds")
    health = requests.get(container_url + spec.health_route, timeout=30)
    if health.status_code != 200:
        raise HealthCheckFailed(f"health route {spec.health_route} answered {health.status_code}")
    fmt, config = job.input_config.instances_format, job.instance_config
    batch_size = job.manual_batch_tuning_parameters.batch_size or 64
    created = job.create_time.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    out_dir = f"{job.output_config.gcs_destination.output_uri_prefix.rstrip('/')}/" \
              f"prediction-{model.display_name}-{created}"
    inputs = [obj for uri in job.input_config.gcs_source.uris for obj in _gcs_objects(gcs, uri)]
    results, errors = [], []
    for _, data in inputs:
        lines = []
        pairs = [to_instance(line, config, fmt) for line in _parse_lines(data, fmt)]
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            answer = requests.post(container_url + spec.predict_route, timeout=300,
                                   json={"instances": [instance for _, instance in chunk]})
            predictions = answer.json().get("predictions") if answer.ok else None
            ok = isinstance(predictions, list) and len(predictions) == len(chunk)
            for i, (key, instance) in enumerate(chunk):
                line = {"key": key} if config.key_field else {"instance": instance}
                if ok:
                    lines.append(json.dumps({**line, "prediction": predictions[i]}))
                else:
                    message = answer.text if not answer.ok else "predictions missing or miscounted"
                    errors.append(json.dumps({**line, "error": {"code": 3 if answer.status_code == 400
                                                                else 13, "message": message}}))
        results.append(lines)
    bucket_name, prefix = out_dir[len("gs://"):].split("/", 1)
    bucket = gcs.bucket(bucket_name)
    for i, lines in enumerate(results):
        bucket.blob(f"{prefix}/prediction.results-{i:05d}-of-{len(results):05d}").upload_from_string(
            "".join(line + "\n" for line in lines))
    bucket.blob(f"{prefix}/prediction.errors_stats-00000-of-00001").upload_from_string(
        "".join(line + "\n" for line in errors))
    return out_dir, sum(map(len, results)), len(errors)
