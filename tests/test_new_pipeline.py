"""A new user's path: a freshly registered model and a data file -> a published partition, using only
`mlbatch new` and `mlbatch run`, as processes with no Airflow/MLflow/mlbatch environment variables.

The commands run in an empty working folder with its own HOME, so the embedded defaults (Airflow home
on SQLite, MLflow store, logs) land in `<folder>/.demo`. The model is registered into that store the
way a user's training script would, before any mlbatch command runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

DATE = "2026-11-20"
ROWS = 2_000
BAD = 7  # rows with a null feature: rejected into the dead letters
MLBATCH = str(Path(sys.executable).parent / "mlbatch")


FEATURES = ["tenure_months", "monthly_spend", "has_contract", "plan"]


def customers(rows: int, seed: int = 0):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    tenure = rng.integers(1, 72, rows)
    spend = rng.normal(60, 20, rows).round(2).clip(5, 200)
    contract = rng.random(rows) < 0.5
    plan = rng.choice(["basic", "plus", "pro"], rows)
    churned = (rng.random(rows) < 0.6 - tenure / 150 - 0.3 * contract).astype(int)
    return pd.DataFrame({"customer_id": np.arange(100_000, 100_000 + rows), "tenure_months": tenure,
                         "monthly_spend": spend, "has_contract": contract, "plan": plan, "churned": churned})


TRAIN_AND_REGISTER = """
import os
import mlflow
from mlflow.models import infer_signature
from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder
from test_new_pipeline import FEATURES, customers


class ChurnProbability(mlflow.pyfunc.PythonModel):  # the docs/spec.md example's model: P(churn) per row
    def __init__(self, classifier):
        self.classifier = classifier

    def predict(self, context, model_input, params=None):
        return self.classifier.predict_proba(model_input[FEATURES])[:, 1]


train = customers(1_000, seed=1)
classifier = make_pipeline(
    make_column_transformer((OneHotEncoder(), ["plan"]), remainder="passthrough"), LogisticRegression(),
).fit(train[FEATURES], train["churned"])
model, x = ChurnProbability(classifier), train[FEATURES].head(50)
experiment = mlflow.create_experiment("churn_training", artifact_location=os.path.abspath(".demo/mlflow/artifacts"))
with mlflow.start_run(experiment_id=experiment):
    info = mlflow.pyfunc.log_model(name="model", python_model=model, registered_model_name="churn",
                                   signature=infer_signature(x, model.predict(None, x)))
