"""SageMaker Batch Transform's data plane, as the AWS docs describe it, posting to a real model server.

moto accepts CreateTransformJob but computes nothing. `run_transform` does what the service does with
a job's request (the CreateTransformJob fields, as moto stored them):
- every object under `TransformInput.DataSource.S3DataSource.S3Uri` (S3Prefix) is one input file;
- `SplitType` None: the whole object is one request (it must fit `MaxPayloadInMB`); `Line`: records
  are lines; RecordIO/TFRecord are not emulated (refused);
- `BatchStrategy` SingleRecord: one record per request; MultiRecord: as many lines as fit in
  `MaxPayloadInMB`, joined by newlines (a CSV header is just the first record of the first batch);
- `DataProcessing.InputFilter` (JSON/CSV records), `JoinSource` Input (JSON: the input object plus
  `SageMakerOutput`; CSV: the input line, a comma, the output line), `OutputFilter`;
- each request is POSTed to the container's /invocations with `ContentType` and `Accept`, waiting at
  most `ModelClientConfig.InvocationsTimeoutInSeconds` (default 600; the MLflow server's own limit is
  60 s, answered 504); a non-2xx answer fails the job with the service's terse FailureReason
  ("ClientError: See job logs for more information"), the container's answer going to the job's
  CloudWatch Logs (`/aws/sagemaker/TransformJobs`, stream `<job>/<instance>-<epoch>/data-log`, in
  the agent's `<time>:[sagemaker logs]: <bucket/key>: ...` lines) on the moto server;
- results are assembled per input file (`AssembleWith` Line: a newline after each output record,
  i.e. each answer, or each joined record; None: concatenated) into `<S3OutputPath>/<input key relative to the prefix>.out`.
The doc pages each rule comes from are quoted in tests/dataplane/SOURCES.md.
"""

from __future__ import annotations

import json
import re
import time

import requests


class TransformFailed(Exception):
    """The job ends `Failed` with this FailureReason."""


class ContainerRefused(TransformFailed):
    """The container answered a request with a non-2xx status: the service's FailureReason only points
    at the logs, where the agent wrote the answer."""

    REASON = "ClientError: See job logs for more information"

    def __init__(self, status: int, body: str):
        super().__init__(self.REASON)
        self.status, self.body = status, body


LOG_GROUP = "/aws/sagemaker/TransformJobs"
INSTANCE = "i-0e1a2b3c4d5e6f789"  # the one instance the emulator runs on


class JobLog:
    """The agent's data-log lines of one job (`<time>:[sagemaker logs]: ...`), written to CloudWatch Logs
    on the moto server behind `s3` when the job ends."""

    def __init__(self, request: dict):
        self.job, self.lines = request["TransformJobName"], []
        self.stream = f"{self.job}/{INSTANCE}-{int(time.time())}"
        self.instance_lines = [f"emulated instance {INSTANCE} of {self.job}"]  # the container's stdout/stderr
        self.add(f"MaxConcurrentTransforms={request.get('MaxConcurrentTransforms') or 1}, "
                 f"MaxPayloadInMB={request.get('MaxPayloadInMB') or 6}, "
                 f"BatchStrategy={'MULTI_RECORD' if (request.get('BatchStrategy') or 'MultiRecord') == 'MultiRecord' else 'SINGLE_RECORD'}")

    def add(self, message: str, source: str = "") -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000"
        self.lines.append(f"{now}:[sagemaker logs]: {source + ': ' if source else ''}{message}".rstrip())

    def refused(self, source: str, refusal: ContainerRefused) -> None:
        self.add(f"ClientError: {refusal.status}", source)
        self.add("", source)
        self.add("Message:", source)
        for line in refusal.body.splitlines() or [""]:
            self.add(line, source)

    def write(self, s3) -> None:
        import boto3

        logs = boto3.client("logs", endpoint_url=s3.meta.endpoint_url, region_name=s3.meta.region_name,
                            aws_access_key_id="testing", aws_secret_access_key="testing")
        try:
            logs.create_log_group(logGroupName=LOG_GROUP)
        except logs.exceptions.ResourceAlreadyExistsException:
            pass
        stamp = int(time.time() * 1000)
        for stream, lines in ((self.stream, self.instance_lines),
                              (self.stream + "/data-log", self.lines)):
            logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
            logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream,
                                logEvents=[{"timestamp": stamp, "message": line} for line in lines])


