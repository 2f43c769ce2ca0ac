"""The quality gate's verdict on one run: today's statistics (written in the pass that reads the rows:
the predict job's; for a batch-prediction service, prep's for the features and predict's reading of
the service's files for the predictions) against the baseline the spec's `quality:` block names,
measure by measure, on the spec's thresholds over `measures.DEFAULTS` (docs/quality.md). The gate
step (the approval between predict and publish) acts on it: pass -> publish, warn -> publish and tell
Slack, block -> hold for a decision.

Light to import: numpy and MLflow load inside the functions, matplotlib only in `chart_png`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlbatch.errors import StatisticsError
from mlbatch.quality import baseline as baselines
from mlbatch.quality import measures
from mlbatch.spec.quality import MEASURES
from mlbatch.storage.layer import Storage

LEVELS = ("pass", "warn", "block")
DISTRIBUTION = ("psi", "jensen_shannon", "wasserstein", "l_infinity")
ROLE = {"features": "feature", "predictions": "prediction"}


@dataclass(frozen=True)
class Finding:
    """One measure of one column at or over its warn threshold (or the row count / rejected fraction:
    column "rows", role "rows")."""

    column: str
    role: str  # "feature" | "prediction" | "rows"
    measure: str
    value: float | None
    warn: float
    block: float
    level: str  # "pass" | "warn" | "block"

    def line(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.3g}"
        return (f"{self.level.upper()} {self.role} {self.column}: {self.measure} {value} "
                f"(warn {self.warn:g}, block {self.block:g})")


@dataclass(frozen=True)
class Verdict:
    level: str  # "pass" | "warn" | "block": the worst finding's
    findings: list[Finding]  # worst first
    baseline: str  # what today was compared with, e.g. "last 3 committed runs (ds=.. .. ds=..)"
    notes: list[str] = field(default_factory=list)
    measures: dict[str, dict[str, float | None]] = field(default_factory=dict)  # "role:column" -> all

    def summary_lines(self, top: int = 5) -> list[str]:
        """Plain text for Slack and logs: the level, the baseline, the worst findings, the notes."""
        lines = [f"Quality {self.level.upper()} against {self.baseline}"]
        lines += [f"- {f.line()}" for f in self.findings[:top]]
        if len(self.findings) > top:
            lines.append(f"- ... {len(self.findings) - top} more finding(s)")
        lines += [f"note: {n}" for n in self.notes]
        return lines

    def to_json(self) -> dict:
        return {"level": self.level, "baseline": self.baseline, "notes": list(self.notes),
                "findings": [vars(f) for f in self.findings], "measures": self.measures}

    @classmethod
    def from_json(cls, doc: dict) -> Verdict:
        return cls(doc["level"], [Finding(**f) for f in doc.get("findings", [])], doc["baseline"],
                   list(doc.get("notes", [])), dict(doc.get("measures", {})))


def thresholds(spec: Any) -> dict[str, measures.Default]:
    """`measures.DEFAULTS` with the spec's `quality.thresholds` over them (each side may be left out)."""
    out = dict(measures.DEFAULTS)
    for name, limits in spec.quality.thresholds.items():
        key = MEASURES[name]
        warn = out[key].warn if limits.warn is None else limits.warn
        block = out[key].block if limits.block is None else limits.block
        if warn > block:
            raise StatisticsError(f"{spec.name}: quality.thresholds.{name}: warn {warn} > block {block} once "
                                  f"the defaults (warn {out[key].warn}, block {out[key].block}) fill the rest")
        out[key] = measures.Default(warn, block, "the spec's quality.thresholds")
    return out


