"""The protocol every comparison in the benchmarks follows, written once (benchmarks/README.md, "Protocol").

1. **Selection apart from evaluation.** Hyper-parameters (learning rates, splits, which variant to run
   further) are chosen on ``SELECTION_SEED`` only. The tables evaluate on fresh seeds,
   ``EVALUATION_SEEDS`` (at least 3), and ``HEADLINE_SEEDS`` (5) for the claims the README leads with.
   A selection run is never a row of a table.
2. **The same search for every method.** Every method compared in a table had the same grid of
   rates at the same budget on the selection seed (the reports list every rate tried).
3. **One best-epoch rule.** :data:`BEST_EPOCH_RULE`.
4. **Statistics that fit n** (:mod:`dsee.evaluation.statistics`): paired differences by seed with a
   95% t-interval, the paired t-test and the exact sign-flip test; Holm's adjustment over every test of
   one report (:class:`Family`, on the sign-flip or bootstrap p-value); per-task results first, pooled
   only on standardised differences.
5. **Controls.** A pruned model is compared with its unpruned source and with a re-tune-only control
   (the source re-tuned for the same epochs with nothing removed), so extra training is not credited
   to pruning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from dsee.evaluation.statistics import holm, paired, pooled

SELECTION_SEED = 0
EVALUATION_SEEDS = (1, 2, 3)
HEADLINE_SEEDS = (1, 2, 3, 4, 5)
BEST_EPOCH_RULE = ("each run is evaluated on the dev set after every epoch and keeps its best evaluation, for "
                   "every method alike (so paired differences compare like with like; absolute scores carry the "
                   "same optimistic selection for all); the records also hold the last epoch's score")


def seeds_arg(text: str) -> list[int]:
    """'1,2,3' -> [1, 2, 3], refusing the selection seed among evaluation seeds."""
    seeds = [int(s) for s in text.split(",") if s.strip()]
    if SELECTION_SEED in seeds:
        raise SystemExit(f"seed {SELECTION_SEED} is the selection seed: settings are chosen on it, so it is never "
                         "evaluated (give fresh seeds, e.g. 1,2,3)")
    return seeds


def evaluation_only(entries: Iterable[dict], seed_of) -> list[dict]:
    """The entries whose seed is not the selection seed."""
    return [e for e in entries if seed_of(e) != SELECTION_SEED]


class Family:
    """The tests of one report, adjusted together by Holm's method.

    Table code asks for a cell (:meth:`paired`, :meth:`pooled`, :meth:`p_value`) and gets a placeholder;
    :meth:`render` replaces every placeholder once all the report's p-values are known::

        family = Family()
        text = f"| MRPC | {family.paired(diffs)} |"
        text = family.render(text)   # '+0.13 [−0.52, +0.78] (3; t p 0.41, flip p 0.50, Holm p 1.00)'
    """

    def __init__(self) -> None:
        self._cells: list[tuple[float | None, object]] = []  # (p-value in the family, formatter(adjusted))

    def _add(self, p: float | None, formatter) -> str:
        self._cells.append((p, formatter))
        return f"\x00{len(self._cells) - 1}\x00"

    def paired(self, diffs: Sequence[float], digits: int = 2) -> str:
        """A paired comparison's cell (mean, interval, n, t p, sign-flip p, Holm p); '–' without pairs."""
        if not diffs:
            return "–"
        result = paired(diffs)
        return self._add(result.sign_flip_p, lambda adjusted: result.text(digits, adjusted_p=adjusted))

    def pooled(self, groups: Mapping[str, Sequence[float]], noun: str = "tasks") -> str:
        """A pooled comparison's cell (standardised effect, pairs, sign-flip p, Holm p); '–' without pairs."""
        if not any(groups.values()):
            return "–"
        result = pooled(groups)
        return self._add(result.sign_flip_p, lambda adjusted: result.text(adjusted_p=adjusted, groups=noun))

    def p_value(self, p: float, text: str = "p {p:.3f}, Holm p {holm:.2f}") -> str:
        """Any other test's p (e.g. a bootstrap's), formatted with its adjusted value."""
        return self._add(p, lambda adjusted: text.format(p=p, holm=adjusted))

    def __len__(self) -> int:
        return len(self._cells)

    def render(self, text: str) -> str:
        adjusted = holm([p for p, _ in self._cells])
        for i, ((_, formatter), adj) in enumerate(zip(self._cells, adjusted)):
            text = text.replace(f"\x00{i}\x00", formatter(adj))
        return text

