"""Point MLflow (this process and the subprocesses it starts) at another registry for a block, and put
everything back after: MLflow's set_tracking_uri/set_registry_uri also export MLFLOW_TRACKING_URI /
MLFLOW_REGISTRY_URI, which later tests and live stacks would inherit (tests/conftest.py's
`mlflow_registry_unchanged` fails a test that leaks them)."""

from __future__ import annotations

import os
from contextlib import contextmanager


@contextmanager
def mlflow_pointed_at(uri: str):
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved = tracking_utils._tracking_uri, registry_utils._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