mlflow.MlflowClient().set_registered_model_alias("churn", "champion", info.registered_model_version)
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """An empty working folder with a registered model (`churn@champion`) and one day of CSV data.

    The model is registered by a separate process, as a user's training script would, into the store
    that `mlbatch` uses by default in this folder (this test process's MLflow settings stay out)."""
    work = tmp_path_factory.mktemp("newuser")
    (work / "home").mkdir()
    (work / ".demo" / "mlflow").mkdir(parents=True)
    script = "import sys; sys.path.insert(0, %r)\n" % str(Path(__file__).parent) + TRAIN_AND_REGISTER
    env = {"PATH": os.environ["PATH"], "HOME": str(work / "home"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{work}/.demo/mlflow/mlflow.db"}
    subprocess.run([sys.executable, "-c", script], cwd=work, env=env, check=True, capture_output=True)

    day = customers(ROWS)
    day.loc[day.index[:BAD], "monthly_spend"] = None
    partition = work / "data" / "customers" / f"ds={DATE}"
    partition.mkdir(parents=True)
    day.to_csv(partition / "part-00000.csv", index=False)
    (partition / "_SUCCESS").write_text("")
    return work


def mlbatch(workdir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    clean = {"PATH": os.environ["PATH"], "HOME": str(workdir / "home")}  # no AIRFLOW_*, MLFLOW_*, MLBATCH_*
    return subprocess.run([MLBATCH, *args], cwd=workdir, env=clean, capture_output=True, text=True,
                          timeout=timeout)


def test_new_then_run_publishes_a_partition(workdir):
    made = mlbatch(workdir, "new", "churn_daily", "--model", "churn@champion",
                   "--input", f"data/customers/ds={DATE}")
    assert made.returncode == 0, made.stderr
    spec_file = workdir / "include" / "pipelines" / "churn_daily.yaml"
    spec = yaml.safe_load(spec_file.read_text())
    assert spec["input"]["id_column"] == "customer_id"
    assert spec["input"]["format"] == "csv"
    assert spec["input"]["uri"] == f"{workdir}/data/customers/ds={{{{ ds }}}}/*.csv"
    assert [(f["name"], f["type"]) for f in spec["input"]["features"]] == [
        ("tenure_months", "int"), ("monthly_spend", "float"), ("has_contract", "bool"), ("plan", "string")]
    assert "churned" in made.stdout  # the column the model does not read is pointed out
    assert "# min: 1" in spec_file.read_text()  # ranges are suggested, commented
    assert '# allowed: ["basic", "plus", "pro"]' in spec_file.read_text()

    again = mlbatch(workdir, "new", "churn_daily", "--model", "churn@champion", "--input", "data")
    assert again.returncode == 2 and "not overwriting" in again.stderr

    unknown = mlbatch(workdir, "run", "churn_daily", "--date", DATE, "--set", "backnd=local")
    assert unknown.returncode == 2 and "backnd: not a trigger parameter" in unknown.stderr

    ran = mlbatch(workdir, "run", "churn_daily", "--date", DATE, timeout=600)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    for task in ("wait_for_data", "resolve_model", "prep", "predict", "publish", "record"):
        assert f"  {task}" in ran.stdout
    assert "validation runs in predict's job (one pass over the input)" in ran.stdout  # the direct model
    assert f"{ROWS:,} rows in, {BAD:,} rejected; {ROWS - BAD:,} rows scored by model v" in ran.stdout

    import pyarrow.parquet as pq

    output = workdir / ".demo" / "data" / "predictions" / "churn_daily" / f"ds={DATE}"
    assert f"output       : {output}" in ran.stdout
    record = json.loads((output / "_SUCCESS").read_text())  # the reader's rule (docs/storage.md)
    published = pq.ParquetDataset(record["files"]).read().to_pandas()
    assert len(published) == ROWS - BAD
    assert set(published["customer_id"]) == set(range(100_000 + BAD, 100_000 + ROWS))
    assert published["prediction"].between(0, 1).all() and published["prediction"].nunique() > 10  # P(churn)
    assert "MLflow run   :" in ran.stdout


def test_run_overrides_are_checked_like_trigger_params():
    from mlbatch.local.run import RunError, trigger_conf
    from mlbatch.spec.loader import load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "include" / "pipelines" / "natality_daily.yaml", "dev")
    assert trigger_conf(spec, ["backend=local", "model.alias=challenger", "date=2026-11-19"]) == {
        "backend": "local", "model_alias": "challenger", "date": "2026-11-19"}
    for bad, says in [("backnd=local", "not a trigger parameter"), ("prep.batch_rows=5", "not a trigger parameter"),
                      ("backend=gpu", "expected one of dataflow, local"), ("date=2026-13-01", "expected a date"),
                      ("backend", "expected key=value")]:
        with pytest.raises(RunError, match=says):
            trigger_conf(spec, [bad])


def test_docs_classifier_example_is_a_valid_spec(tmp_path):
    """The second complete example of docs/spec.md loads in dev and prod."""
    import re

    from mlbatch.spec.loader import load_spec

    text = (Path(__file__).resolve().parents[1] / "docs" / "spec.md").read_text()
    example = re.search(r"```yaml\n(name: churn_daily\n.*?)```", text, re.S).group(1)
    (tmp_path / "churn_daily.yaml").write_text(example)
    for env in ("dev", "prod"):
        spec = load_spec(tmp_path / "churn_daily.yaml", env)
        assert spec.output.prediction_column == "churn_probability"
        assert [f.name for f in spec.input.features] == FEATURES


def test_run_display_reads_airflow_output():
    """`airflow dags test` output (recorded from a run whose model alias did not exist) -> task lines."""
    import io

    from rich.console import Console

    from mlbatch.local.display import RunWatcher

    out = io.StringIO()
    watcher = RunWatcher(Console(file=out, width=200))
    for line in (Path(__file__).parent / "data" / "dags_test_failed_run.log").read_text().splitlines(True):
        watcher.feed(line)
    assert [(t.task_id, t.state) for t in watcher.tasks.values()] == [("wait_for_data", "success"),
                                                                      ("resolve_model", "failed")]
    text = out.getvalue()
    assert "input ready: /data/customers/ds=2026-11-20/_SUCCESS" in text
    assert "MlflowException: Registered model alias nope not found." in text
    assert "Traceback" not in text  # the exception, not the stack
