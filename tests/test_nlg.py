"""dsee.evaluation.nlg: E2E-style corpus metrics, checked against independent implementations and hand computations."""

from __future__ import annotations

import csv
import math
import os
import shutil
import stat
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest

from dsee.evaluation import nlg
from dsee.evaluation.nlg import (
    METRICS,
    MeteorScorer,
    NLGMetricWarning,
    group_references,
    meteor_available,
    score,
)

JAVA = meteor_available()
needs_java = pytest.mark.skipif(not JAVA, reason="needs 'java' on PATH (METEOR 1.5 and the Stanford PTB tokeniser)")

# A small fixed set in the E2E style: item 0 is an exact match of one reference, item 2 an empty output.
HYPS = [
    "The Eagle is a cheap coffee shop near Burger King.",
    "Aromi is a family-friendly coffee shop in the city centre.",
    "",
    "Fitzbillies serves expensive Italian food.",
]
REFS = [
    ["The Eagle is a cheap coffee shop near Burger King.", "Near Burger King, The Eagle is a low-priced coffee shop."],
    [
        "Aromi is a coffee shop in the city centre that is family friendly.",
        "In the city centre, there is a family-friendly coffee shop called Aromi.",
        "Aromi, a coffee shop in the centre of the city, welcomes families.",
    ],
    ["Blue Spice is a pub by the river.", "There is a riverside pub named Blue Spice."],
    [
        "Fitzbillies is an expensive Italian restaurant.",
        "For Italian food in the high price range, try Fitzbillies.",
        "Fitzbillies offers pricey Italian dishes.",
    ],
]

# Measured once (Java PTB tokeniser, METEOR 1.5 from pycocoevalcap 1.2, sacrebleu 2.6): a regression pin; each
# metric is also checked against an independent implementation or a hand computation below.
FIXED_EXPECTED = {
    "bleu": 0.5269859615861191,
    "nist": 4.689886379279468,
    "meteor": 0.42317742294002825,
    "rouge_l": 0.575320211731839,
    "cider": 3.3430075318971464,
}


