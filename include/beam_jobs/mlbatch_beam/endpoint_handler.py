"""Scoring through a live model endpoint: micro-batches sized by rows and bytes, and Beam's
RemoteModelHandler calling an MLflow `/invocations` URL, a SageMaker real-time endpoint or a Vertex AI
endpoint with them.

Every kind gets the same body, `{"instances": [{feature: value}, ...]}`: the MLflow scoring server (and
so the MLflow image on SageMaker and Vertex) casts JSON instances to the signature's column types
(mlflow.utils.proto_json_utils `parse_instances_data`), as the Vertex batch backend relies on
(mlbatch.spec.type_contract); a `dataframe_split` body would go through pandas' own typing first.

Retries. RemoteModelHandler retries a failed `request` with exponential backoff (Beam's
`retry.with_exponential_backoff`: first wait 2.5-5 s, doubling) and throttles on its own failure rate
(ReactiveThrottler, reported as the `cumulativeThrottlingSeconds` counter). One `request` is up to
`max_in_flight` micro-batches sent at once; a retry re-sends only those that failed for a reason worth
retrying (429, 5xx, a timeout, a refused or cut connection), the answers already got are kept. What
still fails after `max_retries`, or fails for any other reason (4xx, an answer that is not the service's
shape or has the wrong number of predictions), comes back as a `Failure` with the service's reason:
the job writes those rows as dead letters, it never drops them.

Vertex is called over REST with `requests`, not through Beam's VertexAIModelHandlerJSON: that one goes
through `aiplatform.Endpoint`, which looks the endpoint up on the control plane before predicting and
cannot be pointed at a test emulator's host; the REST body and answer are the same
(`projects/P/locations/R/endpoints/E:predict`).
"""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult, RemoteModelHandler

from mlbatch_beam.outputs import PredictionOutput
from mlbatch_beam.results import NAMESPACE

KINDS = ("mlflow", "sagemaker", "vertex")
# Defaults (the spec's predict.endpoint passes its own). Bytes: each service's request limit, SageMaker's
# less headroom (6 MB, Vertex 1.5 MB); MLflow's server has no limit of its own, 50 MB keeps one request's
# JSON parse bounded. Rows: 1,000 for every kind (a natality request of ~75 KB). Measured here (mlflow
# kind, one-worker scoring server, 4 in flight, 50,000 rows, job start included, a loaded 2-core
# machine): 10 rows/request 113.7 s, 100 15.9 s, 1,000 6.1 s (8.7 s with 1 in flight), 5,000 5.0 s,
# 20,000 3.7 s. Past 1,000 the
# per-request cost (~20 ms) is no longer most of the time; bigger requests still gain some, but a
# failed one re-sends (and at worst dead-letters) more rows and holds the server longer.
DEFAULT_MAX_ROWS = 1000
DEFAULT_MAX_BYTES = {"mlflow": 50 * 1024 * 1024, "sagemaker": 6 * 1024 * 1024 - 64 * 1024,
                     "vertex": 1_500_000}
ENDPOINT_NAMESPACE = "mlbatch.endpoint"
_PREFIX, _SEP, _SUFFIX = b'{"instances": [', b", ", b"]}"


@dataclass(frozen=True)
class EndpointConfig:
    """`--endpoint-json`: which endpoint, and how requests to it are sized and retried."""

    kind: str
    url: str | None = None                  # mlflow: base URL (POST {url}/invocations)
    authorization_secret: str | None = None  # mlflow: Secret Manager version holding the Authorization header
    endpoint_name: str | None = None        # sagemaker
    region: str | None = None               # sagemaker, vertex
    endpoint_url: str | None = None         # sagemaker: runtime endpoint override (an emulator)
    endpoint_id: str | None = None          # vertex
    project: str | None = None              # vertex
    api_endpoint: str | None = None         # vertex: host override (an emulator)
    max_rows_per_request: int | None = None
    max_bytes_per_request: int | None = None
    max_in_flight: int = 4
    timeout_s: float = 60
    max_retries: int = 5

    @classmethod
    def from_json(cls, text: str) -> EndpointConfig:
        fields = json.loads(text)
        unknown = sorted(set(fields) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"--endpoint-json: unknown fields {unknown}")
        config = cls(**fields)
        needed = {"mlflow": ["url"], "sagemaker": ["endpoint_name", "region"],
                  "vertex": ["endpoint_id", "project", "region"]}.get(config.kind)
        if needed is None:
            raise ValueError(f"--endpoint-json: kind {config.kind!r}; expected one of {KINDS}")
        missing = [f for f in needed if not getattr(config, f)]
        if missing:
            raise ValueError(f"--endpoint-json: kind {config.kind} needs {missing}")
        if config.rows_limit < 1 or config.bytes_limit < 64 or config.max_in_flight < 1 or config.max_retries < 0:
            raise ValueError(f"--endpoint-json: limits must be positive: {fields}")
        return config

    @property
    def rows_limit(self) -> int:
        return self.max_rows_per_request or DEFAULT_MAX_ROWS

    @property
    def bytes_limit(self) -> int:
        return self.max_bytes_per_request or DEFAULT_MAX_BYTES[self.kind]


