"""What the model returns -> the published prediction columns, the same way for every backend.

The direct-model job maps what pyfunc ``predict`` returned; the batch-prediction readers map what the
MLflow scoring server answered for it (``_get_jsonable_obj``: an array becomes lists, a DataFrame a
list of ``{column: value}`` records). Both go through ``PredictionOutput.columns_of``, so a spec's
``output.predictions`` publishes the same columns whichever backend scored the rows.

Kinds (``output.predictions.kind`` in the spec):
* ``value`` / ``label``: one value per row -> the prediction column.
* ``probabilities``: one column per class (a 2-D answer, e.g. sklearn ``predict_proba``) ->
  ``<prefix><class>`` per class, in the model's class order, which ``classes`` names.
* ``positive_probability``: the same 2-D answer -> the positive class's column only, as the
  prediction column.
* ``columns``: named outputs (a model returning a DataFrame) -> the named columns, as named.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

KINDS = ("value", "label", "probabilities", "positive_probability", "columns")
PROBABILITY_KINDS = ("probabilities", "positive_probability")


@dataclass(frozen=True)
class PredictionOutput:
    kind: str = "value"
    column: str = "prediction"           # value, label, positive_probability
    classes: tuple = ()                  # the model's classes, in its output order
    positive_class: Any = None           # positive_probability; default: the second of two classes
    columns: tuple = ()                  # kind columns: the model's output columns to publish
    prefix: str = "probability_"         # kind probabilities: column name = prefix + class
    method: str | None = None            # direct-model only: call this estimator method instead

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown prediction kind {self.kind!r}; expected one of {KINDS}")
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "columns", tuple(self.columns))

    @classmethod
    def from_json(cls, text: str | None) -> PredictionOutput:
        return cls(**json.loads(text)) if text else cls()

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @property
    def names(self) -> list[str]:
        """The published prediction columns (next to the id), in order."""
        if self.kind == "probabilities":
            return [f"{self.prefix}{c}" for c in self.classes]
        if self.kind == "columns":
            return list(self.columns)
        return [self.column]

    def columns_of(self, raw: Any, num_rows: int) -> dict[str, Any]:
        """{published column: 1-D values} from what the model (or its server) returned for num_rows rows."""
        raw = _normalise(raw)
        if self.kind == "columns":
            if not isinstance(raw, pd.DataFrame):
                raise ValueError(f"output.predictions kind 'columns' needs named outputs (a DataFrame, or the "
                                 f"server's {{column: value}} records); the model returned {_shape(raw)}")
            missing = [c for c in self.columns if c not in raw.columns]
            if missing:
                raise ValueError(f"the model's output lacks columns {missing}; it returned {list(raw.columns)}")
            _check_rows(raw, num_rows)
            return {c: raw[c].to_numpy() for c in self.columns}
        values = raw.to_numpy() if isinstance(raw, pd.DataFrame) else raw
        if self.kind in ("value", "label"):
            if values.ndim == 2 and values.shape[1] == 1:
                values = values[:, 0]
            if values.ndim != 1:
                raise ValueError(f"the model returned {_shape(raw)}, not one {self.kind} per row; for one column "
                                 "per class set output.predictions.kind 'probabilities' (or "
                                 "'positive_probability'), for named outputs kind 'columns'")
            _check_rows(values, num_rows)
            return {self.column: values}
        if values.ndim != 2:
            raise ValueError(f"output.predictions kind {self.kind!r} needs one column per class; the model "
                             f"returned {_shape(raw)} (was it logged with pyfunc_predict_fn='predict_proba'?)")
        _check_rows(values, num_rows)
        width = values.shape[1]
        if self.classes and width != len(self.classes):
            raise ValueError(f"the model returned {width} class columns; output.predictions.classes names "
                             f"{len(self.classes)}: {list(self.classes)}")
        if self.kind == "probabilities":
            return {name: values[:, i] for i, name in enumerate(self.names)}
        return {self.column: values[:, self.positive_index(width)]}

    def positive_index(self, width: int) -> int:
        if self.positive_class is not None:
            return [str(c) for c in self.classes].index(str(self.positive_class))
        if width != 2:
            raise ValueError(f"the model returned {width} class columns: name output.predictions.classes "
                             "and positive_class")
        return 1

    def frame(self, ids, raw: Any, id_column: str) -> pd.DataFrame:
        return pd.DataFrame({id_column: ids, **self.columns_of(raw, len(ids))})


def check_classes(output: PredictionOutput, model_classes) -> None:
    """Direct-model jobs: the spec's classes must be the estimator's ``classes_``, in that order."""
    if output.kind not in PROBABILITY_KINDS or not output.classes or model_classes is None:
        return
    got = [str(c) for c in model_classes]
    if got != [str(c) for c in output.classes]:
        raise ValueError(f"output.predictions.classes {list(output.classes)} differ from the model's "
                         f"classes {got} (the order of its probability columns)")


def _normalise(raw: Any) -> Any:
    """numpy array or DataFrame, from pyfunc's return value or the server's JSON."""
    if isinstance(raw, (pd.DataFrame, np.ndarray)):
        return raw
    if isinstance(raw, pd.Series):
        return raw.to_numpy()
    if hasattr(raw, "to_pylist"):  # a pyarrow column read from result lines
        raw = raw.to_pylist()
    raw = list(raw)
    if raw and isinstance(raw[0], dict):
        return pd.DataFrame.from_records(raw)
    if raw and isinstance(raw[0], (list, tuple)):
        return np.asarray(raw)
    return np.asarray(raw, dtype=object if raw and isinstance(raw[0], str) else None)


def _shape(raw: Any) -> str:
    if isinstance(raw, pd.DataFrame):
        return f"{raw.shape[1]} columns {list(raw.columns)}"
    return f"values of shape {np.shape(raw)}"


def _check_rows(values: Any, num_rows: int) -> None:
    if len(values) != num_rows:
        raise ValueError(f"the model returned {len(values)} predictions for {num_rows} rows")
