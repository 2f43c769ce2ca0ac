"""Cloud prediction backends, one module per backend (`sagemaker`, `vertex`, `dataflow`).

Each module turns the spec's backend-neutral `compute:`/`network:` blocks into its service's terms,
submits through the official Airflow provider, re-attaches to a job a previous try already started
(see `job_names`), cancels on kill, and exposes `log_tail(remote_job, lines)` for alerts.
This package's `__init__` and `auto` stay import-light: the spec loader uses `auto` at DAG-parse time.
"""
