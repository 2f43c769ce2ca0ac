"""The real deployment, live: `make up`'s topology (mlbatch.local.stack: api-server, scheduler,
dag-processor, triggerer, MLflow server) on its own PostgreSQL database, driven from outside as users
drive it -- REST API v2, signed Slack commands, the UI in headless Chromium -- plus a kill -9 of a
running task. `DagBag`/`dag.test` cannot show what a live dag-processor, triggerer and supervisor do.

The tests share one stack and run in file order (each builds on the state the previous one left):
`pytestmark` keeps that order in a shuffled run (`pytest --random-order` moves the module as a whole).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from slack_support import ALICE, BOB, SIGNING_SECRET, FakeSlack, free_port, signed, slash_command_form

pytestmark = pytest.mark.random_order(disabled=True)  # one stack, tests in file order (see above)

REPO = Path(__file__).resolve().parents[1]
OUTPUT = Path(os.environ.get("MLBATCH_TEST_OUTPUT") or REPO / ".test-output") / "live_deployment"
PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"
PIPELINE, DATE, ROWS = "natality_daily", "2026-11-20", 40_000
POLICY = f"""
read_only_for_everyone: true
grants:
  - name: ml-platform
    users: [{ALICE}]
    pipelines: ["*"]
    actions: [run, retry]
"""
TIMINGS: dict[str, float] = {}


class Live:
    def __init__(self, stack, root: Path, slack: FakeSlack):
        self.stack, self.root, self.slack = stack, root, slack
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

    def dags(self) -> dict[str, dict]:
        body = self.api("GET", "/api/v2/dags", params={"limit": 100, "exclude_stale": False}).json()
        return {d["dag_id"]: d for d in body["dags"]}

    def task(self, run_id: str, task_id: str) -> dict:
        return self.api("GET", f"/api/v2/dags/{PIPELINE}/dagRuns/{run_id}/taskInstances/{task_id}").json()

    def run(self, run_id: str) -> dict:
        return self.api("GET", f"/api/v2/dags/{PIPELINE}/dagRuns/{run_id}").json()


def wait_until(what: str, predicate, timeout: float = 120, every: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    import psycopg2

    from mlbatch.local.stack import LocalStack

    started = time.monotonic()
    root = tmp_path_factory.mktemp("live")
    database = f"mlbatch_live_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{database}"')
    pipelines = root / "pipelines"  # a copy: the broken spec goes here, never into the repo
    shutil.copytree(REPO / "include" / "pipelines", pipelines)
    spec = yaml.safe_load((pipelines / f"{PIPELINE}.yaml").read_text())
    spec["schedule"] = None  # runs only as the tests trigger them
    spec["tasks"]["retry_delay_minutes"] = 0.05  # the killed task's retry comes in 3 s
    spec["wait"]["poke_seconds"] = 2
    spec["max_active_runs"] = 2  # two runs of one date publish at once (the partition lease's live test)
    (pipelines / f"{PIPELINE}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (root / "policy.yaml").write_text(POLICY)
    slack = FakeSlack().start()
    stack = LocalStack(root / "stack", f"{PG}/{database}", free_port(), free_port(), pipelines,
                       log_port=free_port(), trigger_log_port=free_port(), extra_env={
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
        "MLBATCH_DATA_ROOT": str(root / "data"),
        "MLBATCH_ENV": "dev",
        "MLBATCH_SLACK_POLICY": str(root / "policy.yaml"),
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_BOT_TOKEN": "xoxb-live-test",
        "MLBATCH_SLACK_API_URL": f"{slack.url}/api/",
        "MLBATCH_SLACK_RESPONSE_URL_PREFIX": f"{slack.url}/commands/",
    })
    try:
        stack.start_mlflow()
        registering = _register_model(stack)  # while Airflow's database is migrated and its processes start
        stack.start_airflow()
        stack.wait_healthy(240)
        TIMINGS["stack up (PostgreSQL)"] = time.monotonic() - started
        assert registering.wait(180) == 0, (stack.home / "logs" / "register-model.log").read_text()[-3000:]
        TIMINGS["stack up + model registered"] = time.monotonic() - started
        yield Live(stack, root, slack)
    finally:
        stopping = time.monotonic()
        stack.down(grace=10)
        TIMINGS["stack down"] = time.monotonic() - stopping
        slack.stop()
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()
        TIMINGS["whole module"] = time.monotonic() - started
        OUTPUT.mkdir(parents=True, exist_ok=True)
        (OUTPUT / "timings.json").write_text(json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}, indent=2))
        print("live deployment timings:", json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}))


REGISTER = """
import time, urllib.request
import cloudpickle, sklearn
from mlbatch.local.demo.natality import train_and_register
deadline = time.monotonic() + 180
while True:
    try:
        urllib.request.urlopen("{url}/health", timeout=2)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.5)
