"""`mlbatch new NAME --model MODEL@ALIAS --input URI`: write a pipeline spec that is valid on first try.

What the model's MLflow signature knows (feature names, their order and types, which may be null) is
taken from it; what only the data knows (the format, the id column, value ranges, the date in the
path) is read from a sample of the input (both in `mlbatch.local.infer`). Ranges go into the file as
commented suggestions: a sample is not a contract, and an active range that is too tight would reject
tomorrow's rows. Whatever could not be inferred is said in the file and on the terminal. An existing
file is never overwritten.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Any

from mlbatch.errors import SpecError
from mlbatch.local.env import DEFAULT_HOME, local_env, pipelines_dir
from mlbatch.local.infer import (
    Column, ScaffoldError, features_and_id, model_info, model_uri, parse_model, predictions_of, templated,
)
from mlbatch.local.sample import input_files, marker_of, read_sample_files
from mlbatch.spec.loader import load_spec

_quoted = json.dumps  # a JSON string is a valid YAML double-quoted scalar
_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_YAML_WORDS = {"y", "n", "yes", "no", "true", "false", "on", "off", "null", "~"}
_LINE_BREAKS = re.compile("[\r\n\x85\u2028\u2029]")


def yaml_text(value: str) -> str:
    """`value` as a YAML scalar that reads back as this very string: plain when it is a simple name,
    else double-quoted with every character YAML would not keep as-is escaped (line breaks, control and
    non-printable characters)."""
    if _PLAIN.fullmatch(value) and value.lower() not in _YAML_WORDS:
        return value
    return '"' + "".join(_escaped(c) for c in value) + '"'


def _escaped(char: str) -> str:
    code = ord(char)
    if char in '"\\':
        return "\\" + char
    printable = 0x20 <= code <= 0x7E or (0xA0 <= code <= 0xFFFD and code not in (0x2028, 0x2029, 0xFEFF)
                                         and not 0xD800 <= code <= 0xDFFF) or 0x10000 <= code <= 0x10FFFF
    if printable:
        return char
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def comment(text: str) -> str:
    """`text` kept on one comment line (a column name with a line break would end the comment)."""
    return _LINE_BREAKS.sub(" ", text)


def _scalar(value: Any) -> str:
    """A class or allowed value as YAML: numbers and booleans as such, text quoted as needed."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, (int, float)) else yaml_text(str(value))


def _aligned(text: str, note: str, width: int) -> str:
    """`text`, then `# note` from column `width` on, always at least one space after the text."""
    return f"{text.ljust(width - 1)} # {comment(note)}" if note else text


def default_output(name: str, pattern: str, home: Path) -> str:
    """Next to a cloud input's bucket, else under the local home; one partition per data date."""
    if "://" in pattern and not pattern.startswith("file://"):
        scheme, rest = pattern.split("://", 1)
        return f"{scheme}://{rest.split('/', 1)[0]}/mlbatch/predictions/{name}/ds={{{{ ds }}}}"
    return f"{(home / 'data' / 'predictions' / name).resolve()}/ds={{{{ ds }}}}"


def render(ctx: dict[str, Any]) -> str:
    """The spec file's text: plain YAML with a comment wherever a value was inferred or chosen."""
    lines = _header(ctx) + _identity(ctx) + _input_block(ctx)
    for column in ctx["columns"]:
        lines += _feature(column)
    lines += _predict_and_output(ctx) + _trigger_and_wait(ctx) + environments_block(ctx["backend"])
    return "\n".join(lines) + "\n"


def _header(ctx: dict[str, Any]) -> list[str]:
    """Where the file came from, what to run next, and the notes on what could not be inferred."""
    name = ctx["name"]
    lines = [
        f"# {name}: written by `mlbatch new` on {ctx['today']} from MLflow model {ctx['model_text']}",
        comment(f"# and the first {ctx['sample_rows']:,} rows of {ctx['sample_file']}."),
        "# Check every line; field reference: docs/spec.md. Then:",
        f"#   mlbatch validate {ctx['path']}",
        f"#   mlbatch run {name}" + (f" --date {ctx['date']}" if ctx["date"] else ""),
    ]
    if ctx["notes"]:
        lines.append("# Could not infer, or worth a look:")
        lines += [f"#   - {comment(note)}" for note in ctx["notes"]]
    return lines


