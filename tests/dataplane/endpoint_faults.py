"""Faults a live model endpoint shows, injected in front of the real scoring server, and the small HTTP
server the endpoint emulators (sagemaker_runtime.py, vertex_endpoint.py) and the MLflow proxy share.

`Faults` is set from a test, in the process (`server.faults.refuse(429, count=3)`) or over HTTP
(`POST /__faults` with {"refuse": {"status": 503, "seconds": 2}}, {"stall": {...}}, {"malformed": {...}},
{"die_after": {"requests": 5}}, {"clear": {}}), for another process. Each fault lasts for the next
`count` requests or for `seconds`:
- `refuse(status)`: the service's own error for that status (each emulator words it as its service does);
- `stall(seconds_each)`: the answer comes after a sleep (past the client's timeout);
- `malformed()`: a 200 whose body is not the service's answer (cut-off JSON);
- `die_after(requests)`: after that many more requests the server stops listening (connections are
  refused from then on; the request that crossed the line is cut off without an answer).
`requests` counts what the endpoint received (faulted or not), `bodies` the size of each request body,
`most_at_once` the most requests it was answering at the same time.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from emulators import free_port


@dataclass
class _Fault:
    kind: str
    status: int = 0
    count: int | None = None
    seconds: float | None = None
    seconds_each: float = 0.0
    started: float | None = None

    def take(self) -> bool:
        """Whether this request meets the fault (and count it)."""
        if self.seconds is not None:
            now = time.monotonic()
            self.started = self.started if self.started is not None else now
            return now < self.started + self.seconds
        if self.count is None or self.count > 0:
            if self.count is not None:
                self.count -= 1
            return True
        return False


@dataclass
class Faults:
    faults: list[_Fault] = field(default_factory=list)
    requests: int = 0
    bodies: list[int] = field(default_factory=list)
    die_at: int | None = None
    at_once: int = 0
    most_at_once: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def refuse(self, status: int, count: int | None = None, seconds: float | None = None) -> None:
        self._add(_Fault("refuse", status=status, count=count, seconds=seconds))

    def stall(self, seconds_each: float, count: int | None = None, seconds: float | None = None) -> None:
        self._add(_Fault("stall", count=count, seconds=seconds, seconds_each=seconds_each))

    def malformed(self, count: int | None = None, seconds: float | None = None) -> None:
        self._add(_Fault("malformed", count=count, seconds=seconds))

    def die_after(self, requests: int) -> None:
        with self._lock:
            self.die_at = self.requests + requests

    def clear(self) -> None:
        with self._lock:
            self.faults, self.die_at = [], None
            self.requests, self.bodies, self.most_at_once = 0, [], 0

    def next(self, body_size: int) -> _Fault | None:
        """Count one request and take the fault it meets (None: answer normally)."""
        with self._lock:
            self.requests += 1
            self.bodies.append(body_size)
            if self.die_at is not None and self.requests > self.die_at:
                return _Fault("die")
            return next((fault for fault in self.faults if fault.take()), None)

    def answering(self, change: int) -> None:
        with self._lock:
            self.at_once += change
            self.most_at_once = max(self.most_at_once, self.at_once)

    def apply(self, orders: dict) -> None:
        """POST /__faults: {"refuse": {...}, "stall": {...}, "malformed": {...}, "die_after": {...}, "clear": {}}."""
        for name, kwargs in orders.items():
            getattr(self, name)(**kwargs)


class EndpointServer:
    """A ThreadingHTTPServer on 127.0.0.1 that forwards to the real scoring server; subclasses say how
    the service's requests map to /invocations and how its answers and errors look."""

    def __init__(self, scoring_url: str):
        self.scoring_url = scoring_url.rstrip("/")
        self.faults = Faults()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._http = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler_class())
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._dead = False

    # --- what a subclass writes -------------------------------------------------------------
    def route(self, method: str, path: str) -> bool:
        """Whether the service serves this path."""
        raise NotImplementedError

    def invoke(self, path: str, headers, body: bytes) -> tuple[int, dict, bytes]:
        """The service's answer (status, headers, body) to a request it serves, no fault."""
        raise NotImplementedError

    def error(self, status: int, message: str) -> tuple[int, dict, bytes]:
        """The service's own error answer for `status`."""
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------------------
    def forward(self, body: bytes, content_type: str, timeout_s: float = 600) -> requests.Response:
        return requests.post(f"{self.scoring_url}/invocations", data=body,
                             headers={"Content-Type": content_type}, timeout=timeout_s)

    def start(self) -> EndpointServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if not self._dead:
            self._dead = True
            self._http.shutdown()
            self._http.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _die(self) -> None:
        threading.Thread(target=self.stop, daemon=True).start()

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet: tests read the faults' counts
                pass

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def _serve(self, method: str):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/__faults" and method == "POST":
                    server.faults.apply(json.loads(body or b"{}"))
                    return self._answer(200, {"Content-Type": "application/json"}, b"{}")
                if not server.route(method, self.path):
                    return self._answer(*server.error(404, f"no route {method} {self.path}"))
                server.faults.answering(+1)
                try:
                    self._faulted(body)
                finally:
                    server.faults.answering(-1)

            def _faulted(self, body: bytes):
                fault = server.faults.next(len(body))
                if fault is not None and fault.kind == "die":
                    server._die()
                    self.close_connection = True
                    return  # no answer: the client sees the connection closed
                if fault is not None and fault.kind == "refuse":
                    return self._answer(*server.error(fault.status, f"injected fault: {fault.status}"))
                if fault is not None and fault.kind == "stall":
                    time.sleep(fault.seconds_each)
                status, headers, answer = server.invoke(self.path, self.headers, body)
                if fault is not None and fault.kind == "malformed" and status == 200:
                    answer = answer[: max(1, len(answer) // 2)]
                self._answer(status, headers, answer)

            def _answer(self, status: int, headers: dict, body: bytes):
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout): nothing to answer

        return Handler


class MLflowProxy(EndpointServer):
    """The raw MLflow scoring server's own surface (/invocations, /ping), passed through, with faults."""

    def route(self, method: str, path: str) -> bool:
        return path in ("/invocations", "/ping", "/health")

    def invoke(self, path, headers, body):
        if path != "/invocations":
            answer = requests.get(f"{self.scoring_url}{path}", timeout=10)
        else:
            answer = self.forward(body, headers.get("Content-Type") or "application/json")
        return answer.status_code, {"Content-Type": answer.headers.get("Content-Type", "application/json")}, \
            answer.content

    def error(self, status, message):
        # what a gateway or the server itself answers: MLflow's error JSON shape
        return status, {"Content-Type": "application/json"}, json.dumps(
            {"error_code": "TEMPORARILY_UNAVAILABLE" if status in (429, 503) else "BAD_REQUEST",
             "message": message}).encode()
