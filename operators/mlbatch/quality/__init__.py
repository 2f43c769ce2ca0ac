"""Data quality: the drift measures between two runs' column statistics (`measures`, with the default
thresholds) and the gate's verdict (`gate`). The statistics themselves are computed by the jobs, in
the Beam package (`mlbatch_beam.quality`: Dataflow workers install only that package). Baselines
(`baseline`) are read through the storage layer and MLflow, imported inside the functions."""


def log_model_baseline(frame, model_name: str, version=None, run_id=None, predictions=(), tracking_uri=None) -> str:
    """Log `frame`'s statistics with a model version's MLflow run (`quality.baseline.model: true`);
    see mlbatch.quality.baseline.log_model_baseline."""
    from mlbatch.quality.baseline import log_model_baseline as log

    return log(frame, model_name, version, run_id, predictions, tracking_uri)