def _identity(ctx: dict[str, Any]) -> list[str]:
    """Name, description, schedule and the model."""
    return [
        f"name: {ctx['name']}",
        "description: |",
        f"  Scores {comment(ctx['pattern'])} with MLflow model {comment(ctx['model_name'])} "
        + (f"(alias {ctx['alias']})." if ctx["alias"] else f"(version {ctx['version']})."),
        "owner: mlops",
        "tags: [scaffolded]",
        (f"schedule: \"@daily\"          # the input path holds a date: one run per day (null: manual only)"
         if ctx["date"] else "schedule: null              # manual runs only; a cron or @daily to schedule it"),
        f"start_date: {_quoted(ctx['start_date'])}       # runs (and `mlbatch run --date`) for earlier dates do nothing",
        "",
        "model:",
        f"  name: {yaml_text(ctx['model_name'])}",
        (f"  alias: {yaml_text(ctx['alias'])}              # resolved to one version at the start of each run and pinned"
         if ctx["alias"] else f"  version: {ctx['version']}"),
        "",
    ]


def _input_block(ctx: dict[str, Any]) -> list[str]:
    """The input: uri (date templated), marker, format, id column, up to the `features:` key."""
    lines = [
        "input:",
        f"  uri: {_quoted(ctx['uri'])}" + (f"    # {ctx['date']} in the sample's path became {{{{ ds }}}}, the run's "
                                     "data date" if ctx["date"] else ""),
    ]
    if ctx["marker"]:
        lines.append(f"  marker: {_quoted(ctx['marker'])}   # the run starts once this file exists")
    return lines + [
        f"  format: {ctx['format']}",
        _aligned(f"  id_column: {yaml_text(ctx['id_column'])}", "kept next to each prediction; null ids are rejected", 30),
        "  features:                 # the model's inputs, in its order, with its types",
    ]


def _feature(column: Column) -> list[str]:
    """One feature with its notes and commented-out suggestions."""
    lines = [_aligned(f"    - name: {yaml_text(column.name)}", column.source, 30),
             f"      type: {column.type}"]
    if column.nullable:
        lines.append("      nullable: true")
    lines += [f"      # {comment(note)}" for note in column.notes]
    return lines + [f"      # {comment(s)}" for s in column.suggestions]


