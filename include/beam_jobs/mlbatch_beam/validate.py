"""Split a batch into rows that satisfy the feature schema and rejected rows.

All checks are vectorised with pyarrow.compute over whole columns; Python
only runs for rejected rows, to explain why each was rejected.

The same rules hold for parquet, CSV and JSON Lines (CSV arrives as text,
JSON as typed values or, for mixed columns, text):

* text is parsed into the declared type ("3", "3.0" -> int 3;
  "true"/"yes"/"1" -> bool); numbers are cast when exact (3.0 -> int 3,
  3.5 -> rejected); a bool is never a number;
* missing values: null, NaN, blank text and, for non-string types,
  "nan"/"null"/"none" text. They are rejected unless the feature is
  nullable, with a reason naming what was there ("empty string", "NaN");
* non-finite numbers (inf, -inf, "Infinity", and literals such as 1e999
  that overflow a float) are always rejected: a model would turn them
  into garbage or fail the whole batch;
* min / max / allowed apply to the converted value.

Every reason names the column and the offending value.

A missing column rejects every row of the batch with the reason
"missing column 'x'" rather than failing the job, so one bad file among
many shows up in the dead letter instead of killing the run. Duplicate ids
are rejected within a batch (keeping the first); duplicates across batches
are not detected here because that would need a per-row shuffle.
"""
from __future__ import annotations

import base64
import datetime
import decimal
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlbatch_beam.schema import ARROW_TYPES, Feature, FeatureSchema

TRUE_TEXT = ["true", "t", "yes", "y", "1"]
FALSE_TEXT = ["false", "f", "no", "n", "0"]
NULL_TEXT = ["", "nan", "null", "none"]  # text that means "no value" for non-string types
_INT_TEXT = r"^[+-]?\d{1,18}(\.0*)?$"
_FLOAT_TEXT = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_INF_TEXT = r"^[+-]?inf(inity)?$"  # matched on lower-cased text


def _mask(array) -> np.ndarray:
    """A boolean Arrow array as numpy, null counting as False."""
    return pc.fill_null(array, False).to_numpy(zero_copy_only=False)


def _coerce(values: pa.Array, type_name: str) -> tuple[pa.Array, pa.Array]:
    """Cast a column to the declared type.

    Returns (typed values with null where conversion failed, normalised
    source values); a row is a type error when the normalised source is
    non-null but the typed value is null.
    """
    target = ARROW_TYPES[type_name]
    values = _decoded(values)
    if pa.types.is_decimal(values.type):
        values = values.cast(pa.float64())
    vtype = values.type

    if pa.types.is_null(vtype):
        return pa.nulls(len(values), target), values
    if pa.types.is_floating(vtype):
        values = pc.if_else(pc.is_nan(values), None, values)
    if type_name == "string":
        return _to_string(values, target)
    if pa.types.is_string(vtype):
        return _from_text(values, type_name, target)
    return _from_typed(values, type_name, target)


def _to_string(values: pa.Array, target: pa.DataType) -> tuple[pa.Array, pa.Array]:
    """A string feature: blank text is null; other types are cast (null where Arrow cannot)."""
    if pa.types.is_string(values.type):
        blank = pc.equal(pc.utf8_trim_whitespace(values), "")
        values = pc.if_else(blank, None, values)
        return values, values
    try:
        return values.cast(pa.string()), values
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.nulls(len(values), target), values


def _from_text(values: pa.Array, type_name: str, target: pa.DataType) -> tuple[pa.Array, pa.Array]:
    """Text (CSV, JSON strings) into an int, float or bool feature: null words are null, the rest must
    match the type's text pattern."""
    text = pc.utf8_trim_whitespace(values)
    empty = pc.is_in(pc.utf8_lower(text), pa.array(NULL_TEXT))
    text = pc.if_else(empty, None, text)
    if type_name == "int":
        ok = pc.match_substring_regex(text, _INT_TEXT)
        digits = pc.replace_substring_regex(text, r"\.0*$", "")
        return pc.if_else(ok, digits, None).cast(target), text
    if type_name == "float":
        ok = pc.match_substring_regex(text, _FLOAT_TEXT)
        return pc.if_else(ok, text, None).cast(target), text
    lower = pc.utf8_lower(text)
    ok = pc.is_in(lower, pa.array(TRUE_TEXT + FALSE_TEXT))
    return pc.if_else(ok, pc.is_in(lower, pa.array(TRUE_TEXT)), None), text