def data_dir() -> Path:
    return Path(os.environ.get("DSEE_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")


def child_pids() -> set[int]:
    """Children of this process (Linux /proc); zombies count until they are reaped."""
    pids: set[int] = set()
    for f in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        try:
            pids.update(int(p) for p in f.read_text().split())
        except FileNotFoundError:
            # A thread (a tokenizer or torch worker) ended between the listing and the read: it has no children.
            continue
    return pids


@pytest.fixture(scope="module")
def meteor():
    scorer = MeteorScorer(timeout=300)
    yield scorer
    scorer.close()
    assert not scorer.running


@pytest.fixture(scope="module")
def fixed(meteor) -> dict:
    if JAVA:
        return score(HYPS, REFS, meteor_scorer=meteor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NLGMetricWarning)
        return score(HYPS, REFS, metrics=("bleu", "nist", "rouge_l", "cider"))


def fake_java(tmp_path: Path, body: str) -> Path:
    """A directory holding a 'java' that runs the given shell body instead of a JVM."""
    java = tmp_path / "java"
    java.write_text("#!/bin/sh\n" + body + "\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)
    return tmp_path


# ------------------------------------------------------------------------------------------------ fixed set


def test_fixed_set_values(fixed):
    assert set(fixed) == (set(METRICS) if JAVA else {"bleu", "nist", "rouge_l", "cider"})
    for name, value in fixed.items():
        assert isinstance(value, float), name
        assert value == pytest.approx(FIXED_EXPECTED[name], rel=1e-6 if name == "meteor" else 1e-9), name


def test_metrics_subset_and_order():
    out = score(HYPS, REFS, metrics=("nist", "bleu"))
    assert list(out) == ["nist", "bleu"]
    assert out["bleu"] == pytest.approx(FIXED_EXPECTED["bleu"], rel=1e-12)


# ------------------------------------------------------------------------------------------------ BLEU


def test_mteval_tokenisation():
    # mteval-v13a: ASCII-only lowercasing (É stays), punctuation split off except '-' and "'", periods and
    # commas kept inside numbers, a dash split after a digit, non-ASCII symbols (£) left attached.
    text = "The Eagle's price: £20-25, 4.5 stars.\nÉté   (Riverside) isn't \"cheap\"."
    assert nlg.mteval_tokenize([text]) == [
        "the eagle's price : £20 - 25 , 4.5 stars . Été ( riverside ) isn't \" cheap \" ."
    ]


def test_bleu_matches_nltk_and_pycocoevalcap(fixed):
    # Independent implementations on the same mteval tokens. All three clip n-gram counts at the largest count
    # in any one reference and take the brevity-penalty length from the reference closest in length (the
    # shorter one on a tie), so they agree. Expected differences: pycocoevalcap adds 1e-15 / 1e-9 to every
    # count (hence rel=1e-6); NLTK counts max(1, number of n-grams) for a hypothesis with no n-grams of an
    # order, so an empty hypothesis adds 1 to every denominator there (0.5051 instead of 0.5270 on the fixed
    # set): NLTK is compared on the non-empty items. sacrebleu's own default call differs from the module's by
    # tokenisation and case handling only, which is why the module sets both.
    from nltk.translate.bleu_score import corpus_bleu
    from pycocoevalcap.bleu.bleu import Bleu

    hyps = nlg.mteval_tokenize(HYPS)
    refs = [nlg.mteval_tokenize(g) for g in REFS]
    scores, _ = Bleu(4).compute_score(
        {i: g for i, g in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)}, verbose=0
    )
    assert fixed["bleu"] == pytest.approx(scores[3], rel=1e-6)

    keep = [i for i, h in enumerate(HYPS) if h]
    expected = corpus_bleu([[r.split() for r in refs[i]] for i in keep], [hyps[i].split() for i in keep])
    got = score([HYPS[i] for i in keep], [REFS[i] for i in keep], metrics=("bleu",))["bleu"]
    assert got == pytest.approx(expected, rel=1e-12)
    assert got > fixed["bleu"]  # the empty output costs matches and brevity


def test_bleu_hand_computed_single_reference():
    # hyp "the cat sat on the mat", ref "the cat sat on a mat" (6 tokens each, so BP = 1):
    #   1-grams: the(2, clipped to 1), cat, sat, on, mat match -> 5/6
    #   2-grams: the cat, cat sat, sat on match; on the, the mat do not -> 3/5
    #   3-grams: the cat sat, cat sat on -> 2/4;  4-grams: the cat sat on -> 1/3
    #   BLEU = (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = (1/12) ** 0.25 = 0.537285...
    out = score(["the cat sat on the mat"], [["the cat sat on a mat"]], metrics=("bleu",))
    assert out["bleu"] == pytest.approx((1 / 12) ** 0.25, rel=1e-12)
    assert out["bleu"] == pytest.approx(0.5372849659, abs=1e-9)


def test_bleu_hand_computed_multi_reference_brevity():
    # hyp (6 tokens) "the cat sat on the mat"; refs "the cat sat on the red mat" (7), "a cat sat on the mat
    # today here" (8). Clipping against the max count over references, every n-gram matches:
    #   1-grams 6/6 (ref 1 has "the" twice), 2-grams 5/5 ("the mat" from ref 2), 3-grams 4/4, 4-grams 3/3.
    # Closest reference length is 7, so BP = exp(1 - 7/6) = exp(-1/6) = 0.846482...
    refs = [["the cat sat on the red mat", "a cat sat on the mat today here"]]
    out = score(["the cat sat on the mat"], refs, metrics=("bleu",))
    assert out["bleu"] == pytest.approx(math.exp(-1 / 6), rel=1e-12)


def test_bleu_exact_match_is_one():
    assert score(HYPS[:2], [[h] for h in HYPS[:2]], metrics=("bleu",))["bleu"] == pytest.approx(1.0, abs=1e-12)
    # mteval lowercases and splits punctuation off, so case and the glued period do not matter
    out = score(["The Cat sat on the MAT."], [["the cat sat on the mat ."]], metrics=("bleu",))
    assert out["bleu"] == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------------------------------------------------ NIST

NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2  # mteval's length-penalty constant, 4.2161...


def test_nist_hand_computed():
    # One item, hyp "a b", refs "a b" / "a c". Reference counts: a 2, b 1, c 1, "a b" 1, "a c" 1; 4 words.
    # info(a) = log2(4/2) = 1, info(b) = log2(4/1) = 2, info(a b) = log2(count(a)/count(a b)) = log2(2) = 1.
    # 1-grams: (1 + 2) / 2 hyp unigrams = 1.5; 2-grams: 1 / 1 = 1; no 3- to 5-grams -> 0.  Sum 2.5.
    # Length: 2 hyp words vs 4 ref words / 2 references = 2 -> ratio 1, no penalty.  NIST = 2.5.
    assert score(["a b"], [["a b", "a c"]], metrics=("nist",))["nist"] == pytest.approx(2.5, rel=1e-12)
    # hyp "a": 1-grams 1/1 = 1; ratio 1/2 -> penalty exp(-4.2161 * ln(0.5)^2) = exp(-2.0257) = 0.131905
    expected = math.exp(-NIST_BETA * math.log(0.5) ** 2)
    assert score(["a"], [["a b", "a c"]], metrics=("nist",))["nist"] == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.131905, abs=1e-6)
    # hyp "a a b": "a" occurs at most once in any single reference, so only one "a" matches (clipping by the
    # max over references, not their sum): 1-grams (1 + 2) / 3 = 1; 2-grams "a a" no, "a b" 1 -> 1/2.
    # 3 hyp words >= average 2 -> no penalty. NIST = 1.5 (summing the references' counts would give 1.8333).
    assert score(["a a b"], [["a b", "a c"]], metrics=("nist",))["nist"] == pytest.approx(1.5, rel=1e-12)


