"""Real parts for the Slack command tests: an Airflow API server (subprocess, own SQLite database)
with the bundle's plugin mounted, a fake Slack (response_url sink, Web API, Socket Mode WebSocket)
on loopback, and requests built and signed exactly as Slack builds and signs them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SERVICE_USER, SERVICE_PASSWORD = "mlbatch_slack", "service-password"
ALICE, BOB, CAROL = "U0ALICE", "U0BOB", "U0CAROL"  # may run; read-only; via the on-call group
ONCALL_GROUP = "S0ONCALL"
BROKEN_PIPELINE_FILE = "natality_broken.yaml"  # no input/output: a placeholder DAG says why
POLICY = f"""
read_only_for_everyone: true
grants:
  - name: ml-platform
    users: [{ALICE}]
    pipelines: ["*"]
    actions: [run, retry]
  - name: on-call
    usergroups: [{ONCALL_GROUP}]
    pipelines: [slack_failing]
    actions: [retry]
"""

# A failed run with a real task log: `score` fails, `publish` is upstream_failed.
FAILING_DAG = '''
"""Fails on purpose: a failed run for the Slack command tests."""
from datetime import datetime

from airflow.sdk import DAG, task

with DAG("slack_failing", schedule=None, start_date=datetime(2026, 1, 1), tags=["mlbatch"],
         default_args={"retries": 0}) as dag:

    @task
    def extract():
        print("extracting")

    @task
    def score():
        raise RuntimeError("model endpoint returned 503")

    @task
    def publish():
        print("publishing")

    extract() >> score() >> publish()
'''
FAILING_RUN_SCRIPT = """
from datetime import datetime, timezone
from airflow.dag_processing.dagbag import DagBag
dag = DagBag({dags!r}).dags["slack_failing"]
run = dag.test(logical_date=datetime(2026, 11, 19, tzinfo=timezone.utc))
print(run.run_id)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- Slack's side ---------------------------------------------------------------------------------
def signed(body: str, secret: str = SIGNING_SECRET, timestamp: int | None = None) -> dict[str, str]:
    """Headers exactly as Slack sends them: v0 HMAC-SHA256 of `v0:<timestamp>:<raw body>`."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    base = f"v0:{timestamp}:{body}".encode()
    signature = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": str(timestamp),
            "X-Slack-Signature": signature, "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)"}


def slash_command_form(text: str, user_id: str, response_url: str, user_name: str = "") -> str:
    """The form body of a slash command request (fields and order as Slack sends them)."""
    return urlencode({
        "token": "gIkuvaNzQIHg97ATvDxqgjtO", "team_id": "T0001", "team_domain": "example",
        "enterprise_id": "E0001", "enterprise_name": "Example", "channel_id": "C2147483705",
        "channel_name": "ml-ops", "user_id": user_id, "user_name": user_name or user_id.lower(),
        "command": "/mlops", "text": text, "api_app_id": "A123456", "is_enterprise_install": "false",
        "response_url": response_url, "trigger_id": "13345224609.738474920.8088930838d88f008e0",
    })


def retry_button_payload(user_id: str, response_url: str, value: str) -> dict:
    """A `block_actions` payload of a press on an alert's Retry button."""
    return {
        "type": "block_actions", "team": {"id": "T0001", "domain": "example"},
        "user": {"id": user_id, "username": user_id.lower(), "name": user_id.lower(), "team_id": "T0001"},
        "api_app_id": "A123456", "token": "gIkuvaNzQIHg97ATvDxqgjtO", "trigger_id": "123.456.abc",
        "container": {"type": "message", "message_ts": "1700000000.000100", "channel_id": "C2147483705"},
        "channel": {"id": "C2147483705", "name": "ml-alerts"}, "response_url": response_url,
        "actions": [{"type": "button", "action_id": "mlbatch_retry", "block_id": "actions",
                     "text": {"type": "plain_text", "text": "Retry"}, "value": value,
                     "action_ts": "1700000001.000200"}],
    }


