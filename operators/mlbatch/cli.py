"""`mlbatch validate FILE...`: check pipeline specs without Airflow running (for a user's own CI).

Exit code 0 if every file is valid, 1 otherwise; each problem is printed as
`file:line: field = value: expected ...`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlbatch.errors import SpecError
from mlbatch.spec_loader import ENV_VARIABLES, active_environment, load_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlbatch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser("validate", help="validate pipeline spec files")
    validate.add_argument("files", nargs="+", type=Path)
    validate.add_argument(
        "--env", action="append", dest="envs",
        help=f"environment(s) to validate (repeatable); default: {'/'.join(ENV_VARIABLES)} or 'dev'",
    )
    args = parser.parse_args(argv)

    failed = 0
    for path in args.files:
        for env in args.envs or [active_environment()]:
            try:
                spec = load_spec(path, env)
            except SpecError as exc:
                failed += 1
                print(exc, file=sys.stderr)
            else:
                print(f"ok  {path} [{env}] -> DAG {spec.dag_id}, backend {spec.predict.backend}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
