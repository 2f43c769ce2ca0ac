"""Does the spec's feature list fit the model? Compared with the MLflow model signature before any job
runs, so a renamed column or a float fed to an int model fails in resolve_model with the difference,
not in predict with a schema error about one batch. Which type may feed which column is the type
contract's (spec/type_contract.py)."""

from __future__ import annotations

from typing import Any

from mlbatch.spec.type_contract import contract_problems


def input_columns(signature: Any) -> dict[str, tuple[str, bool]] | None:
    """The signature's input columns: name -> (MLflow type name, required); None when the model has no
    column-based signature (none, a tensor, or unnamed columns)."""
    inputs = getattr(signature, "inputs", None)
    if inputs is None or inputs.is_tensor_spec() or not inputs.has_input_names():
        return None
    return {c.name: (getattr(c.type, "name", str(c.type)), getattr(c, "required", True)) for c in inputs.inputs}


def signature_problems(features: list[Any], signature: Any) -> list[str]:
    """What differs between `input.features` and the model's input signature (empty list: it fits).

    `features` are spec features (name, type, nullable); `signature` an mlflow ModelSignature or None. A model
    without a column-based signature cannot be checked and gives no problems.
    """
    columns = input_columns(signature)
    if columns is None:
        return []
    declared = {f.name: f.type for f in features}
    problems = []
    missing = [n for n, (_, required) in columns.items() if n not in declared and required]
    if missing:
        problems.append(f"the model needs columns that input.features lacks: {missing}")
    extra = [n for n in declared if n not in columns]
    if extra:
        problems.append(f"input.features has columns the model does not take: {extra}")
    return problems + contract_problems(features, columns)


def output_problems(predictions: Any, signature: Any, predict_fn: str | None = None) -> list[str]:
    """What differs between `output.predictions` and what the model returns (empty list: it fits, or the
    model does not say).

    `predictions` is the spec's `output.predictions`; `signature` an mlflow ModelSignature or None (its
    `outputs` schema says the shape: a tensor (-1,) is one value per row, (-1, k) k class columns, named
    columns a DataFrame); `predict_fn` the python_function flavor's function (`pyfunc_predict_fn`).
    """
    kind = predictions.kind
    per_class = kind in ("probabilities", "positive_probability")
    problems = []
    if predictions.method is None and predict_fn is not None:
        if per_class and predict_fn == "predict":
            problems.append(f"output.predictions.kind {kind!r} needs class probabilities, but the model was "
                            "logged to return its `predict` (log it with pyfunc_predict_fn='predict_proba', or "
                            "set output.predictions.method 'predict_proba' on the dataflow backend)")
        elif kind in ("value", "label") and predict_fn in ("predict_proba", "predict_log_proba"):
            problems.append(f"the model was logged to return {predict_fn} (one column per class); set "
                            "output.predictions.kind 'probabilities' or 'positive_probability'")
    outputs = getattr(signature, "outputs", None)
    if outputs is None or predictions.method is not None:  # the signature describes the logged function
        return problems
    if outputs.is_tensor_spec():
        shape = tuple(outputs.inputs[0].shape) if len(outputs.inputs) == 1 else None
        width = shape[1] if shape is not None and len(shape) == 2 else None
        if per_class:
            if width is None:
                problems.append(f"output.predictions.kind {kind!r} needs one column per class; the model's "
                                f"output signature is {outputs}")
            elif predictions.classes and width not in (-1, len(predictions.classes)):
                problems.append(f"the model returns {width} class columns; output.predictions.classes names "
                                f"{len(predictions.classes)}: {predictions.classes}")
            elif not predictions.classes and kind == "positive_probability" and width != 2:
                problems.append(f"the model returns {width} class columns: name output.predictions.classes "
                                "and positive_class")
        elif kind in ("value", "label") and width not in (None, 1):
            problems.append(f"the model returns {width} columns per row (output signature {outputs}); "
                            f"kind {kind!r} publishes one value per row")
        elif kind == "columns":
            problems.append(f"output.predictions.kind 'columns' needs named outputs; the model's output "
                            f"signature is {outputs}")
    elif kind == "columns" and outputs.has_input_names():
        missing = [c for c in predictions.columns if c not in outputs.input_names()]
        if missing:
            problems.append(f"the model's outputs lack {missing}; its output signature names "
                            f"{outputs.input_names()}")
    elif kind in ("value", "label") and outputs.has_input_names() and len(outputs.inputs) > 1:
        problems.append(f"the model returns columns {outputs.input_names()}; kind {kind!r} publishes one "
                        "value per row (use kind 'columns')")
    return problems
