"""The last lines of a Google Cloud job's own log (Vertex AI and Dataflow), from Cloud Logging.

The request is the real `ListLogEntriesRequest` type; credentials come from the Airflow connection
through GoogleBaseHook. `logging_client` is the one seam tests replace (there is no Cloud Logging
emulator).
"""

from __future__ import annotations


def logging_client(gcp_conn_id: str):
    from airflow.providers.google.common.hooks.base_google import GoogleBaseHook
    from google.cloud.logging_v2.services.logging_service_v2 import LoggingServiceV2Client

    credentials = GoogleBaseHook(gcp_conn_id=gcp_conn_id).get_credentials()
    return LoggingServiceV2Client(credentials=credentials)


PAGE_SIZE_MAX = 1000  # ListLogEntries refuses a larger page_size
PAGES_MAX = 20  # Cloud Logging may answer empty pages while it scans; an alert must not wait on them all


def entries_request(project: str, log_filter: str, lines: int):
    from google.cloud.logging_v2.types import ListLogEntriesRequest

    return ListLogEntriesRequest(resource_names=[f"projects/{project}"], filter=log_filter,
                                 order_by="timestamp desc", page_size=min(lines, PAGE_SIZE_MAX))


def tail(project: str, log_filter: str, lines: int, gcp_conn_id: str) -> list[str]:
    """Newest `lines` entries matching the filter, oldest first, as 'SEVERITY message' lines. Pages
    (newest first) until it has them, the entries run out, or PAGES_MAX pages were read."""
    if lines <= 0:
        return []
    client = logging_client(gcp_conn_id)
    pager = client.list_log_entries(request=entries_request(project, log_filter, lines))
    entries = []
    for number, page in enumerate(pager.pages, start=1):
        entries += list(page.entries)[: lines - len(entries)]
        if len(entries) >= lines or number >= PAGES_MAX:
            break
    return [f"{_severity(entry)} {_message(entry)}" for entry in reversed(entries)]


def _severity(entry) -> str:
    from google.logging.type import log_severity_pb2

    return log_severity_pb2.LogSeverity.Name(int(entry.severity))


def _message(entry) -> str:
    if entry.text_payload:
        return entry.text_payload.rstrip()
    payload = dict(entry.json_payload.items()) if entry.json_payload else {}
    return str(payload.get("message") or payload or entry.proto_payload).rstrip()
