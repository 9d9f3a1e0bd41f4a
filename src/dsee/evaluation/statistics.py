"""Paired comparisons that fit a handful of seeds: intervals, exact tests, multiplicity, pooling, bootstrap.

Every comparison in the benchmarks pairs two methods run with the same seed (same data order, same
initialisation of what they share) and looks at the differences d_i = system_i − baseline_i. With 3
to 5 seeds the usual large-sample habits mislead, so each number comes with the test that fits n:

* :func:`paired` — the mean difference with a 95% t-interval, the paired t-test, and beside it the
  **exact sign-flip test** (Fisher's randomisation test): under "the two methods are exchangeable"
  every pair's sign is equally likely ±, so the p-value is the share of the 2^n sign patterns whose
  |mean| reaches the observed one. It assumes no normality, and it says plainly what n can show:
  with 3 pairs the smallest possible p is 2/8 = 0.25, with 5 pairs 2/32 = 0.0625.
* :func:`holm` — Holm's step-down adjustment of a report's family of p-values (family-wise error).
* :func:`pooled` — several tasks measured in different units (F1, correlation, accuracy) pooled only
  on standardised differences: each task's d_i divided by that task's root mean square difference
  (a scale the sign flips leave unchanged, so the pooled sign-flip test stays exact), averaged
  within the task, then over tasks, so every task counts once whatever its number of seeds.
* :func:`paired_bootstrap` — a paired bootstrap over the items of one evaluation set for a corpus
  metric (BLEU) computed from per-item sufficient statistics. Its p-value is the shift method's
  (Efron & Tibshirani 1993, §16.4): the share of resampled differences whose distance from the
  observed difference reaches |observed|; for given draws it can only fall as |observed| grows.
  (sacrebleu's paired bootstrap centres |δ*| on its mean instead of δ* on δ̂, which is not a null
  distribution: see :mod:`dsee.evaluation.significance`.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["PairedComparison", "PooledComparison", "BootstrapComparison", "paired", "sign_flip_p", "holm",
           "pooled", "paired_bootstrap", "shift_p_value"]

EXACT_UP_TO = 20  # pairs: 2^20 sign patterns are enumerated exactly; beyond, Monte Carlo draws
_TIES = 1e-12  # relative tolerance: a pattern whose statistic equals the observed one up to rounding counts


def _as_array(values: Sequence[float], what: str) -> np.ndarray:
    array = np.asarray(list(values), dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{what}: expected a flat sequence of numbers")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what}: every value must be finite, got {list(values)}")
    return array


def _sign_patterns(n: int, resamples: int, seed: int) -> np.ndarray:
    """(P, n) matrix of ±1: all 2^n patterns when n ≤ EXACT_UP_TO, else ``resamples`` random ones."""
    if n <= EXACT_UP_TO:
        return 1.0 - 2.0 * ((np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1)
    rng = np.random.default_rng(seed)
    return rng.choice(np.array([-1.0, 1.0]), size=(resamples, n))


def _flip_p(observed: float, draws: np.ndarray, exact: bool) -> float:
    """Two-sided p from the statistic under every pattern (exact) or under random ones (+1 smoothing,
    the observed pattern counted once, so a Monte Carlo p is never 0)."""
    reach = np.abs(draws) >= abs(observed) * (1 - _TIES) - 1e-300
    if exact:
        return float(reach.mean())
    return float((reach.sum() + 1) / (len(draws) + 1))


def sign_flip_p(diffs: Sequence[float], *, resamples: int = 100_000, seed: int = 0) -> float:
    """Two-sided p of the paired sign-flip (randomisation) test of mean difference 0.

    Args:
        diffs: the paired differences d_1 … d_n (n ≥ 1).
        resamples, seed: Monte Carlo draws when n > ``EXACT_UP_TO`` (otherwise every pattern is counted).

    Returns:
        #{s ∈ {±1}^n : |mean(s·d)| ≥ |mean(d)|} / 2^n — 1.0 when every difference is 0.
    """
    d = _as_array(diffs, "diffs")
    if d.size == 0:
        raise ValueError("diffs: no pairs")
    patterns = _sign_patterns(d.size, resamples, seed)
    return _flip_p(float(d.mean()), patterns @ d / d.size, d.size <= EXACT_UP_TO)


@dataclass(frozen=True)
class PairedComparison:
    """Summary of paired differences (system − baseline).

    ``ci`` is the two-sided t-interval of the mean at ``confidence``; ``t_p`` the paired t-test's p;
    both None with fewer than 2 pairs (and ``t_p`` when every difference is equal, up to rounding: no
    spread).
    ``sign_flip_p`` is exact for n ≤ ``EXACT_UP_TO``; ``min_p`` the smallest p the sign-flip test can
    give with n pairs (2 / 2^n): a reader sees at once whether n could show anything.
    """

    n: int
    mean: float
    sd: float | None
    ci: tuple[float, float] | None
    t_p: float | None
    sign_flip_p: float
    positives: int
    negatives: int
    confidence: float = 0.95

    @property
    def min_p(self) -> float:
        return min(1.0, 2.0 / 2 ** self.n) if self.n <= EXACT_UP_TO else 0.0

    def text(self, digits: int = 2, *, adjusted_p: float | None = None) -> str:
        """'+0.13 [−0.52, +0.78] (3; t p 0.41, flip p 0.50)' — mean, interval, pairs and both p-values
        (``adjusted_p``: Holm's, shown as 'Holm p' after them)."""
        interval = f" [{self.ci[0]:+.{digits}f}, {self.ci[1]:+.{digits}f}]" if self.ci else ""
        tests = [f"t p {self.t_p:.2f}"] if self.t_p is not None else []
        tests.append(f"flip p {self.sign_flip_p:.2f}")
        if adjusted_p is not None:
            tests.append(f"Holm p {adjusted_p:.2f}")
        return f"{self.mean:+.{digits}f}{interval} ({self.n}; {', '.join(tests)})"


def paired(diffs: Sequence[float], *, confidence: float = 0.95) -> PairedComparison:
    """Mean difference, t-interval, paired t-test and exact sign-flip test of ``diffs``."""
    from scipy import stats

    d = _as_array(diffs, "diffs")
    if d.size == 0:
        raise ValueError("diffs: no pairs")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    mean = float(d.mean())
    sd = ci = t_p = None
    if d.size >= 2:
        sd = float(d.std(ddof=1))
        half = float(stats.t.ppf(0.5 + confidence / 2, d.size - 1)) * sd / math.sqrt(d.size)
        ci = (mean - half, mean + half)
        if sd > 1e-9 * float(np.abs(d).max()):  # equal differences up to rounding have no spread to test
            t_p = float(stats.ttest_1samp(d, 0.0).pvalue)
    return PairedComparison(n=int(d.size), mean=mean, sd=sd, ci=ci, t_p=t_p, sign_flip_p=sign_flip_p(d),
                            positives=int((d > 0).sum()), negatives=int((d < 0).sum()), confidence=confidence)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error), in the input order; None stays None
    and is not counted in the family.

    With m p-values sorted p_(1) ≤ … ≤ p_(m): adjusted p_(k) = max_{j ≤ k} min(1, (m − j + 1)·p_(j)).
    """
    present = [(i, float(p)) for i, p in enumerate(pvalues) if p is not None]
    for _, p in present:
        if not 0.0 <= p <= 1.0 or math.isnan(p):
            raise ValueError(f"p-values must lie in [0, 1], got {p}")
    m = len(present)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (i, p) in enumerate(sorted(present, key=lambda item: item[1])):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class PooledComparison:
    """Differences of several tasks pooled on a common scale.

    ``effect`` is the mean over tasks of each task's mean standardised difference d_i / rms(d): +1 when
    every pair of every task moved up by the same amount, 0 when the tasks' differences cancel.
    ``by_group`` holds each task's standardised mean; ``sign_flip_p`` the exact (n ≤ ``EXACT_UP_TO``
    pairs in all) or Monte Carlo two-sided p of ``effect`` under all sign flips of all pairs.
    """

    effect: float
    by_group: dict[str, float]
    n: int
    sign_flip_p: float
    positives: int
    negatives: int

    def text(self, *, adjusted_p: float | None = None, groups: str = "tasks") -> str:
        extra = f", Holm p {adjusted_p:.2f}" if adjusted_p is not None else ""
        return (f"{self.effect:+.2f} ({len(self.by_group)} {groups}, {self.n} pairs, {self.positives} up / "
                f"{self.negatives} down; flip p {self.sign_flip_p:.2f}{extra})")


def pooled(groups: Mapping[str, Sequence[float]], *, resamples: int = 100_000, seed: int = 0) -> PooledComparison:
    """Pool paired differences of tasks with different metrics on standardised differences.

    Args:
        groups: ``{task: [d_1, …]}``, each task's paired differences in its own unit (empty tasks skipped).

    A task's scale is its root mean square difference sqrt(mean(d²)), which no sign flip changes, so
    the test below is exact: the statistic is recomputed under every pattern of signs of all pairs.
    A task whose differences are all 0 contributes 0.
    """
    names = [name for name, d in groups.items() if len(d) > 0]
    if not names:
        raise ValueError("pooled: no task has any pair")
    arrays = [_as_array(groups[name], f"differences of {name}") for name in names]
    scaled = []
    for d in arrays:
        rms = math.sqrt(float(np.mean(d ** 2)))
        scaled.append(d / rms if rms > 0 else np.zeros_like(d))
    z = np.concatenate(scaled)
    # weight of a pair: 1 / (tasks × pairs of its task), so the statistic is the mean of task means
    weights = np.concatenate([np.full(len(s), 1.0 / (len(names) * len(s))) for s in scaled])
    observed = float(weights @ z)
    patterns = _sign_patterns(z.size, resamples, seed)
    p = _flip_p(observed, patterns @ (weights * z), z.size <= EXACT_UP_TO)
    every = np.concatenate(arrays)
    return PooledComparison(effect=observed, by_group={n: float(s.mean()) for n, s in zip(names, scaled)},
                            n=int(z.size), sign_flip_p=p, positives=int((every > 0).sum()),
                            negatives=int((every < 0).sum()))


def shift_p_value(resampled: np.ndarray, observed: float) -> float:
    """Two-sided bootstrap p by the shift method: (1 + #{|δ*_b − δ̂| ≥ |δ̂|}) / (B + 1); 1.0 when δ̂ = 0.

    ``resampled`` are the B bootstrap differences δ*_b, ``observed`` δ̂ on the full sample. For fixed
    draws the count can only fall as |δ̂| grows at fixed δ* − δ̂ (the centred spread): monotone in |δ̂|.
    """
    draws = np.asarray(resampled, dtype=np.float64)
    if draws.ndim != 1 or draws.size == 0:
        raise ValueError("resampled: expected a non-empty flat array of differences")
    if observed == 0:
        return 1.0
    reach = np.abs(draws - observed) >= abs(observed) * (1 - _TIES)
    return float((reach.sum() + 1) / (draws.size + 1))


@dataclass(frozen=True)
class BootstrapComparison:
    """A paired bootstrap of a corpus metric: ``baseline`` and ``system`` on the full item set, their
    difference, its percentile interval over the draws and the shift-method p (:func:`shift_p_value`)."""

    baseline: float
    system: float
    delta: float
    ci: tuple[float, float]
    p_value: float
    items: int
    resamples: int


def paired_bootstrap(baseline_stats: np.ndarray, system_stats: np.ndarray,
                     score: Callable[[np.ndarray], float], *, resamples: int = 1000, seed: int = 12345,
                     confidence: float = 0.95) -> BootstrapComparison:
    """Paired bootstrap over the items of one evaluation set (Koehn 2004), for a corpus metric.

    Args:
        baseline_stats, system_stats: (items, k) per-item sufficient statistics of the two systems on
            the same items in the same order (for BLEU: lengths, n-gram matches and totals).
        score: summed statistics (k,) -> the corpus metric.
        resamples: B draws of ``items`` items with replacement (the same draws for both systems).
        seed: seed of the draws. confidence: of the percentile interval of the difference.
    """
    a = np.asarray(baseline_stats, dtype=np.float64)
    b = np.asarray(system_stats, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"statistics must be two (items, k) arrays of one shape, got {a.shape} and {b.shape}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, not {resamples}")
    n = a.shape[0]
    base, system = score(a.sum(0)), score(b.sum(0))
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    counts = np.zeros((resamples, n))
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1.0)  # how often each item is drawn
    sums_a, sums_b = counts @ a, counts @ b  # (B, k): the draws' summed statistics
    deltas = np.array([score(sb) - score(sa) for sa, sb in zip(sums_a, sums_b)])
    tail = (1 - confidence) / 2
    low, high = np.quantile(deltas, [tail, 1 - tail])
    observed = system - base
    return BootstrapComparison(baseline=base, system=system, delta=observed, ci=(float(low), float(high)),
                               p_value=shift_p_value(deltas, observed), items=n, resamples=resamples)

