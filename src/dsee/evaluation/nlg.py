"""Corpus-level, multi-reference metrics for data-to-text generation, as the E2E NLG Challenge defines them.

The official scorer of the E2E NLG Challenge (``measure_scores.py`` in github.com/tuetschek/e2e-metrics)
reports five numbers. This module computes the same five with maintained packages and follows the
scorer's preprocessing step by step:

========  ===========================================  ================================================
metric    official scorer                              here
========  ===========================================  ================================================
BLEU      ``mteval-v13a-sig.pl`` (Perl, the default;   ``sacrebleu`` (its ``13a`` tokeniser and ``exp``
          ``-p`` selects its Python port                smoothing are documented as mteval-v13a's), on
          ``metrics/pymteval.py``)                     text lowercased as mteval does
NIST      same script, 5-grams                         :func:`_nist` below (no package computes
                                                       mteval's multi-reference NIST; see its docstring)
METEOR    pycocoevalcap ``Meteor`` (METEOR 1.5,        pycocoevalcap ``Meteor``, same jar and flags
          ``-l en -norm``), Java
ROUGE-L   pycocoevalcap ``Rouge`` (beta = 1.2)         pycocoevalcap ``Rouge``
CIDEr     pycocoevalcap ``Cider`` (CIDEr-D, sigma 6)   pycocoevalcap ``Cider``
========  ===========================================  ================================================

Preprocessing, as the official scorer does it:

* BLEU and NIST see the raw strings. mteval-v13a collapses whitespace (it reads the segments from SGML),
  lowercases (``tr/[A-Z]/[a-z]/``: ASCII letters only, as it is run without ``-c``) and applies its
  "13a" tokenisation (punctuation split off, periods and commas kept inside numbers). Here: the same
  whitespace collapse and ASCII-only lowercasing, then ``sacrebleu``'s ``Tokenizer13a``.
* METEOR, ROUGE-L and CIDEr see text tokenised by pycocoevalcap's Stanford ``PTBTokenizer``
  (``stanford-corenlp-3.4.1.jar``, ``-preserveLines -lowerCase``) with pycocoevalcap's list of punctuation
  tokens removed. Here: the same jar with the same flags and the same list (``PUNCTUATIONS`` imported from
  pycocoevalcap), run by this module (text through a pipe instead of a temporary file written inside
  site-packages, the line count checked, the JVM's stderr captured). The quirks are kept: "(" becomes
  ``-lrb-``, which survives the filter because the list has it upper-case; "£" becomes "#".

Every difference from the official scorer:

1. BLEU edge cases. sacrebleu returns 0 when no n-gram of any order matches and when the hypotheses have
   no 4-grams at all (fewer than 4 tokens each); mteval-v13a returns a small smoothed number there. Any
   real system output scores the same.
2. NIST follows the Perl script (the official default), including its ``-sig`` edit: the average
   reference length in the length penalty is the total reference length divided by the *largest* number
   of references of any item. ``pymteval.py`` (``-p``) divides per item instead; the two differ only when
   items have different numbers of references *and* the outputs are shorter than that average.
3. Line breaks inside a string (``\\n``, ``\\r``, ``\\x0b``, ``\\x0c``, ``\\x85``, ``\\u2028`` …) become
   spaces before the Java tokeniser; the official wrapper replaces only ``\\n`` and goes out of step with
   the others. pycocoevalcap's ``Meteor`` removes ``|||`` from the hypothesis; it is removed from the
   references too (PTB tokenisation already splits it, so this changes nothing for PTB input).
4. Without Java, METEOR is ``None`` (with a warning) and ROUGE-L and CIDEr fall back to a Python
   approximation of the PTB tokeniser (NLTK's Treebank tokeniser, see :func:`_python_ptb_tokenize`,
   with a warning): it gives the same tokens as the Java tokeniser for 9349 of the 9365 references of the
   E2E dev and test sets, so ROUGE-L and CIDEr may move in the third or fourth decimal.
5. Input is strings, not files: the repairs ``measure_scores.py`` applies while reading CSV/TSV files
   (mis-encoded "£" and "é", a BOM) are not applied. The E2E data in ``shared/data/e2e`` contains none of
   those byte sequences.

Scales: every value is on the scale its implementation gives. BLEU, METEOR and ROUGE-L are in [0, 1]
(BLEU as pycocoevalcap gives it: sacrebleu's 0–100 divided by 100); NIST and CIDEr are unbounded. The E2E
papers and the challenge's result tables report BLEU, METEOR and ROUGE-L ×100 and NIST and CIDEr raw
(e.g. the TGen baseline on the test set: BLEU 65.93, NIST 8.61, METEOR 44.83, ROUGE-L 68.50, CIDEr 2.23).

``import dsee.evaluation.nlg`` imports no metric package; each is imported when a metric needs it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import os
import re
import shutil
import string
import subprocess
import threading
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

__all__ = [
    "METRICS",
    "MeteorScorer",
    "NLGMetricWarning",
    "group_references",
    "meteor_available",
    "score",
]

METRICS = ("bleu", "nist", "meteor", "rouge_l", "cider")
"""Metric names :func:`score` knows, in the order the E2E scorer prints them."""

_MTEVAL = ("bleu", "nist")
_COCO = ("meteor", "rouge_l", "cider")
_NIST_MAX_N = 5
_PTB_TIMEOUT = 600.0  # seconds for one run of the Java PTB tokeniser
_PIP = {"sacrebleu": "sacrebleu>=2.0,<3", "pycocoevalcap": "pycocoevalcap==1.2", "nltk": "nltk>=3.8,<4"}


class NLGMetricWarning(UserWarning):
    """A metric could not be computed as the official scorer does (e.g. no Java): see the message."""


def require_package(module: str, purpose: str):
    """Import ``module`` (a dotted path) or raise an ImportError that names the pip package."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{purpose} needs the '{top}' package, which is not installed: pip install '{_PIP.get(top, top)}'"
        ) from e


