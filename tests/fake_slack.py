"""A local fake of the Slack Web API over real HTTP, for tests: point `WebClient(base_url=...)` (or a Slack
connection's `extra.base_url`) at `FakeSlack.api_url`.

It records every call, checks the token, enforces Slack's message limits the way Slack answers them
(`msg_blocks_too_long`, `invalid_blocks`), implements the external file-upload flow
(files.getUploadURLExternal -> POST to the upload URL -> files.completeUploadExternal), chat.update
and an incoming webhook, and can be told to answer 429 with Retry-After, 500, an error, or to be slow -- for the next
calls (`fail_next`) or for as long as an outage lasts (`set_outage`, on a clock the test may simulate) --
or to hang (`hold`: every request waits unanswered until `release`), so that a test can show a caller
gave up on Slack by an event (it returned while its request was still held) instead of by a stopwatch.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlparse

VALID_TOKEN = "xoxb-fake-0000000000-valid-token"
CHANNELS = {"#ml-alerts": "C0MLALERTS", "#alerts": "C0ALERTS", "#ml-oncall": "C0ONCALL"}


@dataclass
class Call:
    method: str  # Web API method ("chat.postMessage"), "upload" or "webhook"
    args: dict
    headers: dict
    at: float
    status: int = 200
    response: dict = field(default_factory=dict)


@dataclass
class Trouble:
    status: int
    body: dict | None = None
    headers: dict = field(default_factory=dict)
    delay_s: float = 0.0
    text: str | None = None  # a body that is not JSON (a proxy's error page), instead of `body`


class FakeSlack:
    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock  # stamps `Call.at` (and decides outages): a test's simulated clock, or real time
        self.calls: list[Call] = []
        self.messages: list[dict] = []  # accepted chat.postMessage arguments, with "ts" and "channel" id
        self.files: dict[str, dict] = {}  # file id -> {"content", "raw" (bytes), "filename", "channel_id", ...}
        self.webhook_posts: list[dict] = []
        self.delay_s = 0.0
        self.held = 0  # requests that arrived while held and are waiting for release()
        self._answer = threading.Event()
        self._answer.set()
        self._troubles: list[Trouble] = []
        self._outage: Callable[[], bool] | None = None
        self._outage_answers: list[Trouble] = []
        self._outage_calls = 0
        self._lock = threading.Lock()
        self._ts = 1_700_000_000.000100
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # --- control -------------------------------------------------------------------------------
    def __enter__(self) -> FakeSlack:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/"

    @property
    def webhook_url(self) -> str:
        return f"{self.base_url}/services/T000/B000/fakewebhook"

    def fail_next(self, count: int, status: int, body: dict | None = None, headers: dict | None = None,
                  delay_s: float = 0.0) -> None:
        """The next `count` Web API calls answer `status` (e.g. 429 with {"Retry-After": "1"}, 500)."""
        with self._lock:
            self._troubles.extend(Trouble(status, body, headers or {}, delay_s) for _ in range(count))

    def set_outage(self, active: Callable[[], bool] | None, answers: list[Trouble] | None = None) -> None:
        """While `active()` is true, every Web API call gets the next of `answers`, in turn (e.g. a 500,
        then a 429 with Retry-After); None ends the outage."""
        with self._lock:
            self._outage, self._outage_answers = active, list(answers or [Trouble(500)])

    def hold(self) -> None:
        """From now on every request waits, unanswered, until `release()` (or the end of the `with`)."""
        self._answer.clear()

    def release(self) -> None:
        self._answer.set()

    def api_calls(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    # --- server --------------------------------------------------------------------------------
    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                fake._handle(self)

            def do_GET(self):
                fake._handle(self)

        return Handler

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        url = urlparse(req.path)
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in req.headers.items()}
        if not self._answer.is_set():
            with self._lock:
                self.held += 1
            self._answer.wait()
        if self.delay_s:
            time.sleep(self.delay_s)
        if url.path.startswith("/upload/"):
            return self._upload(req, url.path.rsplit("/", 1)[-1], raw, headers)
        if url.path.startswith("/services/"):
            payload = json.loads(raw or b"{}")
            self.webhook_posts.append(payload)
            self.calls.append(Call("webhook", payload, headers, self.clock()))
            return self._reply(req, 200, text="ok")
        method = url.path.removeprefix("/api/")
        args = dict(parse_qsl(url.query))
        if headers.get("content-type", "").startswith("application/json"):
            args.update(json.loads(raw or b"{}"))
        elif raw:
            args.update(parse_qsl(raw.decode()))
        with self._lock:
            trouble = self._troubles.pop(0) if self._troubles else None
            if trouble is None and self._outage is not None and self._outage():
                trouble = self._outage_answers[self._outage_calls % len(self._outage_answers)]
                self._outage_calls += 1
        if trouble:
            time.sleep(trouble.delay_s)
            body = trouble.body or {"ok": False, "error": "ratelimited" if trouble.status == 429 else "fatal_error"}
            self.calls.append(Call(method, args, headers, self.clock(), trouble.status, body))
            if trouble.text is not None:
                return self._reply(req, trouble.status, None, trouble.headers, text=trouble.text)
            return self._reply(req, trouble.status, body, trouble.headers)
        status, body = self._api(method, args, headers)
        self.calls.append(Call(method, args, headers, self.clock(), status, body))
        self._reply(req, status, body)

    def _api(self, method: str, args: dict, headers: dict) -> tuple[int, dict]:
        if headers.get("authorization") != f"Bearer {VALID_TOKEN}":
            return 200, {"ok": False, "error": "invalid_auth"}
        if method == "auth.test":
            return 200, {"ok": True, "team": "fake", "user": "mlbatch"}
        if method == "chat.postMessage":
            return 200, self._post_message(args)
        if method == "chat.update":
            return 200, self._update_message(args)
        if method == "files.getUploadURLExternal":
            file_id = f"F{len(self.files) + 1:08d}"
            self.files[file_id] = {"filename": args.get("filename"), "length": int(args.get("length", 0))}
            return 200, {"ok": True, "upload_url": f"{self.base_url}/upload/{file_id}", "file_id": file_id}
        if method == "files.completeUploadExternal":
            files = json.loads(args["files"]) if isinstance(args.get("files"), str) else args.get("files", [])
            for f in files:
                if f["id"] not in self.files or "content" not in self.files[f["id"]]:
                    return 200, {"ok": False, "error": "file_not_found"}
                self.files[f["id"]].update(title=f.get("title"), channel_id=args.get("channel_id"),
                                           thread_ts=args.get("thread_ts"),
                                           initial_comment=args.get("initial_comment"))
            return 200, {"ok": True, "files": [{"id": f["id"]} for f in files]}
        return 200, {"ok": False, "error": "unknown_method"}

    def _post_message(self, args: dict) -> dict:
        channel = args.get("channel")
        channel_id = CHANNELS.get(channel, channel if channel in CHANNELS.values() else None)
        if channel_id is None:
            return {"ok": False, "error": "channel_not_found"}
        blocks, problem = _blocks(args)
        if problem:
            return {"ok": False, "error": problem}
        if not args.get("text") and not blocks:
            return {"ok": False, "error": "no_text"}
        with self._lock:
            self._ts += 1
            ts = f"{self._ts:.6f}"
        self.messages.append({**args, "blocks": blocks, "ts": ts, "channel_id": channel_id})
        return {"ok": True, "channel": channel_id, "ts": ts, "message": {"text": args.get("text"), "ts": ts}}

    def _update_message(self, args: dict) -> dict:
        """chat.update: the message of `channel` (an id, as Slack requires) and `ts`, its text and blocks
        replaced in `messages` (the earlier versions stay in `calls`)."""
        found = [m for m in self.messages if m["channel_id"] == args.get("channel") and m["ts"] == args.get("ts")]
        if not found:
            return {"ok": False, "error": "message_not_found"}
        blocks, problem = _blocks(args)
        if problem:
            return {"ok": False, "error": problem}
        found[0].update(text=args.get("text", found[0].get("text")), blocks=blocks, edited=True)
        return {"ok": True, "channel": args["channel"], "ts": args["ts"], "text": found[0]["text"]}

    def _upload(self, req, file_id: str, raw: bytes, headers: dict) -> None:
        if file_id not in self.files:
            return self._reply(req, 404, text="unknown upload url")
        self.files[file_id]["content"] = raw.decode("utf-8", errors="replace")
        self.files[file_id]["raw"] = raw
        self.calls.append(Call("upload", {"file_id": file_id, "bytes": len(raw)}, headers, self.clock()))
        self._reply(req, 200, text=f"OK - {len(raw)}")

    @staticmethod
    def _reply(req, status: int, body: dict | None = None, headers: dict | None = None, text: str | None = None):
        data = (json.dumps(body) if body is not None else text or "").encode()
        try:
            req.send_response(status)
            req.send_header("Content-Type", "application/json" if body is not None else "text/plain")
            req.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                req.send_header(k, v)
            req.end_headers()
            req.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
            pass


def _blocks(args: dict) -> tuple[list, str | None]:
    """A message's blocks (JSON text in form posts) and Slack's objection to them, if any."""
    blocks = args.get("blocks") or []
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    return blocks, block_problem(blocks)


def block_problem(blocks: list) -> str | None:
    """Slack's answer to a message over its limits, or None."""
    if len(blocks) > 50:
        return "invalid_blocks"
    total = 0
    for block in blocks:
        texts = []
        if isinstance(block.get("text"), dict):
            texts.append(block["text"].get("text", ""))
        texts += [f.get("text", "") for f in block.get("fields", [])]
        texts += [e.get("text", "") if isinstance(e.get("text"), str) else e.get("text", {}).get("text", "")
                  for e in block.get("elements", [])]
        for t in texts:
            if block.get("type") == "section" and len(t) > 3000:
                return "invalid_blocks"
            total += len(t)
        if block.get("type") == "header" and len(block["text"]["text"]) > 150:
            return "invalid_blocks"
    return "msg_blocks_too_long" if total > 12_000 else None