def _from_typed(values: pa.Array, type_name: str, target: pa.DataType) -> tuple[pa.Array, pa.Array]:
    """A typed column (bool or number) into an int, float or bool feature, without loss."""
    vtype = values.type
    numeric = pa.types.is_integer(vtype) or pa.types.is_floating(vtype)
    if pa.types.is_boolean(vtype):  # true is not 1: a bool in a numeric feature is a type error
        return (values.cast(target) if type_name == "bool" else pa.nulls(len(values), target)), values
    if not numeric:
        return pa.nulls(len(values), target), values
    if type_name == "bool":
        ok = pc.is_in(values.cast(pa.float64(), safe=False), pa.array([0.0, 1.0]))
        return pc.if_else(ok, values, None).cast(target), values
    if type_name == "int" and pa.types.is_floating(vtype):
        ok = pc.and_(pc.equal(pc.floor(values), values), pc.less(pc.abs(values), 2.0**63))
        return pc.if_else(ok, values, None).cast(target), values
    # A float feature accepts big ints with rounding; Arrow's safe cast would raise.
    return values.cast(target, safe=type_name != "float"), values


def _json_safe(value):
    """Make a raw value (from any input format) serialisable as JSON."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (datetime.date, datetime.time, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return str(value)


class _Problems:
    """Per-row failed checks: a boolean mask, how to explain a failing row, and the rule it broke
    (the reason without the value, so rejections can be counted by cause)."""

    def __init__(self, num_rows):
        self.num_rows = num_rows
        self.checks = []

    def add(self, mask, explain, rule):
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            self.checks.append((mask, explain, rule))

    def rejected(self) -> np.ndarray:
        out = np.zeros(self.num_rows, dtype=bool)
        for mask, _, _ in self.checks:
            out |= mask
        return out

    def reason(self, row) -> str:
        return "; ".join(explain(row) for mask, explain, _ in self.checks if mask[row])

    def rule(self, row) -> str:
        return "; ".join(rule for mask, _, rule in self.checks if mask[row])


def _decoded(values: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_large_string(values.type):
        values = values.cast(pa.string())
    return values


def _non_finite(raw: pa.Array, typed: pa.Array, type_name: str) -> np.ndarray:
    """inf/-inf values, "inf"/"Infinity" text, and literals that overflow a float (1e999)."""
    if type_name not in ("int", "float"):
        return np.zeros(len(raw), dtype=bool)
    raw = _decoded(raw)
    mask = np.zeros(len(raw), dtype=bool)
    if pa.types.is_floating(raw.type):
        mask |= _mask(pc.is_inf(raw))
    if pa.types.is_string(raw.type):
        text = pc.utf8_lower(pc.utf8_trim_whitespace(raw))
        mask |= _mask(pc.match_substring_regex(text, _INF_TEXT))
    if type_name == "float":
        mask |= _mask(pc.is_inf(typed))
    return mask


def _show(value) -> str:
    """A raw value as a reason shows it: what a user would look for in the file."""
    if value is None:
        return "null"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, str) and not value.strip():
        return "empty string"
    return repr(value)


def _check_feature(feature: Feature, raw: pa.Array, problems: _Problems) -> pa.Array:
    typed, normalised = _coerce(raw, feature.type)
    name = feature.name
    non_finite = _non_finite(raw, typed, feature.type)
    problems.add(non_finite, lambda i: f"{name}: {_show(raw[i].as_py())} is not a finite number",
                 f"{name}: not a finite number")
    if non_finite.any():
        typed = pc.if_else(pa.array(non_finite), pa.nulls(len(typed), typed.type), typed)
    article = "an" if feature.type == "int" else "a"
    type_error = _mask(pc.and_(pc.is_valid(normalised), pc.is_null(typed))) & ~non_finite
    problems.add(type_error, lambda i: f"{name}: {_show(raw[i].as_py())} is not {article} {feature.type}",
                 f"{name}: not {article} {feature.type}")

    if not feature.nullable:
        missing = _mask(pc.is_null(normalised))
        problems.add(missing, lambda i: f"{name}: {_show(raw[i].as_py())} not allowed",
                     f"{name}: missing value")
    if feature.min is not None:
        low = _mask(pc.less(typed, feature.min))
        problems.add(low, lambda i: f"{name}: {typed[i].as_py()!r} below min {feature.min!r}",
                     f"{name}: below min {feature.min!r}")
    if feature.max is not None:
        high = _mask(pc.greater(typed, feature.max))
        problems.add(high, lambda i: f"{name}: {typed[i].as_py()!r} above max {feature.max!r}",
                     f"{name}: above max {feature.max!r}")
    if feature.allowed is not None:
        allowed = pa.array(feature.allowed, type=feature.arrow_type)
        outside = _mask(pc.and_(pc.is_valid(typed), pc.invert(pc.is_in(typed, allowed))))
        problems.add(outside, lambda i: f"{name}: {typed[i].as_py()!r} not in allowed {feature.allowed!r}",
                     f"{name}: not in allowed")
    return _as_column_type(feature, typed, problems)


def _as_column_type(feature: Feature, typed: pa.Array, problems: _Problems) -> pa.Array:
    """The values in the model column's own type (Feature.written_type); a value the column cannot hold
    without changing it rejects its row."""
    bounds = feature.column_range()
    if bounds is not None:
        name, column, values = feature.name, feature.column_type, typed
        span = " to ".join(f"{b:g}" if isinstance(b, float) else str(b) for b in bounds)
        outside = _mask(pc.or_(pc.less(typed, bounds[0]), pc.greater(typed, bounds[1])))
        problems.add(outside, lambda i: f"{name}: {values[i].as_py()!r} does not fit the model's {column} "
                                        f"column ({span})",
                     f"{name}: does not fit the model's {column} column")
        if outside.any():  # the row is rejected; its value must not fail the cast
            typed = pc.if_else(pa.array(outside), pa.nulls(len(typed), typed.type), typed)
    if typed.type == feature.written_type:
        return typed
    return typed.cast(feature.written_type, safe=feature.type != "float")  # float64 -> float32 rounds


def _check_id(schema: FeatureSchema, raw: pa.Array, problems: _Problems) -> pa.Array:
    id_feature = schema.id_feature()
    if id_feature is not None:
        ids = _check_feature(id_feature, raw, problems)
    else:
        ids = _decoded(raw)
        if pa.types.is_string(ids.type):  # blank text is no id
            ids = pc.if_else(pc.equal(pc.utf8_trim_whitespace(ids), ""), None, ids)
        problems.add(_mask(pc.is_null(ids)), lambda i: f"{schema.id_column}: {_show(raw[i].as_py())} not allowed",
                     f"{schema.id_column}: missing value")
    duplicate = ids.to_pandas().duplicated(keep="first").to_numpy() & _mask(pc.is_valid(ids))
    problems.add(duplicate, lambda i: f"{schema.id_column}: duplicate id {ids[i].as_py()!r}",
                 f"{schema.id_column}: duplicate id")
    return ids


def split_valid(batch: pa.RecordBatch, schema: FeatureSchema, source: str = ""):
    """Return (valid batch with [id] + features cast to declared types, rejected dicts).

    A rejected dict is {"row": raw values (JSON-safe), "reason": "...",
    "rule": the reason without values, "source": <file>}; several failed
    checks on one row are joined by "; ".
    """
    names = batch.schema.names
    problems = _Problems(batch.num_rows)
    missing = [c for c in schema.columns if c not in names]
    if missing:
        reason = "; ".join(f"missing column {c!r}" for c in missing)
        problems.add(np.ones(batch.num_rows, dtype=bool), lambda i: reason, reason)
        columns = None
    else:
        columns = [_check_id(schema, batch.column(schema.id_column), problems)]
        for feature in schema.features:
            columns.append(_check_feature(feature, batch.column(feature.name), problems))

    rejected_mask = problems.rejected()
    rejected_rows = np.flatnonzero(rejected_mask)
    rejected = []
    if len(rejected_rows):
        raw_rows = batch.take(pa.array(rejected_rows)).to_pylist()
        for row, raw in zip(rejected_rows, raw_rows):
            rejected.append({"row": _json_safe(raw), "reason": problems.reason(row),
                             "rule": problems.rule(row), "source": source})

    if columns is None:
        valid = pa.RecordBatch.from_pylist([], schema=output_schema(schema, None))
    else:
        valid = pa.RecordBatch.from_arrays(columns, names=schema.columns)
        if len(rejected_rows):
            valid = valid.filter(pa.array(~rejected_mask))
    return valid, rejected


def output_schema(schema: FeatureSchema, id_type: pa.DataType | None) -> pa.Schema:
    """Arrow schema of the valid output: id then the declared feature types."""
    if schema.id_type is not None:
        id_type = ARROW_TYPES[schema.id_type]
    fields = [pa.field(schema.id_column, id_type or pa.string())]
    fields += [pa.field(f.name, f.written_type) for f in schema.features]
    return pa.schema(fields)
