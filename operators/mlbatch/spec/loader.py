"""Read a pipeline YAML file into a validated `PipelineSpec`.

Steps, in order: parse YAML (keeping line numbers for error messages), merge the block of the active
environment from `environments:` over the base, resolve `${...}` interpolation, validate with pydantic, resolve `predict.backend: auto`
(mlbatch.spec.backend_choice.resolve_backend), check that the backend and every trigger-form choice can
run (mlbatch.spec.runnable).
The active environment is `MLBATCH_ENV` (or the Airflow variable `mlbatch_env` given as the environment
variable `AIRFLOW_VAR_MLBATCH_ENV`), default `dev`. Reading an Airflow Variable from the metadata
database is deliberately not done: this runs at DAG-parse time, where a database round trip per file
is exactly the kind of cost the parse budget forbids.

Interpolation: `${a.b.c}` is the value at that path of the merged document (top-level `vars:` is the
place for shared values); `${env:NAME}` / `${env:NAME,default}` read an environment variable. A value
that is exactly one `${...}` keeps the referenced type; otherwise the result is a string. Airflow's
`{{ ... }}` templates are left alone: they are rendered per run, not per parse.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mlbatch.spec.backend_choice import resolve_backend
from mlbatch.spec.connections import without_inherited
from mlbatch.errors import SpecError, SpecProblem
from mlbatch.spec.models import PipelineSpec
from mlbatch.spec.runnable import backend_problems, trigger_problems

ENV_VARIABLES = ("MLBATCH_ENV", "AIRFLOW_VAR_MLBATCH_ENV")
DEFAULT_ENVIRONMENT = "dev"
_LOADER_KEYS = ("vars", "environments")
_REF = re.compile(r"\$\{([^{}]+)\}")


def active_environment() -> str:
    for name in ENV_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    return DEFAULT_ENVIRONMENT


def load_spec(path: str | Path, environment: str | None = None) -> PipelineSpec:
    """Load and validate one spec file; raise `SpecError` naming file, field, value and expectation."""
    path = Path(path)
    environment = environment or active_environment()
    try:
        text = path.read_text()
        node = yaml.compose(text)
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(path, [SpecProblem("", None, f"readable YAML ({exc})")]) from None
    lines = _line_numbers(node) if node is not None else {}
    document = yaml.safe_load(text)
    if not isinstance(document, dict):
        raise SpecError(path, [SpecProblem("", document, "a mapping of spec fields")], lines)

    envs = document.get("environments") or {}
    if not isinstance(envs, dict):
        raise SpecError(path, [SpecProblem("environments", envs, "a mapping of name -> overrides")], lines)
    if environment in envs:
        document = _deep_merge(document, envs[environment] or {})
    try:
        document = _interpolate(document, document, "")
    except _InterpolationError as exc:
        raise SpecError(path, [SpecProblem(exc.where, exc.value, exc.expected)], lines) from None
    fields = {k: v for k, v in document.items() if k not in _LOADER_KEYS}
    if isinstance(fields.get("predict"), dict) and "auto_reason" in fields["predict"]:
        raise SpecError(path, [SpecProblem("predict.auto_reason", fields["predict"]["auto_reason"],
                                           "no such field in a spec file (the loader sets it for "
                                           "backend: auto)")], lines)
    spec = _validated(fields, path, lines)
    if spec.name != path.stem:
        raise SpecError(path, [SpecProblem("name", spec.name, f"the file name {path.stem!r}")], lines)
    return spec


def with_overrides(spec: PipelineSpec, overrides: dict[str, Any], source: str = "trigger") -> PipelineSpec:
    """Return a copy of `spec` with dotted-path overrides applied and re-validated."""
    if not overrides:
        return spec
    return _validated(_overridden(spec, overrides), Path(source), {})


def _overridden(spec: PipelineSpec, overrides: dict[str, Any]) -> dict:
    data = without_inherited(spec, spec.model_dump())  # the connection rule applies to the new values
    if "predict.backend" in overrides:
        data["predict"]["auto_reason"] = None  # the reason of the backend chosen before, if any
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return data


def _validated(data: dict, path: Path, lines: dict[str, int]) -> PipelineSpec:
    """A spec that can run: valid, `backend: auto` resolved, its backend's needs met (mlbatch.spec.runnable),
    and every choice of its trigger form as well; else `SpecError` naming the field."""
    spec = _runnable(data, path, lines)

    def problems_with(overrides: dict[str, Any]) -> list[SpecProblem]:
        try:
            _runnable(_overridden(spec, overrides), path, lines)
        except SpecError as exc:
            return exc.problems
        return []

    problems = trigger_problems(spec, problems_with)
    if problems:
        raise SpecError(path, problems, lines)
    return spec


def _runnable(data: dict, path: Path, lines: dict[str, int]) -> PipelineSpec:
    """Validate, resolve `backend: auto`, check the backend's needs; each raises `SpecError` naming the field."""
    try:
        spec = resolve_backend(PipelineSpec.model_validate(data))
    except ValidationError as exc:
        raise SpecError(path, _problems(exc), lines) from None
    except ValueError as exc:  # the rule's refusal (mlbatch.spec.backend_choice.choose_backend)
        raise SpecError(path, [SpecProblem("predict.backend", "auto", str(exc))], lines) from None
    problems = backend_problems(spec)
    if problems:
        raise SpecError(path, problems, lines)
    return spec


def _problems(exc: ValidationError) -> list[SpecProblem]:
    problems = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"])
        expected = err["msg"]
        if err["type"] == "literal_error":
            expected = "one of " + err["ctx"]["expected"]
        elif err["type"] == "extra_forbidden":
            expected = "no such field (check the spelling)"
        elif err["type"] == "missing":
            expected = "a value (the field is required)"
        value = err.get("input") if err["type"] != "missing" else None
        problems.append(SpecProblem(where, value, expected.removeprefix("Value error, ")))
    return problems


def _deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class _InterpolationError(Exception):
    def __init__(self, where: str, value: Any, expected: str):
        super().__init__(f"{where}: {expected}")
        self.where, self.value, self.expected = where, value, expected


def _interpolate(node: Any, root: dict, where: str, seen: tuple[str, ...] = ()) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, root, f"{where}.{k}".lstrip("."), seen) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, root, f"{where}.{i}", seen) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    def resolve(ref: str) -> Any:
        ref = ref.strip()
        if ref.startswith("env:"):
            name, _, default = ref[4:].partition(",")
            value = os.environ.get(name.strip())
            if value is None and not default:
                raise _InterpolationError(where, node, f"environment variable {name.strip()} to be set")
            return value if value is not None else default.strip()
        if ref in seen:
            raise _InterpolationError(where, node, f"no circular reference (through {ref!r})")
        target: Any = root
        for part in ref.split("."):
            if isinstance(target, dict) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                raise _InterpolationError(where, node, f"${{{ref}}} to name an existing field")
        return _interpolate(target, root, ref, seen + (ref,))

    whole = _REF.fullmatch(node)
    if whole:
        return resolve(whole.group(1))
    return _REF.sub(lambda m: str(resolve(m.group(1))), node)


def _line_numbers(node: yaml.Node, path: str = "") -> dict[str, int]:
    """Map dotted field paths to 1-based line numbers, so errors can point into the file."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            lines.update(_line_numbers(value, f"{path}.{key.value}".lstrip(".")))
            lines.setdefault(f"{path}.{key.value}".lstrip("."), key.start_mark.line + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_line_numbers(item, f"{path}.{i}".lstrip(".")))
    return lines
