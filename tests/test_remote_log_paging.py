"""Remote log excerpts read every page: all of a SageMaker job's CloudWatch streams (moto server over
HTTP, more streams than one DescribeLogStreams page and more events than one GetLogEvents call), and
Cloud Logging entries over several ListLogEntries pages (the real GAPIC pager at the client boundary:
there is no Cloud Logging emulator).
"""

from __future__ import annotations

import time

from cloud_backends import aws_conn  # noqa: F401


def test_sagemaker_log_tail_pages_through_all_streams_and_events(aws_conn, monkeypatch):  # noqa: F811
    from mlbatch.hooks import sagemaker
    from mlbatch.remote_logs import remote_log_tail

    logs = aws_conn.client("logs")
    group, job = sagemaker.LOG_GROUP, f"paging-{time.monotonic_ns()}-a1"
    try:
        logs.create_log_group(logGroupName=group)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    now = int(time.time() * 1000) - 600_000  # CloudWatch refuses events older than 14 days
    # 51 streams: DescribeLogStreams answers 50 at most per page; the newest lines are on the second page.
    written = []
    for n in range(51):
        stream = f"{job}/i-{n:02d}"
        if n < 49:  # older lines, one per stream
            events = [{"timestamp": now + 1_000 * n, "message": f"i-{n:02d} line 0"}]
        else:  # the last two streams' lines interleave
            events = [{"timestamp": now + 100_000 + 10 * i + n - 49, "message": f"i-{n:02d} line {i}"}
                      for i in range(12)]
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
        logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events)
        written += [(e["timestamp"], f"[i-{n:02d}] {e['message']}") for e in events]
    other = f"{job}-b/i-00"  # another job whose name starts with this one's: not ours
    logs.create_log_stream(logGroupName=group, logStreamName=other)
    logs.put_log_events(logGroupName=group, logStreamName=other,
                        logEvents=[{"timestamp": now + 200_000, "message": "not ours"}])
    monkeypatch.setattr(sagemaker, "EVENTS_PER_CALL", 5)  # so 12 events take 3 calls per stream

    remote = {"backend": "sagemaker", "job_name": job, "region": "us-east-1", "aws_conn_id": "aws_default"}
    tail = remote_log_tail(remote, lines=40)  # 24 interleaved lines, then the newest single ones
    assert tail == [line for _, line in sorted(written)[-40:]]
    assert tail[-1] == "[i-50] i-50 line 11" and tail[-24:-22] == ["[i-49] i-49 line 0", "[i-50] i-50 line 0"]
    assert tail[0] == "[i-33] i-33 line 0"


def logging_client(pages: list[list], requests: list):
    """A Cloud Logging client whose ListLogEntries answers `pages` in turn (the page token is the page's
    index), through the GAPIC pager the real client returns; each request is recorded."""
    from google.cloud.logging_v2.services.logging_service_v2.pagers import ListLogEntriesPager
    from google.cloud.logging_v2.types import ListLogEntriesRequest, ListLogEntriesResponse

    def rpc(request, **_):
        assert type(request) is ListLogEntriesRequest
        assert 0 < request.page_size <= 1000, request.page_size  # the API refuses other page sizes
        requests.append(ListLogEntriesRequest(request))
        index = int(request.page_token or 0)
        more = str(index + 1) if index + 1 < len(pages) else ""
        return ListLogEntriesResponse(entries=pages[index], next_page_token=more)

    class Client:
        def list_log_entries(self, *, request):
            return ListLogEntriesPager(method=rpc, request=request, response=rpc(request))

    return Client()


def test_cloud_logging_tail_pages_until_it_has_the_newest_lines(monkeypatch):
    from google.cloud.logging_v2.types import LogEntry
    from google.logging.type.log_severity_pb2 import INFO

    from mlbatch.backends import cloud_logging
    from mlbatch.remote_logs import remote_log_tail

    newest_first = [LogEntry(text_payload=f"line {i}", severity=INFO) for i in range(249, -1, -1)]
    # Pages of 50 newest first, and an empty one between (Cloud Logging sends those while it scans).
    pages = [newest_first[:50], newest_first[50:100], [], *(newest_first[i:i + 50] for i in (100, 150, 200))]
    requests: list = []
    monkeypatch.setattr(cloud_logging, "logging_client", lambda conn_id: logging_client(pages, requests))

    tail = remote_log_tail({"backend": "dataflow", "project": "p", "region": "r", "job_id": "j-1"}, lines=120)
    assert tail == [f"INFO line {i}" for i in range(130, 250)]  # newest 120, oldest first
    assert [r.page_token for r in requests] == ["", "1", "2", "3"]  # nothing asked after the 120th entry
    assert {(r.page_size, r.order_by) for r in requests} == {(120, "timestamp desc")}

    requests.clear()
    assert len(remote_log_tail({"backend": "dataflow", "project": "p", "region": "r", "job_id": "j-1"},
                               lines=500)) == 250
    assert len(requests) == len(pages)  # every page, when the job logged fewer lines than asked


def test_cloud_logging_tail_bounds_pages_and_page_size(monkeypatch):
    from google.cloud.logging_v2.types import LogEntry

    from mlbatch.backends import cloud_logging

    requests: list = []
    monkeypatch.setattr(cloud_logging, "logging_client", lambda conn_id: logging_client([[]] * 100, requests))
    assert cloud_logging.tail("p", "f", 30, "google_cloud_default") == []
    assert len(requests) == cloud_logging.PAGES_MAX  # an alert does not wait on endless empty pages

    requests.clear()
    entries = [LogEntry(text_payload=f"line {i}") for i in range(2500)]
    pages = [entries[:1000], entries[1000:2000], entries[2000:]]
    monkeypatch.setattr(cloud_logging, "logging_client", lambda conn_id: logging_client(pages, requests))
    tail = cloud_logging.tail("p", "f", 2100, "google_cloud_default")
    assert tail[0] == "DEFAULT line 2099" and tail[-1] == "DEFAULT line 0" and len(tail) == 2100
    assert [r.page_size for r in requests] == [1000] * 3