@dataclass
class MicroBatch:
    """One request: its rows (id + features, with the input batch's origin metadata) and its body."""

    key: str      # the input batch's piece: results are joined back per input batch
    index: int    # the request's place within it
    rows: pa.RecordBatch
    body: bytes = b""


@dataclass
class Failure:
    """Why a micro-batch was not scored: `code` names the kind of failure (counted, a dead letter's
    rule), `message` is the service's own words, one line."""

    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass
class Scored:
    columns: dict[str, Any]                 # published prediction column -> values
    served_by: str | None = None            # what the endpoint said served it (JSON text), if it says


class RequestFailed(Exception):
    def __init__(self, failure: Failure):
        super().__init__(str(failure))
        self.failure = failure


class Transient(RequestFailed):
    """A failure worth retrying (throttled, unavailable, timed out, connection lost)."""


class Permanent(RequestFailed):
    """A failure the same request would meet again (a 4xx other than 429, an answer not the service's)."""


def micro_batches(batch: pa.RecordBatch, key: str, features: list[str], max_rows: int,
                  max_bytes: int) -> tuple[list[MicroBatch], list[tuple[int, Failure]]]:
    """Split one input batch into requests of at most max_rows rows whose body stays within max_bytes.
    A row that alone encodes over max_bytes cannot be sent: it comes back as (row index, Failure)."""
    encoded = [json.dumps(r).encode() for r in batch.select(features).to_pylist()]
    fixed = len(_PREFIX) + len(_SUFFIX)
    out, too_big, start, size = [], [], None, fixed
    for i, row in enumerate(encoded):
        if fixed + len(row) > max_bytes:
            too_big.append((i, Failure("too_big", f"the row encodes to {fixed + len(row)} bytes, over "
                                                  f"max_bytes_per_request ({max_bytes})")))
            if start is not None:
                out.append(_request(batch, key, len(out), start, i, encoded))
            start, size = None, fixed
            continue
        grown = size + len(row) + (len(_SEP) if start is not None else 0)
        if start is not None and (i - start >= max_rows or grown > max_bytes):
            out.append(_request(batch, key, len(out), start, i, encoded))
            start, grown = None, fixed + len(row)
        if start is None:
            start = i
        size = grown
    if start is not None:
        out.append(_request(batch, key, len(out), start, len(encoded), encoded))
    return out, too_big


def _request(batch, key, index, start, stop, encoded) -> MicroBatch:
    return MicroBatch(key, index, batch.slice(start, stop - start), _PREFIX + _SEP.join(encoded[start:stop]) + _SUFFIX)


def _one_line(text: str, limit: int = 1000) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit] + "..."


def _http_failure(status: int, message: str) -> Exception:
    failure = Failure(str(status), _one_line(message))
    return Transient(failure) if status == 429 or status >= 500 else Permanent(failure)


class _Client:
    """One endpoint's caller, shared by the worker's threads: `call(body) -> (predictions, served_by)`."""

    def __init__(self, config: EndpointConfig):
        self.config = config
        self.pool = ThreadPoolExecutor(max_workers=config.max_in_flight, thread_name_prefix="endpoint")
        self.pending: dict[tuple, dict] = {}  # a request's answers kept across its retries
        self.lock = threading.Lock()
        self._local = threading.local()

    def call(self, body: bytes) -> tuple[list, str | None]:
        raise NotImplementedError

    def session(self):
        import requests

        if getattr(self._local, "session", None) is None:
            self._local.session = requests.Session()
        return self._local.session

    def post_json(self, url: str, body: bytes, headers: dict) -> dict:
        import requests

        try:
            answer = self.session().post(url, data=body, headers={"Content-Type": "application/json", **headers},
                                         timeout=self.config.timeout_s)
        except requests.Timeout as exc:
            raise Transient(Failure("timeout", f"no answer within {self.config.timeout_s:g} s: {exc}")) from None
        except requests.ConnectionError as exc:
            raise Transient(Failure("connection", _one_line(exc))) from None
        if not answer.ok:
            raise _http_failure(answer.status_code, _error_message(answer.text))
        return _json_answer(answer.content)


