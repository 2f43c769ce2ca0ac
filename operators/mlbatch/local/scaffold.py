"""`mlbatch new NAME --model MODEL@ALIAS --input URI`: write a pipeline spec that is valid on first try.

What the model's MLflow signature knows (feature names, their order and types, which may be null) is
taken from it; what only the data knows (the format, the id column, value ranges, the date in the
path) is read from a sample of the input. Ranges go into the file as commented suggestions: a sample
is not a contract, and an active range that is too tight would reject tomorrow's rows. Whatever could
not be inferred is said in the file and on the terminal. An existing file is never overwritten.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlbatch.errors import SpecError
from mlbatch.local.env import DEFAULT_HOME, local_env, pipelines_dir
from mlbatch.spec.loader import load_spec

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


def default_output(name: str, pattern: str, home: Path) -> str:
    if "://" in pattern and not pattern.startswith("file://"):
        scheme, rest = pattern.split("://", 1)
        return f"{scheme}://{rest.split('/', 1)[0]}/mlbatch/predictions/{name}/ds={{{{ ds }}}}"
    return f"{(home / 'data' / 'predictions' / name).resolve()}/ds={{{{ ds }}}}"


def render(ctx: dict[str, Any]) -> str:
    """The spec file's text: plain YAML with a comment wherever a value was inferred or chosen."""
    q = json.dumps  # a JSON string is a valid YAML double-quoted scalar
    backend, name = ctx["backend"], ctx["name"]
    lines = [
        f"# {name}: written by `mlbatch new` on {ctx['today']} from MLflow model {ctx['model_text']}",
        f"# and the first {ctx['sample_rows']:,} rows of {ctx['sample_file']}.",
        "# Check every line; field reference: docs/spec.md. Then:",
        f"#   mlbatch validate {ctx['path']}",
        f"#   mlbatch run {name}" + (f" --date {ctx['date']}" if ctx["date"] else ""),
    ]
    if ctx["notes"]:
        lines.append("# Could not infer, or worth a look:")
        lines += [f"#   - {note}" for note in ctx["notes"]]
    lines += [
        f"name: {name}",
        "description: |",
        f"  Scores {ctx['pattern']} with MLflow model {ctx['model_name']} "
        + (f"(alias {ctx['alias']})." if ctx["alias"] else f"(version {ctx['version']})."),
        "owner: mlops",
        "tags: [scaffolded]",
        (f"schedule: \"@daily\"          # the input path holds a date: one run per day (null: manual only)"
         if ctx["date"] else "schedule: null              # manual runs only; a cron or @daily to schedule it"),
        f"start_date: {q(ctx['start_date'])}       # runs (and `mlbatch run --date`) for earlier dates do nothing",
        "",
        "model:",
        f"  name: {ctx['model_name']}",
        (f"  alias: {ctx['alias']}              # resolved to one version at the start of each run and pinned"
         if ctx["alias"] else f"  version: {ctx['version']}"),
        "",
        "input:",
        f"  uri: {q(ctx['uri'])}" + (f"    # {ctx['date']} in the sample's path became {{{{ ds }}}}, the run's "
                                     "data date" if ctx["date"] else ""),
    ]
    if ctx["marker"]:
        lines.append(f"  marker: {q(ctx['marker'])}   # the run starts once this file exists")
    lines += [
        f"  format: {ctx['format']}",
        f"  id_column: {ctx['id_column']}             # kept next to each prediction; null ids are rejected",
        "  features:                 # the model's inputs, in its order, with its types",
    ]
    for column in ctx["columns"]:
        lines += [f"    - name: {column.name}".ljust(30) + (f"# {column.source}" if column.source else ""),
                  f"      type: {column.type}"]
        if column.nullable:
            lines.append("      nullable: true")
        lines += [f"      # {note}" for note in column.notes]
        lines += [f"      # {s}" for s in column.suggestions]
    lines += [
        "",
        "prep:",
        "  max_rejected_fraction: 0.05   # publish fails when more rows than this are rejected",
        "",
        "predict:",
        f"  backend: {ctx['base_backend']}" + {
            "dataflow": "          # the model scores inside the Beam workers (the local runner in dev)",
            "local": "             # the batch-prediction contract, computed on this machine",
        }[ctx["base_backend"]],
    ]
    if backend in ("sagemaker", "vertex"):
        lines.append(f"  local: {{flavor: {backend}}}    # dev: {backend}'s output shape, computed here")
    lines += [
        "",
        "output:",
        f"  uri: {q(ctx['output'])}   # a rerun of the same date replaces it",
        "  format: parquet",
        "  prediction_column: prediction",
        "",
        "trigger_params:             # what `mlbatch run --set` and the Airflow trigger form may change",
    ]
    if ctx["alias"]:
        lines += ["  model_alias: {field: model.alias, description: MLflow alias to score with.}"]
    choices = [ctx["base_backend"], "local" if ctx["base_backend"] == "dataflow" else "dataflow"]
    choices += [backend] if backend not in choices else []  # prod's cloud backend stays a valid default
    lines += [
        f"  backend: {{field: predict.backend, enum: [{', '.join(choices)}]}}",
        "  date: {field: ds, format: date, description: Score this day's data instead of the run's date.}",
        "",
        "wait:",
        "  timeout_minutes: 60         # how long wait_for_data waits for the input",
        "  poke_seconds: 30",
    ]
    lines += environments_block(backend)
    return "\n".join(lines) + "\n"


