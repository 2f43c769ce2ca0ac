"""A natality-like data set and a small model for it, made on this machine (no downloads).

The columns follow the public natality sample used in Google's Dataflow prediction comparison (seed
004): is_male, mother_age, plurality, gestation_weeks -> weight_pounds. A small share of rows is made
invalid on purpose (null, out of range), so the demo shows the dead-letter path and the count
reconciliation doing real work.
"""

from __future__ import annotations

from pathlib import Path

FEATURES = ["is_male", "mother_age", "plurality", "gestation_weeks"]
LABEL = "weight_pounds"


def make_frame(rows: int, seed: int = 0, bad_fraction: float = 0.001, id_offset: int = 0):
    """Return a pandas DataFrame with `id`, the features and the label."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    is_male = rng.random(rows) < 0.512
    mother_age = np.clip(rng.normal(28.5, 6.0, rows), 12, 55).round(0)
    plurality = rng.choice([1, 2, 3], size=rows, p=[0.966, 0.032, 0.002])
    gestation = np.clip(rng.normal(38.7, 2.2, rows) - 1.8 * (plurality - 1), 20, 45).round(0)
    weight = (
        7.35 + 0.28 * is_male - 1.35 * (plurality - 1) + 0.42 * (gestation - 39)
        - 0.004 * (mother_age - 28) ** 2 + rng.normal(0, 0.9, rows)
    ).clip(0.5, 14)
    frame = pd.DataFrame({
        "id": np.arange(id_offset, id_offset + rows, dtype="int64"),
        "is_male": is_male,
        "mother_age": mother_age.astype("float64"),
        "plurality": plurality.astype("int64"),
        "gestation_weeks": gestation.astype("float64"),
        LABEL: weight.round(3),
    })
    bad = rng.random(rows) < bad_fraction
    kinds = rng.integers(0, 3, rows)
    frame.loc[bad & (kinds == 0), "gestation_weeks"] = np.nan        # null not allowed
    frame.loc[bad & (kinds == 1), "mother_age"] = 120.0              # above max 60
    frame.loc[bad & (kinds == 2), "plurality"] = 0                   # below min 1
    return frame


def write_partition(folder: Path, rows: int, files: int = 4, seed: int = 0, row_group_rows: int = 131_072,
                    shift: dict[str, float] | None = None):
    """Write `rows` rows as Parquet files plus a `_SUCCESS` marker (written last, as producers do).
    `shift`: feature -> amount added to every value (a drifted day, for the quality gate)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    per_file = -(-rows // files)
    for i in range(files):
        n = min(per_file, rows - i * per_file)
        if n <= 0:
            break
        frame = make_frame(n, seed=seed + i, id_offset=i * per_file).drop(columns=[LABEL])
        for column, amount in (shift or {}).items():
            frame[column] += amount
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / f"part-{i:05d}.parquet",
                       row_group_size=row_group_rows)
    (folder / "_SUCCESS").write_text("")
    return folder


def train_and_register(model_name: str, alias: str = "champion", rows: int = 200_000, seed: int = 42,
                       pip_requirements: list[str] | None = None) -> int:
    """Train a small gradient-boosted model, register it in MLflow and point `alias` at it.

    Returns the registered version. Uses the current MLflow tracking URI. `pip_requirements` given
    skips MLflow's requirement inference (a subprocess that loads the model: ~30 s on a busy machine)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from sklearn.ensemble import HistGradientBoostingRegressor

    frame = make_frame(rows, seed=seed, bad_fraction=0.0)
    x, y = frame[FEATURES], frame[LABEL]
    model = HistGradientBoostingRegressor(max_iter=60, max_depth=6, random_state=seed).fit(x, y)
    from mlbatch.run.mlflow_experiments import ensure_experiment

    with mlflow.start_run(experiment_id=ensure_experiment("natality_training"), run_name=f"train {model_name}"):
        mlflow.log_params({"rows": rows, "max_iter": 60, "max_depth": 6})
        mlflow.log_metric("train_r2", float(model.score(x, y)))
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(x.head(100), model.predict(x.head(100))),
            registered_model_name=model_name,
            serialization_format="cloudpickle",  # skops (MLflow's default) refuses tree models untrusted
            pip_requirements=pip_requirements,
        )
    version = int(info.registered_model_version)
    MlflowClient().set_registered_model_alias(model_name, alias, version)
    return version
