"""One hook per cloud backend: the provider's hook (it owns the Airflow connection, region and client)
plus what our backends ask of that service, in the service's own terms. Backends own the lifecycle
(names, attempts, deferral); hooks own the API calls. Imported only by task processes and the
triggerer, never at DAG-parse time."""
