"""`mlbatch`: scaffold, check and run pipeline specs without knowing Airflow.

- `mlbatch new NAME --model MODEL@ALIAS --input URI`: write a spec from the model's signature and a
  sample of the input (mlbatch.local.scaffold).
- `mlbatch validate FILE...`: check specs without Airflow running (for a user's own CI). Exit code 0 if
  every file is valid, 1 otherwise; each problem is printed as `file:line: field = value: expected ...`.
  With `--connections`, also every Airflow connection the spec needs must exist (or the environment
  stand in for it) and its endpoint answer (mlbatch.run.preflight). With `--model`, also the model the
  spec names is looked up in its registry and its signature checked as resolve_model checks it (names,
  the type contract of mlbatch.spec.type_contract, the output kind).
- `mlbatch run NAME [--date D] [--set key=value ...]`: run a pipeline on this machine with the embedded
  defaults of `make demo` (mlbatch.local.run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlbatch.errors import SpecError
from mlbatch.local.env import DEFAULT_HOME
from mlbatch.spec.loader import ENV_VARIABLES, active_environment, load_spec


def main(argv: list[str] | None = None) -> int:
    """Run one `mlbatch` command; its exit status (2: refused before anything ran)."""
    args = build_parser().parse_args(argv)
    if args.command == "new":
        return _new(args)
    if args.command == "run":
        return _run(args)
    return _validate(args)


def build_parser() -> argparse.ArgumentParser:
    """The `mlbatch` command line: `validate`, `new` and `run`."""
    parser = argparse.ArgumentParser(prog="mlbatch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser("validate", help="validate pipeline spec files")
    validate.add_argument("files", nargs="+", type=Path)
    validate.add_argument(
        "--env", action="append", dest="envs",
        help=f"environment(s) to validate (repeatable); default: {'/'.join(ENV_VARIABLES)} or 'dev'",
    )
    validate.add_argument(
        "--connections", action="store_true",
        help="also check that the Airflow connections the spec needs exist (AIRFLOW_CONN_* variables, secrets "
             "backends, the metadata database) and that their endpoints answer",
    )
    validate.add_argument(
        "--model", action="store_true",
        help="also look the spec's model up in its MLflow registry and check input.features and "
             "output.predictions against its signature (the type contract), as resolve_model does",
    )
    new = sub.add_parser("new", help="write a pipeline spec from a registered model and a sample of the input")
    new.add_argument("name", help="pipeline name (lower case, digits, _): the DAG id and file name")
    new.add_argument("--model", required=True, help="MODEL@ALIAS or MODEL/VERSION in the MLflow registry")
    new.add_argument("--input", required=True, help="a file, folder or glob (parquet, CSV or JSON Lines)")
    new.add_argument("--backend", default="dataflow", choices=["dataflow", "local", "sagemaker", "vertex", "endpoint"])
    new.add_argument("--id-column", help="row id column (default: inferred from the sample)")
    new.add_argument("--output", help="output partition URI (default: under the data root, per date)")
    new.add_argument("--home", type=Path, default=DEFAULT_HOME, help="embedded defaults folder (.demo)")
    run = sub.add_parser("run", help="run a pipeline on this machine (embedded Airflow and MLflow defaults)")
    run.add_argument("name", help="pipeline name (in the pipelines folder) or spec file")
    run.add_argument("--date", help="data date YYYY-MM-DD (the run's logical date); default today")
    run.add_argument("--set", action="append", default=[], dest="assignments", metavar="KEY=VALUE",
                     help="override a trigger parameter of the spec for this run (repeatable)")
    run.add_argument("--env", dest="environment", help="spec environment (default: MLBATCH_ENV or 'dev')")
    run.add_argument("--home", type=Path, default=DEFAULT_HOME, help="embedded defaults folder (.demo)")
    run.add_argument("--wait", action="store_true", help="wait for missing input instead of failing at once")
    return parser


def _new(args: argparse.Namespace) -> int:
    from mlbatch.local.infer import ScaffoldError
    from mlbatch.local.scaffold import new_pipeline

    try:
        new_pipeline(args.name, args.model, args.input, backend=args.backend, id_column=args.id_column,
                     output=args.output, home=args.home)
    except ScaffoldError as exc:
        print(f"mlbatch new: {exc}", file=sys.stderr)
        return 2
    return 0


def _run(args: argparse.Namespace) -> int:
    from mlbatch.local.run import RunError, run as run_pipeline

    try:
        return run_pipeline(args.name, args.date, args.assignments, args.environment, args.home, args.wait)
    except RunError as exc:
        print(f"mlbatch run: {exc}", file=sys.stderr)
        return 2


def _validate(args: argparse.Namespace) -> int:
    """Every file in every asked environment; 1 if any is invalid."""
    failed = 0
    for path in args.files:
        for env in args.envs or [active_environment()]:
            try:
                spec = load_spec(path, env)
            except SpecError as exc:
                failed += 1
                print(exc, file=sys.stderr)
            else:
                if args.connections and not _connections_ok(path, env, spec):
                    failed += 1
                    continue
                if args.model and not _model_ok(path, env, spec):
                    failed += 1
                    continue
                print(f"ok  {path} [{env}] -> DAG {spec.dag_id}, backend {spec.predict.backend}"
                      + (f" (auto: {spec.predict.auto_reason})" if spec.predict.auto_reason else ""))
    return 1 if failed else 0


def _connections_ok(path: Path, env: str, spec) -> bool:
    """Print each connection problem of `spec` as `file [env]: ...`; True when there is none."""
    from mlbatch.run.preflight import connection_problems

    problems = connection_problems(spec)
    for problem in problems:
        print(f"{path} [{env}]: {type(problem).__name__}: {problem}", file=sys.stderr)
    return not problems


def _model_ok(path: Path, env: str, spec) -> bool:
    """Print why the spec does not fit its model (or the model cannot be found); True when it fits."""
    from mlbatch.errors import ModelMismatchError, ModelNotFoundError
    from mlbatch.operators.resolve_model import pin_and_check

    try:
        pin_and_check(spec)
    except (ModelMismatchError, ModelNotFoundError) as exc:
        print(f"{path} [{env}]: {type(exc).__name__}: {exc}", file=sys.stderr)
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
