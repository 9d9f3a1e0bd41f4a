"""Is one generation system's BLEU really above another's? Paired bootstrap resampling (Koehn, 2004).

A corpus BLEU difference of one point on 50 items can come from a handful of sentences. The paired
bootstrap draws the items with replacement many times, scores both systems on each draw, and asks how
often a difference as large as the observed one appears when the differences are centred on zero
(sacrebleu's two-sided test, after Clark et al., 2011, ``multeval``). The BLEU is the one of
:func:`dsee.evaluation.nlg.score`: mteval-v13a preprocessing, multi-reference, corpus level.

The resampling is sacrebleu's ``PairedTest``; this module only feeds it the E2E scorer's tokenisation and
returns plain numbers. The draws are seeded (``seed``), so the same inputs give the same p-value.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import nlg

__all__ = ["paired_bootstrap_bleu"]


def paired_bootstrap_bleu(baseline: Sequence[str], system: Sequence[str], references: Sequence[Sequence[str]],
                          *, resamples: int = 1000, seed: int = 12345) -> dict[str, float]:
    """Paired bootstrap test of corpus BLEU, ``system`` against ``baseline``, on the same items.

    Args:
        baseline, system: one output string per item, in the same item order.
        references: one non-empty list of reference strings per item (as :func:`dsee.evaluation.nlg.score`).
        resamples: bootstrap draws of the items (each draw has as many items as the corpus).
        seed: seed of the draws.

    Returns:
        ``baseline`` and ``system``: corpus BLEU in [0, 1], equal to ``nlg.score(...)["bleu"]``;
        ``delta``: system − baseline; ``p_value``: two-sided, ``(c + 1) / (resamples + 1)`` where ``c``
        counts centred draws with a larger absolute difference, so it is never 0; it is 1.0 when
        the two outputs are the same after tokenisation (no draw can differ: the test is not run and
        ``system_ci`` is NaN); ``system_ci``: half-width of the 95% interval of the system's BLEU over the draws, in
        [0, 1]; ``items`` and ``resamples``.

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
    if tok_base == tok_sys:
        # every draw differs by exactly 0; sacrebleu's strict count would give the smallest p-value instead
        bleu = nlg.corpus_bleu(tok_base, tok_refs)
        return {"baseline": bleu, "system": bleu, "delta": 0.0, "p_value": 1.0, "system_ci": float("nan"),
                "items": n, "resamples": resamples}
    significance = nlg.require_package("sacrebleu.significance", "the paired bootstrap test")
    metric = nlg.bleu_metric(references=nlg.reference_streams(tok_refs))
    test = significance.PairedTest([("baseline", tok_base), ("system", tok_sys)], {"BLEU": metric}, None,
                                   test_type="bs", n_samples=resamples)
    test._seed = seed  # PairedTest reads its seed from SACREBLEU_SEED; a caller's seed is clearer
    _, scores = test()
    base, sys_result = scores["BLEU"]
    return {"baseline": base.score / 100.0, "system": sys_result.score / 100.0,
            "delta": (sys_result.score - base.score) / 100.0, "p_value": float(sys_result.p_value),
            "system_ci": float(sys_result.ci) / 100.0, "items": n, "resamples": resamples}
