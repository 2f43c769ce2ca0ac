"""Where predict's job runs: one module per backend (`local`, `dataflow`, `sagemaker`, `vertex`), each a
`base.Backend` (submit a request, describe, read the result, cancel). Imported by the operators, and
by class path by alerts and the triggerer; a backend never imports or receives an operator. Recipe for
a new one: docs/adding-a-backend.md.

Each module turns the spec's backend-neutral `compute:`/`network:` blocks into its service's terms,
submits through the official Airflow provider (via `mlbatch.hooks`), re-attaches to a job a previous
try already started (see `job_names`) and cancels on kill. This package's `__init__`, `base` and
`dataflow_options` stay import-light: the operators import them at DAG-parse time.
"""