def _records(body: bytes, split: str, max_payload: int, key: str) -> list[bytes]:
    if split == "None":
        if len(body) > max_payload:
            raise TransformFailed(f"ClientError: {key} is {len(body)} bytes, over MaxPayloadInMB "
                                  f"({max_payload} bytes), and SplitType is None")
        return [body]
    if split == "Line":
        return [line for line in body.split(b"\n") if line.strip()]
    raise TransformFailed(f"SplitType {split} is not emulated")


def _batches(records: list[bytes], strategy: str, max_payload: int) -> list[list[bytes]]:
    if strategy == "SingleRecord":
        return [[r] for r in records]
    batches, current, size = [], [], 0
    for record in records:
        if len(record) > max_payload:
            raise TransformFailed(f"ClientError: a record of {len(record)} bytes is over MaxPayloadInMB")
        if current and size + len(record) + 1 > max_payload:
            batches.append(current)
            current, size = [], 0
        current.append(record)
        size += len(record) + 1
    return batches + ([current] if current else [])


_KEYS = re.compile(r"^\$\[((?:'[^']*',?\s*)+)\]$")
_INDEXES = re.compile(r"^\$\[([\d,\s:-]+)\]$")


def json_path(value, path: str):
    """The JSONPath subset the docs' examples use: `$`, `$.a.b`, `$['a','b']` (objects), `$[i:j]`,
    `$[i,j]` (arrays, CSV columns)."""
    if path == "$":
        return value
    if path.startswith("$.") and re.fullmatch(r"\$(\.[A-Za-z_][\w-]*)+", path):
        for part in path[2:].split("."):
            value = value[part]
        return value
    if m := _KEYS.match(path):
        keys = [k.strip().strip("'") for k in m.group(1).split(",") if k.strip()]
        return {k: value[k] for k in keys if k in value}
    if m := _INDEXES.match(path):
        spec = m.group(1).replace(" ", "")
        if ":" in spec:
            start, _, stop = spec.partition(":")
            return value[int(start) if start else None:int(stop) if stop else None]
        return [value[int(i)] for i in spec.split(",")]
    raise TransformFailed(f"ClientError: JSONPath {path!r} is not supported by this emulator")


