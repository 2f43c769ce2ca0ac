"""Data quality: per-column statistics of one run (`statistics`, with `sketch` for a run that has no
baseline yet) and the drift measures between two of them (`measures`, with the default thresholds).
The gate that acts on them is not built yet (docs/quality.md). Imports nothing of mlbatch but errors;
numpy and pyarrow only, no Beam (a Beam CombineFn wraps `ColumnSummary`, see `statistics`)."""