train_and_register("natality_weight", rows=5_000, pip_requirements=[
    f"scikit-learn=={{sklearn.__version__}}", f"cloudpickle=={{cloudpickle.__version__}}"])
"""


def _register_model(stack):
    """The demo model, registered in the stack's MLflow server as soon as it answers, from a subprocess
    started at once (MLflow's client state is process-wide; the other tests use their own registry)."""
    import subprocess
    import sys

    (stack.home / "logs").mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", REGISTER.format(url=stack.mlflow_url)], env=stack.env(),
                            stdout=(stack.home / "logs" / "register-model.log").open("w"), stderr=subprocess.STDOUT)


def test_every_pipeline_is_active_and_nothing_is_stale(live):
    dags = wait_until("the specs parsed", lambda: (d := live.dags()) and len(d) >= 3 and d, timeout=60)
    specs = {p.stem for p in (live.root / "pipelines").glob("*.yaml")}
    assert set(dags) == specs
    assert not [d for d in dags.values() if d["is_stale"]]
    assert live.api("GET", "/api/v2/importErrors").json()["total_entries"] == 0


def test_a_broken_spec_leaves_every_other_pipeline_active(live):
    started = time.monotonic()
    spec = yaml.safe_load((live.root / "pipelines" / f"{PIPELINE}.yaml").read_text())
    spec["name"], spec["predict"]["backend"] = "natality_broken", "gpu"
    (live.root / "pipelines" / "natality_broken.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    dags = wait_until("the broken spec's placeholder DAG", lambda: (d := live.dags()).get("natality_broken") and d,
                      timeout=90)
    TIMINGS["broken spec visible"] = time.monotonic() - started
    broken = dags["natality_broken"]
    assert "mlbatch-broken" in {t["name"] for t in broken["tags"]}
    assert broken["description"].startswith("BROKEN SPEC") and "predict.backend = 'gpu'" in broken["description"]
    assert not [d for d in dags.values() if d["is_stale"]]  # the other pipelines stay active
    assert live.api("GET", "/api/v2/importErrors").json()["total_entries"] == 0
    details = live.api("GET", "/api/v2/dags/natality_broken/details").json()
    assert "natality_broken.yaml:" in details["doc_md"] and "expected one of" in details["doc_md"]
    assert live.api("PATCH", f"/api/v2/dags/{PIPELINE}", json={"is_paused": False}).status_code == 200


def test_a_rest_run_with_an_unknown_conf_key_fails_at_its_first_task_without_retry(live):
    """Airflow's REST API accepts any conf key; the run's first task refuses it at try 1, naming the
    valid keys, and its log carries nothing about the broken spec parsed beside it."""
    path = f"/api/v2/dags/{PIPELINE}/dagRuns"
    response = live.api("POST", path, json={"logical_date": None, "conf": {"bogus_key": 1}})
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]
    final = wait_until("the run to fail", lambda: (r := live.run(run_id))["state"] in ("success", "failed") and r,
                       timeout=300, every=1)
    assert final["state"] == "failed"
    first = live.task(run_id, "wait_for_data")
    assert (first["state"], first["try_number"]) == ("failed", 1)
    log = live.api("GET", f"{path}/{run_id}/taskInstances/wait_for_data/logs/1", params={"full_content": True}).text
    assert "TriggerConfError" in log and "Valid keys: model_alias, backend, date" in log
    assert "natality_broken" not in log


