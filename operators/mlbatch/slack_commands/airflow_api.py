"""The only way Slack commands reach Airflow: its public REST API v2, with a service account's token.

Authentication: a fixed JWT (`MLBATCH_AIRFLOW_TOKEN`), or a username and password exchanged for a JWT
at `POST /auth/token` (Airflow's simple auth manager; other auth managers issue tokens their own way)
and exchanged again when Airflow answers 401. The service account needs permission to read DAGs, runs,
task instances and logs, trigger runs, clear task instances and answer Human-in-the-loop requests (simple
auth manager role `user`).
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import httpx


class AirflowApiError(RuntimeError):
    """Airflow answered with an error; `status` is the HTTP status, `detail` Airflow's explanation."""

    def __init__(self, status: int, detail: str, what: str):
        self.status, self.detail = status, detail
        super().__init__(f"{what}: Airflow answered {status}: {detail}")


class AirflowUnavailable(RuntimeError):
    """Airflow could not be reached (connection refused, timeout, ...)."""


class AirflowClient:
    def __init__(self, base_url: str, *, token: str | None = None, username: str | None = None,
                 password: str | None = None, timeout: float = 20.0):
        if not token and not (username and password):
            raise ValueError("Airflow API credentials missing: set MLBATCH_AIRFLOW_TOKEN, or "
                             "MLBATCH_AIRFLOW_USERNAME and MLBATCH_AIRFLOW_PASSWORD")
        self.base_url = base_url.rstrip("/")
        self._token, self._username, self._password = token, username, password
        self._fixed_token = bool(token)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)
        self._login_lock = asyncio.Lock()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- DAGs -----------------------------------------------------------------------------------------
    async def pipelines(self, tag: str = "mlbatch") -> list[dict]:
        body = await self._get("/api/v2/dags", "list pipelines", params={"tags": tag, "limit": 1000})
        return body["dags"]

    async def dag_details(self, dag_id: str) -> dict | None:
        return await self._get(f"/api/v2/dags/{_q(dag_id)}/details", f"read pipeline {dag_id}", missing_ok=True)

    # -- runs ----------------------------------------------------------------------------------------
    async def trigger(self, dag_id: str, conf: dict, note: str) -> dict:
        return await self._send("POST", f"/api/v2/dags/{_q(dag_id)}/dagRuns", f"trigger {dag_id}",
                                json={"logical_date": None, "conf": conf, "note": note})

    async def runs(self, dag_id: str = "~", limit: int = 5) -> list[dict]:
        body = await self._get(f"/api/v2/dags/{_q(dag_id)}/dagRuns", f"list runs of {dag_id}",
                               params={"limit": limit, "order_by": "-run_after"})
        return body["dag_runs"]

    async def find_runs(self, run_id: str) -> list[dict]:
        """Runs with exactly this id, in any DAG."""
        body = await self._get("/api/v2/dags/~/dagRuns", f"find run {run_id}",
                               params={"run_id_pattern": run_id, "limit": 100})
        return [r for r in body["dag_runs"] if r["dag_run_id"] == run_id]

    async def run(self, dag_id: str, run_id: str) -> dict | None:
        return await self._get(f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}",
                               f"read run {dag_id}/{run_id}", missing_ok=True)

    async def set_run_note(self, dag_id: str, run_id: str, note: str) -> dict:
        return await self._send("PATCH", f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}",
                                f"note on {dag_id}/{run_id}", params={"update_mask": "note"},
                                json={"note": note[-1000:]})

    # -- task instances ------------------------------------------------------------------------------
    async def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        body = await self._get(f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances",
                               f"list tasks of {dag_id}/{run_id}", params={"limit": 1000})
        return body["task_instances"]

    async def log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> list:
        body = await self._get(
            f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances/{_q(task_id)}/logs/{try_number}",
            f"read the log of {dag_id}/{run_id}/{task_id}", params={"full_content": "true", "map_index": map_index},
            headers={"Accept": "application/json"})
        return body.get("content") or []

    async def clear_failed(self, dag_id: str, run_id: str, task_ids: list | None, note: str) -> list[dict]:
        """Clear the failed (and upstream-failed) task instances of one run, and what depends on them."""
        body = {"dry_run": False, "dag_run_id": run_id, "only_failed": True, "reset_dag_runs": True,
                "include_downstream": True, "note": note[:1000]}
        if task_ids:
            body["task_ids"] = task_ids
        result = await self._send("POST", f"/api/v2/dags/{_q(dag_id)}/clearTaskInstances",
                                  f"clear failed tasks of {dag_id}/{run_id}", json=body)
        return result["task_instances"]

    # -- the quality gate: Airflow's Human-in-the-loop request of a task instance -------------------
    async def hitl_detail(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict | None:
        """The request (subject, options, defaults, response), or None when the task made none."""
        return await self._get(_hitl_path(dag_id, run_id, task_id, map_index),
                               f"read the request of {dag_id}/{run_id}/{task_id}", missing_ok=True)

    async def answer_hitl(self, dag_id: str, run_id: str, task_id: str, option: str, params_input: dict,
                          map_index: int = -1) -> dict:
        """Answer it (409 when already answered); Airflow resumes the waiting task at once."""
        return await self._send("PATCH", _hitl_path(dag_id, run_id, task_id, map_index),
                                f"answer the request of {dag_id}/{run_id}/{task_id}",
                                json={"chosen_options": [option], "params_input": params_input})

    async def xcom(self, dag_id: str, run_id: str, task_id: str, key: str) -> Any:
        """An XCom value as stored (None when absent)."""
        body = await self._get(f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances/{_q(task_id)}"
                               f"/xcomEntries/{_q(key)}", f"read XCom {key} of {dag_id}/{run_id}/{task_id}",
                               missing_ok=True)
        return None if body is None else body.get("value")

    # -- plumbing ------------------------------------------------------------------------------------
    async def _get(self, path: str, what: str, *, missing_ok: bool = False, **kwargs) -> Any:
        try:
            return await self._send("GET", path, what, **kwargs)
        except AirflowApiError as exc:
            if missing_ok and exc.status == 404:
                return None
            raise

    async def _send(self, method: str, path: str, what: str, **kwargs) -> Any:
        extra_headers = kwargs.pop("headers", {})
        for attempt in (1, 2):
            token = await self._current_token()
            headers = {**extra_headers, "Authorization": f"Bearer {token}"}
            try:
                response = await self._http.request(method, path, headers=headers, **kwargs)
            except httpx.HTTPError as exc:
                raise AirflowUnavailable(f"{what}: Airflow API at {self.base_url} unreachable: "
                                         f"{type(exc).__name__}: {exc}") from None
            if response.status_code == 401 and attempt == 1 and not self._fixed_token:
                self._token = None  # expired: log in again, once
                continue
            if response.status_code >= 400:
                raise AirflowApiError(response.status_code, _detail(response), what)
            return response.json() if response.content else None
        raise AssertionError("unreachable")

    async def _current_token(self) -> str:
        if self._token:
            return self._token
        async with self._login_lock:
            if not self._token:
                try:
                    response = await self._http.post(
                        "/auth/token", json={"username": self._username, "password": self._password})
                except httpx.HTTPError as exc:
                    raise AirflowUnavailable(f"log in: Airflow API at {self.base_url} unreachable: {exc}") from None
                if response.status_code >= 400:
                    raise AirflowApiError(response.status_code, _detail(response),
                                          f"log in as {self._username!r} at {self.base_url}/auth/token")
                self._token = response.json()["access_token"]
        return self._token


def _hitl_path(dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    return f"/api/v2/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances/{_q(task_id)}/{map_index}/hitlDetails"


def _q(part: str) -> str:
    return quote(part, safe="~")


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        return response.text[:500]
    if isinstance(detail, list):  # FastAPI validation errors
        return "; ".join(str(d.get("msg", d)) for d in detail)
    return str(detail)[:500]