# --------------------------------------------------------------------------------------------------------
# input


def check_inputs(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[list[str], list[list[str]]]:
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise TypeError("hypotheses must be a list of strings and references a list of lists of strings")
    hyps, refs = list(hypotheses), list(references)
    if not hyps and not refs:
        raise ValueError("empty input: no hypotheses and no references")
    if len(hyps) != len(refs):
        raise ValueError(
            f"{len(hyps)} hypotheses but {len(refs)} reference groups: give one group (a list of reference "
            f"strings) per hypothesis (group_references() builds them from E2E-style rows)"
        )
    for i, h in enumerate(hyps):
        if not isinstance(h, str):
            raise TypeError(f"hypothesis {i} is a {type(h).__name__}, not a str")
    groups = []
    for i, group in enumerate(refs):
        if isinstance(group, str):
            raise TypeError(f"reference group {i} is a str; wrap it in a list: [{group[:40]!r}]")
        group = list(group)
        if not group:
            raise ValueError(f"reference group {i} is empty: every hypothesis needs at least one reference")
        for j, r in enumerate(group):
            if not isinstance(r, str):
                raise TypeError(f"reference {j} of group {i} is a {type(r).__name__}, not a str")
            if not r.strip():
                raise ValueError(f"reference {j} of group {i} is empty or whitespace only")
        groups.append(group)
    return hyps, groups


def group_references(sources: Sequence[str], targets: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Rows (source, target) with the same source become one item with several references.

    Returns ``(unique_sources, reference_groups)`` in order of first appearance, e.g. the 4672 rows of the
    E2E dev set give 547 meaning representations. Rows with equal sources need not be adjacent (the official
    scorer groups the same way when it is given the sources).
    """
    if isinstance(sources, str) or isinstance(targets, str):
        raise TypeError("sources and targets must be lists of strings")
    sources, targets = list(sources), list(targets)
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} sources but {len(targets)} targets")
    index: dict[str, int] = {}
    unique: list[str] = []
    groups: list[list[str]] = []
    for src, tgt in zip(sources, targets):
        k = index.get(src)
        if k is None:
            index[src] = k = len(unique)
            unique.append(src)
            groups.append([])
        groups[k].append(tgt)
    return unique, groups


# --------------------------------------------------------------------------------------------------------
# BLEU and NIST (mteval-v13a)

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_WHITESPACE = re.compile(r"\s+")


def mteval_tokenize(texts: Iterable[str]) -> list[str]:
    """mteval-v13a's normalisation: whitespace collapsed, ASCII-lowercased, "13a"-tokenised; space-joined."""
    tok_mod = require_package("sacrebleu.tokenizers.tokenizer_13a", "BLEU and NIST")
    tokenize = tok_mod.Tokenizer13a()
    return [tokenize(_WHITESPACE.sub(" ", t).strip().translate(_ASCII_LOWER)) for t in texts]


def reference_streams(refs: list[list[str]]) -> list[list[str | None]]:
    """sacrebleu's layout: one stream per reference position; None marks "this item has fewer references"."""
    width = max(len(g) for g in refs)
    return [[g[k] if k < len(g) else None for g in refs] for k in range(width)]


def bleu_metric(**kwargs):
    """sacrebleu's BLEU set up as mteval-v13a on already tokenised text (see the module docstring)."""
    bleu_mod = require_package("sacrebleu.metrics.bleu", "BLEU")
    return bleu_mod.BLEU(lowercase=False, tokenize="none", smooth_method="exp", force=True, max_ngram_order=4,
                         **kwargs)


def corpus_bleu(hyps: list[str], refs: list[list[str]]) -> float:
    """Corpus BLEU-4 of mteval-v13a on tokenised text: clipped counts over all references, brevity penalty
    from the reference closest in length (the shorter on a tie), mteval's smoothing for empty orders."""
    return float(bleu_metric().corpus_score(hyps, reference_streams(refs)).score) / 100.0


def bleu_item_statistics(hyps: list[str], refs: list[list[str]]):
    """Per-item sufficient statistics of :func:`corpus_bleu` on tokenised text: an (items, 10) int64 array
    of hypothesis length, closest reference length, then matches and totals of 1- to 4-grams.

    Summed over any multiset of items, :func:`bleu_from_statistics` gives that multiset's corpus BLEU, the
    same number as :func:`corpus_bleu` on those items (this is how sacrebleu computes a corpus score: its
    ``_extract_corpus_statistics`` and ``_compute_score_from_stats``, which its own significance tests use).
    """
    import numpy as np

    stats = bleu_metric()._extract_corpus_statistics(hyps, reference_streams(refs))
    return np.asarray(stats, dtype=np.int64)


def bleu_from_statistics(summed) -> float:
    """Corpus BLEU in [0, 1] from summed :func:`bleu_item_statistics` (a length-10 vector)."""
    return float(bleu_metric()._compute_score_from_stats([int(round(x)) for x in summed]).score) / 100.0


def _ngrams(tokens: Sequence[str], n: int) -> Iterable[tuple[str, ...]]:
    return (tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _nist(hyps: list[str], refs: list[list[str]], max_n: int = _NIST_MAX_N) -> float:
    """NIST (Doddington 2002) as mteval-v13a(-sig).pl computes it, on tokenised, space-joined text.

    - information weight of an n-gram w1..wn: log2(count(w1..wn-1) / count(w1..wn)), counts over all
      references of the corpus; for unigrams the numerator is the number of reference words;
    - each hypothesis n-gram matches up to the largest count it has in any one of its references
      (as in BLEU), and adds that many times its information weight;
    - score = sum over n = 1..5 of (matched information / number of hypothesis n-grams) times the length
      penalty exp(-beta * ln(L_sys / L_ref)^2) for L_sys < L_ref, beta = -ln(0.5) / ln(1.5)^2, where L_ref is
      the total reference length divided by the largest number of references of any item (the "-sig" edit
      of the script pads every item to that many references with empty ones).

    Hand-written because no maintained package computes this: NLTK's ``corpus_nist`` picks, per item and
    order, the single reference with the best precision and takes the length of that reference, which on
    multi-reference data gives a different and lower number (7.41 instead of 8.58 when the first reference
    of each E2E dev item is scored against the others). With one reference per item the two definitions
    coincide, which the tests check.
    """
    hyp_toks = [h.split() for h in hyps]
    ref_toks = [[r.split() for r in g] for g in refs]
    counts: Counter[tuple[str, ...]] = Counter()
    ref_words = 0
    for group in ref_toks:
        for ref in group:
            ref_words += len(ref)
            for n in range(1, max_n + 1):
                counts.update(_ngrams(ref, n))

    def info(gram: tuple[str, ...]) -> float:
        context = counts[gram[:-1]] if len(gram) > 1 else ref_words
        return math.log2(context / counts[gram])

    matched_info = [0.0] * max_n
    hyp_ngrams = [0] * max_n
    for hyp, group in zip(hyp_toks, ref_toks):
        for n in range(1, max_n + 1):
            hyp_counts = Counter(_ngrams(hyp, n))
            hyp_ngrams[n - 1] += sum(hyp_counts.values())
            if not hyp_counts:
                continue
            ref_max: Counter[tuple[str, ...]] = Counter()
            for ref in group:
                ref_max |= Counter(_ngrams(ref, n))  # | keeps the larger count
            matched_info[n - 1] += sum(info(g) * min(c, ref_max[g]) for g, c in hyp_counts.items() if g in ref_max)

    precision = sum(m / max(t, 1) for m, t in zip(matched_info, hyp_ngrams))
    avg_ref_len = ref_words / max(len(g) for g in ref_toks)
    ratio = hyp_ngrams[0] / avg_ref_len
    if ratio >= 1:
        penalty = 1.0
    elif ratio <= 0:
        penalty = 0.0
    else:
        beta = -math.log(0.5) / math.log(1.5) ** 2
        penalty = math.exp(-beta * math.log(ratio) ** 2)
    return precision * penalty


# --------------------------------------------------------------------------------------------------------
# PTB tokenisation for METEOR, ROUGE-L and CIDEr (pycocoevalcap's PTBTokenizer)

# Every character str.splitlines() breaks on; the Java tokeniser breaks lines on most of them.
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def _java() -> str | None:
    return shutil.which("java")


def _ptb_module():
    return require_package("pycocoevalcap.tokenizer.ptbtokenizer", "METEOR, ROUGE-L and CIDEr")


def _java_ptb_tokenize(texts: list[str], java: str) -> list[str]:
    """pycocoevalcap's PTBTokenizer (Stanford CoreNLP 3.4.1, ``-preserveLines -lowerCase``, punctuation
    tokens removed), run through a pipe. Raises RuntimeError if the JVM fails or loses lines."""
    ptb = _ptb_module()
    jar = os.path.join(os.path.dirname(os.path.abspath(ptb.__file__)), ptb.STANFORD_CORENLP_3_4_1_JAR)
    if not os.path.isfile(jar):
        raise RuntimeError(f"the Stanford tokeniser jar of pycocoevalcap is missing: {jar}")
    cmd = [java, "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
    data = "\n".join(_LINE_BREAKS.sub(" ", t) for t in texts).encode("utf-8")
    try:
        proc = subprocess.run(cmd, input=data, capture_output=True, timeout=_PTB_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"the Java PTB tokeniser could not run: {e}") from e
    lines = proc.stdout.decode("utf-8").split("\n")
    if proc.returncode != 0 or len(lines) != len(texts):
        err = proc.stderr.decode("utf-8", "replace").strip()[-500:]
        raise RuntimeError(
            f"the Java PTB tokeniser failed (exit code {proc.returncode}, {len(lines)} lines for {len(texts)} "
            f"texts): {err}"
        )
    punct = set(ptb.PUNCTUATIONS)
    return [" ".join(w for w in line.rstrip().split(" ") if w and w not in punct) for line in lines]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_AFFIXES = re.compile(r"([.'-]*)(.*?)([.-]*)")
_KEEP = frozenset({"'s", "'re", "'ll", "'d", "'m", "'ve", "'t", "-lrb-", "-rrb-", "-lsb-", "-rsb-", "-lcb-", "-rcb-"})


def _python_ptb_tokenize(texts: list[str]) -> list[str]:
    """Approximates :func:`_java_ptb_tokenize` without Java: NLTK's Treebank tokeniser (the Penn Treebank
    rules in Python) on sentences split at ``.!?`` + space, "(" as ``-lrb-`` etc., "£" as "#" and "€" as
    "$" as the Stanford tokeniser writes them, leading quotes/periods/hyphens and trailing periods/hyphens
    split off, lowercased, pycocoevalcap's punctuation tokens removed."""
    treebank = require_package("nltk.tokenize.treebank", "the Python fallback of the PTB tokeniser").TreebankWordTokenizer()
    punct = set(_ptb_module().PUNCTUATIONS)
    out = []
    for text in texts:
        text = _LINE_BREAKS.sub(" ", text).replace("£", "#").replace("€", "$")
        tokens: list[str] = []
        for sentence in _SENTENCE_END.split(text.strip()):
            for tok in treebank.tokenize(sentence, convert_parentheses=True):
                tok = tok.lower()
                m = _AFFIXES.fullmatch(tok)
                if tok not in _KEEP and m and m.group(2) and (m.group(1) or m.group(3)):
                    tokens += [m.group(1), m.group(2), m.group(3)]
                else:
                    tokens.append(tok)
        out.append(" ".join(t for t in tokens if t and t not in punct))
    return out


def _coco_tokenize(texts: list[str], mode: str) -> tuple[list[str], str]:
    """Tokenise for the COCO metrics; returns the token strings and which tokeniser ran ("ptb"/"python")."""
    if mode not in ("auto", "ptb", "python"):
        raise ValueError(f"coco_tokenizer must be 'auto', 'ptb' or 'python', not {mode!r}")
    if mode == "python":
        return _python_ptb_tokenize(texts), "python"
    java = _java()
    if java is None:
        if mode == "ptb":
            raise RuntimeError("coco_tokenizer='ptb' needs Java ('java' on PATH) for the Stanford PTB tokeniser")
        reason = "'java' is not on PATH"
    else:
        try:
            return _java_ptb_tokenize(texts, java), "ptb"
        except RuntimeError as e:
            if mode == "ptb":
                raise
            reason = str(e)
    warnings.warn(
        f"ROUGE-L and CIDEr use a Python approximation of the Stanford PTB tokeniser because {reason}; "
        "they may differ slightly from the official E2E scorer's",
        NLGMetricWarning,
        stacklevel=3,
    )
    return _python_ptb_tokenize(texts), "python"


# --------------------------------------------------------------------------------------------------------
# METEOR


def _meteor_jar() -> str | None:
    try:
        spec = importlib.util.find_spec("pycocoevalcap.meteor.meteor")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    jar = os.path.join(os.path.dirname(spec.origin), "meteor-1.5.jar")
    return jar if os.path.isfile(jar) else None


def meteor_available() -> bool:
    """Whether METEOR can run here: ``java`` on PATH and pycocoevalcap's METEOR 1.5 jar installed.

    (It does not start the JVM; a Java that is present but fails still gives ``meteor=None`` plus a warning.)
    """
    return _java() is not None and _meteor_jar() is not None


def _stop(proc: subprocess.Popen) -> str:
    """Close stdin, kill and reap a subprocess (no zombie), close its pipes; returns the end of its stderr."""
    try:
        if proc.stdin is not None:
            proc.stdin.close()
    except OSError:
        pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    err = b""
    for stream in (proc.stdout, proc.stderr):
        if stream is None:
            continue
        try:
            if stream is proc.stderr and not stream.closed:
                err = stream.read()
            stream.close()
        except (OSError, ValueError):
            pass
    return err.decode("utf-8", "replace").strip()[-500:]


@lru_cache(maxsize=1)
def _meteor_class():
    base = require_package("pycocoevalcap.meteor.meteor", "METEOR").Meteor

    class _Meteor(base):
        # The upstream __del__ blocks forever when compute_score failed while holding the lock, and raises
        # when __init__ failed; process shutdown is done by MeteorScorer.close() and this instead.
        def __del__(self):
            proc = self.__dict__.get("meteor_p")
            if proc is not None:
                _stop(proc)

    return _Meteor


class MeteorScorer:
    """One METEOR 1.5 JVM (pycocoevalcap's ``Meteor``) that several :func:`score` calls can share.

    The JVM starts on first use (a few seconds: it loads the paraphrase table) and stops on :meth:`close`, at
    the end of a ``with`` block, or when the object is garbage collected; a failed or timed-out call stops
    it too, and the next call starts a new one. Calls are serialised by a lock, so one object may be used from
    several threads, one call at a time. ``timeout`` (seconds, None for no limit) bounds one call: past it the
    JVM is killed and the call raises.
    """

    def __init__(self, timeout: float | None = 1800.0):
        self.timeout = timeout
        self._meteor = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        """Whether a METEOR JVM is currently running for this scorer."""
        m = self._meteor
        return m is not None and m.meteor_p.poll() is None

    def __enter__(self) -> MeteorScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):  # at interpreter shutdown modules may already be gone
            self._shutdown()

    def close(self) -> None:
        """Stop the JVM (if it runs) and wait for it to exit."""
        with self._lock:
            self._shutdown()

    def _shutdown(self) -> str:
        """Stop the JVM if there is one; returns the end of its stderr."""
        m, self._meteor = self._meteor, None
        if m is None:
            return ""
        err = _stop(m.meteor_p)
        if m.lock.locked():  # left held by a compute_score that raised
            m.lock.release()
        return err

    def compute(self, hypotheses: list[str], references: list[list[str]]) -> float:
        """Corpus METEOR of tokenised hypotheses against their reference groups; raises RuntimeError on failure."""
        if _java() is None:
            raise RuntimeError("'java' is not on PATH")
        if _meteor_jar() is None:
            raise RuntimeError("pycocoevalcap's meteor-1.5.jar is missing")
        res = {i: [h] for i, h in enumerate(hypotheses)}
        gts = {i: [r.replace("|||", "") for r in g] for i, g in enumerate(references)}
        with self._lock:
            if self._meteor is not None and self._meteor.meteor_p.poll() is not None:
                self._shutdown()  # the JVM died since the last call
            if self._meteor is None:
                try:
                    self._meteor = _meteor_class()()
                except OSError as e:
                    raise RuntimeError(f"could not start METEOR: {e}") from e
            proc = self._meteor.meteor_p
            fired = threading.Event()

            def kill() -> None:
                fired.set()
                proc.kill()

            timer = threading.Timer(self.timeout, kill) if self.timeout is not None else None
            if timer is not None:
                timer.daemon = True
                timer.start()
            try:
                value = float(self._meteor.compute_score(gts, res)[0])
                if not math.isfinite(value):
                    raise ValueError(f"METEOR returned {value}")
            except Exception as e:
                err = self._shutdown()
                what = f"timed out after {self.timeout} s" if fired.is_set() else f"failed ({type(e).__name__}: {e})"
                raise RuntimeError(f"the METEOR subprocess {what}" + (f"; its stderr: {err}" if err else "")) from e
            finally:
                if timer is not None:
                    timer.cancel()
        return value


# --------------------------------------------------------------------------------------------------------
# the entry point


def score(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    metrics: Sequence[str] = METRICS,
    meteor_scorer: MeteorScorer | None = None,
    coco_tokenizer: str = "auto",
) -> dict[str, float | None]:
    """Corpus-level BLEU, NIST, METEOR, ROUGE-L and CIDEr of ``hypotheses`` against multi-reference groups.

    Args:
        hypotheses: one output string per item (an empty string is allowed and matches nothing).
        references: one non-empty list of reference strings per item (see :func:`group_references`).
        metrics: which of ``"bleu", "nist", "meteor", "rouge_l", "cider"`` to compute; the result has
            exactly these keys.
        meteor_scorer: a :class:`MeteorScorer` to reuse (saves the JVM start); by default a new one is started
            and stopped within the call.
        coco_tokenizer: tokeniser for METEOR, ROUGE-L and CIDEr: ``"ptb"`` the Stanford PTB tokeniser of the
            official scorer (needs Java), ``"python"`` its approximation in Python, ``"auto"`` (default) PTB
            when Java runs, else the approximation with a :class:`NLGMetricWarning`.

    Returns:
        ``{metric: value}``. BLEU, METEOR and ROUGE-L are in [0, 1] (BLEU as pycocoevalcap gives it, not
        sacrebleu's 0–100); NIST and CIDEr are unbounded. The E2E papers report BLEU, METEOR and ROUGE-L
        ×100 and NIST and CIDEr raw. ``meteor`` is None, with a :class:`NLGMetricWarning` saying why, when
        Java is missing or the METEOR subprocess fails. CIDEr's document frequencies come from the
        references of this corpus: a corpus of one item always scores 0.

    Raises:
        ValueError: empty input, different numbers of hypotheses and reference groups, an empty reference
            group or reference, an unknown metric name.
        TypeError: non-string hypotheses or references, a reference group given as a bare string.
        ImportError: a needed package (sacrebleu, pycocoevalcap, nltk for the fallback) is missing.
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    wanted = list(dict.fromkeys(metrics))
    unknown = [m for m in wanted if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
    if not wanted:
        raise ValueError("no metric requested")
    if coco_tokenizer not in ("auto", "ptb", "python"):
        raise ValueError(f"coco_tokenizer must be 'auto', 'ptb' or 'python', not {coco_tokenizer!r}")
    hyps, refs = check_inputs(hypotheses, references)
    out: dict[str, float | None] = {}

    if any(m in wanted for m in _MTEVAL):
        flat = mteval_tokenize(hyps + [r for g in refs for r in g])
        mt_hyps, mt_refs = regroup(flat, len(hyps), refs)
        if "bleu" in wanted:
            out["bleu"] = corpus_bleu(mt_hyps, mt_refs)
        if "nist" in wanted:
            out["nist"] = _nist(mt_hyps, mt_refs)

    if any(m in wanted for m in _COCO):
        flat, _ = _coco_tokenize(hyps + [r for g in refs for r in g], coco_tokenizer)
        tok_hyps, tok_refs = regroup(flat, len(hyps), refs)
        res = {i: [h] for i, h in enumerate(tok_hyps)}
        gts = {i: g for i, g in enumerate(tok_refs)}
        if "rouge_l" in wanted:
            rouge = require_package("pycocoevalcap.rouge.rouge", "ROUGE-L").Rouge()
            out["rouge_l"] = float(rouge.compute_score(gts, res)[0])
        if "cider" in wanted:
            cider = require_package("pycocoevalcap.cider.cider", "CIDEr").Cider()
            out["cider"] = float(cider.compute_score(gts, res)[0])
        if "meteor" in wanted:
            out["meteor"] = _meteor_or_none(tok_hyps, tok_refs, meteor_scorer)

    return {m: out[m] for m in wanted}


def regroup(flat: list[str], n_hyps: int, like: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    """Split a flat list (hypotheses, then all references) back into hypotheses and groups shaped like ``like``."""
    hyps, rest = flat[:n_hyps], iter(flat[n_hyps:])
    return hyps, [[next(rest) for _ in g] for g in like]


def _meteor_or_none(hyps: list[str], refs: list[list[str]], scorer: MeteorScorer | None) -> float | None:
    if not meteor_available():
        why = "'java' is not on PATH" if _java() is None else "pycocoevalcap's meteor-1.5.jar is missing"
        warnings.warn(f"METEOR is None: {why} (METEOR 1.5 runs in Java)", NLGMetricWarning, stacklevel=3)
        return None
    own = scorer is None
    scorer = MeteorScorer() if own else scorer
    try:
        return scorer.compute(hyps, refs)
    except RuntimeError as e:
        warnings.warn(f"METEOR is None: {e}", NLGMetricWarning, stacklevel=3)
        return None
    finally:
        if own:
            scorer.close()
