"""`output:` of a pipeline spec: where the predictions go and which columns the model's answer becomes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mlbatch.spec.base import DataFormat, SpecModel

PredictionKind = Literal["value", "label", "probabilities", "positive_probability", "columns"]
ClassName = str | int | bool


class Predictions(SpecModel):
    """Which columns the model's answer becomes (mlbatch_beam.outputs maps it the same way for every
    backend). The model decides what it returns (e.g. sklearn logged with pyfunc_predict_fn=
    "predict_proba" returns one probability per class); this says how to publish it."""

    kind: PredictionKind = Field(
        default="value", description="value/label: one column (`output.prediction_column`); probabilities: "
                                     "one column per class; positive_probability: the positive class's "
                                     "probability as `output.prediction_column`; columns: named model outputs.")
    classes: list[ClassName] = Field(
        default=[], description="The model's classes in the order of its probability columns "
                                "(sklearn: `classes_`).")
    positive_class: ClassName | None = Field(
        default=None, description="positive_probability: one of `classes`; default the second of two.")
    column_prefix: str = Field(default="probability_", description="probabilities: column = prefix + class.")
    columns: list[str] = Field(default=[], description="columns: the model's output columns to publish.")
    method: Literal["predict_proba"] | None = Field(
        default=None, description="Call this method of an sklearn model instead of the function it was logged "
                                  "with; direct-model backend (dataflow) only.")

    @model_validator(mode="after")
    def _fields_of_kind(self) -> Predictions:
        kind = self.kind
        if kind == "probabilities" and not self.classes:
            raise ValueError("kind 'probabilities' needs 'classes' (the model's classes, in its column order)")
        if kind == "columns" and not self.columns:
            raise ValueError("kind 'columns' needs 'columns' (the model's output columns to publish)")
        if self.columns and kind != "columns":
            raise ValueError(f"'columns' belongs to kind 'columns', not {kind!r}")
        if self.classes and kind not in ("probabilities", "positive_probability"):
            raise ValueError(f"'classes' belongs to kinds 'probabilities' and 'positive_probability', not {kind!r}")
        if self.positive_class is not None:
            if kind != "positive_probability":
                raise ValueError(f"'positive_class' belongs to kind 'positive_probability', not {kind!r}")
            if str(self.positive_class) not in [str(c) for c in self.classes]:
                raise ValueError(f"positive_class {self.positive_class!r} is not one of classes {self.classes}")
        if len({str(c) for c in self.classes}) != len(self.classes):
            raise ValueError(f"'classes' repeats a class: {self.classes}")
        if self.method and kind not in ("probabilities", "positive_probability"):
            raise ValueError(f"method {self.method!r} returns class probabilities: use kind 'probabilities' "
                             "or 'positive_probability'")
        return self


class Output(SpecModel):
    uri: str = Field(description="The output partition; a rerun of the same date replaces it.")
    format: DataFormat = "parquet"
    prediction_column: str = "prediction"
    predictions: Predictions = Predictions()
    dead_letter_uri: str | None = Field(default=None, description="Defaults to <uri>/../_rejected/<leaf>.")
    work_uri: str | None = Field(default=None, description="Scratch space; defaults to <uri>/../_work.")

    @property
    def prediction_columns(self) -> list[str]:
        """The published columns next to the id, in order."""
        p = self.predictions
        if p.kind == "probabilities":
            return [f"{p.column_prefix}{c}" for c in p.classes]
        return list(p.columns) if p.kind == "columns" else [self.prediction_column]

    def prediction_output(self) -> str:
        """JSON of mlbatch_beam.outputs.PredictionOutput, for the jobs and readers (no Beam import here)."""
        import json

        p = self.predictions
        return json.dumps({"kind": p.kind, "column": self.prediction_column, "classes": p.classes,
                           "positive_class": p.positive_class, "columns": p.columns,
                           "prefix": p.column_prefix, "method": p.method})
