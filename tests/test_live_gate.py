"""The quality gate on the live deployment (issue 25): `make up`'s topology on its own PostgreSQL
database, a fake Slack Web API (the gate's message, its chart, chat.update) and a fake Slack for
response_url replies, driven as people drive it: REST, signed Slack buttons and commands, the Airflow
UI in headless Chromium.

Three normal days publish through the gate (pass); then four days with `gestation_weeks` shifted by
three weeks each park their run at the gate in `awaiting_input` with no worker slot held, and each is
decided another way: the Approve button (after an unauthorised user is refused in the ack), `/mlops
reject` with a reason, nobody (the timeout's default), and the Approve button of Airflow's Required
Actions page. The tests share one stack and run in file order.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
import yaml

from fake_slack import VALID_TOKEN, FakeSlack as FakeWebApi
from slack_support import ALICE, BOB, SIGNING_SECRET, FakeSlack, free_port, signed, slash_command_form
from test_live_deployment import _fill_js, _register_model, wait_until

pytestmark = pytest.mark.random_order(disabled=True)  # one stack, tests in file order

REPO = Path(__file__).resolve().parents[1]
OUTPUT = Path(os.environ.get("MLBATCH_TEST_OUTPUT") or REPO / ".test-output") / "live_gate"
PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"
GATE = "natality_gate"
ROWS = 1500
NORMAL = ("2026-11-01", "2026-11-02", "2026-11-03")
DRIFTED = {"button": "2026-11-04", "command": "2026-11-05", "timeout": "2026-11-06", "ui": "2026-11-07"}
TIMEOUT_MINUTES = 1.5
SHIFT = {"gestation_weeks": 3.0}
POLICY = f"""
read_only_for_everyone: true
grants:
  - name: ml-oncall
    users: [{ALICE}]
    pipelines: [{GATE}]
    actions: [approve]