def test_nist_follows_mteval_sig_length_rule():
    # Items with different numbers of references: hyps "a b" / "a", refs ["a b", "a c"] / ["a d"].
    # Counts: a 3, b 1, c 1, d 1, "a b" 1, "a c" 1, "a d" 1; 6 words.
    # info(a) = log2(6/3) = 1, info(b) = log2(6), info(a b) = log2(3/1).
    # 1-grams: (1 + log2 6 + 1) / 3;  2-grams: log2(3) / 1 ("a" has no bigram).
    # mteval-v13a-sig.pl (the official default) divides the 6 reference words by the 2 reference "sets":
    # average 3 = 3 hypothesis words -> no penalty. (pymteval.py would average per item, 2 + 2 = 4, and
    # apply exp(-beta * ln(3/4)^2) = 0.705.)
    expected = (2 + math.log2(6)) / 3 + math.log2(3)
    out = score(["a b", "a"], [["a b", "a c"], ["a d"]], metrics=("nist",))
    assert out["nist"] == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(3.113283, abs=1e-6)


def test_nist_matches_nltk_with_one_reference():
    # With one reference per item NLTK's corpus_nist and mteval's definition coincide (same information
    # weights, same clipping, same length penalty); with several references NLTK scores against the single
    # best reference instead, so the module does not use it (see dsee.evaluation.nlg._nist).
    from nltk.translate.nist_score import corpus_nist

    refs = [[g[0]] for g in REFS]
    hyps = nlg.mteval_tokenize(HYPS)
    expected = corpus_nist([[nlg.mteval_tokenize(g)[0].split()] for g in refs], [h.split() for h in hyps], n=5)
    assert score(HYPS, refs, metrics=("nist",))["nist"] == pytest.approx(expected, rel=1e-12)
    # and a case where the hypotheses are shorter than the references (length penalty < 1)
    short = ["the eagle is cheap", "aromi is a coffee shop", "blue spice", "fitzbillies is expensive"]
    expected = corpus_nist(
        [[nlg.mteval_tokenize(g)[0].split()] for g in refs], [h.split() for h in nlg.mteval_tokenize(short)], n=5
    )
    assert 0 < score(short, refs, metrics=("nist",))["nist"] == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------------------------------ ROUGE-L


