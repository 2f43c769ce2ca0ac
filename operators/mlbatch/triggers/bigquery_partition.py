"""Wait in the triggerer until a BigQuery table, or one partition of it, exists, and report its rows.

Why not the provider's BigQueryTablePartitionExistenceTrigger: it mixes the async client (job insert)
with the sync client in a thread (job status), lists every partition of the table on each poll, and
reports no row count. This trigger asks one parameterised INFORMATION_SCHEMA question per poll through
the provider's async hook (connection, credentials, impersonation) with `jobs.query`, and returns the
partition's `total_rows` and `last_modified_time`, which completeness checks and the log can use.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

MAX_TRIES = 5            # consecutive failed look-ups of a transient kind before the error event
MAX_RESULT_POLLS = 60    # getQueryResults calls (each waits up to 10 s) for one look-up


def _transient(exc: Exception) -> bool:
    """Worth another look: server errors, throttling, timeouts and dropped connections."""
    status = getattr(exc, "status", None) or getattr(exc, "code", None)
    if isinstance(status, int):
        return status == 429 or status >= 500
    return isinstance(exc, (TimeoutError, ConnectionError, OSError)) or "Timeout" in type(exc).__name__


class BigQueryPartitionTrigger(BaseTrigger):
    """Fires when `project.dataset.table` (and `partition_id`, if given) exists.

    :param project_id: project of the table (and of the query job).
    :param dataset_id: dataset of the table.
    :param table_id: the table.
    :param partition_id: partition id as in INFORMATION_SCHEMA.PARTITIONS (`20261120`, `__NULL__`);
        None waits for the table itself.
    :param gcp_conn_id: Airflow connection for Google Cloud.
    :param poke_seconds: seconds between two polls.
    :param location: BigQuery location of the dataset (`EU`, `europe-west4`; spec `wait.location`): where
        the query job runs. Every results look-up names the job's location (BigQuery finds a job of a
        single-region dataset only with it).
    :param impersonation_chain: service account(s) to impersonate, as in the provider hooks.
    """

    def __init__(self, *, project_id: str, dataset_id: str, table_id: str, partition_id: str | None = None,
                 gcp_conn_id: str = "google_cloud_default", poke_seconds: float = 30.0,
                 location: str | None = None, impersonation_chain: str | Sequence[str] | None = None):
        super().__init__()
        self.project_id, self.dataset_id, self.table_id = project_id, dataset_id, table_id
        self.partition_id = partition_id
        self.gcp_conn_id = gcp_conn_id
        self.poke_seconds = poke_seconds
        self.location = location
        self.impersonation_chain = impersonation_chain

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "project_id": self.project_id,
                "dataset_id": self.dataset_id,
                "table_id": self.table_id,
                "partition_id": self.partition_id,
                "gcp_conn_id": self.gcp_conn_id,
                "poke_seconds": self.poke_seconds,
                "location": self.location,
                "impersonation_chain": self.impersonation_chain,
            },
        )

    @property
    def what(self) -> str:
        table = f"{self.project_id}.{self.dataset_id}.{self.table_id}"
        return f"partition {self.partition_id} of {table}" if self.partition_id else f"table {table}"

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.providers.google.cloud.hooks.bigquery import BigQueryAsyncHook

        hook = BigQueryAsyncHook(gcp_conn_id=self.gcp_conn_id, impersonation_chain=self.impersonation_chain)
        failures = 0
        while True:
            try:
                found = await self.lookup(hook)
                failures = 0
            except Exception as exc:  # the event carries the error to the worker, which fails the task
                failures += 1
                if _transient(exc) and failures < MAX_TRIES:  # 5xx, 429, network: look again later
                    self.log.warning("Looking up %s failed (%s), try %d of %d; retrying", self.what, exc,
                                     failures, MAX_TRIES)
                    await asyncio.sleep(min(self.poke_seconds * failures, 60))
                    continue
                self.log.exception("Looking up %s failed", self.what)
                tries = f" after {failures} tries" if failures > 1 else ""
                yield TriggerEvent({"status": "error", "message": f"looking up {self.what}{tries}: {exc}"})
                return
            if found is not None:
                yield TriggerEvent({"status": "success", "message": f"{self.what} exists", **found})
                return
            self.log.info("%s not there yet; next look in %ss", self.what, self.poke_seconds)
            await asyncio.sleep(self.poke_seconds)

    def query_request(self) -> dict[str, Any]:
        """A `jobs.query` request body: one parameterised INFORMATION_SCHEMA question."""
        schema = f"`{self.project_id}.{self.dataset_id}.INFORMATION_SCHEMA"
        params = [_string_param("table", self.table_id)]
        if self.partition_id:
            sql = (f"SELECT partition_id, total_rows, last_modified_time FROM {schema}.PARTITIONS` "
                   "WHERE table_name = @table AND partition_id = @partition")
            params.append(_string_param("partition", self.partition_id))
        else:
            sql = f"SELECT table_name FROM {schema}.TABLES` WHERE table_name = @table"
        body: dict[str, Any] = {"query": sql, "useLegacySql": False, "parameterMode": "NAMED",
                                "queryParameters": params, "timeoutMs": 10_000}
        if self.location:
            body["location"] = self.location
        return body

    def results_params(self, response: dict[str, Any]) -> dict[str, Any]:
        """jobs.getQueryResults parameters: the job's own location (where BigQuery says it ran, else
        `location`), without which a job of a single-region dataset is "Not found"."""
        location = response.get("jobReference", {}).get("location") or self.location
        return {"timeoutMs": 10_000, **({"location": location} if location else {})}

    async def lookup(self, hook: Any) -> dict[str, Any] | None:
        """The partition's (or table's) figures if it exists, else None."""
        from aiohttp import ClientSession

        async with ClientSession() as session:
            job = await hook.get_job_instance(self.project_id, None, session)
            response = await job.query(self.query_request(), session)
            polls = 0
            while not response.get("jobComplete"):  # bounded: a stuck query is an error, tried again
                polls += 1
                if polls > MAX_RESULT_POLLS:
                    raise TimeoutError(f"query job not complete after {MAX_RESULT_POLLS} polls")
                await asyncio.sleep(1)
                job.job_id = response["jobReference"]["jobId"]
                response = await job.get_query_results(session, params=self.results_params(response))
        records = hook.get_records(response, as_dict=True)
        if not records:
            return None
        row = records[0]
        if not self.partition_id:
            return {}
        from datetime import datetime, timezone

        modified = row.get("last_modified_time")  # TIMESTAMP: epoch seconds
        return {"total_rows": row.get("total_rows"),
                "last_modified": None if modified is None
                else datetime.fromtimestamp(modified, tz=timezone.utc).isoformat()}


def _string_param(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "parameterType": {"type": "STRING"}, "parameterValue": {"value": value}}
