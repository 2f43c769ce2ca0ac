"""Does the spec's feature list fit the model? Compared with the MLflow model signature before any job
runs, so a renamed column or a float fed to an int model fails in resolve_model with the difference,
not in predict with a schema error about one batch."""

from __future__ import annotations

from typing import Any

# spec feature type -> MLflow column types that accept it without losing information
ACCEPTS = {
    "int": {"long", "integer", "double", "float"},
    "float": {"double", "float"},
    "bool": {"boolean"},
    "string": {"string"},
}


def signature_problems(features: list[Any], signature: Any) -> list[str]:
    """What differs between `input.features` and the model's input signature (empty list: it fits).

    `features` are spec features (name, type); `signature` an mlflow ModelSignature or None. A model
    without a column-based signature cannot be checked and gives no problems.
    """
    inputs = getattr(signature, "inputs", None)
    if inputs is None or inputs.is_tensor_spec() or not inputs.has_input_names():
        return []
    columns = {c.name: c for c in inputs.inputs}
    declared = {f.name: f.type for f in features}
    problems = []
    missing = [n for n, c in columns.items() if n not in declared and getattr(c, "required", True)]
    if missing:
        problems.append(f"the model needs columns that input.features lacks: {missing}")
    extra = [n for n in declared if n not in columns]
    if extra:
        problems.append(f"input.features has columns the model does not take: {extra}")
    for name, spec_type in declared.items():
        if name not in columns:
            continue
        model_type = getattr(columns[name].type, "name", str(columns[name].type))
        if model_type not in ACCEPTS[spec_type]:
            problems.append(f"{name}: input.features says {spec_type}, the model signature says {model_type}")
    return problems