def _predict_and_output(ctx: dict[str, Any]) -> list[str]:
    """Prep, the dev backend (a cloud backend's contract computed locally) and the output."""
    backend = ctx["backend"]
    lines = [
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
    return lines + [
        "",
        "output:",
        f"  uri: {_quoted(ctx['output'])}   # a rerun of the same date replaces it",
        "  format: parquet",
        "  prediction_column: prediction",
        *_predictions_block(ctx["predictions"]),
        "",
    ]


def _predictions_block(predictions: dict[str, Any]) -> list[str]:
    """`output.predictions` when the model returns more than one value per row (infer.predictions_of)."""
    if predictions["kind"] == "value":
        return []
    classes = ", ".join(_scalar(c) for c in predictions["classes"])
    return [f"  predictions:                # the model was logged with pyfunc_predict_fn="
            f"'{predictions['predict_fn']}': one column per class",
            f"    kind: {predictions['kind']}",
            f"    classes: [{classes}]   # the model's classes_, in its column order"]


def _trigger_and_wait(ctx: dict[str, Any]) -> list[str]:
    """What a manual trigger may change, and how long to wait for the input."""
    backend = ctx["backend"]
    lines = ["trigger_params:             # what `mlbatch run --set` and the Airflow trigger form may change"]
    if ctx["alias"]:
        lines += ["  model_alias: {field: model.alias, description: MLflow alias to score with.}"]
    # the dev spec offers only what runs without the cloud; the prod block adds its backend to the enum
    choices = [ctx["base_backend"], "local" if ctx["base_backend"] == "dataflow" else "dataflow"]
    return lines + [
        f"  backend: {{field: predict.backend, enum: [{', '.join(choices)}]}}",
        "  date: {field: ds, format: date, description: Score this day's data instead of the run's date.}",
        "",
        "wait:",
        "  timeout_minutes: 60         # how long wait_for_data waits for the input",
        "  poke_seconds: 30",
    ]


def environments_block(backend: str) -> list[str]:
    """A commented production block for the chosen backend: what to fill in, where it goes."""
    blocks = {
        "dataflow": ["predict:", "  dataflow:", "    runner: dataflow", "    project: my-project",
                     "    region: europe-west1", "    temp_location: gs://my-bucket/tmp"],
        "sagemaker": ["predict:", "  backend: sagemaker", "  sagemaker:", "    region: eu-west-1",
                      "    role_arn: arn:aws:iam::123456789012:role/sagemaker-execution",
                      "    # one image per model version, its environment built in (no install at start):",
                      "    # `mlflow models build-docker -m models:/<name>/<version>`",
                      "    image_uri: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/mlflow-{model_name}:v{model_version}",
                      "    s3_staging_uri: s3://my-bucket/mlbatch"],
        "endpoint": ["predict:", "  backend: endpoint", "  endpoint:              # a live model endpoint (docs/endpoint.md)",
                     "    kind: mlflow         # mlflow | sagemaker | vertex",
                     "    url: https://scoring.example.com   # the server's /invocations is called",
                     "    http_conn_id: scoring_http          # Airflow HTTP connection: token or login/password",
                     "    max_rows_per_request: 1000"],
        "vertex": ["predict:", "  backend: vertex", "  vertex:", "    project: my-project",
                   "    region: europe-west1",
                   "    # the MLflow image serves the model baked into it: one image per version,",
                   "    # built by `mlflow models build-docker -m models:/<name>/<version>`",
                   "    serving_container_image_uri: europe-docker.pkg.dev/my-project/mlflow/{model_name}:v{model_version}",
                   "    gcs_staging_uri: gs://my-bucket/mlbatch"],
    }
    if backend not in blocks:
        return []
    if backend != "dataflow":  # the form's default (the spec's backend) must be one of its choices
        blocks[backend] += ["trigger_params:", f"  backend: {{field: predict.backend, enum: [{backend}, dataflow]}}"]
    return ["", "# Production (MLBATCH_ENV=prod): uncomment, fill in, check with `mlbatch validate FILE --env prod`.",
            "# environments:", "#   prod:"] + [f"#     {line}" for line in blocks[backend]]


def new_pipeline(name: str, model: str, input_uri: str, *, backend: str = "dataflow", id_column: str | None = None,
                 output: str | None = None, home: Path = DEFAULT_HOME, out=print) -> Path:
    """Write `<pipelines dir>/<name>.yaml`; return its path. Raises `ScaffoldError` and writes nothing."""
    path = _new_path(name)
    os.environ.update(local_env(home))  # the registry of `mlbatch run`: embedded, or the user's own
    model_name, alias, version = parse_model(model)
    info = model_info(model_name, alias, version)
    pattern, files, fmt = input_files(input_uri)
    notes: list[str] = []
    sample = read_sample_files(files, fmt, notes=notes)
    if sample.num_rows == 0:
        raise ScaffoldError(f"{files[0]}: no rows to learn from")
    notes[:] = list(dict.fromkeys(notes))  # one note per column, not one per sampled file
    columns, chosen = features_and_id(info.signature, sample, id_column, notes)
    predictions = predictions_of(info, model_uri(model_name, alias, version), notes)
    uri, date = templated(pattern)
    marker = templated(marker_of(files[0]) or "")[0] or None
    notes += _input_notes(marker, date, backend)
    base_backend = "dataflow" if backend in ("dataflow", "endpoint") else "local"
    text = render({
        "name": name, "today": dt.date.today().isoformat(), "start_date": _start_date(date), "model_text": model,
        "model_name": model_name, "alias": alias, "version": version, "sample_rows": sample.num_rows,
        "sample_file": files[0] if len(files) == 1 else pattern, "path": _shown(path), "date": date, "notes": notes,
        "pattern": pattern, "uri": uri, "marker": marker, "format": fmt, "id_column": chosen, "columns": columns,
        "backend": backend, "base_backend": base_backend, "output": output or default_output(name, pattern, home),
        "predictions": predictions,
    })
    write_checked(path, text)
    out(f"wrote {_shown(path)}: {len(columns)} features, id {chosen}, {fmt} input, backend {base_backend}")
    for note in notes:
        out(f"  - {note}")
    out(f"next: mlbatch validate {_shown(path)}")
    out(f"      mlbatch run {name}" + (f" --date {date}" if date else ""))
    return path


def _new_path(name: str) -> Path:
    """The spec's path for a valid DAG id, refused if the file exists."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name):
        raise ScaffoldError(f"name {name!r}: expected lower case letters, digits and _ (it is the DAG id)")
    path = pipelines_dir() / f"{name}.yaml"
    if path.exists():
        raise ScaffoldError(f"{path} exists; not overwriting it (remove it or choose another name)")
    return path


def _input_notes(marker: str | None, date: str | None, backend: str) -> list[str]:
    """What the user should know about the input's marker, its date and a cloud backend in dev."""
    notes = []
    if not marker:
        notes.append("no _SUCCESS marker next to the input: wait_for_data waits for the input files "
                     "themselves (set input.marker if the producer writes one)")
    if not date:
        notes.append("no date (YYYY-MM-DD) in the input path: every run reads the same input; "
                     "put {{ ds }} into input.uri for daily partitions")
    if backend in ("sagemaker", "vertex"):
        notes.append(f"backend {backend}: dev runs the {backend} contract on this machine (backend local); "
                     "fill in the commented prod environment at the end for the real service")
    if backend == "endpoint":
        notes.append("backend endpoint: dev scores with the direct model (backend dataflow); fill in the "
                     "commented prod environment at the end with your endpoint")
    return notes


def _start_date(date: str | None) -> str:
    """1 January of the year before the sample's date (or today, whichever is earlier)."""
    return f"{min(dt.date.today(), dt.date.fromisoformat(date or '9999-12-31')).year - 1}-01-01"


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
