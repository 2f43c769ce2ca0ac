"""The `quality:` block: the gate between predict and publish (docs/quality.md). Absent: no gate, the
run publishes as before. The default thresholds are data in `mlbatch.quality.measures.DEFAULTS`; this
block only names which measures it overrides (`MEASURES`: spec name -> measure key there)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mlbatch.spec.base import SpecModel

# The names a spec overrides thresholds by -> the measure they set (mlbatch.quality.measures.DEFAULTS;
# tests/test_quality_gate.py checks the two agree).
MEASURES = {
    "psi": "psi", "jensen_shannon": "jensen_shannon", "wasserstein": "wasserstein", "l_infinity": "l_infinity",
    "null_fraction": "null_fraction_delta", "non_finite_fraction": "non_finite_fraction_delta",
    "rejected_fraction": "rejected_fraction_delta", "row_count": "row_count_ratio",
}


class Baseline(SpecModel):
    """What today is compared with: the pooled statistics of the last `runs` committed runs of this
    pipeline before today's partition, or (`model: true`) the statistics logged with the model version
    (mlbatch.quality.log_model_baseline)."""

    runs: int | None = Field(default=None, ge=1, le=90)
    model: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> Baseline:
        if self.model and self.runs is not None:
            raise ValueError("give either runs: N (the last N committed runs) or model: true, not both")
        if not self.model and self.runs is None:
            self.runs = 3
        return self


class Threshold(SpecModel):
    """At or above `warn`: publish and tell Slack; at or above `block`: hold the run for a decision.
    Either may be left out: it keeps the measure's default."""

    warn: float | None = Field(default=None, ge=0)
    block: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Threshold:
        if self.warn is not None and self.block is not None and self.warn > self.block:
            raise ValueError(f"warn {self.warn} > block {self.block}: block must be at or above warn")
        return self


class Quality(SpecModel):
    baseline: Baseline = Baseline()
    features: list[str] | Literal["all"] = Field(
        default="all", description="Input features checked: 'all' or a list of names.")
    predictions: bool = Field(default=True, description="Check the prediction columns too.")
    thresholds: dict[str, Threshold] = Field(default={}, description=f"Per measure: {sorted(MEASURES)}.")
    min_rows: int = Field(default=1000, ge=0, description=(
        "Below this many rows (today or per baseline run) the distribution measures are skipped with a "
        "note: Evidently's 1,000."))
    on_timeout: Literal["reject", "approve"] = "reject"
    timeout_minutes: float = Field(default=720, gt=0, le=7 * 24 * 60)

    @model_validator(mode="after")
    def _known_measures(self) -> Quality:
        unknown = sorted(set(self.thresholds) - set(MEASURES))
        if unknown:
            raise ValueError(f"thresholds: unknown measures {unknown}; known: {sorted(MEASURES)}")
        for name, limits in self.thresholds.items():
            if name == "row_count" and any(v is not None and v < 1 for v in (limits.warn, limits.block)):
                raise ValueError("thresholds.row_count compares max(ratio, 1/ratio): warn and block are >= 1 "
                                 f"(e.g. 1.25 and 2.0), got {limits}")
        return self