def rouge_l_expected(hyps: list[str], refs: list[list[str]]) -> float:
    """pycocoevalcap's ROUGE-L from Google's rouge_score LCS precision/recall per reference: max precision and
    max recall over the references (possibly from different ones), F with beta = 1.2, averaged over items.
    (rouge_score's own multi-reference ROUGE-L takes the max F with beta = 1 instead.)"""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    beta2 = 1.2**2
    total = 0.0
    for hyp, group in zip(hyps, refs):
        per_ref = [scorer.score(ref, hyp)["rougeL"] for ref in group]
        p, r = max(s.precision for s in per_ref), max(s.recall for s in per_ref)
        total += (1 + beta2) * p * r / (r + beta2 * p) if p > 0 and r > 0 else 0.0
    return total / len(hyps)


def test_rouge_l_hand_computed():
    # hyp "a cheap pub near the river" (6 tokens)
    # ref 1 "a cheap riverside pub" (4): LCS "a cheap pub" = 3 -> P = 3/6, R = 3/4
    # ref 2 "the pub is near the river and cheap" (8): LCS "pub near the river" = 4 -> P = 4/6, R = 4/8
    # max P = 2/3 (ref 2), max R = 3/4 (ref 1); F = (1 + 1.44) P R / (R + 1.44 P) = 1.22 / 1.71 = 0.713450...
    hyp = ["a cheap pub near the river"]
    one = score(hyp, [["a cheap riverside pub"]], metrics=("rouge_l",))["rouge_l"]
    assert one == pytest.approx(2.44 * 0.5 * 0.75 / (0.75 + 1.44 * 0.5), rel=1e-12)  # 0.622449
    two = score(hyp, [["a cheap riverside pub", "the pub is near the river and cheap"]], metrics=("rouge_l",))
    assert two["rouge_l"] == pytest.approx(1.22 / 1.71, rel=1e-12)


def test_rouge_l_matches_rouge_score(fixed):
    # rouge_score lowercases and splits on non-alphanumerics; on this set that gives the PTB tokens minus the
    # punctuation pycocoevalcap removes, except "family-friendly"/"low-priced" (one PTB token, two here), so
    # compare on hyphen-free text as well as checking the fixed set with a tolerance.
    plain_h = [h.replace("-", " ") for h in HYPS]
    plain_r = [[r.replace("-", " ") for r in g] for g in REFS]
    got = score(plain_h, plain_r, metrics=("rouge_l",))["rouge_l"]
    assert got == pytest.approx(rouge_l_expected(plain_h, plain_r), rel=1e-12)
    assert fixed["rouge_l"] == pytest.approx(rouge_l_expected(HYPS, REFS), abs=0.02)


# ------------------------------------------------------------------------------------------------ CIDEr


def test_cider_hand_computed():
    # Two items; document frequencies from the references: red 1, dog 1, blue 1, cat 1, "red dog" 1,
    # "blue cat" 1; log(N) = log 2, so every reference n-gram weighs tf * (log 2 - log 1) = log 2, and "fox"
    # (df 0, taken as log(max(1, 0)) = 0) weighs log 2 too.
    # Item 1 "red fox" vs "red dog": 1-gram cosine (log2)^2 / (sqrt2 log2)^2 = 1/2, 2-gram 0, no 3-/4-grams;
    #   equal lengths, so no Gaussian penalty: 10 * mean(1/2, 0, 0, 0) = 1.25.
    # Item 2 "blue cat" vs "blue cat": cosines 1, 1, 0, 0 -> 10 * 2/4 = 5.  CIDEr-D = (1.25 + 5) / 2 = 3.125.
    out = score(["red fox", "blue cat"], [["red dog"], ["blue cat"]], metrics=("cider",))
    assert out["cider"] == pytest.approx(3.125, rel=1e-12)