def test_rest_trigger_defers_survives_a_killed_task_and_publishes_once(live):
    path = f"/api/v2/dags/{PIPELINE}/dagRuns"
    bad = live.api("POST", path, json={"logical_date": None, "conf": {"backend": "gpu"}})
    assert bad.status_code == 400, bad.text
    started = time.monotonic()
    response = live.api("POST", path, json={"logical_date": None, "conf": {"date": DATE, "backend": "local"}})
    assert response.status_code == 200, response.text
    run_id = response.json()["dag_run_id"]

    # no input yet: wait_for_data defers, and the triggerer (not a worker) holds the wait
    waiting = wait_until("wait_for_data deferred", lambda: (t := live.task(run_id, "wait_for_data"))
                         .get("state") == "deferred" and t, timeout=90)
    wait_until("the triggerer to pick up the trigger",
               lambda: live.task(run_id, "wait_for_data").get("triggerer_job"), timeout=30)
    TIMINGS["trigger -> deferred"] = time.monotonic() - started
    assert waiting["try_number"] == 1

    from mlbatch.local.demo.natality import write_partition

    folder = live.root / "data" / "natality" / f"ds={DATE}"
    write_partition(folder, ROWS, files=3, seed=11, row_group_rows=10_000)

    # kill -9 the prep task's process while its Beam job runs: the job must go with it
    job_pid, task_pid = wait_until("prep's job process", lambda: _job_process("prep.job.lock", live.root),
                                   timeout=120, every=0.05)
    os.kill(task_pid, signal.SIGKILL)
    wait_until("the job process to die with its task", lambda: not _alive(job_pid), timeout=10, every=0.1)

    try:  # generous: on a loaded 2-core machine each task process start takes 10 s and more
        final = wait_until("the run to finish", lambda: (r := live.run(run_id))["state"] in ("success", "failed")
                           and r, timeout=480, every=1)
    except AssertionError as exc:
        tasks = live.api("GET", f"{path}/{run_id}/taskInstances").json()["task_instances"]
        raise AssertionError(f"{exc}; tasks: {[(t['task_id'], t['state'], t['try_number']) for t in tasks]}") from None
    TIMINGS["data landed -> run finished (incl. kill + retry)"] = time.monotonic() - started - TIMINGS["trigger -> deferred"]
    states = {t["task_id"]: (t["state"], t["try_number"]) for t in
              live.api("GET", f"{path}/{run_id}/taskInstances").json()["task_instances"]}
    assert final["state"] == "success", states
    assert states["prep"] == ("success", 2), states  # the killed try, then the retry
    assert not _alive(job_pid)

    # the partition is published once, by this run, with every row accounted for
    output = live.root / "data" / "predictions" / PIPELINE / f"ds={DATE}"
    manifest = json.loads((output / "_SUCCESS").read_text())
    assert manifest["run_id"] == run_id
    assert manifest["rows_in"] == ROWS == manifest["rows_scored"] + manifest["rows_rejected"]
    import pyarrow.parquet as pq

    files = sorted(output.rglob("*.parquet"))
    assert sum(pq.read_metadata(f).num_rows for f in files) == manifest["rows_scored"]
    events = live.api("GET", "/api/v2/assets/events", params={"source_run_id": run_id}).json()
    assert events["total_entries"] == 1, events

    # links: the MLflow run and model version; no remote-job link for a local job; no XCom errors
    record = live.api("GET", f"{path}/{run_id}/taskInstances/record/links").json()["extra_links"]
    assert record["MLflow run"].startswith(f"{live.stack.mlflow_url}/#/experiments/")
    model = live.api("GET", f"{path}/{run_id}/taskInstances/resolve_model/links").json()["extra_links"]
    assert model["MLflow model version"].startswith(f"{live.stack.mlflow_url}/#/models/natality_weight/versions/")
    predict = live.api("GET", f"{path}/{run_id}/taskInstances/predict/links").json()["extra_links"]
    assert predict["Remote job console"] is None
    log = live.api("GET", f"{path}/{run_id}/taskInstances/prep/logs/2", params={"full_content": True}).text
    assert "prep" in log and "XCom not found" not in log


