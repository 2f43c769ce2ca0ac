"""`python -m mlbatch.alerts flush [--loop] | show`: deliver the alerts Slack did not take, or print the outbox.

`flush --loop` is the flusher: a long-running process next to the workers (one per outbox) that retries
pending alerts with backoff, honouring Slack's Retry-After, until SIGTERM or SIGINT (exit 0). `make up`
and docker compose run it; elsewhere run it as a service (systemd, a sidecar container). `flush` alone
makes one pass, without waiting for the backoff (a manual nudge, or a cron job where no process can run).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlbatch.alerts", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["flush", "show"])
    parser.add_argument("--dir", help="outbox folder (default MLBATCH_ALERTS_DIR or $AIRFLOW_HOME/mlbatch_alerts)")
    parser.add_argument("--conn-id", default="slack_api_default",
                        help="Slack API connection for alerts that name none (alerts queued by pipelines name theirs)")
    parser.add_argument("--loop", action="store_true", help="flush: keep delivering until SIGTERM/SIGINT")
    parser.add_argument("--poll", type=float, default=None, help="flush --loop: seconds between looks (default 2)")
    parser.add_argument("--heartbeat", default=None,
                        help="flush --loop: touch this file after every round (a container healthcheck reads its age)")
    parser.add_argument("--budget", type=float, default=30.0, help="seconds to spend sending (flush without --loop)")
    parser.add_argument("--status", default=None, help="show only alerts with this status (show)")
    parser.add_argument("--last", type=int, default=5, help="how many alerts to show (show)")
    args = parser.parse_args(argv)

    from mlbatch.alerts.outbox import Outbox

    outbox = Outbox(args.dir)
    if args.command == "show":
        return _show(outbox, args.status, args.last)

    from mlbatch.alerts.flusher import POLL_S, Flusher

    if args.loop:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        Flusher(outbox, conn_id=args.conn_id, poll_s=args.poll or POLL_S, stop=stop, heartbeat=args.heartbeat).run()
        return 0

    before = len(outbox.entries("pending", limit=1_000_000))
    flusher = Flusher(outbox, conn_id=args.conn_id)
    deadline = time.monotonic() + args.budget
    while time.monotonic() < deadline - 0.5:  # one pass: probe now, whatever the backoff says
        if flusher.run_once(honour_backoff=False, budget_s=deadline - time.monotonic()) > 0:
            break
    pending = outbox.entries("pending", limit=1_000_000)
    after = len(pending)
    why = "; ".join(sorted({e.last_error or "" for e in pending}))[:500]
    print(f"{before - after} of {before} pending alerts sent; {after} still pending in {outbox.path}"
          + (f" ({why})" if after else ""))
    return 0 if after == 0 else 1


def _show(outbox, status: str | None, last: int) -> int:
    from mlbatch.alerts.message import as_text

    entries = outbox.entries(status, limit=100_000)[-last:]
    for e in entries:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.created))
        print(f"--- alert {e.id} [{e.status}] {e.kind} {stamp} UTC channel {e.channel or '(default)'}"
              + (f"  last error: {e.last_error}" if e.last_error else ""))
        print(as_text(e.payload.get("blocks") or [], e.payload.get("text", "")))
    if not entries:
        print(f"No alerts in {outbox.path}")
    return 0


if __name__ == "__main__":
    # Outside a task, the task SDK reads connections from environment variables and secrets backends
    # only; as a server-side process the flusher may also read the metadata database, where connections
    # made in the UI live (ensure_secrets_backend_loaded in airflow.sdk.execution_time.supervisor).
    os.environ.setdefault("_AIRFLOW_PROCESS_CONTEXT", "server")
    sys.exit(main())
