"""BigQuery partition waits: `BigQueryPartitionTrigger` against a fake BigQuery REST endpoint on loopback.

There is no BigQuery emulator, so the fake sits at the client boundary (BIGQUERY_EMULATOR_HOST): every
request body and every response is checked against BigQuery's published REST schema (the v2 discovery
document shipped with google-api-python-client), where an unknown field is an error. The fake answers
the INFORMATION_SCHEMA question from a table of partitions the test controls.
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

    def answer(self, path: str, body: dict | None) -> dict:
        if body is not None:
            check(self.schemas, "QueryRequest", body, "QueryRequest")
            self.requests.append(body)
            params = {p["name"]: p["parameterValue"]["value"] for p in body["queryParameters"]}
            self.pending = (body["query"], params)
            if self.incomplete_first:  # a slow query: the client must poll getQueryResults
                self.incomplete_first = False
                response = {"kind": "bigquery#queryResponse", "jobComplete": False,
                            "jobReference": {"projectId": PROJECT, "jobId": "job_1", "location": "EU"}}
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
                    "jobReference": {"projectId": PROJECT, "jobId": "job_1", "location": "EU"}}
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