def test_cider_properties(fixed):
    identical = score(HYPS[:2], [[h] for h in HYPS[:2]], metrics=("cider",))["cider"]
    assert identical > 0
    disjoint = score(["zebra quartz", "violin marble"], [["red dog"], ["blue cat"]], metrics=("cider",))
    assert disjoint["cider"] == 0.0
    # one item: every reference n-gram has idf log(1) - log(1) = 0, so CIDEr is 0 by definition
    assert score(HYPS[:1], REFS[:1], metrics=("cider",))["cider"] == 0.0
    assert fixed["cider"] > 0


# ------------------------------------------------------------------------------------------------ METEOR


@needs_java
def test_meteor_perfect_and_partial(meteor):
    perfect = score(HYPS[:2], [[h] for h in HYPS[:2]], metrics=("meteor",), meteor_scorer=meteor)["meteor"]
    assert 0.9 < perfect <= 1.0
    partial = score(
        ["the eagle is a pub"], [["The Eagle is a cheap coffee shop near Burger King."]], metrics=("meteor",),
        meteor_scorer=meteor,
    )["meteor"]
    assert 0.05 < partial < 0.9
    nothing = score(["zebra quartz"], [["red dog"]], metrics=("meteor",), meteor_scorer=meteor)["meteor"]
    assert nothing == 0.0


