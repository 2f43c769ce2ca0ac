"""A Beam RunInference ModelHandler for any MLflow pyfunc model.

Elements are pandas DataFrames that are already batches (thousands of rows
read from one file piece), so BatchElements is told to pass them through
one at a time (max_batch_size=1) instead of regrouping big frames; if a
runner still hands over several, run_inference predicts on them in one
concatenated call and splits the result back per frame.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler

MODEL_NAMESPACE = "mlbatch.model"


def prediction_array(raw, num_rows: int) -> np.ndarray:
    """One prediction per row as a 1-D numpy array, from whatever predict returned."""
    if isinstance(raw, pd.DataFrame):
        if raw.shape[1] != 1:
            raise ValueError(
                f"model returned {raw.shape[1]} columns {list(raw.columns)}; expected one prediction per row")
        raw = raw.iloc[:, 0]
    values = raw.to_numpy() if isinstance(raw, pd.Series) else np.asarray(raw)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1 or len(values) != num_rows:
        raise ValueError(f"model returned predictions of shape {values.shape} for {num_rows} rows")
    return values


class LoadedModel:
    """The pyfunc model plus whether its load has been counted yet.

    Beam calls load_model from DoFn.setup, where metric updates are
    dropped, so the load is counted on first use instead. RunInference's
    Shared cache hands this one object to every thread of the process, so
    the count is one per actual load.
    """

    def __init__(self, pyfunc):
        self.pyfunc = pyfunc
        self._counted = False
        self._lock = threading.Lock()

    def count_load_once(self, counter):
        if self._counted:
            return
        with self._lock:
            if not self._counted:
                counter.inc()
                self._counted = True


class MLflowPyfuncModelHandler(ModelHandler[pd.DataFrame, pd.DataFrame, LoadedModel]):
    """Score DataFrames with an MLflow pyfunc model; output [id, prediction] frames.

    ``model_uri`` may be ``models:/name/version`` (needs an MLflow tracking
    server: ``tracking_uri`` or MLFLOW_TRACKING_URI at pipeline construction
    is forwarded to workers) or a direct artifact URI (file://, gs://, ...).
    The model loads once per worker process; pass ``large_model=True`` to
    share one copy across processes instead.
    """

    def __init__(self, model_uri: str, id_column: str, feature_columns: Sequence[str],
                 prediction_column: str = "prediction", tracking_uri: str | None = None,
                 **kwargs):
        env_vars = dict(kwargs.pop("env_vars", {}))
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if tracking_uri:
            env_vars.setdefault("MLFLOW_TRACKING_URI", tracking_uri)
        kwargs.setdefault("min_batch_size", 1)
        kwargs.setdefault("max_batch_size", 1)
        super().__init__(env_vars=env_vars, **kwargs)
        self.model_uri = model_uri
        self.id_column = id_column
        self.feature_columns = list(feature_columns)
        self.prediction_column = prediction_column

    @property
    def columns(self) -> list[str]:
        return [self.id_column] + self.feature_columns

    def load_model(self) -> LoadedModel:
        import mlflow.pyfunc  # heavy import, only where the model is used

        return LoadedModel(mlflow.pyfunc.load_model(self.model_uri))

    def run_inference(self, batch: Sequence[pd.DataFrame], model: LoadedModel,
                      inference_args: dict[str, Any] | None = None) -> Iterable[pd.DataFrame]:
        model.count_load_once(Metrics.counter(self.get_metrics_namespace(), "model_loads"))
        frames = list(batch)
        if len(frames) == 1:
            features = frames[0][self.feature_columns]
        else:
            features = pd.concat([f[self.feature_columns] for f in frames], ignore_index=True)
        if inference_args:
            raw = model.pyfunc.predict(features, params=inference_args)
        else:
            raw = model.pyfunc.predict(features)
        predictions = prediction_array(raw, len(features))
        offset = 0
        for frame in frames:
            rows = len(frame)
            yield pd.DataFrame({
                self.id_column: frame[self.id_column].to_numpy(),
                self.prediction_column: predictions[offset:offset + rows],
            })
            offset += rows

    def get_num_bytes(self, batch: Sequence[pd.DataFrame]) -> int:
        # The default pickles the whole batch just to measure it.
        return int(sum(frame.memory_usage(index=False).sum() for frame in batch))

    def get_metrics_namespace(self) -> str:
        return MODEL_NAMESPACE

    def validate_inference_args(self, inference_args: dict[str, Any] | None):
        """Inference args are passed to pyfunc predict as ``params``."""
