"""What `mlbatch new` learns before it writes a spec: the model's MLflow signature and a sample of the input.

The signature gives feature names, order, types and which may be null; the sample gives the format,
the id column, value ranges and the date in the path. Every refusal is a `ScaffoldError` in words the
user can act on. The spec text itself is written by `mlbatch.local.scaffold`.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SAMPLE_ROWS = 10_000
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl"}
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


def model_signature(name: str, alias: str | None, version: int | None):
    """The registered model's signature (None if it was logged without one)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import get_model_info

    uri = f"models:/{name}@{alias}" if alias else f"models:/{name}/{version}"
    try:
        return get_model_info(uri).signature
    except MlflowException as exc:
        try:
            known = [m.name for m in mlflow.MlflowClient().search_registered_models(max_results=50)]
        except MlflowException:
            known = []
        raise ScaffoldError(f"cannot load {uri} from the MLflow registry {mlflow.get_tracking_uri()}: "
                            f"{str(exc).splitlines()[0]} (registered models there: {', '.join(known) or 'none'})"
                            ) from None


def input_files(uri: str) -> tuple[str, list[str], str]:
    """(the input pattern for the spec, matching data files, format) for a file, folder or glob."""
    import fsspec

    local = "://" not in uri or uri.startswith("file://")
    if local:
        uri = str(Path(uri.removeprefix("file://")).expanduser().resolve())
    fs, path = fsspec.core.url_to_fs(uri)
    if fs.isdir(path):
        data = [p for p in sorted(fs.ls(path, detail=False))
                if not Path(p).name.startswith(("_", ".")) and Path(p).suffix in FORMATS]
        suffixes = sorted({Path(p).suffix for p in data})
        if not data:
            raise ScaffoldError(f"--input {uri}: the folder holds no .parquet, .csv or .jsonl files")
        if len({FORMATS[s] for s in suffixes}) > 1:
            raise ScaffoldError(f"--input {uri}: the folder mixes formats ({', '.join(suffixes)}); "
                                "point --input at a glob of one kind")
        pattern = f"{uri.rstrip('/')}/*{suffixes[0]}" if len(suffixes) == 1 else f"{uri.rstrip('/')}/*"
    else:
        data = sorted(fs.glob(path)) if any(c in path for c in "*?[") else ([path] if fs.exists(path) else [])
        pattern = uri
        if not data:
            raise ScaffoldError(f"--input {uri}: no such file (or nothing matches)")
    suffix = Path(data[0]).suffix
    if suffix not in FORMATS:
        raise ScaffoldError(f"--input {uri}: cannot tell the format of {data[0]} from its name; "
                            "expected .parquet, .csv or .jsonl")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    files = data if local else [f"{protocol}://{p}" for p in data]
    return pattern, files, FORMATS[suffix]


def read_sample(path: str, fmt: str, rows: int = SAMPLE_ROWS):
    """The first `rows` rows of one data file as a pyarrow Table."""
    import fsspec
    import pyarrow as pa

    with fsspec.open(path, "rb") as f:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            batches = pq.ParquetFile(f).iter_batches(batch_size=rows)
            batch = next(batches, None)
            return pa.Table.from_batches([batch]) if batch is not None else pa.table({})
        if fmt == "csv":
            import pyarrow.csv as pacsv

            reader = pacsv.open_csv(f)
            batches, count = [], 0
            for batch in reader:
                batches.append(batch)
                count += batch.num_rows
                if count >= rows:
                    break
            return pa.Table.from_batches(batches, schema=reader.schema).slice(0, rows)
        import pyarrow.json as pajson

        head = b"".join(line for _, line in zip(range(rows), f))
        return pajson.read_json(io.BytesIO(head))


def read_sample_files(files: list[str], fmt: str, rows: int = SAMPLE_ROWS):
    """Up to `rows` rows from the first files (so a small first file does not make a small sample)."""
    import pyarrow as pa

    tables, count = [], 0
    for path in files[:20]:
        table = read_sample(path, fmt, rows - count)
        if tables and table.schema != tables[0].schema:
            break  # files that disagree on types: the first file decides
        tables.append(table)
        count += table.num_rows
        if count >= rows:
            break
    return pa.concat_tables(tables)


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
        column = Column(spec.name, mapped or arrow_type(sample.schema.field(spec.name).type) or "string",
                        nullable=not spec.required, source=f"signature: {kind}")
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
                            "(set nullable: true if the model accepts nulls)")
    elif nulls:
        column.notes.append(f"{nulls:,} of {rows:,} sample rows are null")
    present = values.drop_null()
    if not len(present):
        return
    if column.type in ("int", "float"):
        low, high = pc.min(present).as_py(), pc.max(present).as_py()
        column.notes.append(f"sample range {_number(low)} .. {_number(high)}; uncomment to reject rows outside:")
        column.suggestions += [f"min: {_number(low)}", f"max: {_number(high)}"]
    elif column.type == "string":
        distinct = pc.unique(present).to_pylist()
        if len(distinct) <= MAX_ALLOWED:
            column.suggestions.append(f"allowed: {json.dumps(sorted(distinct))}")
            column.notes.append(f"{len(distinct)} distinct values in the sample; uncomment to reject others:")


def _number(value: Any) -> str:
    return repr(round(value, 6)) if isinstance(value, float) else str(value)


def templated(uri: str) -> tuple[str, str | None]:
    """Replace the first date in the path (and every copy of it) with `{{ ds }}`."""
    found = DATE.search(uri)
    if not found:
        return uri, None
    return uri.replace(found.group(0), "{{ ds }}"), found.group(0)
