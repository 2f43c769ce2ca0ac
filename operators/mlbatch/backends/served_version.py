"""Which model version a live endpoint serves (`backend: endpoint`), learnt before any row is scored.

The run pinned one registry version (resolve_model); a partition scored by another version would be
recorded under the wrong one. So predict asks first, and fails (`ServedVersionError`, not retried) when
the endpoint serves another version or cannot say which:
- sagemaker: DescribeEndpoint -> its EndpointConfig -> each variant's Model -> the Model's
  `mlbatch-model` tag (`<name>/<version>`, what mlbatch.backends.sagemaker tags the Models it creates).
- vertex: the endpoint's deployed models -> each Model's display name, `mlb-<name>-v<version>-<hash>`
  (mlbatch.backends.vertex.model_display_name).
- mlflow: a scoring server does not say, so a probe: PROBE_ROWS rows of the partition scored through
  the endpoint and by the pinned version loaded here, with the server's own JSON parsing. Equal answers
  mean the endpoint behaves as that version on those rows; it cannot prove it is that version (two
  versions that agree on the probe rows look alike). Different answers prove it is not; the model's
  other recent versions are then tried on the same rows to name the one that matches.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from mlbatch.errors import ServedVersionError

log = logging.getLogger(__name__)
TAG = "mlbatch-model"
PROBE_ROWS = 20
OTHER_VERSIONS = 3  # the model's most recent other versions tried when the probe disagrees
_VERTEX_DISPLAY = re.compile(r"^mlb-(?P<name>.+)-v(?P<version>\d+)-[0-9a-f]+$")


@dataclass(frozen=True)
class Served:
    version: int
    how: str  # how it was learnt, for the log, the step result and the MLflow run
    answers: tuple[str, ...] = ()  # what may say it served the rows (SageMaker variants, Vertex deployed models)


def check_served_version(spec: Any, model: dict, auth: str | None = None, storage: Any = None,
                         input_pattern: str | None = None) -> Served:
    """The version the endpoint serves; `ServedVersionError` naming both versions when it is not the
    pinned one (`model`, resolve_model's XCom)."""
    cfg = spec.predict.endpoint
    if cfg.kind == "sagemaker":
        served = _one(spec, model, sagemaker_versions(cfg, model["name"]))
    elif cfg.kind == "vertex":
        served = _one(spec, model, vertex_versions(cfg, model["name"]))
    else:
        served = probe_mlflow(spec, model, auth, storage, input_pattern)
    if served.version != model["version"]:
        raise ServedVersionError(
            f"{spec.name}: the {cfg.kind} endpoint serves {model['name']} v{served.version} ({served.how}) but "
            f"the run pinned v{model['version']} ({_pin(spec, model)}); nothing was scored. Deploy "
            f"v{model['version']} to the endpoint, or move the alias to v{served.version}")
    log.info("The %s endpoint serves %s v%s: %s", cfg.kind, model["name"], served.version, served.how)
    return served


def _pin(spec: Any, model: dict) -> str:
    alias = model.get("alias") or spec.model.alias
    return f"alias {alias!r}" if alias else "the spec's version"


def _one(spec: Any, model: dict, checked: dict[str, tuple[str, int | None]]) -> Served:
    """One version over the endpoint's variants/deployed models ({id: (what, version or None)})."""
    found = dict(checked.values())
    versions = {v for v in found.values() if v is not None}
    unknown = [what for what, v in found.items() if v is None]
    if unknown or len(versions) != 1:
        raise ServedVersionError(
            f"{spec.name}: cannot tell which version of {model['name']} the {spec.predict.endpoint.kind} endpoint "
            f"serves (the run pinned v{model['version']}): " + "; ".join(
                f"{what}: {'v' + str(v) if v is not None else f'no {TAG} version'}" for what, v in found.items())
            + f". Each served model must be one version of {model['name']} ({_how_to_mark(spec)})")
    version = versions.pop()
    return Served(version, ", ".join(found), tuple(checked))


def check_answered(spec: Any, served: Served, endpoint_model: Any) -> None:
    """After the job: what the endpoint said served the rows (the job's `endpoint_model`: SageMaker's
    production variant, Vertex's deployedModelId) must be among what was checked before scoring; a
    deployment changed during the run fails the step (`ServedVersionError`), so nothing is published."""
    if not served.answers or endpoint_model is None:
        return  # MLflow's server never says; nothing to compare
    said = endpoint_model if isinstance(endpoint_model, list) else [endpoint_model]
    ids = {str(s.get("deployedModelId")) if isinstance(s, dict) else str(s) for s in said}
    unknown = sorted(ids - set(served.answers))
    if unknown:
        raise ServedVersionError(
            f"{spec.name}: the {spec.predict.endpoint.kind} endpoint answered from {', '.join(unknown)}, not "
            f"among what served v{served.version} before scoring ({served.how}): its deployment changed "
            "during the run; nothing is published. Run again once the endpoint is stable")


def _how_to_mark(spec: Any) -> str:
    if spec.predict.endpoint.kind == "sagemaker":
        return f"SageMaker Model tag {TAG} = <name>/<version>, as backend sagemaker tags the Models it creates"
    return "Vertex Model display name mlb-<name>-v<version>-<hash>, as backend vertex names the Models it uploads"


def sagemaker_versions(cfg: Any, name: str) -> dict[str, tuple[str, int | None]]:
    """{variant: ('variant <v>: model <m>', version)} over the endpoint config's production variants."""
    from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook

    client = SageMakerHook(aws_conn_id=cfg.aws_conn_id, region_name=cfg.region).conn
    endpoint = client.describe_endpoint(EndpointName=cfg.endpoint_name)
    config = client.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    found = {}
    for variant in config["ProductionVariants"]:
        described = client.describe_model(ModelName=variant["ModelName"])
        tags = {t["Key"]: t["Value"] for t in client.list_tags(ResourceArn=described["ModelArn"]).get("Tags", [])}
        found[variant["VariantName"]] = (f"variant {variant['VariantName']}: model {variant['ModelName']}",
                                         _tagged(tags.get(TAG), name))
    return found


def _tagged(value: str | None, name: str) -> int | None:
    model, _, version = (value or "").rpartition("/")
    return int(version) if model == name and version.isdigit() else None


def vertex_versions(cfg: Any, name: str) -> dict[str, tuple[str, int | None]]:
    """{deployed model id: ('deployed model <id>: <display name>', version)} over those taking traffic."""
    from airflow.providers.google.cloud.hooks.vertex_ai.endpoint_service import EndpointServiceHook
    from airflow.providers.google.cloud.hooks.vertex_ai.model_service import ModelServiceHook

    endpoint = EndpointServiceHook(gcp_conn_id=cfg.gcp_conn_id).get_endpoint(
        project_id=cfg.project, region=cfg.region, endpoint=cfg.endpoint_id)
    split = dict(endpoint.traffic_split)
    models = ModelServiceHook(gcp_conn_id=cfg.gcp_conn_id)
    found = {}
    for deployed in endpoint.deployed_models:
        if split and not split.get(deployed.id):
            continue  # deployed but given no traffic: it scores nothing
        model_id = deployed.model.rsplit("/", 1)[-1].split("@")[0]
        display = models.get_model(project_id=cfg.project, region=cfg.region, model_id=model_id).display_name
        match = _VERTEX_DISPLAY.match(display)
        same = match and name.startswith(match["name"])  # long names are cut to fit Vertex's limit
        found[deployed.id] = (f"deployed model {deployed.id}: {display}", int(match["version"]) if same else None)
    if not found:
        found[""] = (f"endpoint {cfg.endpoint_id}: no deployed model takes traffic", None)
    return found


def probe_mlflow(spec: Any, model: dict, auth: str | None, storage: Any, input_pattern: str) -> Served:
    """Score PROBE_ROWS rows of the partition through the endpoint and with the pinned version here."""
    payload = probe_payload(spec, storage, input_pattern)
    answered = post_invocations(spec.predict.endpoint, payload, auth)
    rows = len(payload["dataframe_split"]["data"])
    if _same(answered, predict_locally(model["artifact_uri"], payload)):
        return Served(model["version"], f"probe of {rows} rows matched")
    for version, uri in other_versions(model):
        if _same(answered, predict_locally(uri, payload)):
            return Served(version, f"probe of {rows} rows: the endpoint's answers match v{version}, not "
                                   f"v{model['version']}")
    raise ServedVersionError(
        f"{spec.name}: the mlflow endpoint {spec.predict.endpoint.url} does not serve the pinned "
        f"{model['name']} v{model['version']} ({_pin(spec, model)}): on a probe of {rows} rows its answers "
        f"differ from that version's (first: {answered[:1]} vs {predict_locally(model['artifact_uri'], payload)[:1]}), "
        f"and from the {OTHER_VERSIONS} most recent other versions'; nothing was scored")


def probe_payload(spec: Any, storage: Any, input_pattern: str) -> dict:
    """The first rows of the partition with every feature present, as a `dataframe_split` request."""
    import pyarrow as pa

    features = [f.name for f in spec.input.features]
    tables = []
    for uri in storage.files(input_pattern)[:5]:
        table = _head(storage, uri, spec.input.format, PROBE_ROWS * 5).select(features)
        tables.append(_complete(table, features))
        if sum(t.num_rows for t in tables) >= PROBE_ROWS:
            break
    frame = pa.concat_tables(tables).slice(0, PROBE_ROWS).to_pandas() if tables else None
    if frame is None or frame.empty:
        raise ServedVersionError(f"{spec.name}: no row of {input_pattern} has every feature: nothing to probe "
                                 "the mlflow endpoint's version with")
    return {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}


def _complete(table: Any, features: list[str]) -> Any:
    import pyarrow.compute as pc

    mask = table[features[0]].is_valid()
    for column in features[1:]:
        mask = pc.and_(mask, table[column].is_valid())
    return table.filter(mask)


def _head(storage: Any, uri: str, fmt: str, rows: int) -> Any:
    """The first `rows` rows of one data file (a row group / a block of text), as an Arrow table."""
    import pyarrow as pa

    with storage.open(uri) as fh:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pa.Table.from_batches([next(pq.ParquetFile(fh).iter_batches(batch_size=rows))])
        if fmt == "csv":
            import pyarrow.csv as pcsv

            return pa.Table.from_batches([pcsv.open_csv(fh).read_next_batch()]).slice(0, rows)
        lines = []
        for line in fh:
            if line.strip():
                lines.append(json.loads(line))
            if len(lines) >= rows:
                break
        return pa.Table.from_pylist(lines)


def post_invocations(cfg: Any, payload: dict, auth: str | None) -> list:
    """POST the payload to the server's /invocations; its `predictions`. Retried as the job retries
    (429, 5xx, no answer; `max_retries`, backoff 1, 2, 4... s up to 10 s)."""
    import time
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json", **({"Authorization": auth} if auth else {})}
    request = urllib.request.Request(invocations_url(cfg.url), json.dumps(payload).encode(), headers)
    for attempt in range(cfg.max_retries + 1):
        try:
            with urllib.request.urlopen(request, timeout=cfg.timeout_s) as answer:
                return json.loads(answer.read())["predictions"]
        except urllib.error.HTTPError as exc:
            if (exc.code != 429 and exc.code < 500) or attempt == cfg.max_retries:
                raise
        except (urllib.error.URLError, TimeoutError):
            if attempt == cfg.max_retries:
                raise
        time.sleep(min(2 ** attempt, 10))
    raise AssertionError("unreachable")


def invocations_url(url: str) -> str:
    return url.rstrip("/") if url.rstrip("/").endswith("/invocations") else url.rstrip("/") + "/invocations"


def predict_locally(model_uri: str, payload: dict) -> list:
    """What the model at `model_uri` answers to `payload`, parsed as its scoring server parses it."""
    import io

    import mlflow.pyfunc
    from mlflow.pyfunc.scoring_server import infer_and_parse_data, predictions_to_json

    loaded = _load(model_uri, mlflow.pyfunc.load_model)
    data = infer_and_parse_data(payload, loaded.metadata.get_input_schema())
    out = io.StringIO()
    predictions_to_json(loaded.predict(data), out)
    return json.loads(out.getvalue())["predictions"]


_loaded: dict[str, Any] = {}


def _load(model_uri: str, loader) -> Any:
    if model_uri not in _loaded:
        _loaded[model_uri] = loader(model_uri)
    return _loaded[model_uri]


def other_versions(model: dict) -> list[tuple[int, str]]:
    """(version, download URI) of the model's most recent other registry versions."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=model.get("tracking_uri"), registry_uri=model.get("tracking_uri"))
    versions = sorted((int(v.version) for v in client.search_model_versions(f"name = '{model['name']}'")
                       if int(v.version) != model["version"]), reverse=True)[:OTHER_VERSIONS]
    return [(v, client.get_model_version_download_uri(model["name"], str(v))) for v in versions]


def _same(a: list, b: list, tolerance: float = 1e-6) -> bool:
    """Equal answers: numbers within a relative tolerance (JSON round trips), the rest exactly."""
    import math

    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, dict) and isinstance(y, dict):
            if x.keys() != y.keys() or not _same(list(x.values()), list(y.values()), tolerance):
                return False
        elif isinstance(x, list) and isinstance(y, list):
            if not _same(x, y, tolerance):
                return False
        elif isinstance(x, (int, float)) and isinstance(y, (int, float)):
            if not math.isclose(x, y, rel_tol=tolerance, abs_tol=tolerance):
                return False
        elif x != y:
            return False
    return True
