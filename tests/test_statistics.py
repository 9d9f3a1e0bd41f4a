"""The statistics behind every reported comparison, against scipy and hand-computed cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from dsee.evaluation.statistics import (EXACT_UP_TO, holm, paired, paired_bootstrap, pooled, shift_p_value,
                                        sign_flip_p)


def brute_force_flip_p(d):
    """Every sign pattern written out: share with |mean| at least the observed |mean|."""
    observed = abs(sum(d) / len(d))
    hits = sum(abs(sum(s * x for s, x in zip(signs, d)) / len(d)) >= observed - 1e-12
               for signs in itertools.product((1, -1), repeat=len(d)))
    return hits / 2 ** len(d)


@pytest.mark.parametrize("d", [[0.5, 1.2, 0.8], [1.0, -2.0, 0.3, 0.7], [0.1, 0.2, -0.05, 0.4, 0.3, -0.1, 0.25],
                               [3.0, 3.0, 3.0, 3.0, 3.0]])
def test_paired_matches_scipy(d):
    x = np.array([80.0, 81.5, 79.2, 83.0, 82.2, 78.4, 80.9][:len(d)])
    y = x + np.array(d)
    result = paired(list(y - x))
    assert result.mean == pytest.approx(float(np.mean(d)), abs=1e-12)
    assert result.n == len(d)
    if np.std(d) > 0:
        reference = stats.ttest_rel(y, x)
        assert result.t_p == pytest.approx(reference.pvalue, rel=1e-9)
        low, high = reference.confidence_interval(0.95)
        assert result.ci == pytest.approx((low, high), rel=1e-9)
    else:
        assert result.t_p is None  # no spread: the t statistic is undefined
        assert result.ci == pytest.approx((3.0, 3.0))
    # the exact sign-flip test against scipy's exact permutation test of paired samples
    reference = stats.permutation_test((y, x), lambda a, b, axis: np.mean(a - b, axis=axis), vectorized=True,
                                       permutation_type="samples", n_resamples=np.inf, alternative="two-sided")
    assert result.sign_flip_p == pytest.approx(reference.pvalue, abs=1e-12)
    assert result.sign_flip_p == pytest.approx(brute_force_flip_p(d), abs=1e-12)


def test_sign_flip_hand_cases():
    assert sign_flip_p([1.0, 2.0, 3.0]) == 0.25  # only all-plus and all-minus reach |mean| 2: 2 of 8
    assert sign_flip_p([1.0, -1.0, 1.0, 1.0]) == pytest.approx(10 / 16)  # |Σ| ≥ 2: 1 + 4 + 4 + 1 patterns
    assert sign_flip_p([0.0, 0.0]) == 1.0
    assert sign_flip_p([2.5]) == 1.0
    assert paired([0.1147 + 1e-15, 0.1147]).t_p is None  # equal up to rounding: no spread, no t-test
    five = paired([1.0] * 5)
    assert five.sign_flip_p == pytest.approx(2 / 32) and five.min_p == pytest.approx(2 / 32)
    assert paired([1.0, 2.0, 3.0]).min_p == 0.25  # three seeds can never reach p < 0.25 by this test


def test_sign_flip_monte_carlo_beyond_exact():
    """Above EXACT_UP_TO pairs the p-value is drawn; checked against the exact distribution of Σ s_i d_i
    for integer differences (a convolution over the pairs)."""
    rng = np.random.default_rng(1)
    d = rng.integers(-3, 6, size=EXACT_UP_TO + 4).astype(float)
    counts = {0: 1}
    for x in d.astype(int):
        new = {}
        for total, c in counts.items():
            for s in (1, -1):
                new[total + s * x] = new.get(total + s * x, 0) + c
        counts = new
    exact = sum(c for total, c in counts.items() if abs(total) >= abs(d.sum())) / 2 ** len(d)
    drawn = sign_flip_p(d, resamples=200_000, seed=3)
    assert abs(drawn - exact) < 4 * math.sqrt(exact * (1 - exact) / 200_000) + 1e-5


def test_holm_hand_computed():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4·0.005, 3·0.01, 2·0.03, max(0.06, 1·0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, None, 0.4]) == [0.8, None, 0.8]  # None is not part of the family
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == []
    with pytest.raises(ValueError):
        holm([1.5])


def test_pooled_against_enumeration():
    groups = {"mrpc": [0.7, -0.2, 1.1], "stsb": [-0.01, -0.02, 0.005], "sst2": [0.3, 0.3]}
    result = pooled(groups)
    scaled = {k: [x / math.sqrt(sum(v * v for v in d) / len(d)) for x in d] for k, d in groups.items()}

    def statistic(values_by_task):
        return sum(sum(v) / len(v) for v in values_by_task.values()) / len(values_by_task)

    observed = statistic(scaled)
    assert result.effect == pytest.approx(observed, abs=1e-12)
    flat = [(k, i) for k, d in scaled.items() for i in range(len(d))]
    hits = 0
    for signs in itertools.product((1, -1), repeat=len(flat)):
        flipped = {k: list(d) for k, d in scaled.items()}
        for s, (k, i) in zip(signs, flat):
            flipped[k][i] *= s
        hits += abs(statistic(flipped)) >= abs(observed) - 1e-12
    assert result.sign_flip_p == pytest.approx(hits / 2 ** len(flat), abs=1e-12)
    assert result.n == 8 and result.positives == 5 and result.negatives == 3


def test_pooled_ignores_units_and_counts_tasks_once():
    a = {"f1": [0.5, 1.0, -0.2], "corr": [0.004, -0.001, 0.002]}
    b = {"f1": [50.0, 100.0, -20.0], "corr": [0.4, -0.1, 0.2]}  # each task in another unit
    assert pooled(a).effect == pytest.approx(pooled(b).effect, abs=1e-12)
    assert pooled(a).sign_flip_p == pytest.approx(pooled(b).sign_flip_p, abs=1e-12)
    same = pooled({"x": [2.0, 2.0, 2.0], "y": [0.1] * 6})
    assert same.effect == pytest.approx(1.0) and same.by_group == pytest.approx({"x": 1.0, "y": 1.0})
    assert pooled({"x": [0.0, 0.0], "y": [1.0, -1.0]}).effect == 0.0
    with pytest.raises(ValueError, match="no task"):
        pooled({"x": []})


def test_shift_p_value_hand_case_and_monotone():
    # |δ* − 1| = 0.5, 0.5, 0, 2: one draw reaches 1 -> (1 + 1) / (4 + 1)
    assert shift_p_value(np.array([0.5, 1.5, 1.0, 3.0]), 1.0) == pytest.approx(0.4)
    assert shift_p_value(np.array([0.3, -0.2]), 0.0) == 1.0
    centred = np.random.default_rng(0).normal(size=500)
    ps = [shift_p_value(centred + delta, delta) for delta in np.linspace(0.01, 3, 40)]
    assert all(a >= b for a, b in zip(ps, ps[1:]))  # for given draws, a larger |Δ| never has a larger p
    assert ps[0] > 0.9 and ps[-1] == pytest.approx((np.sum(np.abs(centred) >= 3) + 1) / 501)


def test_paired_bootstrap_equals_a_direct_loop():
    """A corpus metric that is a ratio of sums (here a mean: Σ value / Σ 1), bootstrapped by hand on the same
    draws: the same differences, interval and p."""
    rng = np.random.default_rng(4)
    base = rng.normal(0.50, 0.2, size=40)
    system = base + rng.normal(0.05, 0.1, size=40)
    to_stats = lambda v: np.stack([v, np.ones_like(v)], axis=1)  # noqa: E731
    ratio = lambda s: s[0] / s[1]  # noqa: E731
    result = paired_bootstrap(to_stats(base), to_stats(system), ratio, resamples=300, seed=9)
    draws = np.random.default_rng(9).integers(0, 40, size=(300, 40))
    deltas = np.array([system[i].mean() - base[i].mean() for i in draws])
    observed = system.mean() - base.mean()
    assert result.delta == pytest.approx(observed, abs=1e-12)
    assert result.ci == pytest.approx(tuple(np.quantile(deltas, [0.025, 0.975])), abs=1e-12)
    expected_p = (np.sum(np.abs(deltas - observed) >= abs(observed)) + 1) / 301
    assert result.p_value == pytest.approx(expected_p, abs=1e-12)
    assert result.items == 40 and result.resamples == 300


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="no pairs"):
        paired([])
    with pytest.raises(ValueError, match="finite"):
        paired([1.0, float("nan")])
    with pytest.raises(ValueError, match="shape"):
        paired_bootstrap(np.ones((3, 2)), np.ones((4, 2)), lambda s: s[0])
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap(np.ones((3, 2)), np.ones((3, 2)), lambda s: s[0], resamples=0)