class FakeSlack:
    """Slack's servers on loopback: collects response_url posts, answers `usergroups.users.list`
    and `apps.connections.open`, and runs the Socket Mode WebSocket (envelopes out, acks in)."""

    def __init__(self, usergroups: dict[str, list[str]] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.usergroups = usergroups or {}
        self.replies: dict[str, list[dict]] = {}
        self.acks: dict[str, dict] = {}
        self.api_calls: list[str] = []
        self._sockets: list = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._counter = 0

    def response_url(self) -> str:
        self._counter += 1
        return f"{self.url}/commands/T0001/{self._counter}/hook"

    def wait_reply(self, response_url: str, timeout: float = 30) -> dict:
        key = response_url[len(self.url):]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.replies.get(key):
                return self.replies[key][0]
            time.sleep(0.05)
        raise AssertionError(f"no reply posted to {response_url} within {timeout} s")

    def start(self) -> FakeSlack:
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/commands/{team}/{n}/hook", self._response_url)
        app.router.add_route("*", "/api/usergroups.users.list", self._usergroups)
        app.router.add_post("/api/apps.connections.open", self._connections_open)
        app.router.add_get("/link", self._websocket)
        self._runner = web.AppRunner(app)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def send_envelope(self, envelope: dict, timeout: float = 10) -> dict:
        """Push one Socket Mode envelope to the connected client; return its ack."""
        deadline = time.monotonic() + timeout
        while not self._sockets and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self._sockets, "no Socket Mode client connected"
        ws = self._sockets[-1]
        asyncio.run_coroutine_threadsafe(ws.send_str(json.dumps(envelope)), self._loop).result(5)
        while envelope["envelope_id"] not in self.acks and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.acks[envelope["envelope_id"]]

    async def _serve(self):
        from aiohttp import web

        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _response_url(self, request):
        from aiohttp import web

        self.replies.setdefault(request.path, []).append(await request.json())
        return web.Response(text="ok")

    async def _usergroups(self, request):
        from aiohttp import web

        self.api_calls.append("usergroups.users.list")
        assert request.headers["Authorization"] == "Bearer xoxb-test-bot-token"
        group = request.query.get("usergroup") or (await request.post()).get("usergroup")
        return web.json_response({"ok": True, "users": self.usergroups.get(group, [])})

    async def _connections_open(self, request):
        from aiohttp import web

        self.api_calls.append("apps.connections.open")
        assert request.headers["Authorization"] == "Bearer xapp-1-test-app-token"
        return web.json_response({"ok": True, "url": f"ws://127.0.0.1:{self.port}/link"})

    async def _websocket(self, request):
        from aiohttp import web

        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_str(json.dumps({"type": "hello", "num_connections": 1,
                                      "connection_info": {"app_id": "A123456"}}))
        async for message in ws:
            data = json.loads(message.data)
            if "envelope_id" in data:
                self.acks[data["envelope_id"]] = data
        return ws


# -- Airflow's side -------------------------------------------------------------------------------
class AirflowServer:
    def __init__(self, root: Path, port: int, env: dict[str, str], failed_run_id: str):
        self.root, self.port, self.env, self.failed_run_id = root, port, env, failed_run_id
        self.url = f"http://127.0.0.1:{port}"
        self._token = None

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        if self._token is None:
            r = httpx.post(f"{self.url}/auth/token", json={"username": SERVICE_USER, "password": SERVICE_PASSWORD})
            r.raise_for_status()
            self._token = r.json()["access_token"]
        return httpx.request(method, f"{self.url}{path}", headers={"Authorization": f"Bearer {self._token}"},
                             timeout=30, **kwargs)

    def runs(self, dag_id: str) -> list[dict]:
        r = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns", params={"limit": 1000})
        r.raise_for_status()
        return r.json()["dag_runs"]


def start_airflow(root: Path, slack: FakeSlack):
    """Migrate a fresh SQLite database, parse the DAGs, make one failed run of `slack_failing`
    (dag.test, before the server starts), then start `airflow api-server` with the bundle's plugins.

    dag.test runs tasks in-process and keeps their log on the console only, so the failed task's
    log file is written here in the file task handler's layout; the API server reads it from there."""
    port = free_port()
    home, dags = root / "airflow", root / "dags"
    home.mkdir(parents=True)
    dags.mkdir()
    shutil.copy(REPO / "dags" / "mlbatch_pipelines.py", dags / "mlbatch_pipelines.py")
    (dags / "slack_failing.py").write_text(FAILING_DAG)
    pipelines = root / "pipelines"  # the repo's specs plus a broken one (placeholder DAG)
    shutil.copytree(REPO / "include" / "pipelines", pipelines)
    (pipelines / BROKEN_PIPELINE_FILE).write_text("name: natality_broken\nmodel: {name: m, alias: a}\n")
    (root / "passwords.json").write_text(json.dumps({SERVICE_USER: SERVICE_PASSWORD}))
    (root / "policy.yaml").write_text(POLICY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{SERVICE_USER}:user",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(root / "passwords.json"),
        "AIRFLOW__API_AUTH__JWT_SECRET": "slack-tests-jwt-secret-0123456789abcdef",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "MLBATCH_PIPELINES_DIR": str(pipelines),
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_BOT_TOKEN": "xoxb-test-bot-token",
        "MLBATCH_SLACK_API_URL": f"{slack.url}/api/",
        "MLBATCH_SLACK_RESPONSE_URL_PREFIX": f"{slack.url}/commands/",
        "MLBATCH_SLACK_POLICY": str(root / "policy.yaml"),
        "MLBATCH_AIRFLOW_API_URL": f"http://127.0.0.1:{port}",
        "MLBATCH_AIRFLOW_UI_URL": "https://airflow.example.com",
        "MLBATCH_AIRFLOW_USERNAME": SERVICE_USER,
        "MLBATCH_AIRFLOW_PASSWORD": SERVICE_PASSWORD,
    })
    airflow = [sys.executable, "-m", "airflow"]
    for command in (["db", "migrate"], ["dags", "reserialize"]):
        subprocess.run(airflow + command, env=env, check=True, capture_output=True, timeout=120)
    made = subprocess.run([sys.executable, "-c", FAILING_RUN_SCRIPT.format(dags=str(dags))], env=env,
                          check=True, capture_output=True, text=True, timeout=120)
    failed_run_id = made.stdout.strip().splitlines()[-1]
    task_log = home / "logs" / "dag_id=slack_failing" / f"run_id={failed_run_id}" / "task_id=score" / "attempt=1.log"
    task_log.parent.mkdir(parents=True)
    task_log.write_text("\n".join(json.dumps(line) for line in [
        {"timestamp": "2026-11-19T00:00:01Z", "level": "info", "event": "scoring 1000 rows"},
        {"timestamp": "2026-11-19T00:00:02Z", "level": "info",
         "event": "calling endpoint with password=hunter22 token xoxb-1234567890-abcdefghij"},
        {"timestamp": "2026-11-19T00:00:03Z", "level": "error", "event": "RuntimeError: model endpoint returned 503"},
    ]) + "\n")
    log_file = (root / "api-server.log").open("w")
    process = subprocess.Popen(airflow + ["api-server", "--host", "127.0.0.1", "--port", str(port)], env=env,
                               stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    server = AirflowServer(root, port, env, failed_run_id)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"airflow api-server exited: {(root / 'api-server.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/api/v2/monitor/health", timeout=2).status_code == 200:
                return server, process
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"airflow api-server not up in 90 s: {(root / 'api-server.log').read_text()[-3000:]}")


@pytest.fixture(scope="session")
def fake_slack():
    slack = FakeSlack(usergroups={ONCALL_GROUP: [CAROL]}).start()
    yield slack
    slack.stop()


@pytest.fixture(scope="session")
def airflow_server(tmp_path_factory, fake_slack):
    server, process = start_airflow(tmp_path_factory.mktemp("slack-airflow"), fake_slack)
    yield server
    os.killpg(process.pid, signal.SIGTERM)  # the server and its uvicorn workers: the group we started
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
