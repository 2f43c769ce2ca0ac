"""A Beam RunInference ModelHandler for any MLflow model, fast for scikit-learn.

Elements are pandas DataFrames that are already batches (``batch_rows`` rows read from one file
piece), so BatchElements is told to pass them through one at a time (max_batch_size=1) instead of
regrouping big frames; if a runner still hands over several, run_inference predicts on them in one
concatenated call and splits the result back per frame.

Batch size (``compute.batch_rows``, default 65,536). Measured on this machine, one core
(OMP_NUM_THREADS=1), natality model (60 trees, depth 6), rows/s of predict alone:
1K rows 236K, 4K 299K, 16K 310K, 64K 458K, 256K 467K; for 30 float features: 1K 326K, 4K 400K,
16K 398K, 64K 390K, 256K 347K. Below ~64K rows per call the fixed cost per call (input checks,
thread set-up, Beam's per-element work) shows; above it nothing is gained and the batch stops
fitting in cache. One 64K batch of 30 float features is 16 MB, held ~3 times (Arrow, pandas,
the float matrix), so a worker's memory is bounded by the batch, not by the data.

Predict path. The model is always loaded through ``mlflow.pyfunc`` (any flavor, ``models:/`` or
artifact URIs). For the sklearn flavor with an estimator fitted on named columns, batches go straight
to the estimator's method (the one pyfunc would call, ``predict_fn``, or the job's
``output.predictions.method``) as one float64 matrix in the estimator's own column order
(``feature_names_in_``), skipping pyfunc's per-batch schema enforcement and DataFrame copies (~10% of
predict time on the natality data). Everything else uses pyfunc. What the model returns becomes the
output columns through mlbatch_beam.outputs (one value, one column per class, named columns).

MLflow's load-time check of every pip requirement against the installed packages scans all
installed distributions (~0.3 s per load here); for sklearn models only the version that matters
(the flavor's ``sklearn_version``) is compared and a mismatch is logged.

Model sharing. By default one copy per worker process (RunInference's ``Shared`` hands the same
object to every thread). ``large_model=True`` or ``model_copies=N`` make Beam load the model in
separate server processes (N copies per machine) that worker processes call through a proxy, for
models too big for one copy per process. ``model_loads`` counts actual loads either way.
"""
from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler

from mlbatch_beam.outputs import PredictionOutput, check_classes

MODEL_NAMESPACE = "mlbatch.model"
DEFAULT_BATCH_ROWS = 65_536

log = logging.getLogger(__name__)


def prediction_array(raw, num_rows: int) -> np.ndarray:
    """One prediction per row as a 1-D numpy array, from whatever predict returned."""
    return PredictionOutput().columns_of(raw, num_rows)["prediction"]


def native_sklearn(pyfunc) -> Any | None:
    """The fitted sklearn estimator behind a pyfunc model, if it can be called directly.

    Only when the estimator knows its input columns by name (so the matrix can be built in its
    order, whatever order the spec lists); it is then called with the method pyfunc would call
    (``predict_fn``: predict, predict_proba, ...) or the one the job asks for.
    """
    if pyfunc.loader_module != "mlflow.sklearn":
        return None
    estimator = pyfunc.get_raw_model()
    if getattr(estimator, "feature_names_in_", None) is None:
        return None
    return estimator


def logged_method(pyfunc) -> str:
    """The estimator method pyfunc calls: the flavor's ``predict_fn`` (``pyfunc_predict_fn`` at log time)."""
    return pyfunc.metadata.flavors.get("python_function", {}).get("predict_fn", "predict")


def warn_if_sklearn_version_differs(pyfunc) -> None:
    import sklearn

    saved = pyfunc.metadata.flavors.get("sklearn", {}).get("sklearn_version")
    if saved and saved != sklearn.__version__:
        log.warning("model was saved with scikit-learn %s; this worker has %s", saved, sklearn.__version__)


class LoadedModel:
    """The loaded model behind RunInference: predict on a frame, count the load once.

    Only public methods are used by the handler, so the same calls work on this object and on
    the proxy Beam hands out when the model lives in a shared server process (large_model).
    ``method`` (sklearn only) calls that estimator method instead of what pyfunc calls.
    """

    def __init__(self, pyfunc, estimator=None, method: str | None = None):
        self.pyfunc = pyfunc
        self.estimator = estimator
        self.method = method
        self.columns = None if estimator is None else [str(c) for c in estimator.feature_names_in_]
        self._counted = False
        self._lock = threading.Lock()

    def predict_raw(self, features: pd.DataFrame, params: dict | None = None):
        """What the model returns for the rows (1-D or 2-D array, DataFrame ...), as pyfunc would."""
        if self.estimator is not None and not params and _all_numeric(features, self.columns):
            matrix = np.empty((len(features), len(self.columns)), dtype="float64", order="F")
            for i, name in enumerate(self.columns):
                matrix[:, i] = features[name].to_numpy()
            return getattr(self.estimator, self.method or logged_method(self.pyfunc))(matrix)
        if self.method:
            return getattr(self.pyfunc.get_raw_model(), self.method)(features)
        return self.pyfunc.predict(features, params=params) if params else self.pyfunc.predict(features)

    def predict(self, features: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        return prediction_array(self.predict_raw(features, params), len(features))

    def claim_first_use(self) -> bool:
        """True exactly once per loaded copy: Beam calls load_model from DoFn.setup, where
        metric updates are dropped, so the caller counts the load on first use instead."""
        with self._lock:
            first, self._counted = not self._counted, True
            return first


def _all_numeric(frame: pd.DataFrame, columns: list[str]) -> bool:
    try:
        return all(pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c])
                   for c in columns)
    except KeyError:
        return False  # pyfunc's schema enforcement names the missing column