def _error_message(text: str) -> str:
    """The service's message from its error body (Google's {"error": {...}}, MLflow's {"message"}), else the text."""
    try:
        body = json.loads(text)
    except ValueError:
        return text
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        status = f"{inner['status']}: " if isinstance(inner.get("status"), str) else ""
        if inner.get("message"):
            return status + str(inner["message"])
    return text


def _json_answer(content: bytes) -> dict:
    try:
        answer = json.loads(content)
    except ValueError as exc:
        raise Permanent(Failure("malformed", f"the answer is not JSON ({exc}): {content[:200]!r}")) from None
    if not isinstance(answer, dict) or not isinstance(answer.get("predictions"), list):
        raise Permanent(Failure("malformed", f"the answer has no predictions list: {content[:200]!r}"))
    return answer


class _MLflowClient(_Client):
    def __init__(self, config: EndpointConfig):
        super().__init__(config)
        self.auth = os.environ.get("MLBATCH_ENDPOINT_AUTHORIZATION")
        if not self.auth and config.authorization_secret:  # read once per worker, when the model "loads"
            self.auth = read_secret(config.authorization_secret)

    def call(self, body):
        answer = self.post_json(self.config.url.rstrip("/") + "/invocations", body,
                                {"Authorization": self.auth} if self.auth else {})
        return answer["predictions"], None


def read_secret(name: str) -> str:
    """A Secret Manager secret version's text, read with the process's own Google credentials (on
    Dataflow the workers' service account: nothing secret is in the pipeline options)."""
    try:
        from google.cloud import secretmanager
    except ImportError:
        raise RuntimeError(f"authorization_secret {name}: google-cloud-secret-manager is not installed where "
                           "the job runs (worker-requirements.txt lists it)") from None
    response = secretmanager.SecretManagerServiceClient().access_secret_version(name=name)
    return response.payload.data.decode().strip()


class _VertexClient(_Client):
    def call(self, body):
        c = self.config
        host = (c.api_endpoint or f"https://{c.region}-aiplatform.googleapis.com").rstrip("/")
        url = f"{host}/v1/projects/{c.project}/locations/{c.region}/endpoints/{c.endpoint_id}:predict"
        answer = self.post_json(url, body, {"Authorization": f"Bearer {self._token()}"})
        served = {k: answer.get(k) for k in ("model", "modelVersionId", "deployedModelId") if answer.get(k)}
        return answer["predictions"], json.dumps(served, sort_keys=True) if served else None

    def _token(self) -> str:
        token = os.environ.get("MLBATCH_ENDPOINT_ACCESS_TOKEN")
        if token:
            return token
        with self.lock:
            if getattr(self, "_credentials", None) is None:
                import google.auth

                self._credentials, _ = google.auth.default(
                    scopes=["https://www.googleapis.com/auth/cloud-platform"])
            if not self._credentials.valid:
                import google.auth.transport.requests

                self._credentials.refresh(google.auth.transport.requests.Request())
            return self._credentials.token


_SAGEMAKER_TRANSIENT = {"ThrottlingException", "ServiceUnavailable", "InternalFailure",
                        "ModelNotReadyException", "InternalDependencyException"}