"""
TIMINGS: dict[str, float] = {}
RUNS: dict[str, str] = {}  # date key -> run id


class Live:
    def __init__(self, stack, root: Path, web: FakeWebApi, hooks: FakeSlack):
        self.stack, self.root, self.web, self.hooks = stack, root, web, hooks
        self.url = stack.url
        self._token = None

    def api(self, method: str, path: str, **kwargs) -> httpx.Response:
        if self._token is None:
            user, password = self.stack.login()
            response = httpx.post(f"{self.url}/auth/token", json={"username": user, "password": password}, timeout=10)
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return httpx.request(method, f"{self.url}{path}", headers={"Authorization": f"Bearer {self._token}"},
                             timeout=30, **kwargs)

    def trigger(self, conf: dict) -> str:
        response = self.api("POST", f"/api/v2/dags/{GATE}/dagRuns", json={"logical_date": None, "conf": conf})
        assert response.status_code == 200, response.text
        return response.json()["dag_run_id"]

    def run(self, run_id: str) -> dict:
        return self.api("GET", f"/api/v2/dags/{GATE}/dagRuns/{run_id}").json()

    def task(self, run_id: str, task_id: str = "quality_gate") -> dict:
        return self.api("GET", f"/api/v2/dags/{GATE}/dagRuns/{run_id}/taskInstances/{task_id}").json()

    def finished(self, run_id: str, timeout: float = 420) -> dict:
        try:
            return wait_until(f"run {run_id} to finish", lambda: (r := self.run(run_id))["state"] in
                              ("success", "failed") and r, timeout=timeout, every=1)
        except AssertionError as exc:
            tasks = self.api("GET", f"/api/v2/dags/{GATE}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
            raise AssertionError(f"{exc}; tasks: {[(t['task_id'], t['state']) for t in tasks]}") from None

    def failures(self, run_ids: list[str]) -> str:
        """Each failed task of these runs with the end of its log: what a failed assertion should say."""
        failed = [(r, t["task_id"], t["try_number"]) for r in run_ids for t in self.api(
            "GET", f"/api/v2/dags/{GATE}/dagRuns/{r}/taskInstances").json()["task_instances"] if t["state"] == "failed"]
        return "\n".join(f"{r} {task}: {self.log(r, task, attempt)[-1500:]}" for r, task, attempt in failed)

    def gate_result(self, run_id: str) -> dict:
        body = self.api("GET", f"/api/v2/dags/{GATE}/dagRuns/{run_id}/taskInstances/quality_gate/xcomEntries/"
                               "return_value").json()
        value = body["value"]
        return json.loads(value) if isinstance(value, str) else value

    def log(self, run_id: str, task_id: str = "quality_gate", attempt: int = 1) -> str:
        return self.api("GET", f"/api/v2/dags/{GATE}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{attempt}",
                        params={"full_content": True}).text

    def committed(self, ds: str) -> dict | None:
        record = self.root / "data" / "predictions" / GATE / f"ds={ds}" / "_SUCCESS"
        return json.loads(record.read_text()) if record.exists() else None

    def gate_message(self, run_id: str) -> dict:
        return wait_until(f"the gate message of {run_id}", lambda: next(
            (m for m in self.web.messages if any(b.get("block_id") == "mlbatch_gate_actions" for b in m["blocks"])
             and run_id in m["text"]), None), timeout=30)

    def press(self, user: str, action_id: str, message: dict) -> tuple[httpx.Response, str]:
        """A signed `block_actions` request exactly as Slack sends a button press."""
        button = next(e for b in message["blocks"] if b.get("type") == "actions" for e in b["elements"]
                      if e["action_id"] == action_id)
        response_url = self.hooks.response_url()
        payload = {
            "type": "block_actions", "team": {"id": "T0001", "domain": "example"},
            "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": "T0001"},
            "api_app_id": "A123456", "token": "gIkuvaNzQIHg97ATvDxqgjtO", "trigger_id": "123.456.abc",
            "container": {"type": "message", "message_ts": message["ts"], "channel_id": message["channel_id"]},
            "channel": {"id": message["channel_id"], "name": "ml-alerts"}, "response_url": response_url,
            "message": {"type": "message", "ts": message["ts"], "text": message["text"], "blocks": message["blocks"]},
            "actions": [{"type": "button", "action_id": action_id, "block_id": "mlbatch_gate_actions",
                         "text": button["text"], "value": button["value"], "action_ts": "1700000001.000200"}],
        }
        body = urlencode({"payload": json.dumps(payload)})
        return httpx.post(f"{self.url}/slack/interactions", content=body, headers=signed(body), timeout=10), response_url

    def command(self, text: str, user: str) -> tuple[httpx.Response, str]:
        response_url = self.hooks.response_url()
        body = slash_command_form(text, user, response_url)
        return httpx.post(f"{self.url}/slack/commands", content=body, headers=signed(body), timeout=10), response_url

    def replies(self, response_url: str, count: int) -> list[dict]:
        key = response_url[len(self.hooks.url):]
        return wait_until(f"{count} posts to {response_url}", lambda: len(self.hooks.replies.get(key, [])) >= count
                          and self.hooks.replies[key], timeout=60)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    import psycopg2

    from mlbatch.local.stack import LocalStack

    started = time.monotonic()
    root = tmp_path_factory.mktemp("live-gate")
    database = f"mlbatch_gate_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{database}"')
    pipelines = root / "pipelines"
    pipelines.mkdir()
    spec = yaml.safe_load((REPO / "include" / "pipelines" / "natality_daily.yaml").read_text())
    spec.update(name=GATE, schedule=None, max_active_runs=8)
    spec["output"]["uri"] = spec["output"]["uri"].replace("natality_daily", GATE)
    spec["alerts"]["mention"] = None
    spec["wait"]["poke_seconds"] = 2
    spec["quality"] = {"baseline": {"runs": 3}}  # defaults: on_timeout reject, 12 h
    spec["trigger_params"]["gate_timeout_minutes"] = {"field": "quality.timeout_minutes", "type": "number"}
    (pipelines / f"{GATE}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (root / "policy.yaml").write_text(POLICY)
    web, hooks = FakeWebApi(), FakeSlack().start()
    web.__enter__()
    stack = LocalStack(root / "stack", f"{PG}/{database}", free_port(), free_port(), pipelines,
                       log_port=free_port(), trigger_log_port=free_port(), extra_env={
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL": "3",  # also the awaiting_input timeout sweep
        "AIRFLOW_CONN_SLACK_API_DEFAULT": json.dumps(
            {"conn_type": "slack", "password": VALID_TOKEN, "extra": {"base_url": web.api_url}}),
        "MLBATCH_DATA_ROOT": str(root / "data"),
        "MLBATCH_ENV": "dev",
        "MLBATCH_SLACK_POLICY": str(root / "policy.yaml"),
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_BOT_TOKEN": VALID_TOKEN,
        "MLBATCH_SLACK_API_URL": web.api_url,  # chat.update of the gate message
        "MLBATCH_SLACK_RESPONSE_URL_PREFIX": f"{hooks.url}/commands/",
    })
    try:
        stack.start_mlflow()
        registering = _register_model(stack)
        stack.start_airflow()
        stack.wait_healthy(240)
        assert registering.wait(180) == 0, (stack.home / "logs" / "register-model.log").read_text()[-3000:]
        TIMINGS["stack up + model registered"] = time.monotonic() - started
        live = Live(stack, root, web, hooks)
        wait_until("the gated pipeline parsed", lambda: live.api("GET", f"/api/v2/dags/{GATE}").status_code == 200,
                   timeout=90)
        assert live.api("PATCH", f"/api/v2/dags/{GATE}", json={"is_paused": False}).status_code == 200
        yield live
    finally:
        stopping = time.monotonic()
        stack.down(grace=10)
        TIMINGS["stack down"] = time.monotonic() - stopping
        hooks.stop()
        web.__exit__(None, None, None)
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()
        TIMINGS["whole module"] = time.monotonic() - started
        OUTPUT.mkdir(parents=True, exist_ok=True)
        (OUTPUT / "timings.json").write_text(json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}, indent=2))
        print("live gate timings:", json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}))


def _partition(live: Live, ds: str, seed: int, shift: dict | None = None) -> None:
    from mlbatch.local.demo.natality import write_partition

    write_partition(live.root / "data" / "natality" / f"ds={ds}", ROWS, files=1, seed=seed, shift=shift)


def test_three_normal_days_pass_the_gate_and_publish(live):
    started = time.monotonic()
    for i, ds in enumerate(NORMAL):
        _partition(live, ds, seed=100 + i)
    runs = [live.trigger({"date": ds}) for ds in NORMAL]
    finals = [live.finished(r) for r in runs]
    TIMINGS["three normal days"] = time.monotonic() - started
    assert [f["state"] for f in finals] == ["success"] * 3, live.failures(runs)
    for ds, run_id in zip(NORMAL, runs):
        assert live.gate_result(run_id)["level"] == "pass"
        record = live.committed(ds)
        assert record["run_id"] == run_id and record["quality"] == "pass" and "approved_by" not in record
    assert not [m for m in live.web.messages if "drift" in m["text"]]  # a pass says nothing


def test_a_shifted_feature_parks_the_run_at_the_gate_without_a_worker_slot(live):
    started = time.monotonic()
    for i, ds in enumerate(DRIFTED.values()):
        _partition(live, ds, seed=200 + i, shift=SHIFT)
    for key, ds in DRIFTED.items():
        conf = {"date": ds} | ({"gate_timeout_minutes": TIMEOUT_MINUTES} if key == "timeout" else {})
        RUNS[key] = live.trigger(conf)
    wait_until("every drifted run parked at its gate", lambda: all(
        live.task(r).get("state") == "awaiting_input" for r in RUNS.values()), timeout=420, every=1)
    TIMINGS["four drifted days -> all waiting at the gate"] = time.monotonic() - started
    pool = live.api("GET", "/api/v2/pools/default_pool").json()
    assert pool["running_slots"] == 0 and pool["queued_slots"] == 0, pool  # waiting holds no worker slot
    for run_id in RUNS.values():
        assert live.run(run_id)["state"] == "running"
        assert live.api("GET", f"/api/v2/dags/{GATE}/dagRuns/{run_id}/taskInstances/publish").json()["state"] is None
        detail = live.api("GET", f"/api/v2/dags/{GATE}/dagRuns/{run_id}/taskInstances/quality_gate/-1/hitlDetails").json()
        assert detail["options"] == ["Approve", "Reject"] and detail["defaults"] == ["Reject"]
        assert not detail["response_received"] and "gestation_weeks" in detail["body"]
        message = live.gate_message(run_id)
        assert message["channel_id"] == "C0MLALERTS" and "gestation_weeks" in json.dumps(message["blocks"])
        links = json.dumps(message["blocks"])
        assert f"{live.url}/dags/{GATE}/runs/{run_id}|Airflow run" in links and "required_actions" in links
        assert f"{live.stack.mlflow_url}/#/models/natality_weight/versions/" in links
        actions = [e["action_id"] for b in message["blocks"] if b.get("type") == "actions" for e in b["elements"]]
        assert actions == ["mlbatch_gate_approve", "mlbatch_gate_reject"]
        charts = [f for f in live.web.files.values() if f.get("thread_ts") == message["ts"]]
        assert len(charts) == 1 and charts[0]["raw"].startswith(b"\x89PNG"), charts
    verdict = live.api("GET", f"/api/v2/dags/{GATE}/dagRuns/{RUNS['button']}/taskInstances/quality_gate/"
                              "xcomEntries/verdict").json()["value"]
    verdict = json.loads(verdict) if isinstance(verdict, str) else verdict
    assert verdict["level"] == "block" and verdict["findings"][0]["column"] == "gestation_weeks", verdict


def test_an_unauthorised_user_is_refused_in_the_acknowledgement(live):
    run_id = RUNS["button"]
    pressed, response_url = live.press(BOB, "mlbatch_gate_approve", live.gate_message(run_id))
    assert pressed.status_code == 200
    refusal = pressed.json()["text"]
    assert refusal.startswith(f"⛔ You are not allowed to `approve` `{GATE}`: no grant"), refusal
    assert "actions: [approve]" in refusal
    assert live.replies(response_url, 1)[0]["text"] == refusal  # Slack shows no ack text for a button
    typed, _ = live.command(f"approve {GATE}/{run_id}", BOB)
    assert typed.json()["text"].startswith(f"⛔ You are not allowed to `approve` `{GATE}`")
    typed, _ = live.command(f"reject {GATE}/{run_id} no", BOB)
    assert typed.json()["text"].startswith(f"⛔ You are not allowed to `approve` `{GATE}`")
    time.sleep(2)
    assert live.task(run_id)["state"] == "awaiting_input"


def test_the_approve_button_publishes_with_the_approver_in_the_record_and_mlflow(live):
    started = time.monotonic()
    run_id, ds = RUNS["button"], DRIFTED["button"]
    pressed, response_url = live.press(ALICE, "mlbatch_gate_approve", live.gate_message(run_id))
    assert pressed.status_code == 200 and not pressed.content, pressed.text
    reply, update = live.replies(response_url, 2)[:2]
    assert reply["text"].startswith(f"✅ Approved by <@{ALICE}> — `{GATE}` run `{run_id}`: it publishes now")
    assert update["replace_original"] is True
    assert not [b for b in update["blocks"] if b.get("type") == "actions"]
    assert update["blocks"][-1]["text"]["text"] == f"✅ Approved by <@{ALICE}>"
    assert live.finished(run_id)["state"] == "success"
    TIMINGS["approve -> published"] = time.monotonic() - started
    who = f"{ALICE.lower()} ({ALICE}) in Slack (through Airflow user mlbatch_slack)"
    record = live.committed(ds)
    assert (record["run_id"], record["quality"], record["approved_by"]) == (run_id, "block", who)
    mlflow_run = live.api("GET", f"/api/v2/dags/{GATE}/dagRuns/{run_id}/taskInstances/record/xcomEntries/"
                                 "return_value").json()["value"]
    mlflow_run = json.loads(mlflow_run) if isinstance(mlflow_run, str) else mlflow_run
    got = httpx.get(f"{live.stack.mlflow_url}/api/2.0/mlflow/runs/get",
                    params={"run_id": mlflow_run["mlflow_run_id"]}, timeout=10).json()["run"]["data"]
    assert {"key": "mlbatch.approved_by", "value": who} in got["tags"]
    assert {"key": "quality_gate.approved_by", "value": who} in got["params"]
    again, response_url = live.press(ALICE, "mlbatch_gate_approve", live.gate_message(run_id))
    assert "decided already: Approve by" in live.replies(response_url, 1)[0]["text"]


def test_reject_by_command_publishes_nothing_and_fails_the_run_with_who_and_why(live):
    run_id, ds = RUNS["command"], DRIFTED["command"]
    message = live.gate_message(run_id)
    acked, response_url = live.command(f"reject {GATE}/{run_id} gestation feed switched to days", ALICE)
    assert acked.json()["text"].startswith("⏳ Working on")
    reply = live.replies(response_url, 1)[0]
    assert reply["text"].startswith(f"🚫 Rejected by <@{ALICE}>: gestation feed switched to days — `{GATE}`")
    final = live.finished(run_id)
    assert final["state"] == "failed"
    gate = live.task(run_id)
    assert (gate["state"], gate["try_number"]) == ("failed", 1)  # a decision is not retried
    assert live.task(run_id, "publish")["state"] == "upstream_failed"
    assert live.committed(ds) is None
    log = live.log(run_id)
    assert "GateRejectedError" in log and (f"rejected at the quality gate by {ALICE.lower()} ({ALICE}) in Slack"
                                           f" (through Airflow user mlbatch_slack): gestation feed switched to days"
                                           in log), log[-3000:]
    updates = wait_until("the gate message updated", lambda: [c for c in live.web.api_calls("chat.update")
                                                              if c.args.get("ts") == message["ts"]], timeout=30)
    assert updates[0].response["ok"], updates[0].response
    blocks = updates[0].args["blocks"]
    blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
    assert blocks[-1]["text"]["text"] == f"🚫 Rejected by <@{ALICE}>: gestation feed switched to days"
    alert = wait_until("the failure alert", lambda: next(
        (m for m in live.web.messages if "quality_gate" in m["text"] and "GateRejectedError" in m["text"]), None),
        timeout=60)
    assert "gestation feed switched to days" in json.dumps(alert["blocks"])


def test_nobody_answering_applies_the_spec_default_at_the_timeout(live):
    run_id, ds = RUNS["timeout"], DRIFTED["timeout"]
    assert live.finished(run_id, timeout=TIMEOUT_MINUTES * 60 + 120)["state"] == "failed"
    detail = live.api("GET", f"/api/v2/dags/{GATE}/dagRuns/{run_id}/taskInstances/quality_gate/-1/hitlDetails").json()
    assert detail["chosen_options"] == ["Reject"] and detail["responded_by_user"] is None
    assert f"by nobody within {TIMEOUT_MINUTES:g} min (quality.on_timeout: reject)" in live.log(run_id)
    assert live.committed(ds) is None
    assert _decision_shown(live, run_id) == f"🚫 Rejected by nobody within {TIMEOUT_MINUTES:g} min (quality.on_timeout: reject)"


def test_the_same_decision_in_the_airflow_ui_publishes(live):
    from browser import Chromium

    started = time.monotonic()
    run_id, ds = RUNS["ui"], DRIFTED["ui"]
    browser = Chromium()
    try:
        user, password = live.stack.login()
        browser.navigate(f"{live.url}/auth/login")
        browser.wait_for("document.querySelector('input[name=username]') !== null")
        browser.eval(_fill_js({"username": user, "password": password}))
        browser.eval("document.querySelector('button[type=submit]').click()")
        browser.wait_for("!location.pathname.startsWith('/auth')", timeout=30)
        browser.navigate(f"{live.url}/dags/{GATE}/runs/{run_id}/tasks/quality_gate/required_actions")
        approve = "[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Approve')"
        try:
            browser.wait_for(f"!!{approve}", timeout=60)
        finally:
            browser.screenshot(OUTPUT / "required_action.png")
        browser.eval(f"{approve}.click()")
        assert live.finished(run_id)["state"] == "success"
    finally:
        browser.close()
    TIMINGS["Required Actions in Chromium -> published"] = time.monotonic() - started
    record = live.committed(ds)
    assert (record["run_id"], record["approved_by"]) == (run_id, f"{user} in Airflow")
    assert _decision_shown(live, run_id) == f"✅ Approved by {user} in Airflow"


def _decision_shown(live: Live, run_id: str) -> str:
    """What the gate message of a run says once decided outside Slack (the gate task's chat.update)."""
    ts = live.gate_message(run_id)["ts"]
    update = wait_until("the gate message updated", lambda: next(
        (c for c in live.web.api_calls("chat.update") if c.args.get("ts") == ts), None), timeout=30)
    assert update.response["ok"], update.response
    blocks = json.loads(update.args["blocks"]) if isinstance(update.args["blocks"], str) else update.args["blocks"]
    assert not [b for b in blocks if b.get("type") == "actions"]
    return blocks[-1]["text"]["text"]