def _is_csv(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip() == "text/csv"


def _is_json(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip() in ("application/json", "application/jsonlines")


def _filter_input(record: bytes, path: str, content_type: str | None) -> bytes:
    if path == "$":
        return record
    if _is_csv(content_type):
        return ",".join(json_path(record.decode().split(","), path)).encode()
    if _is_json(content_type):
        return json.dumps(json_path(json.loads(record), path)).encode()
    raise TransformFailed(f"ClientError: InputFilter needs CSV or JSON input, not {content_type}")


def _join_and_filter(source: bytes, output: bytes, join: str, path: str, accept: str | None) -> bytes:
    if join == "Input":
        if _is_csv(accept):
            output = source + b"," + output
        else:
            try:
                joined = json.loads(source)
            except ValueError as exc:
                raise TransformFailed(f"ClientError: JoinSource Input needs JSON input records: {exc}") from exc
            if not isinstance(joined, dict):
                joined = {"SageMakerInput": joined}
            joined["SageMakerOutput"] = json.loads(output)
            output = json.dumps(joined).encode()
    if path != "$":
        if _is_csv(accept):
            output = ",".join(json_path(output.decode().split(","), path)).encode()
        else:
            output = json.dumps(json_path(json.loads(output), path)).encode()
    return output


def _invoke(container_url: str, payload: bytes, content_type: str | None, accept: str | None,
            timeout_s: float = 600) -> bytes:
    headers = {k: v for k, v in (("Content-Type", content_type), ("Accept", accept)) if v}
    try:
        answer = requests.post(f"{container_url}/invocations", data=payload, headers=headers, timeout=timeout_s)
    except requests.Timeout:
        raise ContainerRefused(408, f"no answer within InvocationsTimeoutInSeconds ({timeout_s:g} s)") from None
    if not answer.ok:
        raise ContainerRefused(answer.status_code, answer.text)
    return answer.content


def run_transform(request: dict, s3, container_url: str) -> list[str]:
    """Run one transform job (CreateTransformJob fields) against `container_url`; returns output keys.
    The agent's log lines go to the job's CloudWatch Logs streams whatever the outcome."""
    log = JobLog(request)
    try:
        return _transform(request, s3, container_url, log)
    except ContainerRefused:
        raise
    except TransformFailed as exc:
        log.add(str(exc))
        raise
    finally:
        log.write(s3)


def _transform(request: dict, s3, container_url: str, log: JobLog) -> list[str]:
    source = request["TransformInput"]["DataSource"]["S3DataSource"]
    if source.get("S3DataType", "S3Prefix") != "S3Prefix":
        raise TransformFailed("only S3Prefix input is emulated")
    tin, tout = request["TransformInput"], request["TransformOutput"]
    split, content_type = tin.get("SplitType") or "None", tin.get("ContentType")
    strategy = request.get("BatchStrategy") or "MultiRecord"
    max_payload = int(request.get("MaxPayloadInMB") or 6) * 1024 * 1024
    accept, assemble = tout.get("Accept"), tout.get("AssembleWith") or "None"
    processing = request.get("DataProcessing") or {}
    timeout_s = (request.get("ModelClientConfig") or {}).get("InvocationsTimeoutInSeconds") or 600
    input_filter = processing.get("InputFilter") or "$"
    join, output_filter = processing.get("JoinSource") or "None", processing.get("OutputFilter") or "$"
    if join == "Input" and split == "None" and not (_is_csv(content_type) or _is_json(content_type)):
        raise TransformFailed(f"ClientError: JoinSource Input needs CSV or JSON input, not {content_type}")

    bucket, prefix = source["S3Uri"][len("s3://"):].split("/", 1)
    out_bucket, out_prefix = tout["S3OutputPath"][len("s3://"):].rstrip("/").split("/", 1)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    if not listed:
        raise TransformFailed(f"ClientError: no objects under {source['S3Uri']}")
    written = []
    for obj in sorted(listed, key=lambda o: o["Key"]):
        body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        records = _records(body, split, max_payload, obj["Key"])
        outputs: list[bytes] = []
        for batch in _batches(records, strategy, max_payload):
            payload = b"\n".join(_filter_input(r, input_filter, content_type) for r in batch)
            try:
                answer = _invoke(container_url, payload, content_type, accept, timeout_s)
            except ContainerRefused as refusal:
                log.refused(f"{bucket}/{obj['Key']}", refusal)
                raise
            if join == "Input":  # the answer must split into one output record per input record
                pieces = [p for p in answer.split(b"\n") if p.strip()] if len(batch) > 1 else [answer.strip()]
                if len(pieces) != len(batch):
                    raise TransformFailed(
                        f"ClientError: the model answered {len(pieces)} records for a mini-batch of "
                        f"{len(batch)}; JoinSource Input cannot join them")
                outputs += [_join_and_filter(r, p, join, output_filter, accept) for r, p in zip(batch, pieces)]
            else:
                outputs.append(_join_and_filter(b"", answer, join, output_filter, accept))
        assembled = b"".join(o.rstrip(b"\n") + b"\n" for o in outputs) if assemble == "Line" \
            else b"".join(outputs)
        key = f"{out_prefix}/{obj['Key'][len(prefix):].lstrip('/')}.out"
        s3.put_object(Bucket=out_bucket, Key=key, Body=assembled)
        written.append(key)
    return written
