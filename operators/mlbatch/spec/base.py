"""The base of every spec model, and the types more than one part of the spec uses."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

DataFormat = Literal["parquet", "csv", "jsonl"]


class SpecModel(BaseModel):
    """Forbids unknown keys, so a typo fails loudly instead of silently falling back to a default."""

    model_config = ConfigDict(extra="forbid")