def test_two_runs_of_one_date_publish_one_after_the_other_under_the_partition_lease(live):
    """`max_active_runs: 2`, two REST runs of one date. A lease held by a third party keeps both
    publishes waiting (so they really meet); once it goes, they take the lease one after the other:
    both succeed and the partition names the files of exactly one of them."""
    from mlbatch.local.demo.natality import write_partition
    from mlbatch.run.commit import ATTEMPTS
    from mlbatch.run.lease import LEASE

    folder = live.root / "data" / "natality" / f"ds={DATE}"
    if not (folder / "_SUCCESS").exists():  # when this test runs alone
        write_partition(folder, ROWS, files=3, seed=11, row_group_rows=10_000)
    output = live.root / "data" / "predictions" / PIPELINE / f"ds={DATE}"
    output.mkdir(parents=True, exist_ok=True)
    (output / LEASE).write_text(json.dumps({"holder": "manual__held_by_the_test", "token": "t", "acquired": time.time(),
                                            "expires": time.time() + 3600, "host": "test"}))
    path = f"/api/v2/dags/{PIPELINE}/dagRuns"
    runs = []
    for _ in range(2):
        response = live.api("POST", path, json={"logical_date": None, "conf": {"date": DATE, "backend": "local"}})
        assert response.status_code == 200, response.text
        runs.append(response.json()["dag_run_id"])

    def publish_log(run_id: str) -> str:
        return live.api("GET", f"{path}/{run_id}/taskInstances/publish/logs/1", params={"full_content": True}).text

    wait_until("both publishes waiting for the lease", lambda: all(
        live.task(r, "publish").get("state") == "running" and "manual__held_by_the_test" in publish_log(r)
        for r in runs), timeout=420, every=2)
    (output / LEASE).unlink()  # the holder lets go
    finals = [wait_until("the run to finish", lambda r=r: (x := live.run(r))["state"] in ("success", "failed") and x,
                         timeout=300, every=1) for r in runs]
    assert [f["state"] for f in finals] == ["success", "success"], finals

    record = json.loads((output / "_SUCCESS").read_text())
    assert record["run_id"] in runs
    named = record["files"] + record["dead_letter"]["files"] + (output / "_manifest").read_text().split()
    assert named and all(Path(u).exists() for u in named)
    assert {u.split(f"/{ATTEMPTS}/")[1].split("/")[0] for u in named} == {record["attempt"]}
    assert [p.name for p in (output / ATTEMPTS).iterdir()] == [record["attempt"]]
    assert not (output / LEASE).exists()
    assert all("Committed attempt" in publish_log(r) for r in runs)  # each published whole, one after the other


def test_slack_commands_on_the_api_server(live):
    slack, url = live.slack, f"{live.url}/slack/commands"

    def post(text: str, user: str, headers=None, body=None):
        response_url = slack.response_url()
        body = body or slash_command_form(text, user, response_url)
        return httpx.post(url, content=body, headers=headers or signed(body), timeout=10), response_url

    before = {r["dag_run_id"] for r in live.api("GET", f"/api/v2/dags/{PIPELINE}/dagRuns").json()["dag_runs"]}
    body = slash_command_form(f"run {PIPELINE}", ALICE, slack.response_url())
    forged = httpx.post(url, content=body, headers=signed(body, secret="not-the-secret"), timeout=10)
    stale = httpx.post(url, content=body, headers=signed(body, timestamp=int(time.time()) - 600), timeout=10)
    assert forged.status_code == 401 and stale.status_code == 401
    help_body = slash_command_form("help", ALICE, slack.response_url())
    help_headers = signed(help_body)
    assert httpx.post(url, content=help_body, headers=help_headers, timeout=10).status_code == 200
    assert httpx.post(url, content=help_body, headers=help_headers, timeout=10).status_code == 401  # replayed

    refused, _ = post(f"run {PIPELINE} backend=local", BOB)
    assert refused.status_code == 200
    assert refused.json()["text"].startswith(f"⛔ You are not allowed to `run` `{PIPELINE}`: no grant")

    ok, response_url = post(f"run {PIPELINE} date=2026-11-21 backend=local", ALICE)
    assert ok.json()["text"].startswith("⏳ Working on")
    reply = slack.wait_reply(response_url)
    runs = live.api("GET", f"/api/v2/dags/{PIPELINE}/dagRuns").json()["dag_runs"]
    new = [r for r in runs if r["dag_run_id"] not in before]
    assert len(new) == 1 and new[0]["conf"] == {"date": "2026-11-21", "backend": "local"}
    assert new[0]["note"].startswith(f"triggered from Slack by {ALICE.lower()} ({ALICE})")
    assert new[0]["dag_run_id"] in reply["text"]

    broken, response_url = post("run natality_broken", ALICE)
    assert "its spec is broken" in slack.wait_reply(response_url)["text"]


