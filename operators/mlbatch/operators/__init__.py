"""One operator per pipeline step. Each module imports only `airflow.sdk` at top level; the heavy
libraries (Beam, MLflow, cloud SDKs) are imported inside `execute()`, so DAG parsing stays cheap."""