def environments_block(backend: str) -> list[str]:
    """A commented production block for the chosen backend: what to fill in, where it goes."""
    blocks = {
        "dataflow": ["predict:", "  dataflow:", "    runner: dataflow", "    project: my-project",
                     "    region: europe-west1", "    temp_location: gs://my-bucket/tmp"],
        "sagemaker": ["predict:", "  backend: sagemaker", "  sagemaker:", "    region: eu-west-1",
                      "    role_arn: arn:aws:iam::123456789012:role/sagemaker-execution",
                      "    image_uri: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/mlflow-pyfunc:latest",
                      "    s3_staging_uri: s3://my-bucket/mlbatch"],
        "vertex": ["predict:", "  backend: vertex", "  vertex:", "    project: my-project",
                   "    region: europe-west1",
                   "    # the MLflow image serves the model baked into it: one image per version,",
                   "    # built by `mlflow models build-docker -m models:/<name>/<version>`",
                   "    serving_container_image_uri: europe-docker.pkg.dev/my-project/mlflow/{model_name}:v{model_version}",
                   "    gcs_staging_uri: gs://my-bucket/mlbatch"],
    }
    if backend not in blocks:
        return []
    return ["", "# Production (MLBATCH_ENV=prod): uncomment, fill in, check with `mlbatch validate FILE --env prod`.",
            "# environments:", "#   prod:"] + [f"#     {line}" for line in blocks[backend]]


def new_pipeline(name: str, model: str, input_uri: str, *, backend: str = "dataflow", id_column: str | None = None,
                 output: str | None = None, home: Path = DEFAULT_HOME, out=print) -> Path:
    """Write `<pipelines dir>/<name>.yaml`; return its path. Raises `ScaffoldError` and writes nothing."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
        raise ScaffoldError(f"name {name!r}: expected lower case letters, digits and _ (it is the DAG id)")
    folder = pipelines_dir()
    path = folder / f"{name}.yaml"
    if path.exists():
        raise ScaffoldError(f"{path} exists; not overwriting it (remove it or choose another name)")
    os.environ.update(local_env(home))  # the registry of `mlbatch run`: embedded, or the user's own
    model_name, alias, version = parse_model(model)
    signature = model_signature(model_name, alias, version)
    pattern, files, fmt = input_files(input_uri)
    sample = read_sample_files(files, fmt)
    if sample.num_rows == 0:
        raise ScaffoldError(f"{files[0]}: no rows to learn from")
    notes: list[str] = []
    columns = feature_columns(signature, sample, notes)
    feature_names = [c.name for c in columns]
    if signature is None or signature.inputs is None or signature.inputs.is_tensor_spec():
        chosen = choose_id_column(sample, [], id_column, notes)
        columns = [c for c in columns if c.name != chosen]
    else:
        chosen = choose_id_column(sample, feature_names, id_column, notes)
    if chosen in [c.name for c in columns]:
        raise ScaffoldError(f"--id-column {chosen} is also a model feature; the id must be its own column")
    for column in columns:
        describe_sample(column, sample.column(column.name), sample.num_rows)
    uri, date = templated(pattern)
    marker = None
    if len(files) and "://" not in files[0]:
        success = Path(files[0]).parent / "_SUCCESS"
        marker = templated(str(success))[0] if success.exists() else None
    if not marker:
        notes.append("no _SUCCESS marker next to the input: wait_for_data waits for the input files "
                     "themselves (set input.marker if the producer writes one)")
    if not date:
        notes.append("no date (YYYY-MM-DD) in the input path: every run reads the same input; "
                     "put {{ ds }} into input.uri for daily partitions")
    if backend in ("sagemaker", "vertex"):
        notes.append(f"backend {backend}: dev runs the {backend} contract on this machine (backend local); "
                     "fill in the commented prod environment at the end for the real service")
    base_backend = "dataflow" if backend == "dataflow" else "local"
    text = render({
        "name": name, "today": dt.date.today().isoformat(),
        "start_date": f"{min(dt.date.today(), dt.date.fromisoformat(date or '9999-12-31')).year - 1}-01-01", "model_text": model, "model_name": model_name,
        "alias": alias, "version": version, "sample_rows": sample.num_rows, "sample_file": files[0] if len(files) == 1 else pattern,
        "path": _shown(path), "date": date, "notes": notes, "pattern": pattern, "uri": uri, "marker": marker,
        "format": fmt, "id_column": chosen, "columns": columns, "backend": backend, "base_backend": base_backend,
        "output": output or default_output(name, pattern, home),
    })
    write_checked(path, text)
    out(f"wrote {_shown(path)}: {len(columns)} features, id {chosen}, {fmt} input, backend {base_backend}")
    for note in notes:
        out(f"  - {note}")
    out(f"next: mlbatch validate {_shown(path)}")
    out(f"      mlbatch run {name}" + (f" --date {date}" if date else ""))
    return path


def write_checked(path: Path, text: str) -> None:
    """Validate the text under its final file name, then create the file (never over an existing one)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / path.name
        probe.write_text(text)
        try:
            load_spec(probe)
        except SpecError as exc:
            raise ScaffoldError(f"the generated spec does not validate (a bug in `mlbatch new`; "
                                f"please report it):\n{exc}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)  # refuses to overwrite, even in a race
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
