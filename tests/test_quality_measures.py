"""The drift measures (`mlbatch.quality`) against scipy's reference values on known distributions, and
the per-column summaries they work on: shards merge to the summary of the whole, JSON round-trips,
empty and all-null columns give None with a note, never NaN."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import norm, wasserstein_distance

from mlbatch_beam.quality import StatisticsError
from mlbatch.quality import measures
from mlbatch_beam.quality import statistics
from mlbatch_beam.quality.numeric import BINS

RNG = np.random.default_rng(25)
N = 20_000


def numeric(values, edges=None, column="x"):
    return statistics.summary(column, "numeric", edges).add_batch(values)


def baseline_and_today(shift: float, seed: int = 0):
    """Baseline N(10, 2) binned on a first run's quantiles; today shifted by `shift` standard deviations."""
    rng = np.random.default_rng(seed)
    edges = numeric(rng.normal(10, 2, N)).quantile_edges()
    return numeric(rng.normal(10, 2, N), edges), numeric(rng.normal(10 + shift * 2, 2, N), edges)


def test_psi_matches_the_hand_computed_formula():
    p, q = np.array([50.0, 30, 20, 0]), np.array([40.0, 30, 20, 10])
    a, b = np.array([.5, .3, .2, 1e-4]), np.array([.4, .3, .2, .1])  # empty cell -> PSI_EPSILON
    hand = sum((bi - ai) * math.log(bi / ai) for ai, bi in zip(a, b))
    assert measures.psi(p, q) == pytest.approx(hand, rel=1e-12)
    assert hand == pytest.approx((0.1 - 1e-4) * math.log(1000) + 0.1 * math.log(.5 / .4), rel=1e-12)


def test_jensen_shannon_matches_scipy_base_2():
    for p, q in [(RNG.random(12), RNG.random(12)), (np.array([1.0, 0, 3]), np.array([0.0, 2, 1])),
                 (np.array([1.0, 0]), np.array([0.0, 1]))]:
        assert measures.jensen_shannon(p, q) == pytest.approx(jensenshannon(p, q, base=2), abs=1e-12)
    assert measures.jensen_shannon(np.array([1.0, 0]), np.array([0.0, 1])) == pytest.approx(1.0)


def test_wasserstein_matches_scipy_on_the_binned_points_and_the_raw_values():
    raw_b, raw_t = RNG.normal(0, 1, N), RNG.normal(0.5, 1.3, N)
    edges = numeric(RNG.normal(0, 1, N)).quantile_edges()
    (p, px), (q, qx) = numeric(raw_b, edges).binned(edges), numeric(raw_t, edges).binned(edges)
    assert measures.wasserstein(px, p, qx, q) == pytest.approx(wasserstein_distance(px, qx, p, q), rel=1e-9)
    # bins placed at their values' mean: close to the distance of the unbinned values
    assert measures.wasserstein(px, p, qx, q) == pytest.approx(wasserstein_distance(raw_b, raw_t), rel=0.05)


def test_normalised_wasserstein_is_the_distance_over_the_baseline_std():
    base, today = baseline_and_today(shift=0.5)
    got = measures.compare(base, today).measures["wasserstein"]
    assert got == pytest.approx(0.5, abs=0.05)  # a shift of half a std, normed by the std (Evidently)
    assert base.std == pytest.approx(2.0, rel=0.03)


def test_l_infinity_is_the_largest_share_difference():
    assert measures.l_infinity(np.array([50.0, 30, 20]), np.array([20.0, 30, 50])) == pytest.approx(0.3)


def test_identical_distributions_measure_about_zero_and_pass():
    base, today = baseline_and_today(shift=0.0)
    got = measures.compare(base, today).measures
    assert got["psi"] < 0.01 and got["jensen_shannon"] < 0.05 and got["wasserstein"] < 0.05
    assert got["row_count_ratio"] == 1.0 and got["null_fraction_delta"] == 0.0
    assert all(measures.verdict(k, v) == "pass" for k, v in got.items())
    same = numeric(RNG.normal(size=1000))
    edges = same.quantile_edges()
    assert measures.compare(numeric(same_values := RNG.normal(size=500), edges),
                            numeric(same_values, edges)).measures["psi"] == 0.0


