"""BigQuery partition waits: `BigQueryPartitionTrigger` against a fake BigQuery REST endpoint on loopback.

There is no BigQuery emulator, so the fake sits at the client boundary (BIGQUERY_EMULATOR_HOST): every
request body and every response is checked against BigQuery's published REST schema (the v2 discovery
document shipped with google-api-python-client), where an unknown field is an error. The fake answers
the INFORMATION_SCHEMA question from a table of partitions the test controls. Its dataset has a location
(`FakeBigQuery.location`); as BigQuery, it runs a query job there and finds the job again only when the
look-up names that location, or names none while it is the US or EU multi-region (404 "Not found: Job
project:job_id" otherwise: the `location` parameter of jobs.getQueryResults,
https://cloud.google.com/bigquery/docs/reference/rest/v2/jobs/getQueryResults).
"""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from emulators import free_port

PROJECT, DATASET, TABLE = "proj", "events", "natality"


def discovery() -> dict:
    import googleapiclient

    path = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents" / "bigquery.v2.json"
    return json.loads(path.read_text())


def check(schemas: dict, name: str, value, where: str) -> None:
    """`value` conforms to schema `name` of the discovery document; unknown fields fail."""
    schema = schemas[name]
    _check(schemas, schema, value, where)


def _check(schemas: dict, schema: dict, value, where: str) -> None:
    if "$ref" in schema:
        return check(schemas, schema["$ref"], value, where)
    kind = schema.get("type")
    if kind == "object" and "properties" in schema:
        assert isinstance(value, dict), f"{where}: expected an object, got {value!r}"
        for key, item in value.items():
            assert key in schema["properties"], f"{where}.{key}: not a field of the BigQuery REST API"
            _check(schemas, schema["properties"][key], item, f"{where}.{key}")
    elif kind == "array":
        assert isinstance(value, list), f"{where}: expected an array"
        for i, item in enumerate(value):
            _check(schemas, schema["items"], item, f"{where}[{i}]")
    elif kind == "string":
        assert isinstance(value, str), f"{where}: expected a string (int64 travels as a string), got {value!r}"
    elif kind == "boolean":
        assert isinstance(value, bool), f"{where}: expected a boolean"
    elif kind == "integer":
        assert isinstance(value, int), f"{where}: expected an integer"


class FakeBigQuery:
    """jobs.query and jobs.getQueryResults over INFORMATION_SCHEMA.PARTITIONS / TABLES."""

    def __init__(self):
        self.schemas = discovery()["schemas"]
        self.partitions: dict[str, tuple[int, float]] = {}  # partition_id -> (rows, modified epoch s)
        self.table_exists = False
        self.requests: list[dict] = []
        self.errors: list[str] = []
        self.incomplete_first = True
        self.deny = False  # answer like BigQuery does to a caller without access
        self.unavailable = 0  # this many answers are 503 (a transient backend error)
        self.location = "EU"  # the dataset's location: where its query jobs run
        self.lookups: list[str | None] = []  # the `location` of each getQueryResults

    def refusal(self, path: str, body: dict | None) -> str | None:
        """BigQuery's 404 for a query outside the dataset's location or a job looked up without it."""
        if body is not None:
            asked = body.get("location")
            if asked is not None and asked != self.location:
                return f"Not found: Dataset {PROJECT}:{DATASET} was not found in location {asked}"
            return None
        from urllib.parse import parse_qs, urlparse

        asked = parse_qs(urlparse(path).query).get("location", [None])[0]
        self.lookups.append(asked)
        if asked != self.location and not (asked is None and self.location in ("US", "EU")):
            return f"Not found: Job {PROJECT}:job_1"
        return None

    def answer(self, path: str, body: dict | None) -> dict:
        if body is not None:
            check(self.schemas, "QueryRequest", body, "QueryRequest")
            self.requests.append(body)
            params = {p["name"]: p["parameterValue"]["value"] for p in body["queryParameters"]}
            self.pending = (body["query"], params)
            if self.incomplete_first:  # a slow query: the client must poll getQueryResults
                self.incomplete_first = False
                response = {"kind": "bigquery#queryResponse", "jobComplete": False,
                            "jobReference": {"projectId": PROJECT, "jobId": "job_1", "location": self.location}}
                check(self.schemas, "QueryResponse", response, "QueryResponse")
                return response
        query, params = self.pending
        assert params["table"] == TABLE
        if "PARTITIONS" in query:
            fields = [{"name": "partition_id", "type": "STRING", "mode": "NULLABLE"},
                      {"name": "total_rows", "type": "INTEGER", "mode": "NULLABLE"},
                      {"name": "last_modified_time", "type": "TIMESTAMP", "mode": "NULLABLE"}]
            found = self.partitions.get(params["partition"])
            rows = [] if found is None else [
                {"f": [{"v": params["partition"]}, {"v": str(found[0])}, {"v": f"{found[1]:.6E}"}]}]
        else:
            fields = [{"name": "table_name", "type": "STRING", "mode": "NULLABLE"}]
            rows = [{"f": [{"v": TABLE}]}] if self.table_exists else []
        response = {"kind": "bigquery#getQueryResultsResponse" if body is None else "bigquery#queryResponse",
                    "jobComplete": True, "schema": {"fields": fields}, "totalRows": str(len(rows)),
                    "jobReference": {"projectId": PROJECT, "jobId": "job_1", "location": self.location}}
        if rows:
            response["rows"] = rows
        check(self.schemas, "GetQueryResultsResponse" if body is None else "QueryResponse", response, "response")
        return response


