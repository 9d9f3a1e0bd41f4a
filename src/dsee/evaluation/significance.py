"""Is one generation system's BLEU really above another's? A paired bootstrap over the items (Koehn, 2004).

A corpus BLEU difference of one point on 100 items can come from a handful of sentences. The paired
bootstrap draws the items with replacement many times, scores both systems on the same draws and looks
at the spread of the difference. The p-value is the shift method's (:func:`dsee.evaluation.statistics.
shift_p_value`): how often a resampled difference lies at least |Δ| away from the observed Δ, i.e. how
often the draws' centred spread alone reaches the observed difference. The interval is the percentile
interval of the resampled differences.

The BLEU is :func:`dsee.evaluation.nlg.score`'s (mteval-v13a preprocessing, multi-reference, corpus
level), computed on each draw from summed per-item n-gram statistics (:func:`dsee.evaluation.nlg.
bleu_item_statistics`), exactly as on the full set. The draws are seeded, so the same inputs give the
same p-value. Earlier versions used sacrebleu's ``PairedTest``, whose statistic (|δ*| minus its mean,
against |Δ|) is not a null distribution centred on the observed difference: with normal resampled
differences of spread σ it gives p ≈ 0.42 when Δ = 0 (where the answer is 1) and about half the
two-sided p when Δ is large (0.12 instead of 0.32 at Δ = σ), so it overstated significance.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import nlg
from .statistics import paired_bootstrap

__all__ = ["paired_bootstrap_bleu"]


def paired_bootstrap_bleu(baseline: Sequence[str], system: Sequence[str], references: Sequence[Sequence[str]],
                          *, resamples: int = 1000, seed: int = 12345, confidence: float = 0.95) -> dict[str, float]:
    """Paired bootstrap test of corpus BLEU, ``system`` against ``baseline``, on the same items.

    Args:
        baseline, system: one output string per item, in the same item order.
        references: one non-empty list of reference strings per item (as :func:`dsee.evaluation.nlg.score`).
        resamples: bootstrap draws of the items (each draw has as many items as the corpus).
        seed: seed of the draws. confidence: of the interval of the difference.

    Returns:
        ``baseline`` and ``system``: corpus BLEU in [0, 1], equal to ``nlg.score(...)["bleu"]``;
        ``delta``: system − baseline; ``delta_low`` / ``delta_high``: the percentile interval of the
        difference over the draws; ``p_value``: two-sided, ``(c + 1) / (resamples + 1)`` where ``c``
        counts draws whose difference lies at least |delta| from delta (1.0 when delta is 0, e.g.
        identical outputs); ``items`` and ``resamples``.

    Raises:
        ValueError: different lengths, empty input, empty references (as :func:`dsee.evaluation.nlg.score`), or
            ``resamples`` < 1.
    """
    if len(baseline) != len(system):
        raise ValueError(f"baseline has {len(baseline)} outputs and system {len(system)}: they must be paired")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, not {resamples}")
    base_hyps, refs = nlg.check_inputs(baseline, references)
    sys_hyps, _ = nlg.check_inputs(system, references)
    flat = nlg.mteval_tokenize(base_hyps + sys_hyps + [r for g in refs for r in g])
    n = len(base_hyps)
    tok_base = flat[:n]
    tok_sys, tok_refs = nlg.regroup(flat[n:], n, refs)
    result = paired_bootstrap(nlg.bleu_item_statistics(tok_base, tok_refs), nlg.bleu_item_statistics(tok_sys, tok_refs),
                              nlg.bleu_from_statistics, resamples=resamples, seed=seed, confidence=confidence)
    return {"baseline": result.baseline, "system": result.system, "delta": result.delta,
            "delta_low": result.ci[0], "delta_high": result.ci[1], "p_value": result.p_value,
            "items": result.items, "resamples": result.resamples}
