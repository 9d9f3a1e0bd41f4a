"""The paired bootstrap BLEU test against a direct re-implementation on the same draws."""

from __future__ import annotations

import numpy as np
import pytest

from dsee.evaluation import nlg
from dsee.evaluation.significance import paired_bootstrap_bleu

REFS = [
    ["The Eagle is a cheap coffee shop near Burger King.", "Near Burger King, The Eagle is a low-priced coffee shop."],
    ["Aromi is a coffee shop in the city centre that is family friendly.",
     "In the city centre, there is a family-friendly coffee shop called Aromi."],
    ["Blue Spice is a pub by the river.", "There is a riverside pub named Blue Spice."],
    ["Fitzbillies is an expensive Italian restaurant.", "For Italian food in the high price range, try Fitzbillies.",
     "Fitzbillies offers pricey Italian dishes."],
    ["The Mill is a pub that serves Chinese food.", "Chinese food is served at The Mill, a pub."],
    ["Zizzi is a kid-friendly restaurant rated 5 out of 5."],
]
BASELINE = [
    "The Eagle is a cheap coffee shop near Burger King.",
    "Aromi is a coffee shop.",
    "Blue Spice is a pub.",
    "Fitzbillies serves expensive Italian food.",
    "The Mill is a pub with Chinese food.",
    "Zizzi is a restaurant.",
]
SYSTEM = [
    "The Eagle is a cheap coffee shop near Burger King.",
    "Aromi is a family-friendly coffee shop in the city centre.",
    "Blue Spice is a pub by the river.",
    "Fitzbillies is an expensive Italian restaurant.",
    "The Mill is a pub that serves Chinese food.",
    "Zizzi is a kid-friendly restaurant rated 5 out of 5.",
]


def reference_bootstrap(baseline, system, refs, resamples, seed):
    """The test written out: corpus BLEU of both systems on each draw of the items (nlg.score on the drawn
    lists, not summed statistics), the shift method's two-sided count, +1 smoothing."""
    idxs = np.random.default_rng(seed).integers(0, len(baseline), size=(resamples, len(baseline)))
    observed = nlg.score(system, refs, metrics="bleu")["bleu"] - nlg.score(baseline, refs, metrics="bleu")["bleu"]
    diffs = []
    for draw in idxs:
        b = nlg.score([baseline[i] for i in draw], [refs[i] for i in draw], metrics="bleu")["bleu"]
        s = nlg.score([system[i] for i in draw], [refs[i] for i in draw], metrics="bleu")["bleu"]
        diffs.append(s - b)
    diffs = np.array(diffs)
    return (np.sum(np.abs(diffs - observed) >= abs(observed)) + 1) / (resamples + 1), diffs


def test_scores_equal_nlg_score():
    result = paired_bootstrap_bleu(BASELINE, SYSTEM, REFS, resamples=50)
    assert result["baseline"] == nlg.score(BASELINE, REFS, metrics="bleu")["bleu"]
    assert result["system"] == nlg.score(SYSTEM, REFS, metrics="bleu")["bleu"]
    assert result["delta"] == pytest.approx(result["system"] - result["baseline"], abs=1e-12)
    assert result["items"] == len(REFS) and result["resamples"] == 50


def test_p_value_matches_a_direct_bootstrap():
    resamples, seed = 200, 7
    result = paired_bootstrap_bleu(BASELINE, SYSTEM, REFS, resamples=resamples, seed=seed)
    expected, diffs = reference_bootstrap(BASELINE, SYSTEM, REFS, resamples, seed)
    assert result["p_value"] == pytest.approx(expected, abs=1e-12)  # integer statistics: the very same draws
    assert (result["delta_low"], result["delta_high"]) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])))
    assert 1 / (resamples + 1) <= result["p_value"] <= 1.0


def test_p_value_falls_as_the_system_improves():
    """The same baseline, systems that repair more and more of its items: the p-value never rises
    (sacrebleu's |δ*| − mean |δ*| statistic broke this)."""
    many_refs, worse, better = REFS * 4, BASELINE * 4, SYSTEM * 4
    ps = []
    for k in range(1, len(worse) + 1, 3):
        system = better[:k] + worse[k:]
        ps.append(paired_bootstrap_bleu(worse, system, many_refs, resamples=400, seed=1)["p_value"])
    assert ps[-1] < 0.01 < ps[0]
    assert all(a >= b - 1e-12 for a, b in zip(ps, ps[1:])), ps


def test_a_clearly_better_system_is_significant_and_a_near_copy_is_not():
    many_refs, better, worse = REFS * 5, SYSTEM * 5, BASELINE * 5
    assert paired_bootstrap_bleu(worse, better, many_refs, resamples=300)["p_value"] < 0.01
    near = list(better)
    near[0] = "The Eagle is a cheap coffee shop by Burger King."
    assert paired_bootstrap_bleu(better, near, many_refs, resamples=300)["p_value"] > 0.05  # not significant at 5%


def test_identical_outputs():
    result = paired_bootstrap_bleu(SYSTEM, list(SYSTEM), REFS, resamples=20)
    assert result["delta"] == 0.0 and result["p_value"] == 1.0
    assert result["system"] == nlg.score(SYSTEM, REFS, metrics="bleu")["bleu"]


def test_seeded():
    a = paired_bootstrap_bleu(BASELINE, SYSTEM, REFS, resamples=100, seed=3)
    b = paired_bootstrap_bleu(BASELINE, SYSTEM, REFS, resamples=100, seed=3)
    assert a == b


def test_errors():
    with pytest.raises(ValueError, match="paired"):
        paired_bootstrap_bleu(BASELINE, SYSTEM[:-1], REFS)
    with pytest.raises(ValueError, match="resamples"):
        paired_bootstrap_bleu(BASELINE, SYSTEM, REFS, resamples=0)
    with pytest.raises(ValueError):
        paired_bootstrap_bleu(BASELINE[:-1], SYSTEM[:-1], REFS)