@needs_java
def test_meteor_scorer_is_serialised_across_threads(meteor, fixed):
    flat = nlg._java_ptb_tokenize(HYPS + [r for g in REFS for r in g], nlg._java())
    hyps, refs = nlg.regroup(flat, len(HYPS), REFS)
    results: list[float] = []
    threads = [threading.Thread(target=lambda: results.append(meteor.compute(hyps, refs))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results == [pytest.approx(fixed["meteor"], rel=1e-12)] * 3


@needs_java
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts child processes through /proc")
def test_meteor_one_shot_leaves_no_process():
    before = child_pids()
    out = score(["the eagle is a pub"], [["the eagle is a pub near the river"]], metrics=("meteor",))
    assert 0 < out["meteor"] < 1
    assert child_pids() == before


def test_meteor_none_without_java(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no java
    assert not meteor_available()
    with pytest.warns(NLGMetricWarning) as record:
        out = score(HYPS, REFS)
    messages = " | ".join(str(w.message) for w in record)
    assert "METEOR is None" in messages and "'java' is not on PATH" in messages
    assert "Python approximation" in messages  # ROUGE-L and CIDEr fell back to the Python tokeniser
    assert out["meteor"] is None
    # BLEU and NIST do not need Java; on this set the Python tokeniser gives the PTB tokens, so ROUGE-L and
    # CIDEr are unchanged too
    for name in ("bleu", "nist", "rouge_l", "cider"):
        assert out[name] == pytest.approx(FIXED_EXPECTED[name], rel=1e-12), name
    with pytest.raises(RuntimeError, match="needs Java"):
        score(HYPS, REFS, metrics=("rouge_l",), coco_tokenizer="ptb")


def test_meteor_none_when_the_subprocess_fails(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(fake_java(tmp_path, "echo 'Error: no JVM here' >&2; exit 1")))
    assert meteor_available()
    scorer = MeteorScorer()
    with pytest.warns(NLGMetricWarning) as record:
        out = score(HYPS, REFS, metrics=("meteor",), meteor_scorer=scorer)
    assert out == {"meteor": None}
    messages = " | ".join(str(w.message) for w in record)
    assert "METEOR is None: the METEOR subprocess failed" in messages
    assert "no JVM here" in messages  # the JVM's stderr is passed on
    assert not scorer.running


def test_meteor_timeout_kills_the_subprocess(monkeypatch, tmp_path):
    sleep = shutil.which("sleep")
    if sleep is None:
        pytest.skip("no 'sleep' executable to stand in for a hanging JVM")
    monkeypatch.setenv("PATH", str(fake_java(tmp_path, f"exec {sleep} 60")))
    scorer = MeteorScorer(timeout=0.5)
    with pytest.raises(RuntimeError, match="timed out after 0.5 s"):
        scorer.compute(["a b"], [["a b"]])
    assert not scorer.running and scorer._meteor is None


def test_python_tokeniser_matches_ptb_on_samples():
    texts = HYPS + [r for g in REFS for r in g] + [
        "The Eagle's price: £20-25, 4.5 stars. (Riverside) [x] {y} isn't \"cheap\".",
        "A child friendly shop called 'Aromi' near Browns Cambridge- a café.",
    ]
    python = nlg._python_ptb_tokenize(texts)
    assert python[0] == "the eagle is a cheap coffee shop near burger king"
    if not JAVA:
        pytest.skip("the Java tokeniser is not available to compare with")
    assert python == nlg._java_ptb_tokenize(texts, nlg._java())


# ------------------------------------------------------------------------------------------------ errors


def test_errors():
    with pytest.raises(ValueError, match="3 hypotheses but 2 reference groups"):
        score(["a", "b", "c"], [["a"], ["b"]])
    with pytest.raises(ValueError, match="reference group 1 is empty"):
        score(["a", "b"], [["a"], []])
    with pytest.raises(ValueError, match="empty input"):
        score([], [])
    with pytest.raises(ValueError, match="reference 1 of group 0 is empty"):
        score(["a"], [["a", "  "]])
    with pytest.raises(TypeError, match="wrap it in a list"):
        score(["a", "b"], [["a"], "b"])
    with pytest.raises(ValueError, match="unknown metric"):
        score(["a"], [["a"]], metrics=("bleu", "spice"))
    with pytest.raises(ValueError, match="coco_tokenizer"):
        score(["a"], [["a"]], coco_tokenizer="moses")


def test_missing_package_names_the_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocoevalcap.cider.cider", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'pycocoevalcap==1\.2'"):
        score(["red fox", "blue cat"], [["red dog"], ["blue cat"]], metrics=("cider",), coco_tokenizer="python")
    monkeypatch.setitem(sys.modules, "sacrebleu.tokenizers.tokenizer_13a", None)
    with pytest.raises(ImportError, match=r"BLEU and NIST needs the 'sacrebleu' package.*pip install 'sacrebleu"):
        score(["a"], [["a"]], metrics=("nist",))


def test_import_is_cheap():
    code = (
        "import sys, dsee.evaluation.nlg; "
        "print(sorted(m for m in ('sacrebleu', 'nltk', 'pycocoevalcap', 'rouge_score') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_empty_hypotheses_allowed():
    out = score(["", "x"], [["a b"], ["c d"]], metrics=("bleu", "nist", "rouge_l", "cider"))
    assert out == {"bleu": 0.0, "nist": 0.0, "rouge_l": 0.0, "cider": 0.0}


# ------------------------------------------------------------------------------------------------ grouping


def test_group_references():
    sources = ["mr1", "mr2", "mr1", "mr3", "mr2", "mr1"]
    targets = ["a", "b", "c", "d", "e", "f"]
    assert group_references(sources, targets) == (["mr1", "mr2", "mr3"], [["a", "c", "f"], ["b", "e"], ["d"]])
    assert group_references([], []) == ([], [])
    with pytest.raises(ValueError, match="3 sources but 2 targets"):
        group_references(["a", "b", "c"], ["x", "y"])


def test_group_references_e2e_devset():
    path = data_dir() / "e2e" / "devset.csv"
    if not path.is_file():
        pytest.skip(f"E2E dev set not found at {path} (set DSEE_DATA_DIR)")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["mr", "ref"]
    rows = rows[1:]
    assert len(rows) == 4672
    mrs, groups = group_references([r[0] for r in rows], [r[1] for r in rows])
    assert len(mrs) == len(groups) == 547
    assert sum(map(len, groups)) == 4672
    assert mrs[0] == rows[0][0] and groups[0][0] == rows[0][1]