def test_trigger_form_in_headless_chromium(live):
    from browser import Chromium

    started = time.monotonic()
    browser = Chromium()
    try:
        user, password = live.stack.login()
        browser.navigate(f"{live.url}/auth/login")
        browser.wait_for("document.querySelector('input[name=username]') !== null")
        browser.eval(_fill_js({"username": user, "password": password}))
        browser.eval("document.querySelector('button[type=submit]').click()")
        browser.wait_for("location.pathname === '/' || !location.pathname.startsWith('/auth')", timeout=30)
        browser.navigate(f"{live.url}/dags/{PIPELINE}")
        browser.wait_for("[...document.querySelectorAll('button')].some(b => b.innerText.trim() === 'Trigger')")
        browser.eval("[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Trigger').click()")
        form = "[...document.querySelectorAll('[role=dialog]')].find(d => d.innerText.includes('Run Parameters'))"
        text = browser.wait_for(f"(d => d && d.innerText.includes('model_alias') && d.innerText)({form})", timeout=30)
        names = browser.eval(f"[...{form}.querySelectorAll('input[name^=element_]')].map(e => e.name)")
        choices = {}
        for index, field in enumerate(("model_alias", "backend")):  # open each select as a user does
            x, y = browser.eval(f"(b => {{ b.scrollIntoView(); const r = b.getBoundingClientRect(); "
                                f"return [r.x + r.width / 2, r.y + r.height / 2]; }})"
                                f"({form}.querySelectorAll('input[role=combobox]')[{index}])")
            browser.click(x, y)
            choices[field] = browser.wait_for(
                f"(b => b.getAttribute('aria-expanded') === 'true' && document.getElementById("
                f"b.getAttribute('aria-controls')) && [...document.getElementById(b.getAttribute('aria-controls'))"
                f".querySelectorAll('[role=option]')].map(o => o.innerText))"
                f"({form}.querySelectorAll('input[role=combobox]')[{index}])")
            shot = browser.screenshot(OUTPUT / f"trigger_form_{field}.png")
            browser.click(x, y)  # close it again
        TIMINGS["trigger form in Chromium"] = time.monotonic() - started
    finally:
        browser.close()
    assert names == ["element_model_alias", "element_backend", "element_date"], names
    for name, spec_path in (("model_alias", "model.alias"), ("backend", "predict.backend")):
        assert f"{name}\n" in text and f"spec field `{spec_path}`" in text, text
    assert "date\n" in text and "data date `ds`" in text, text
    assert choices == {"model_alias": ["champion", "challenger"], "backend": ["dataflow", "local"]}, choices
    assert shot.stat().st_size > 10_000
    print(f"trigger form screenshots: {OUTPUT}/trigger_form_*.png")


def _fill_js(values: dict[str, str]) -> str:
    """Set React-controlled inputs the way typing does (native setter + input event)."""
    return "".join(
        f"(() => {{ const el = document.querySelector('input[name={name}]');"
        f" Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(el, {json.dumps(value)});"
        f" el.dispatchEvent(new Event('input', {{bubbles: true}})); }})();"
        for name, value in values.items())


def _job_process(lock_name: str, root: Path) -> tuple[int, int] | None:
    """(job pid, its parent = the task process) of a running job of this stack, found by its lock env."""
    from mlbatch.run.job_process import LOCK_ENV

    marked = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        marker = [e.decode() for e in environ if e.startswith(f"{LOCK_ENV}=".encode())]
        if marker and marker[0].endswith(lock_name) and str(root) in marker[0] and stat[0] != "Z":
            marked[int(entry.name)] = int(stat[1])
    leaders = [(pid, parent) for pid, parent in marked.items() if parent not in marked]  # not Beam's workers
    return leaders[0] if leaders else None


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