@pytest.fixture
def fake_bigquery(monkeypatch):
    fake = FakeBigQuery()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, body: dict | None):
            if fake.deny or fake.unavailable:
                code = 403 if fake.deny else 503
                if not fake.deny:
                    fake.unavailable -= 1
                data = json.dumps({"error": {"code": code, "status": "PERMISSION_DENIED" if fake.deny else
                                             "UNAVAILABLE", "message": "Access Denied: Table proj:events.natality"
                                             if fake.deny else "backend error"}}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            not_found = fake.refusal(self.path, body)
            if not_found:
                data = json.dumps({"error": {"code": 404, "status": "NOT_FOUND", "message": not_found}}).encode()
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            try:
                if body is None:
                    assert self.path.startswith(f"/bigquery/v2/projects/{PROJECT}/queries/job_1"), self.path
                else:
                    assert self.path == f"/bigquery/v2/projects/{PROJECT}/queries", self.path
                data, status = json.dumps(fake.answer(self.path, body)).encode(), 200
            except AssertionError as exc:
                fake.errors.append(str(exc))
                data, status = json.dumps({"error": {"code": 400, "message": str(exc)}}).encode(), 400
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802
            self._reply(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

        def do_GET(self):  # noqa: N802
            self._reply(None)

        def log_message(self, *args):
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("BIGQUERY_EMULATOR_HOST", f"127.0.0.1:{port}")
    monkeypatch.setenv("AIRFLOW_CONN_WAIT_BQ", json.dumps({
        "conn_type": "google_cloud_platform", "extra": {"project": PROJECT, "is_anonymous": True}}))
    yield fake
    server.shutdown()
    assert fake.errors == []


def trigger(**kwargs):
    from mlbatch.triggers.bigquery_partition import BigQueryPartitionTrigger

    return BigQueryPartitionTrigger(project_id=PROJECT, dataset_id=DATASET, table_id=TABLE,
                                    gcp_conn_id="wait_bq", poke_seconds=0.2, **kwargs)


async def fire_after(t, arrive, quiet: float = 1.0):
    events = t.run()
    pending = asyncio.ensure_future(events.__anext__())
    done, _ = await asyncio.wait({pending}, timeout=quiet)
    assert not done, f"fired before the partition existed: {pending.result()}"
    arrive()
    event = await asyncio.wait_for(pending, 10)
    await events.aclose()
    return event.payload


def test_partition_trigger_waits_then_reports_rows_and_age(fake_bigquery):
    t = trigger(partition_id="20261120")
    classpath, kwargs = t.serialize()
    assert classpath == "mlbatch.triggers.bigquery_partition.BigQueryPartitionTrigger"
    assert type(t)(**kwargs).serialize() == (classpath, kwargs)  # what the triggerer rebuilds

    payload = asyncio.run(fire_after(t, lambda: fake_bigquery.partitions.update({"20261120": (1234, 1.7636e9)})))
    assert payload["status"] == "success" and payload["total_rows"] == 1234
    assert payload["last_modified"].startswith("2025-11-20T")
    first = fake_bigquery.requests[0]
    assert "INFORMATION_SCHEMA.PARTITIONS" in first["query"] and first["parameterMode"] == "NAMED"
    assert {p["name"]: p["parameterValue"]["value"] for p in first["queryParameters"]} == {
        "table": TABLE, "partition": "20261120"}


def test_table_trigger_and_errors_come_back_as_events(fake_bigquery):
    payload = asyncio.run(fire_after(trigger(), lambda: setattr(fake_bigquery, "table_exists", True)))
    assert payload == {"status": "success", "message": f"table {PROJECT}.{DATASET}.{TABLE} exists"}

    fake_bigquery.deny = True
    payload = asyncio.run(_first(trigger(partition_id="20261120", location="EU")))
    assert payload["status"] == "error"
    assert f"looking up partition 20261120 of {PROJECT}.{DATASET}.{TABLE}" in payload["message"]
    assert "403" in payload["message"]


async def _first(t, timeout: float = 10):
    events = t.run()
    event = await asyncio.wait_for(events.__anext__(), timeout)
    await events.aclose()
    return event.payload


def test_transient_errors_are_retried_not_reported(fake_bigquery):
    fake_bigquery.partitions["20261120"] = (10, 1.7636e9)
    fake_bigquery.unavailable = 2  # two 503s, then BigQuery answers
    payload = asyncio.run(_first(trigger(partition_id="20261120"), timeout=60))
    assert payload["status"] == "success" and payload["total_rows"] == 10

    fake_bigquery.unavailable = 100  # down for good: an error event after a bounded number of tries
    payload = asyncio.run(_first(trigger(partition_id="20261120"), timeout=60))
    assert payload["status"] == "error" and "503" in payload["message"] and "5 tries" in payload["message"]


@pytest.mark.parametrize("dataset_location, wait_location", [("europe-west4", None), ("europe-west4", "europe-west4"),
                                                             ("EU", None), ("US", "US")])
def test_query_results_are_looked_up_where_the_job_ran(fake_bigquery, dataset_location, wait_location):
    """A single-region dataset's query job is found only with its location: the trigger passes the job's
    own location (its jobReference, else `wait.location`) to every look-up."""
    fake_bigquery.location = dataset_location
    fake_bigquery.partitions["20261120"] = (7, 1.7636e9)
    payload = asyncio.run(_first(trigger(partition_id="20261120", location=wait_location)))
    assert payload["status"] == "success" and payload["total_rows"] == 7
    assert fake_bigquery.lookups == [dataset_location]  # the one getQueryResults of the slow first answer
    assert fake_bigquery.requests[0].get("location") == wait_location


def test_a_look_up_without_the_location_is_refused_as_bigquery_does(fake_bigquery):
    """What the trigger met before it passed the location: a single-region job is not found without it."""
    import urllib.error
    import urllib.request

    fake_bigquery.location = "europe-west4"
    host = __import__("os").environ["BIGQUERY_EMULATOR_HOST"]
    url = f"http://{host}/bigquery/v2/projects/{PROJECT}/queries/job_1"
    for query in ("", "?location=EU"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + query)
        assert refused.value.code == 404 and f"Not found: Job {PROJECT}:job_1" in refused.value.read().decode()


def test_a_wait_location_other_than_the_datasets_is_an_error_event(fake_bigquery):
    fake_bigquery.location = "europe-west4"
    payload = asyncio.run(_first(trigger(partition_id="20261120", location="US")))
    assert payload["status"] == "error" and "was not found in location US" in payload["message"]


def test_the_wait_spec_carries_the_location_to_the_trigger(tmp_path):
    from mlbatch.operators.wait_for_data import WaitForInputOperator
    from mlbatch.spec.loader import load_spec, with_overrides

    spec = with_overrides(load_spec(Path(__file__).resolve().parents[1] / "include" / "pipelines" /
                                    "natality_daily.yaml"),
                          {"wait": {"kind": "bigquery_partition", "table": f"{PROJECT}.{DATASET}.{TABLE}",
                                    "partition": "{{ ds_nodash }}", "location": "europe-west4"}})
    assert spec.wait.location == "europe-west4"
    trigger_ = WaitForInputOperator.bigquery_trigger(spec.wait, "20261120")
    assert trigger_.serialize()[1]["location"] == "europe-west4"


def test_wait_location_belongs_to_the_bigquery_kind():
    from pydantic import ValidationError

    from mlbatch.spec.models import Wait

    with pytest.raises(ValidationError, match="'wait.location' belongs to kind 'bigquery_partition', not 'object'"):
        Wait(kind="object", location="EU")
