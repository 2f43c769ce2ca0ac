"""`key=value` words from Slack -> the run's conf, checked against the pipeline's trigger params.

The params (JSON schema per key) come from Airflow (`GET /dags/{id}/details`), i.e. from the spec's
`trigger_params`. Checking here gives a reply that names the parameter and the allowed values before
anything is created; Airflow checks again when the run is triggered (and answers 400 if it disagrees).
"""

from __future__ import annotations

from typing import Any

import jsonschema

from mlbatch.slack_commands.commands import CommandError
from mlbatch.spec.trigger_conf import unknown_keys

_NULL_WORDS = {"null", "none", ""}


def run_conf(pipeline: str, params: dict[str, dict], given: dict[str, str]) -> dict[str, Any]:
    """Typed conf for `given`, or `CommandError` naming the first bad parameter and what is allowed."""
    unknown = unknown_keys(params, given)  # the rule every trigger path applies (mlbatch.spec.trigger_conf)
    if unknown:
        known = ", ".join(f"`{k}`" for k in params) or "none"
        raise CommandError(f"`{pipeline}` has no parameter `{unknown[0]}`. Parameters: {known}.")
    conf: dict[str, Any] = {}
    for key, text in given.items():
        schema = params[key].get("schema") or {}
        value = _typed(text, schema)
        try:
            jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
        except jsonschema.ValidationError as exc:
            raise CommandError(f"`{key}={text}` is not allowed: {_explain(schema, exc)}.") from None
        conf[key] = value
    return conf


def describe(params: dict[str, dict]) -> str:
    """One line per parameter: name, allowed values or format, default."""
    lines = []
    for key, param in params.items():
        schema = param.get("schema") or {}
        allowed = schema.get("enum")
        shape = ("one of " + ", ".join(f"`{v}`" for v in allowed if v is not None)) if allowed else (
            schema.get("format") or _types(schema)[0])
        lines.append(f"• `{key}`: {shape} (default `{param.get('value')}`)")
    return "\n".join(lines)


def _types(schema: dict) -> list[str]:
    t = schema.get("type", "string")
    return t if isinstance(t, list) else [t]


def _typed(text: str, schema: dict) -> Any:
    types = _types(schema)
    if "null" in types and text.lower() in _NULL_WORDS:
        return None
    if "boolean" in types and text.lower() in ("true", "false", "yes", "no"):
        return text.lower() in ("true", "yes")
    for name, cast in (("integer", int), ("number", float)):
        if name in types:
            try:
                return cast(text)
            except ValueError:
                pass
    return text


def _explain(schema: dict, exc: jsonschema.ValidationError) -> str:
    if exc.validator == "enum":
        return "expected one of " + ", ".join(f"`{v}`" for v in schema["enum"] if v is not None)
    if exc.validator == "format":
        return f"expected a {schema['format']} (e.g. 2026-11-20)" if schema["format"] == "date" else (
            f"expected format {schema['format']}")
    if exc.validator == "type":
        return "expected " + " or ".join(t for t in _types(schema) if t != "null")
    return exc.message
