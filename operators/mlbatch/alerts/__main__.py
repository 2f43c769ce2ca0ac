"""`python -m mlbatch.alerts flush|show`: re-send alerts Slack did not take, or print the outbox.

`flush` is what a cron/systemd timer (or a maintenance DAG) runs on each worker machine when Slack was
down for longer than the next alert; every new alert also flushes the outbox on its own.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlbatch.alerts", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["flush", "show"])
    parser.add_argument("--dir", help="outbox folder (default MLBATCH_ALERTS_DIR or $AIRFLOW_HOME/mlbatch_alerts)")
    parser.add_argument("--conn-id", default="slack_api_default", help="Slack API connection")
    parser.add_argument("--budget", type=float, default=30.0, help="seconds to spend sending (flush)")
    parser.add_argument("--status", default=None, help="show only alerts with this status (show)")
    parser.add_argument("--last", type=int, default=5, help="how many alerts to show (show)")
    args = parser.parse_args(argv)

    from mlbatch.alerts.outbox import Outbox

    outbox = Outbox(args.dir)
    if args.command == "show":
        from mlbatch.alerts.message import as_text

        entries = outbox.entries(args.status, limit=100_000)[-args.last:]
        for e in entries:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.created))
            print(f"--- alert {e.id} [{e.status}] {e.kind} {stamp} UTC channel {e.channel or '(default)'}"
                  + (f"  last error: {e.last_error}" if e.last_error else ""))
            print(as_text(e.payload.get("blocks") or [], e.payload.get("text", "")))
        if not entries:
            print(f"No alerts in {outbox.path}")
        return 0

    from mlbatch.alerts.delivery import SlackDelivery

    before = len(outbox.entries("pending"))
    result = SlackDelivery(outbox, conn_id=args.conn_id).send_within(None, args.budget)
    after = len(outbox.entries("pending"))
    print(f"{before - after} of {before} pending alerts sent; {after} still pending in {outbox.path}"
          + (f" ({result.detail})" if after else ""))
    return 0 if after == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
