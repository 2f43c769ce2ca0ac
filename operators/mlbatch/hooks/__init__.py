"""One hook per cloud backend: the provider's hook (it owns the Airflow connection, region and client)
plus what our backends ask of that service, in the service's own terms. Backends own the lifecycle
(names, attempts, deferral); hooks own the API calls. Imported only by task processes and the
triggerer, never at DAG-parse time."""

from __future__ import annotations


def verdict(state: str, *, succeeded: set[str], ending: set[str], failed: set[str]) -> str:
    """A job state as what it means for a (re)try (mlbatch.backends.job_names.Verdict): any state not
    named here is a job still running."""
    if state in succeeded:
        return "succeeded"
    if state in ending:
        return "ending"
    return "failed" if state in failed else "active"
