"""Can this environment reach a store through a given Airflow connection? Asked before a run starts
(`mlbatch validate --connections`, and the first task through `mlbatch.run.preflight`), so a missing
connection or a dead endpoint is named in seconds, not after the libraries' own retries.

- The connection is looked up as Airflow does (`AIRFLOW_CONN_*` environment variables, the secrets
  backends; inside a task also the metadata database; from the command line the database too, when
  configured and reachable).
- A missing AWS connection is what the amazon provider replaces with boto3's own credential chain
  ("Unable to find AWS Connection ID ..., switching to empty"): accepted only for the built-in default
  id and only when that chain finds credentials; the google provider refuses a missing connection.
- The endpoint (the connection's `endpoint_url` / `gcs.endpoint`, `STORAGE_EMULATOR_HOST`, else the
  cloud's own) must accept a TCP connection within a few seconds.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mlbatch.errors import ConnectionNotFoundError, StorageUnreachableError
from mlbatch.storage.translate import FIX_UNREACHABLE

CONNECT_TIMEOUT_S = 3.0
UNKNOWN = "unknown"  # the lookup itself failed (no database, a backend error): cannot say


@dataclass(frozen=True)
class Reach:
    """How one connection reaches its store from here."""

    conn_id: str
    kind: str                  # "aws" or "gcp"
    connection: Any            # the Airflow connection, None when missing, UNKNOWN when not checkable
    endpoint: str              # where requests go
    note: str = ""             # e.g. "no Airflow connection: boto3's own credentials"


def lookup(conn_id: str) -> Any:
    """The Airflow connection, None when it does not exist, UNKNOWN when the lookup itself failed."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        pass
    except Exception:
        return UNKNOWN
    return _from_database(conn_id)


def _from_database(conn_id: str) -> Any:
    """Outside a task the SDK reads no database; a command-line check asks it directly when it can."""
    if os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN") is None and not os.environ.get("AIRFLOW_HOME"):
        return None
    from airflow.sdk.execution_time import task_runner

    if getattr(task_runner, "SUPERVISOR_COMMS", None) is not None:  # in a task: the SDK asked the API server
        return None
    try:
        from airflow.secrets.metastore import MetastoreBackend

        return MetastoreBackend().get_connection(conn_id)
    except Exception:
        return None


def reach(kind: str, conn_id: str, field: str, explicit: bool, uri: str, purpose: str,
          find=lookup) -> Reach:
    """How `conn_id` reaches the store of `uri`; `ConnectionNotFoundError` when it cannot."""
    connection = find(conn_id)
    label = "AWS" if kind == "aws" else "Google Cloud"
    if connection is None and not (kind == "aws" and not explicit and _aws_environment_credentials()):
        how = _how_to_add(kind, conn_id)
        why = ("the spec names it" if explicit else "it is the default when the spec names none"
               ) + ("" if kind == "gcp" or explicit else ", and no AWS credentials are in the environment either")
        raise ConnectionNotFoundError(
            f"{purpose} {uri} needs the {label} connection {conn_id!r} ({field}): there is no Airflow connection "
            f"{conn_id!r} ({why}). Add it ({how}), or set {field} to a connection that exists")
    note = "no Airflow connection: boto3's own credentials and endpoint" if connection is None else ""
    extra = {} if connection in (None, UNKNOWN) else (connection.extra_dejson or {})
    return Reach(conn_id, kind, connection, endpoint_of(kind, extra), note)


def check_endpoint(found: Reach, uri: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """`StorageUnreachableError` naming the endpoint and the connection when nothing answers there."""
    parts = urlsplit(found.endpoint if "://" in found.endpoint else f"http://{found.endpoint}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
    except OSError as exc:
        cause = f"{type(exc).__name__}: {exc}" + (f"; {found.note}" if found.note else "")
        raise StorageUnreachableError(uri, found.conn_id, FIX_UNREACHABLE, cause, endpoint=found.endpoint) from exc


def endpoint_of(kind: str, extra: dict) -> str:
    """Where the libraries send this connection's requests."""
    if kind == "gcp":
        return (extra.get("gcs.endpoint") or os.environ.get("STORAGE_EMULATOR_HOST")
                or "https://storage.googleapis.com")
    service = (extra.get("service_config") or {}).get("s3") or {}
    region = extra.get("region_name") or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    return (service.get("endpoint_url") or extra.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL") or f"https://s3.{region or 'us-east-1'}.amazonaws.com")


def _aws_environment_credentials() -> bool:
    """Whether boto3's own chain (environment, ~/.aws, container or instance role) finds credentials."""
    try:
        import botocore.session

        return botocore.session.Session().get_credentials() is not None
    except Exception:
        return False


def _how_to_add(kind: str, conn_id: str) -> str:
    env = f"AIRFLOW_CONN_{conn_id.upper()}"
    if kind == "aws":
        return (f"`airflow connections add {conn_id} --conn-type aws --conn-login KEY_ID --conn-password SECRET "
                f"--conn-extra '{{\"endpoint_url\": \"...\", \"region_name\": \"...\"}}'`, or the environment "
                f"variable {env} as JSON; see docs/storage.md")
    return (f"`airflow connections add {conn_id} --conn-type google_cloud_platform --conn-extra "
            f"'{{\"project\": \"...\", \"key_path\": \"...\"}}'`, or the environment variable {env} as JSON; "
            "see docs/storage.md")