class MLflowPyfuncModelHandler(ModelHandler[pd.DataFrame, pd.DataFrame, LoadedModel]):
    """Score DataFrames with an MLflow model; output [id, prediction columns] frames.

    ``output`` says which columns the model's answer becomes (mlbatch_beam.outputs); by default
    one ``prediction_column``.

    ``model_uri`` may be ``models:/name/version`` (needs an MLflow tracking
    server: ``tracking_uri`` or MLFLOW_TRACKING_URI at pipeline construction
    is forwarded to workers) or a direct artifact URI (file://, gs://, ...).
    Extra keyword arguments go to Beam's ModelHandler (``large_model``,
    ``model_copies``, batching options).
    """

    def __init__(self, model_uri: str, id_column: str, feature_columns: Sequence[str],
                 prediction_column: str = "prediction", tracking_uri: str | None = None,
                 output: PredictionOutput | None = None, **kwargs):
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
        self.output = output or PredictionOutput(column=prediction_column)
        self.prediction_column = self.output.column

    @property
    def columns(self) -> list[str]:
        return [self.id_column] + self.feature_columns

    def load_model(self) -> LoadedModel:
        import mlflow.artifacts  # heavy imports, only where the model is used
        import mlflow.pyfunc
        from mlflow.models import Model

        local = mlflow.artifacts.download_artifacts(artifact_uri=self.model_uri)  # once; no copy if local
        is_sklearn = Model.load(local).flavors.get("python_function", {}).get("loader_module") == "mlflow.sklearn"
        pyfunc = mlflow.pyfunc.load_model(local, suppress_warnings=is_sklearn)
        if is_sklearn:
            warn_if_sklearn_version_differs(pyfunc)
        method = self.output.method
        if method and (not is_sklearn or not hasattr(pyfunc.get_raw_model(), method)):
            raise ValueError(f"output.predictions.method {method!r}: model {self.model_uri} is not a "
                             f"scikit-learn model with that method")
        if is_sklearn:
            check_classes(self.output, getattr(pyfunc.get_raw_model(), "classes_", None))
        estimator = native_sklearn(pyfunc)
        if estimator is not None:
            # The matrix is built by column name in the estimator's own order (LoadedModel.predict),
            # so sklearn's "X does not have valid feature names" warning would only be noise.
            warnings.filterwarnings("ignore", message="X does not have valid feature names",
                                    category=UserWarning)
            missing = [str(c) for c in estimator.feature_names_in_ if c not in self.feature_columns]
            if missing:
                raise ValueError(f"model {self.model_uri} needs columns {missing} that the job does not "
                                 f"pass; its feature columns are {self.feature_columns}")
        return LoadedModel(pyfunc, estimator, method)

    def run_inference(self, batch: Sequence[pd.DataFrame], model: LoadedModel,
                      inference_args: dict[str, Any] | None = None) -> Iterable[pd.DataFrame]:
        if model.claim_first_use():
            Metrics.counter(self.get_metrics_namespace(), "model_loads").inc()
        frames = list(batch)
        if len(frames) == 1:
            features = frames[0][self.feature_columns]
        else:
            features = pd.concat([f[self.feature_columns] for f in frames], ignore_index=True)
        columns = self.output.columns_of(model.predict_raw(features, inference_args or None), len(features))
        offset = 0
        for frame in frames:
            rows = len(frame)
            yield pd.DataFrame({
                self.id_column: frame[self.id_column].to_numpy(),
                **{name: values[offset:offset + rows] for name, values in columns.items()},
            })
            offset += rows

    def get_num_bytes(self, batch: Sequence[pd.DataFrame]) -> int:
        # The default pickles the whole batch just to measure it.
        return int(sum(frame.memory_usage(index=False).sum() for frame in batch))

    def get_metrics_namespace(self) -> str:
        return MODEL_NAMESPACE

    def validate_inference_args(self, inference_args: dict[str, Any] | None):
        """Inference args are passed to pyfunc predict as ``params``."""