def evaluate(spec: Any, paths: Any, predict_result: dict) -> Verdict:
    """The verdict on today's run. `predict_result`: the predict step's XCom (its `statistics_uri`,
    `model_version`, and `rows_in` / `rows_rejected` when prep ran in the same job; else prep's job
    result file in the run's folder gives them)."""
    if getattr(spec, "quality", None) is None:
        return Verdict("pass", [], "none", ["the spec has no quality: block: no gate"])
    today, base, notes = _sides(spec, paths, predict_result)
    if today is None:
        return Verdict("warn", [], base.description if base else "none yet", notes)
    if base is None:
        return Verdict("pass", [], "none yet", notes + ["no baseline yet (no earlier committed run with "
                                                       "statistics, or none logged with the model): pass"])
    limits = thresholds(spec)
    findings, table = [], {}
    small = _too_few_rows(spec, today, base, notes)
    for role in _roles(spec):
        for column in _columns(spec, role, today):
            if column not in base.role(role):
                notes.append(f"{ROLE[role]} {column}: not in the baseline, not compared")
                continue
            try:
                comparison = measures.compare(base.role(role)[column], today.role(role)[column])
            except ValueError as exc:  # StatisticsError, ours or the job package's: another kind or edges
                notes.append(f"{ROLE[role]} {column}: not compared ({exc})")
                continue
            values = {k: v for k, v in comparison.measures.items() if k != "row_count_ratio"}
            if small:
                values = {k: v for k, v in values.items() if k not in DISTRIBUTION}
            table[f"{ROLE[role]}:{column}"] = values
            notes += [f"{ROLE[role]} {column}: {n}" for n in comparison.notes if "rows" not in n]
            findings += [_finding(column, ROLE[role], k, v, limits) for k, v in values.items()]
    for role in _roles(spec):
        if not today.role(role):  # e.g. a predict step from before its backend took prediction statistics
            notes.append(f"{role} not compared: today's statistics ({baselines.today_uri(paths, predict_result)}) "
                         f"hold none for the {spec.predict.backend} backend's run")
    findings += _run_findings(spec, today, base, predict_result, limits, notes, table)
    kept = sorted((f for f in findings if f.level != "pass"), key=_severity, reverse=True)
    level = max((f.level for f in kept), key=LEVELS.index, default="pass")
    return Verdict(level, kept, base.description, notes + base.notes, table)


def _sides(spec: Any, paths: Any, predict_result: dict):
    """(today's statistics or None, the baseline or None, notes)."""
    storage = Storage.for_spec(spec)
    uri = baselines.today_uri(paths, predict_result)
    today = baselines.read(storage, uri)
    notes = [] if today is not None else [
        f"no statistics for today's run at {uri} (the {spec.predict.backend} backend's job did not write "
        "them): nothing compared"]
    if today is not None:
        # the predict job's counts when it validated the input (prep inside it); a batch service's job
        # counts only the prepared rows it scored (the local backend's `rows_in`): prep's then
        fused = all(predict_result.get(k) is not None for k in ("rows_in", "rows_rejected"))
        counts = predict_result if fused else _prep_counts(paths)
        today.rows_in, today.rows_rejected = counts.get("rows_in"), counts.get("rows_rejected")
    base = baselines.load(storage, spec, paths.output, predict_result.get("model_version"))
    if base is None and spec.quality.baseline.model:
        notes.append(f"model {spec.model.name} v{predict_result.get('model_version')} has no logged statistics "
                     f"({baselines.MODEL_ARTIFACT}; mlbatch.quality.log_model_baseline)")
    return today, base, notes


def _prep_counts(paths: Any) -> dict:
    """Prep's rows in and rejected when it ran as its own step (its job's result file), else {}."""
    import json

    try:
        with open(paths.result_file("prep")) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def _roles(spec: Any) -> list[str]:
    return ["features", "predictions"] if spec.quality.predictions else ["features"]


def _columns(spec: Any, role: str, today: baselines.Statistics) -> list[str]:
    if role == "predictions":
        return sorted(today.predictions)
    wanted = [f.name for f in spec.input.features] if spec.quality.features == "all" else spec.quality.features
    return [c for c in wanted if c in today.features]


def _rows(stats: baselines.Statistics) -> int:
    """Valid rows of the run(s): the largest feature count (every feature column counts every row)."""
    return max((s.count for s in stats.features.values()), default=0)


