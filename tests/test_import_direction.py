"""Dependencies between the parts of `operators/mlbatch/` point one way (docs/architecture.md), and the
Beam job package `include/beam_jobs/mlbatch_beam/` imports neither Airflow nor mlbatch.

Every `import` of the package's source, module level or inside a function, read with `ast`: a part
may import only parts of a lower layer. The services (backends, sensors, triggers, alerts, Slack
commands) never import each other (alerts and the Slack commands share `retry_button` and `redaction`
instead); modules within one package compose each other. Every package and top-level module must be
named in a layer, so a new one has to be placed on purpose.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "operators" / "mlbatch"
BEAM_PACKAGE = REPO / "include" / "beam_jobs" / "mlbatch_beam"

# top first
LAYERS = [
    {"dag_factory", "local"},  # assembly: spec -> DAG; local tooling (CLI, mlbatch run, make up, demo)
    {"operators"},  # task lifecycle: execute -> link -> XCom -> defer -> execute_complete
    {"backends", "sensors", "triggers", "alerts", "slack_commands"},  # services, each on its own
    {"hooks"},  # one hook per cloud service: connection and API calls
    {"quality"},  # the quality gate's baselines and verdict: reads runs' statistics through storage
    {"run"},  # a run's bookkeeping: paths, commit and lease, counts, statistics, job processes
    {"spec", "storage", "redaction", "retry_button", "approval_buttons", "remote_logs", "quality"},  # what everything stands on
    {"errors", "__init__"},  # every exception, in one place
]
SERVICES = 2

# Edges still against the grain, each with the issue that removes it. The test fails when one goes
# away too (delete the entry) or when a new one appears.
KNOWN: dict[tuple[str, str], str] = {}


def part(module: str) -> str:
    """`mlbatch.backends.sagemaker` -> `backends`; `mlbatch.spec.models` -> `spec`."""
    return module.split(".")[1] if "." in module else "__init__"


def layer(name: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if name in names)


def imports() -> set[tuple[str, str]]:
    edges = set()
    for path in PACKAGE.rglob("*.py"):
        source = part(".".join(("mlbatch", *path.relative_to(PACKAGE).with_suffix("").parts)))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for target in targets:
                if target.startswith("mlbatch.") and part(target) != source:
                    edges.add((source, part(target)))
    return edges


def test_every_package_and_module_has_a_layer():
    parts = {p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert parts == set().union(*LAYERS), f"place these in a layer: {sorted(parts - set().union(*LAYERS))}"


def test_beam_jobs_import_neither_airflow_nor_the_operators_package():
    """Dataflow workers install only `include/beam_jobs`: an import of Airflow or mlbatch there would
    fail on a worker (or drag Airflow into every job process)."""
    found = []
    for path in BEAM_PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("airflow", "mlbatch")]
    assert not found, found


def test_every_import_points_down_a_layer():
    against = {(a, b) for a, b in imports() if layer(b) < layer(a) or layer(a) == layer(b) == SERVICES}
    assert against == set(KNOWN), (
        "imports against the direction of docs/architecture.md (importer, imported): "
        f"new {sorted(against - set(KNOWN))}, fixed (remove from KNOWN) {sorted(set(KNOWN) - against)}")


def test_no_cycles_between_parts_apart_from_the_known_edges():
    graph: dict[str, set[str]] = {}
    for a, b in imports() - set(KNOWN):
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join(trail + [node, nxt])}"
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_slack_commands_and_alerts_do_not_import_each_other():
    edges = imports()
    assert ("slack_commands", "alerts") not in edges and ("alerts", "slack_commands") not in edges


# What only an operator may do with a task: defer it, read and write its XComs, name its deadline.
OPERATOR_ONLY = {"defer", "xcom_push", "xcom_pull", "execution_timeout", "remote_job_started", "remote_job",
                 "dataflow_job_kind", "job_kind"}
TASK_NAMES = {"operator", "context", "ti", "task_instance"}  # what a backend would receive to do so


def test_backends_never_reach_back_into_the_operator_at_run_time():
    """The import test cannot see a backend that is handed the operator and calls `operator.defer`: a
    dependency upward at run time. The `Backend` protocol takes a request and a handle; no backend module
    names an operator, a task context or a task instance (parameter, variable or attribute), nor calls
    what only an operator does (defer, XCom, its timeout), nor reads an operator attribute by name."""
    found = []
    for path in sorted((PACKAGE / "backends").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(PACKAGE)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.arg) and node.arg in TASK_NAMES:
                found.append(f"{where}: parameter {node.arg}")
            elif isinstance(node, ast.Name) and node.id in TASK_NAMES:
                found.append(f"{where}: name {node.id}")
            elif isinstance(node, ast.Attribute) and node.attr in OPERATOR_ONLY | TASK_NAMES:
                found.append(f"{where}: .{node.attr}")
            elif isinstance(node, ast.Constant) and node.value in OPERATOR_ONLY:
                found.append(f"{where}: {node.value!r}")  # getattr(x, "defer") and the like
    assert not found, found


def test_the_backend_protocol_takes_requests_and_handles_only():
    """Every method of `Backend` (and of each backend class) takes a request, a handle, an event, a
    state or a line count: nothing that carries the task."""
    allowed = {"self", "request", "handle", "event", "state", "lines"}
    found = []
    for path in sorted((PACKAGE / "backends").rglob("*.py")):
        for cls in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(cls, ast.ClassDef) and (cls.name == "Backend" or any(
                    isinstance(b, ast.Name) and b.id.endswith("Backend") for b in cls.bases))):
                continue
            for fn in cls.body:
                if isinstance(fn, ast.FunctionDef) and not fn.name.startswith("_"):
                    extra = {a.arg for a in fn.args.args + fn.args.kwonlyargs} - allowed
                    if extra:
                        found.append(f"{path.name}: {cls.name}.{fn.name}({', '.join(sorted(extra))})")
    assert not found, found
