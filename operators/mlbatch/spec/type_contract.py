"""Which spec feature can feed which MLflow signature column: the one type contract that `resolve_model`
(and `mlbatch validate --model`) apply, and that prep carries out by writing each feature with the
column's exact type.

Why a contract of our own: the SageMaker and Vertex containers run MLflow's scoring server, which
enforces the signature (mlflow/models/utils.py `_enforce_schema` -> `_enforce_named_col_schema` ->
`_enforce_mlflow_datatype`, MLflow 3.17). Parquet requests (SageMaker) arrive as `pd.read_parquet`
types and are checked strictly: only an exact dtype or an upcast of the same kind passes (int64 -> double
is refused: "Can not safely convert int64 to float64"; float64 -> float32, int64 -> int32 and
int -> bool too); JSON `instances` (Vertex) are cast to the column type first
(mlflow/utils/proto_json_utils.py `parse_instances_data` -> `convert_data_type`). So prep writes the
column's own type (`PREPARED_ARROW_TYPE`), and the contract says which spec types may be converted to it
without changing a value (`FEEDS`, the conversions `_enforce_mlflow_datatype` itself calls safe or
that are exact on the values prep lets through: prep rejects a row whose value the column cannot hold,
`mlbatch_beam.schema.Feature.column_range`). What MLflow refuses in every format stays refused: float to
an integer column, a bool as a number, a number as a bool, text to anything but string.

Nulls: MLflow never looks at them for its type check, but they do not survive every format. A column
is `required` in a signature inferred from data without missing values (`infer_signature`), so a
nullable feature feeding it is refused. In an optional column only double and float carry a null the
same way in both formats (NaN); an integer column cannot hold one (Parquet reads it as float64 and
enforcement refuses it; JSON fails on int(None)), and JSON turns a null boolean into False and a null
string into the text 'None' (`convert_data_type`), which Parquet keeps null: the backends would
score different values.
"""

from __future__ import annotations

SIGNATURE_TYPES = ("double", "float", "long", "integer", "boolean", "string")

# spec feature type -> signature column types it may feed (prep converts; see the module docstring)
FEEDS = {
    "int": ("long", "integer", "double", "float"),
    "float": ("double", "float"),
    "bool": ("boolean",),
    "string": ("string",),
}

# signature column types whose optional columns carry a null alike in Parquet and JSON requests
NULLABLE_COLUMNS = ("double", "float")


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _mlflow_refusal(spec_type: str, column_type: str) -> str:
    """What MLflow's _enforce_mlflow_datatype says to this pair, in words."""
    if column_type == "string":
        why = f"it does not take {_a(spec_type)} as text"
    elif spec_type == "string":
        why = f"it does not parse text into {_a(column_type)} column"
    elif spec_type == "bool":
        why = f"it does not take a bool as a number (bool -> {column_type})"
    elif column_type == "boolean":
        why = f"it does not take a number as a boolean ({spec_type} -> boolean)"
    else:
        why = f"it refuses float values in an integer ({column_type}) column: they would change"
    return f"MLflow's schema enforcement refuses it ({why}; mlflow.models.utils._enforce_mlflow_datatype)"


def type_problem(name: str, spec_type: str, column_type: str) -> str | None:
    """Why a feature of `spec_type` cannot feed a signature column of `column_type` (None: it can)."""
    if column_type not in SIGNATURE_TYPES:
        return (f"{name}: the model's signature says {column_type}, which no input.features type can feed "
                f"(features feed {', '.join(SIGNATURE_TYPES)} columns); log the model with one of those")
    if column_type in FEEDS[spec_type]:
        return None
    fits = [t for t, columns in FEEDS.items() if column_type in columns]
    reason = _mlflow_refusal(spec_type, column_type)
    return (f"{name}: input.features says {spec_type}, the model signature says {column_type}: {reason}. "
            f"Declare the feature {' or '.join(fits)}, or log the model with a column that takes "
            f"{spec_type} ({', '.join(FEEDS[spec_type])})")


def null_problem(name: str, column_type: str, required: bool) -> str | None:
    """Why a nullable feature cannot feed this column (None: it can)."""
    if required:
        return (f"{name}: input.features says nullable, but the model signature requires the column "
                f"(MLflow's infer_signature marks a column required when the training data had no "
                f"missing value). Make the feature non-nullable (rows with a null then go to the dead "
                f"letter), or log the model with the column optional")
    if column_type in NULLABLE_COLUMNS:
        return None
    if column_type in ("long", "integer"):
        why = ("an integer column cannot hold a null in MLflow (Parquet reads it as float64, which "
               "enforcement refuses; JSON instances fail on int(None))")
        instead = "or log the model with the column as double"
    else:
        why = (f"MLflow's JSON parsing (Vertex) turns a null {column_type} into "
               f"{'False' if column_type == 'boolean' else 'the text None'} while Parquet keeps it null, "
               "so backends would score different values")
        instead = "or fill the nulls before the pipeline"
    return f"{name}: input.features says nullable, the model's optional {column_type} column: {why}. " \
           f"Make the feature non-nullable, {instead}"


def contract_problems(features: list, columns: dict) -> list[str]:
    """Every feature that the contract refuses, with its reason.

    `features` are spec features (name, type, nullable); `columns` maps a signature column name to
    (type name, required). Features without a column are left to the caller's name check."""
    problems = []
    for feature in features:
        if feature.name not in columns:
            continue
        column_type, required = columns[feature.name]
        problem = type_problem(feature.name, feature.type, column_type)
        if problem is None and feature.nullable:
            problem = null_problem(feature.name, column_type, required)
        if problem:
            problems.append(problem)
    return problems
