"""What `mlbatch new` learns before it writes a spec: the model's MLflow signature and a sample of the input.

The signature gives feature names, order, types and which may be null; the sample gives the format,
the id column, value ranges and the date in the path. Every refusal is a `ScaffoldError` in words the
user can act on. The spec text itself is written by `mlbatch.local.scaffold`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from mlbatch.spec.type_contract import null_problem

SIGNATURE_TYPES = {"long": "int", "integer": "int", "double": "float", "float": "float", "boolean": "bool",
                   "string": "string"}
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
ID_NAMES = ("id", "row_id", "record_id", "key", "uuid")
MAX_ALLOWED = 20  # suggest `allowed:` for string columns with at most this many distinct values


class ScaffoldError(Exception):
    """Why no spec was written, in words the user can act on."""


@dataclass
class Column:
    name: str
    type: str  # spec feature type
    nullable: bool = False
    source: str = ""  # where the type came from, for the comment
    notes: list[str] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)  # commented-out YAML lines


def parse_model(text: str) -> tuple[str, str | None, int | None]:
    """`name@alias` or `name/3` (a `models:/` prefix is allowed) -> (name, alias, version)."""
    ref = text.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        if name and alias:
            return name, alias, None
    elif "/" in ref:
        name, number = ref.rsplit("/", 1)
        if name and number.isdigit():
            return name, None, int(number)
    raise ScaffoldError(f"--model {text!r}: expected MODEL@ALIAS (e.g. churn@champion) or MODEL/VERSION")


def model_info(name: str, alias: str | None, version: int | None):
    """The registered model's MLmodel metadata (signature, flavors)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import get_model_info

    uri = model_uri(name, alias, version)
    try:
        return get_model_info(uri)
    except MlflowException as exc:
        try:
            known = [m.name for m in mlflow.MlflowClient().search_registered_models(max_results=50)]
        except MlflowException:
            known = []
        raise ScaffoldError(f"cannot load {uri} from the MLflow registry {mlflow.get_tracking_uri()}: "
                            f"{str(exc).splitlines()[0]} (registered models there: {', '.join(known) or 'none'})"
                            ) from None


def model_uri(name: str, alias: str | None, version: int | None) -> str:
    return f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"


def model_signature(name: str, alias: str | None, version: int | None):
    """The registered model's signature (None if it was logged without one)."""
    return model_info(name, alias, version).signature


def predictions_of(info, uri: str, notes: list[str]) -> dict[str, Any]:
    """`output.predictions` from what the model returns: an sklearn model logged with
    pyfunc_predict_fn='predict_proba' (or 'predict_log_proba') returns one column per class, so its
    kind is `probabilities` with the classes read from the model (`classes_`, in column order);
    anything else publishes one value (kind `value`, the default)."""
    pyfunc = (info.flavors or {}).get("python_function", {})
    predict_fn = pyfunc.get("predict_fn", "predict") if pyfunc.get("loader_module") == "mlflow.sklearn" else None
    if predict_fn not in ("predict_proba", "predict_log_proba"):
        return {"kind": "value"}
    try:
        import mlflow.sklearn

        classes = [c.item() if hasattr(c, "item") else c for c in mlflow.sklearn.load_model(uri).classes_]
    except Exception as exc:  # the model could not be loaded here, or has no classes_
        raise ScaffoldError(f"{uri} was logged with pyfunc_predict_fn={predict_fn!r} (one column per class), "
                            f"but its classes could not be read ({type(exc).__name__}: {exc}); write "
                            "output.predictions {kind: probabilities, classes: [...]} by hand") from None
    classes = [c if isinstance(c, (str, int, bool)) else str(c) for c in classes]
    what = "log-probabilities" if predict_fn == "predict_log_proba" else "probabilities"
    notes.append(f"the model was logged with pyfunc_predict_fn={predict_fn!r}: output.predictions.kind "
                 f"probabilities, one column of {what} per class {classes}")
    return {"kind": "probabilities", "classes": classes, "predict_fn": predict_fn}


def arrow_type(dtype) -> str | None:
    """The spec feature type of an Arrow type (None for a type the spec has no name for)."""
    import pyarrow.types as t

    if t.is_boolean(dtype):
        return "bool"
    if t.is_integer(dtype):
        return "int"
    if t.is_floating(dtype) or t.is_decimal(dtype):
        return "float"
    if t.is_string(dtype) or t.is_large_string(dtype):
        return "string"
    return None


