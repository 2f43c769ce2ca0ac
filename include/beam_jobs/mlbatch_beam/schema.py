"""The feature schema that input rows are validated against.

A plain dataclass built from JSON so the Airflow side can pass it on the
command line (``--schema-json``) without either side importing the other.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

ARROW_TYPES = {
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "string": pa.string(),
}

# MLflow signature column type -> the Arrow type prep writes for it: the dtype MLflow's scoring server
# enforces for a Parquet request (mlflow.models.utils._enforce_mlflow_datatype; the type contract is
# mlbatch.spec.type_contract on the Airflow side)
COLUMN_ARROW_TYPES = {
    "double": pa.float64(),
    "float": pa.float32(),
    "long": pa.int64(),
    "integer": pa.int32(),
    "boolean": pa.bool_(),
    "string": pa.string(),
}

# the values a column holds exactly, for an int feature: beyond them the conversion would change a value
INT_RANGE = {
    "integer": (-2**31, 2**31 - 1),
    "float": (-2**24, 2**24),
    "double": (-2**53, 2**53),
}
FLOAT32_MAX = 3.4028234663852886e38


@dataclass
class Feature:
    """One model input column and the rules a value must satisfy."""

    name: str
    type: str
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    allowed: list[Any] | None = None
    column_type: str | None = None  # the model signature's type for this column: what prep writes

    def __post_init__(self):
        if self.type not in ARROW_TYPES:
            raise ValueError(
                f"feature {self.name!r}: type {self.type!r} is not one of {sorted(ARROW_TYPES)}"
            )
        if self.column_type is not None and self.column_type not in COLUMN_ARROW_TYPES:
            raise ValueError(f"feature {self.name!r}: column_type {self.column_type!r} is not one of "
                             f"{sorted(COLUMN_ARROW_TYPES)}")
        for bound in (self.min, self.max):
            if bound is None:
                continue
            if self.type not in ("int", "float"):
                raise ValueError(f"feature {self.name!r}: min/max only apply to int and float")
            if isinstance(bound, bool) or not isinstance(bound, (int, float)):
                raise ValueError(f"feature {self.name!r}: min/max must be numbers, got {bound!r}")

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.type]

    @property
    def written_type(self) -> pa.DataType:
        """The type in the prepared files: the model column's own, else the feature's."""
        return COLUMN_ARROW_TYPES[self.column_type] if self.column_type else self.arrow_type

    def column_range(self) -> tuple[float, float] | None:
        """The values the model's column holds without changing them (None: every value of the type):
        an int in an int32, float32 or float64 column, a float in a float32 one (rounded, not overflowed)."""
        if self.type == "int":
            return INT_RANGE.get(self.column_type)
        if self.type == "float" and self.column_type == "float":
            return (-FLOAT32_MAX, FLOAT32_MAX)
        return None


@dataclass
class FeatureSchema:
    """The id column plus the ordered feature columns a model expects.

    ``id_type`` is optional: when set, ids are cast to it like a feature;
    when None the id keeps the type it was read with.
    """

    id_column: str
    features: list[Feature] = field(default_factory=list)
    id_type: str | None = None

    def __post_init__(self):
        self.features = [f if isinstance(f, Feature) else Feature(**f) for f in self.features]
        if not self.features:
            raise ValueError("schema needs at least one feature")
        names = [self.id_column] + self.feature_names
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate column names in schema: {duplicates}")
        if self.id_type is not None and self.id_type not in ARROW_TYPES:
            raise ValueError(f"id_type {self.id_type!r} is not one of {sorted(ARROW_TYPES)}")

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def columns(self) -> list[str]:
        return [self.id_column] + self.feature_names

    def id_feature(self) -> Feature | None:
        """The id as a non-nullable Feature when it has a declared type."""
        if self.id_type is None:
            return None
        return Feature(self.id_column, self.id_type, nullable=False)

    @classmethod
    def from_json(cls, text: str) -> "FeatureSchema":
        data = json.loads(text)
        unknown = set(data) - {"id_column", "features", "id_type"}
        if unknown:
            raise ValueError(f"unknown schema keys: {sorted(unknown)}")
        return cls(**data)

    def to_json(self) -> str:
        data = asdict(self)
        if data["id_type"] is None:
            del data["id_type"]
        return json.dumps(data)