def _too_few_rows(spec: Any, today, base, notes: list[str]) -> bool:
    per_run = _rows(base) / max(base.runs, 1)
    fewest = min(_rows(today), per_run)
    if fewest < spec.quality.min_rows:
        notes.append(f"fewer rows than quality.min_rows {spec.quality.min_rows} (today {_rows(today)}, "
                     f"baseline {per_run:.0f} per run): distribution measures skipped")
        return True
    return False


def _run_findings(spec, today, base, predict_result, limits, notes, table) -> list[Finding]:
    out = []
    if not base.training:
        ratio = _rows(today) / (_rows(base) / base.runs) if _rows(base) else None
        out.append(_finding("rows", "rows", "row_count_ratio", ratio, limits))
    else:
        notes.append("baseline from training data: no row count comparison")
    rejected = None
    if today.rows_in is None or base.rows_in is None:
        notes.append("rejected fraction not compared: " + ("neither the predict result nor prep's result "
                     "file has rows_in/rows_rejected" if today.rows_in is None else
                     "the baseline has no row counts"))
    else:
        rejected = measures.rejected_fraction_delta(base.rows_rejected, base.rows_in, today.rows_rejected,
                                                    today.rows_in)
        out.append(_finding("rows", "rows", "rejected_fraction_delta", rejected, limits))
    table["rows"] = {"row_count_ratio": None if base.training else out[0].value, "rejected_fraction_delta": rejected}
    return out


def _finding(column: str, role: str, measure: str, value: float | None, limits) -> Finding:
    level = measures.verdict(measure, value, limits)
    return Finding(column, role, measure, value, limits[measure].warn, limits[measure].block, level)


def _severity(f: Finding) -> tuple[int, float]:
    size = 0.0 if f.value is None else abs(f.value) if f.measure != "row_count_ratio" else (
        max(f.value, 1 / f.value) if f.value > 0 else float("inf"))
    return LEVELS.index(f.level), size / f.block if f.block else float("inf")


def chart_png(verdict: Verdict, spec: Any, paths: Any, predict_result: dict, column: str | None = None) -> bytes:
    """A small PNG: baseline vs today's shares of `column` (default: the worst-drifted column), on the
    baseline's bins (numeric, with the out-of-range cells) or per value (categorical, top 12)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    today, base, _ = _sides(spec, paths, predict_result)
    if today is None or base is None:
        raise StatisticsError(f"{spec.name}: no chart: {'no statistics today' if today is None else 'no baseline'}")
    role, column = _chart_column(verdict, today, column)
    b, t = base.role(role).get(column), today.role(role)[column]
    if b is None:
        raise StatisticsError(f"{spec.name}: no chart: column {column!r} is not in the baseline")
    if t.kind == "numeric":
        edges = b.quantile_edges()
        p, q = b.binned(edges)[0], t.binned(edges)[0]
        labels = ["<"] + [f"{e:.3g}" for e in edges[:-1]] + [">"]
    else:
        keys = sorted(set(b.values) | set(t.values), key=lambda k: -(b.values.get(k, 0) + t.values.get(k, 0)))[:12]
        p = np.array([b.values.get(k, 0) for k in keys], dtype=float)
        q = np.array([t.values.get(k, 0) for k in keys], dtype=float)
        labels = keys
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(6, 2.6), dpi=80)
    ax.bar(x - 0.2, p / max(p.sum(), 1), 0.4, label=f"baseline ({verdict.baseline})"[:60], color="#9aa5b1")
    ax.bar(x + 0.2, q / max(q.sum(), 1), 0.4, label="today", color="#d9534f")
    ax.set_xticks(x, labels, fontsize=6, rotation=60)
    ax.set_ylabel("share", fontsize=7)
    ax.set_title(f"{ROLE[role]} {column}", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()


def _chart_column(verdict: Verdict, today, column: str | None) -> tuple[str, str]:
    for role in baselines.ROLES:
        if column is not None and column in today.role(role):
            return role, column
    if column is not None:
        raise StatisticsError(f"no statistics for column {column!r} today")
    for f in verdict.findings:
        if f.role != "rows":
            return ("features" if f.role == "feature" else "predictions"), f.column
    role = "features" if today.features else "predictions"
    return role, sorted(today.role(role))[0]