def feature_columns(signature, sample, notes: list[str]) -> list[Column]:
    """Features in the model's order with the model's types; the sample fills in what it lacks."""
    names = sample.column_names
    if signature is None or signature.inputs is None:
        notes.append("the model has no signature: every input column except the id became a feature, "
                     "with the type seen in the sample; remove the columns the model does not read")
        return [Column(n, arrow_type(sample.schema.field(n).type) or "string", source="sample") for n in names]
    if signature.inputs.is_tensor_spec():
        notes.append("the model's signature is a tensor, without column names: every input column except "
                     "the id became a feature, in the file's order; check the list and the order")
        return [Column(n, arrow_type(sample.schema.field(n).type) or "string", source="sample") for n in names]
    columns, missing = [], []
    for spec in signature.inputs.inputs:
        kind = getattr(spec.type, "name", str(spec.type))
        if spec.name not in names:
            missing.append(spec.name)
            continue
        mapped = SIGNATURE_TYPES.get(kind)
        refused = None if spec.required else null_problem(spec.name, kind, required=False)
        column = Column(spec.name, mapped or arrow_type(sample.schema.field(spec.name).type) or "string",
                        nullable=not spec.required and refused is None, source=f"signature: {kind}")
        if refused and mapped:  # the type contract: MLflow cannot carry a null in this column alike everywhere
            column.notes.append(f"optional in the signature, but not nullable here: {refused.split(': ', 2)[2]}")
        if mapped is None:
            column.notes.append(f"signature type {kind} has no spec type; took {column.type} from the sample")
            notes.append(f"feature {spec.name}: signature type {kind} is not one of int/float/bool/string")
        columns.append(column)
    if missing:
        raise ScaffoldError(f"the model reads columns the input lacks: {', '.join(missing)} "
                            f"(input columns: {', '.join(names)})")
    return columns


def choose_id_column(sample, features: list[str], wanted: str | None, notes: list[str]) -> str:
    """The row id: given, else a unique, never-null column the model does not read, preferring id names."""
    names = [n for n in sample.column_names if n not in features]
    if wanted:
        if wanted not in sample.column_names:
            raise ScaffoldError(f"--id-column {wanted}: no such column (input columns: "
                                f"{', '.join(sample.column_names)})")
        return wanted

    def usable(name: str) -> bool:
        column = sample.column(name)
        return column.null_count == 0 and len(column.unique()) == len(column)

    def rank(name: str) -> int:
        low = name.lower()
        return 0 if low in ID_NAMES else 1 if low.endswith(("_id", "id", "_key", "_uuid")) else 2

    candidates = sorted((n for n in names if usable(n)), key=rank)
    by_name = [n for n in candidates if rank(n) < 2]
    if by_name:
        chosen = by_name[0]
    elif len(candidates) == 1 and len(names) == 1:
        chosen = candidates[0]
    else:
        other = f"columns the model does not read: {', '.join(names)}" if names else \
            "every input column is a model feature"
        raise ScaffoldError("cannot tell which column is the row id (unique, never null, kept next to each "
                            f"prediction; {other}). Pass --id-column NAME")
    ignored = [n for n in names if n != chosen]
    if ignored:
        notes.append(f"input columns not used (the model does not read them): {', '.join(ignored)}")
    return chosen


def features_and_id(signature, sample, id_column: str | None, notes: list[str]) -> tuple[list[Column], str]:
    """The feature columns and the id column, each feature described from the sample.

    Without column names in the signature every input column is a candidate feature, so the id is
    chosen among all columns and then dropped from the features."""
    columns = feature_columns(signature, sample, notes)
    if signature is None or signature.inputs is None or signature.inputs.is_tensor_spec():
        chosen = choose_id_column(sample, [], id_column, notes)
        columns = [c for c in columns if c.name != chosen]
    else:
        chosen = choose_id_column(sample, [c.name for c in columns], id_column, notes)
    if chosen in [c.name for c in columns]:
        raise ScaffoldError(f"--id-column {chosen} is also a model feature; the id must be its own column")
    for column in columns:
        describe_sample(column, sample.column(column.name), sample.num_rows)
    return columns, chosen


def describe_sample(column: Column, values, rows: int) -> None:
    """Null count, range and allowed values from the sample, as comments and commented suggestions."""
    import pyarrow.compute as pc

    nulls = values.null_count
    if nulls and not column.nullable:
        column.notes.append(f"{nulls:,} of {rows:,} sample rows are null: such rows go to the dead letters "
                            "(the model's signature takes no null here; see docs/spec.md, the type contract)")
    elif nulls:
        column.notes.append(f"{nulls:,} of {rows:,} sample rows are null")
    present = values.drop_null()
    if not len(present):
        return
    if column.type in ("int", "float"):
        _describe_range(column, present)
    elif column.type == "string":
        distinct = pc.unique(present).to_pylist()
        if len(distinct) <= MAX_ALLOWED:
            column.suggestions.append(f"allowed: {json.dumps(sorted(distinct))}")
            column.notes.append(f"{len(distinct)} distinct values in the sample; uncomment to reject others:")


def _describe_range(column: Column, present) -> None:
    """min/max suggestions from the finite numbers only: text, NaN and infinities say nothing about a
    range (and `max: abc` or `min: -inf` would not be a valid or useful bound)."""
    from mlbatch.local.sample import finite_numbers

    numbers = finite_numbers(present)
    other = len(present) - len(numbers)
    if other:
        column.notes.append(f"{other:,} non-null sample values are not finite numbers (text, NaN or "
                            f"infinity): such rows go to the dead letters")
    if numbers:
        low, high = min(numbers), max(numbers)
        column.notes.append(f"sample range {_number(low)} .. {_number(high)}; uncomment to reject rows outside:")
        column.suggestions += [f"min: {_number(low)}", f"max: {_number(high)}"]


def _number(value: Any) -> str:
    return repr(round(value, 6)) if isinstance(value, float) else str(value)


def templated(uri: str) -> tuple[str, str | None]:
    """Replace the first date in the path (and every copy of it) with `{{ ds }}`."""
    found = DATE.search(uri)
    if not found:
        return uri, None
    return uri.replace(found.group(0), "{{ ds }}"), found.group(0)