@pytest.mark.parametrize("shift, expected", [(0.2, "pass"), (0.45, "warn"), (1.0, "block")])
def test_a_shifted_normal_crosses_the_psi_bands(shift, expected):
    """PSI of N(0,1) against N(d,1) is about d^2 (docs/quality.md): 0.1 near a third of a std, 0.25 at
    half a std; +1 std is far past the block band. Reference: the PSI of the exact distributions on
    20 equal-mass bins (scipy.stats.norm); the samples' noise is about 0.006 at 20,000 rows, more as
    PSI grows."""
    cells = norm.ppf(np.linspace(0, 1, BINS + 1))
    p, q = np.diff(norm.cdf(cells)), np.diff(norm.cdf(cells - shift))
    exact = float(np.sum((q - p) * np.log(q / p)))
    assert exact == pytest.approx(shift ** 2, rel=0.05)
    base, today = baseline_and_today(shift, seed=7)
    got = measures.compare(base, today).measures["psi"]
    assert got == pytest.approx(exact, rel=0.1, abs=0.015)
    assert measures.verdict("psi", got) == expected


def test_shards_merge_to_the_summary_of_the_whole():
    values = RNG.normal(3, 1, 10_001)
    values[::97] = np.nan
    values[5] = np.inf
    arrow = pa.array(values.tolist() + [None] * 7, from_pandas=False)
    for edges in (None, numeric(RNG.normal(3, 1, 1000)).quantile_edges()):
        whole = numeric(arrow, edges)
        shards = [numeric(arrow.slice(i, 1000), edges) for i in range(0, len(arrow), 1000)]
        merged = shards[0]
        for shard in reversed(shards[1:]):  # order does not matter
            merged = merged.merge(shard)
        assert (merged.count, merged.nulls, merged.non_finite) == (whole.count, 7, 1 + len(values[::97]))
        assert (merged.counts, merged.below, merged.above, merged.sketch) == (
            whole.counts, whole.below, whole.above, whole.sketch)
        assert (merged.min, merged.max) == (whole.min, whole.max)
        assert merged.mean == pytest.approx(whole.mean, rel=1e-12)
        assert merged.m2 == pytest.approx(whole.m2, rel=1e-9)
        assert merged.sums == pytest.approx(whole.sums, rel=1e-9)
        assert merged.quantile_edges() == whole.quantile_edges()


def test_categorical_shards_merge_exactly_and_bools_count_as_values():
    words = RNG.choice(["a", "b", "c", "d"], 5000).tolist() + [None] * 3
    whole = statistics.summary("w", "categorical").add_batch(pa.array(words))
    merged = statistics.summary("w", "categorical")
    for i in range(0, len(words), 700):
        merged = merged.merge(statistics.summary("w", "categorical").add_batch(pa.array(words[i:i + 700])))
    assert merged == whole and whole.nulls == 3 and sum(whole.values.values()) == 5000
    flags = statistics.summary("f", "categorical").add_batch(np.array([True, False, True]))
    assert flags.values == {"true": 2, "false": 1}


def test_json_round_trip_through_text():
    base, _ = baseline_and_today(0.0)
    first = numeric(RNG.normal(size=100))
    cat = statistics.summary("w", "categorical").add_batch(pa.array(["x", "y", None]))
    for s in (base, first, cat, numeric(pa.array([None, None], type=pa.float64()))):
        assert statistics.from_json(json.loads(json.dumps(s.to_json(), allow_nan=False))) == s


def test_empty_and_all_null_columns_give_none_with_a_note_never_nan():
    edges = [0.0, 1.0, 2.0]
    empty = numeric(np.array([], dtype=float), edges)
    nulls = numeric(pa.array([None] * 5, type=pa.float64()), edges)
    fine = numeric(RNG.random(100) * 2, edges)
    for base, today in [(fine, empty), (fine, nulls), (nulls, fine), (empty, empty), (empty, fine)]:
        result = measures.compare(base, today)
        assert not any(isinstance(v, float) and math.isnan(v) for v in result.measures.values())
        assert result.measures["psi"] is None and result.notes, result
    assert measures.compare(fine, nulls).measures["null_fraction_delta"] == 1.0
    assert measures.compare(fine, empty).measures["row_count_ratio"] == 0.0
    assert measures.verdict("row_count_ratio", 0.0) == "block"
    sketch_only = numeric(pa.array([None], type=pa.float64()))
    assert sketch_only.quantile_edges() is None
    assert measures.compare(sketch_only, sketch_only).measures["psi"] is None
    assert measures.rejected_fraction_delta(0, 0, 3, 10) is None
    assert measures.rejected_fraction_delta(1, 100, 3, 10) == pytest.approx(0.29)