class _SageMakerClient(_Client):
    def __init__(self, config):
        super().__init__(config)
        import boto3
        from botocore.config import Config

        # Beam retries (and counts) the calls: botocore's own retries are off.
        self.runtime = boto3.client("sagemaker-runtime", region_name=config.region,
                                    endpoint_url=config.endpoint_url,
                                    config=Config(retries={"total_max_attempts": 1}, read_timeout=config.timeout_s,
                                                  connect_timeout=min(config.timeout_s, 10),
                                                  max_pool_connections=config.max_in_flight))

    def call(self, body):
        from botocore.exceptions import ClientError, HTTPClientError, ReadTimeoutError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        try:
            answer = self.runtime.invoke_endpoint(EndpointName=self.config.endpoint_name, Body=body,
                                                  ContentType="application/json", Accept="application/json")
        except ReadTimeoutError as exc:
            raise Transient(Failure("timeout", f"no answer within {self.config.timeout_s:g} s: {exc}")) from None
        except (BotoConnectionError, HTTPClientError) as exc:  # refused, reset, closed before the answer
            raise Transient(Failure("connection", _one_line(exc))) from None
        except ClientError as exc:
            error, status = exc.response.get("Error", {}), exc.response["ResponseMetadata"].get("HTTPStatusCode", 0)
            code = error.get("Code", "")
            original = exc.response.get("OriginalStatusCode")
            failure = Failure(f"{code} ({status})", _one_line(error.get("Message", str(exc))))
            retry = code in _SAGEMAKER_TRANSIENT or status == 429 or status >= 500 or (
                code == "ModelError" and original is not None and (int(original) == 429 or int(original) >= 500))
            raise (Transient if retry else Permanent)(failure) from None
        return _json_answer(answer["Body"].read())["predictions"], answer.get("InvokedProductionVariant")


CLIENTS = {"mlflow": _MLflowClient, "sagemaker": _SageMakerClient, "vertex": _VertexClient}


class EndpointModelHandler(RemoteModelHandler[MicroBatch, PredictionResult, _Client]):
    """RunInference on micro-batches: each `request` sends up to max_in_flight of them concurrently and
    returns, per micro-batch, `Scored` or (after the last retry, or at once for what retrying cannot
    fix) `Failure`."""

    def __init__(self, config: EndpointConfig, output: PredictionOutput):
        super().__init__(namespace=ENDPOINT_NAMESPACE, num_retries=config.max_retries,
                         retry_filter=lambda exc: isinstance(exc, Transient))
        self.config, self.output = config, output
        self._requests = Metrics.counter(NAMESPACE, "requests")
        self._retries = Metrics.counter(NAMESPACE, "retries")

    def create_client(self) -> _Client:
        return CLIENTS[self.config.kind](self.config)

    def batch_elements_kwargs(self):
        # a fixed group of max_in_flight requests per call (BatchElements would start at its minimum and
        # grow by timing); a bundle's last group may be smaller
        return {"min_batch_size": self.config.max_in_flight, "max_batch_size": self.config.max_in_flight}

    def request(self, batch: Sequence[MicroBatch], model: _Client, inference_args=None):
        key = tuple((m.key, m.index) for m in batch)
        with model.lock:
            state = model.pending.setdefault(key, {"tries": 0, "done": {}})
        state["tries"] += 1
        todo = [m for m in batch if (m.key, m.index) not in state["done"]]
        self._requests.inc(len(todo))
        if state["tries"] > 1:
            self._retries.inc(len(todo))
        futures = [(m, model.pool.submit(self._one, model, m)) for m in todo]
        retry = None
        for m, future in futures:
            try:
                state["done"][(m.key, m.index)] = future.result()
            except Transient as exc:
                if state["tries"] <= self.config.max_retries:
                    retry = retry or exc
                else:
                    state["done"][(m.key, m.index)] = exc.failure
            except Permanent as exc:
                state["done"][(m.key, m.index)] = exc.failure
            except Exception as exc:  # noqa: BLE001 - one request's surprise must not sink its neighbours' answers
                state["done"][(m.key, m.index)] = Failure("error", _one_line(f"{type(exc).__name__}: {exc}"))
        if retry is not None:
            raise retry  # RemoteModelHandler waits (backoff) and calls request again
        with model.lock:
            model.pending.pop(key, None)
        return [PredictionResult(m, state["done"][(m.key, m.index)]) for m in batch]

    def _one(self, client: _Client, micro: MicroBatch):
        predictions, served_by = client.call(micro.body)
        try:
            columns = self.output.columns_of(predictions, micro.rows.num_rows)
        except ValueError as exc:  # a wrong count or shape: the answer is not for these rows
            raise Permanent(Failure("malformed", _one_line(exc))) from None
        return Scored(columns, served_by)

    def get_num_bytes(self, batch: Sequence[MicroBatch]) -> int:
        return sum(len(m.body) for m in batch)

    def get_metrics_namespace(self) -> str:
        return ENDPOINT_NAMESPACE

