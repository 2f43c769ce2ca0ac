"""The benchmark's inputs: generated once under .bench/ and reused by every later `make bench`.

Three data sets, each written twice, in the formats the two predict backends read after prep:
Parquet (direct-model job, stock RunInference, raw limit) and JSON Lines (`local` backend).
The rows are already valid (prep's output), so every case scores every row.

- natality_1m, natality_10m: the demo's natality-like rows (4 features, mixed bool/int/float).
- wide_1m: 30 float features, to show how cost moves when rows get wider.

Each data set's model is trained once and registered in a local MLflow registry (SQLite under
.bench/mlflow). Every case scores with that one registered model: the stock Beam
`SklearnModelHandlerNumpy` loads a pickle file, and the MLflow artifact's `model.pkl` (sklearn
flavor, cloudpickle format) loads with plain `pickle.load`, so it is given that very file.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / ".bench"
ROW_GROUP_ROWS = 131_072
WIDE_FEATURES = [f"f{i:02d}" for i in range(30)]


@dataclass
class Dataset:
    name: str
    rows: int
    features: list[str]
    parquet_glob: str
    jsonl_glob: str
    model_uri: str          # models:/<name>/<version> in the bench registry
    artifact_uri: str       # the same model's artifact folder (what the operators pass)
    sklearn_pickle: str     # the artifact's model.pkl, for SklearnModelHandlerNumpy
    schema_json: str = ""   # prep's FeatureSchema as JSON (raw_run validates with it; bench/whole_run.py)
    prediction_column: str = "prediction"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Dataset:
        return cls(**json.loads(text))


def use_bench_registry() -> str:
    """Point MLflow at the bench's own SQLite registry (set before mlflow is imported)."""
    (ROOT / "mlflow").mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{ROOT / 'mlflow' / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["MLBATCH_MLFLOW_ARTIFACT_ROOT"] = str(ROOT / "mlflow" / "artifacts")
    return uri


def natality_frame(rows: int, seed: int, id_offset: int):
    from mlbatch.local.demo.natality import FEATURES, make_frame

    return make_frame(rows, seed=seed, bad_fraction=0.0, id_offset=id_offset)[["id"] + FEATURES]


def wide_frame(rows: int, seed: int, id_offset: int, with_label: bool = False):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (rows, len(WIDE_FEATURES)))
    frame = pd.DataFrame(x, columns=WIDE_FEATURES)
    frame.insert(0, "id", np.arange(id_offset, id_offset + rows, dtype="int64"))
    if with_label:
        weights = np.linspace(-1.0, 1.0, len(WIDE_FEATURES))
        frame["y"] = x @ weights + np.sin(x[:, 0] * x[:, 1]) + rng.normal(0, 0.3, rows)
    return frame


def _write_files(folder: Path, rows: int, files: int, make) -> None:
    """Parquet and JSON Lines files of the same rows, file by file (memory stays per file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlbatch_beam.arrow_io import table_to_jsonl

    (folder / "parquet").mkdir(parents=True, exist_ok=True)
    (folder / "jsonl").mkdir(parents=True, exist_ok=True)
    per_file = -(-rows // files)
    for i in range(files):
        n = min(per_file, rows - i * per_file)
        table = pa.Table.from_pandas(make(n, 100 + i, i * per_file), preserve_index=False)
        pq.write_table(table, folder / "parquet" / f"part-{i:05d}.parquet", row_group_size=ROW_GROUP_ROWS)
        with open(folder / "jsonl" / f"part-{i:05d}.jsonl", "wb") as out:
            for start in range(0, n, 262_144):
                out.write(table_to_jsonl(table.slice(start, 262_144)))
    (folder / "_SUCCESS").write_text("")


def _train(kind: str):
    from sklearn.ensemble import HistGradientBoostingRegressor

    from mlbatch.local.demo.natality import FEATURES, LABEL, make_frame

    if kind == "natality":
        frame = make_frame(200_000, seed=42, bad_fraction=0.0)
        x, y = frame[FEATURES], frame[LABEL]
    else:
        frame = wide_frame(200_000, seed=42, id_offset=0, with_label=True)
        x, y = frame[WIDE_FEATURES], frame["y"]
    return x, HistGradientBoostingRegressor(max_iter=60, max_depth=6, random_state=42).fit(x, y)


def _register(kind: str, model_name: str) -> tuple[str, str]:
    """Train, log and register the model once; return (models:/ URI, artifact URI)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    from mlbatch.run.mlflow_experiments import ensure_experiment

    client = MlflowClient()
    versions = client.search_model_versions(f"name='{model_name}'")
    if not versions:
        x, model = _train(kind)
        with mlflow.start_run(experiment_id=ensure_experiment("bench"), run_name=f"train {model_name}"):
            info = mlflow.sklearn.log_model(
                model, name="model", registered_model_name=model_name,
                signature=infer_signature(x.head(100), model.predict(x.head(100))),
                serialization_format="cloudpickle", pip_requirements=["scikit-learn"])
        version = int(info.registered_model_version)
    else:
        version = max(int(v.version) for v in versions)
    return (f"models:/{model_name}/{version}",
            client.get_model_version_download_uri(model_name, str(version)))


def ensure(name: str, log=print) -> Dataset:
    """The named data set and its model, generated/trained only if missing."""
    kind, size = name.split("_")
    rows = {"1m": 1_000_000, "10m": 10_000_000}[size]
    folder = ROOT / "data" / name
    if not (folder / "_SUCCESS").exists():
        log(f"generating {name} ({rows:,} rows) in {folder}")
        make = natality_frame if kind == "natality" else wide_frame
        _write_files(folder, rows, files=max(4, rows // 1_250_000), make=make)
    use_bench_registry()
    model_name = f"bench_{kind}"
    model_uri, artifact_uri = _register(kind, model_name)
    from mlbatch.local.demo.natality import FEATURES

    return Dataset(
        name=name, rows=rows, features=list(FEATURES) if kind == "natality" else list(WIDE_FEATURES),
        parquet_glob=str(folder / "parquet" / "*.parquet"), jsonl_glob=str(folder / "jsonl" / "*.jsonl"),
        model_uri=model_uri, artifact_uri=artifact_uri,
        sklearn_pickle=str(Path(artifact_uri.removeprefix("file://")) / "model.pkl"))