def test_a_categorical_with_a_new_value():
    base = statistics.summary("c", "categorical").add_batch(np.array(["a"] * 50 + ["b"] * 50))
    today = statistics.summary("c", "categorical").add_batch(np.array(["a"] * 40 + ["b"] * 40 + ["z"] * 20))
    got = measures.compare(base, today)
    assert got.measures["l_infinity"] == pytest.approx(0.2)
    p, q = np.array([50, 50, 0.0, 0]), np.array([40, 40, 20.0, 0])
    assert got.measures["jensen_shannon"] == pytest.approx(jensenshannon(p, q, base=2), abs=1e-12)
    assert got.measures["psi"] == pytest.approx(measures.psi(p, q))
    assert "values not in the baseline: ['z']" in got.notes
    assert measures.verdict("l_infinity", 0.2) == "warn"


def test_baseline_of_several_runs_compares_rows_per_run():
    edges = numeric(RNG.normal(size=1000)).quantile_edges()
    runs = [numeric(RNG.normal(size=1000), edges) for _ in range(3)]
    base = statistics.pool(runs)
    assert (base.runs, base.count) == (3, 3000)
    half = numeric(RNG.normal(size=500), edges)
    assert measures.compare(base, half).measures["row_count_ratio"] == 0.5
    assert measures.verdict("row_count_ratio", 0.5) == "block"


def test_first_run_baseline_bins_on_its_sketch_quantiles():
    first = numeric(RNG.normal(0, 1, N))
    edges = first.quantile_edges()
    assert len(edges) == BINS + 1 and edges[0] == first.min and edges[-1] == first.max
    result = measures.compare(first, numeric(RNG.normal(0, 1, N), edges))
    assert result.measures["psi"] < 0.02 and "sketch" in result.notes[-1]


def test_bad_inputs_name_the_column_and_what_is_wrong():
    with pytest.raises(StatisticsError, match="column 'x'.*numeric summary got <U1"):
        numeric(np.array(["a"]))
    with pytest.raises(StatisticsError, match="column 'x'.*numeric summary got object values"):
        numeric(np.array([1.0, "2", None], dtype=object))
    mixed = numeric(np.array([1.0, None, 3], dtype=object))
    assert (mixed.count, mixed.nulls, mixed.min, mixed.max) == (3, 1, 1.0, 3.0)
    with pytest.raises(StatisticsError, match="strictly increasing"):
        statistics.summary("x", "numeric", [1.0, 1.0])
    with pytest.raises(StatisticsError, match="different edges"):
        numeric([1.0], [0.0, 2.0]).merge(numeric([1.0], [0.0, 3.0]))
    with pytest.raises(StatisticsError, match="column 'x' with the categorical summary of column 'x'"):
        measures.compare(numeric([1.0]), statistics.summary("x", "categorical"))
    with pytest.raises(StatisticsError, match="missing \\['count'\\]"):
        statistics.from_json({k: v for k, v in numeric([1.0]).to_json().items() if k != "count"})
    with pytest.raises(StatisticsError, match="kind 'text'"):
        statistics.summary("x", "text")


def test_a_high_cardinality_column_keeps_the_most_frequent_values_and_counts_the_rest_as_other():
    values = [f"v{i:04d}" for i in range(statistics.MAX_VALUES + 5)] + ["v0007"] * 3
    got = statistics.summary("id", "categorical").add_batch(np.array(values))
    assert len(got.values) == statistics.MAX_VALUES and got.other == 5 and got.values["v0007"] == 4
    assert sum(got.values.values()) + got.other == len(values)
