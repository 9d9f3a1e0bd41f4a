"""The frontier experiment compares methods at equal trainable parameters: check its budget arithmetic."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import transformers as T
from scipy import stats

from dsee import DSEEConfig, add_dsee, count_parameters

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
spec = importlib.util.spec_from_file_location("frontier_experiment", BENCH / "frontier_experiment.py")
frontier = importlib.util.module_from_spec(spec)
spec.loader.exec_module(frontier)
from _protocol import Family  # noqa: E402


def _model(task):
    """Models with the experiment's adapted shapes (2 layers, random weights)."""
    if task == "e2e":
        config = T.LlamaConfig(vocab_size=64, hidden_size=576, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=9, num_key_value_heads=3, head_dim=64)
        return T.LlamaForCausalLM(config)
    config = T.BertConfig(vocab_size=64, hidden_size=384, num_hidden_layers=2, num_attention_heads=12,
                          intermediate_size=64)
    return T.BertModel(config)


@pytest.mark.parametrize("task", ["mrpc", "e2e"])
@pytest.mark.parametrize("rank", [4, 32])
@pytest.mark.parametrize("split", ["split0.5", "split0.75"])
def test_every_split_buys_lora_budget(task, rank, split):
    counts = {}
    for kind in ("lora", split):
        _, settings = frontier.adapter_settings(task, frontier.variant(kind, rank), seed=0)
        settings = dict(settings, sparse_method="random")
        model = add_dsee(_model(task), DSEEConfig(**settings))
        counts[kind] = count_parameters(model).trainable
    # the same number of trainable parameters, up to the rounding of one entry per matrix (4 matrices)
    assert abs(counts[split] - counts["lora"]) <= 4
    _, settings = frontier.adapter_settings(task, frontier.variant(split, rank), seed=0)
    assert settings["alpha"] == 2 * settings["rank"]  # s = 2 at every rank


def test_ablation_grids_name_a_grid_per_support():
    assert frontier.ablation_grids("gradient=7.5e-4,1.5e-3; random=3e-3") == {
        "gradient": [7.5e-4, 1.5e-3], "random": [3e-3]}
    assert frontier.ablation_grids("") == {}
    with pytest.raises(SystemExit, match="SUPPORT=LR"):
        frontier.ablation_grids("7.5e-4,1.5e-3")


def _finished(args, runs):
    """Recorded runs ``(kind, rank, lr, seed, score)`` under ``args``' protocol."""
    return [{"key": frontier.settings_key(args, "mrpc", frontier.variant(kind, rank), lr, seed), "score": score}
            for kind, rank, lr, seed, score in runs]


def test_rate_table_lists_only_methods_run_at_several_rates_under_this_protocol():
    args = frontier.parse_args(["--data-dir", "unused"])
    args.finished = _finished(args, [("lora", 16, 0.003, 0, 0.8292), ("lora", 16, 0.0015, 0, 0.8501),
                                     ("split0.5", 16, 0.003, 0, 0.8476),  # one rate only: not a probe
                                     ("lora", 8, 0.0015, 0, 0.80), ("lora", 8, 0.003, 0, 0.90)])
    args.finished[-1]["key"]["epochs"] = 99  # another protocol
    table = frontier.rate_table(args, ["mrpc"])
    rows = [line for line in table.splitlines() if line.startswith("| MRPC")]
    assert rows == ["| MRPC F1 | LoRA | 16 | 0 | 0.0015: 85.01, 0.003: 82.92 |"]
    args.finished = args.finished[2:3]
    assert frontier.rate_table(args, ["mrpc"]) == ""


def test_rates_are_probed_at_one_budget_or_at_each():
    runs = [("lora", 8, 0.0015, 0, 0.80), ("lora", 8, 0.003, 0, 0.90),    # rank 8 wants the larger rate
            ("lora", 16, 0.0015, 0, 0.85), ("lora", 16, 0.003, 0, 0.83)]  # rank 16 the smaller
    common = ["--data-dir", "unused", "--report-only", "--ranks", "8,16", "--splits", "0.5",
              "--glue-lrs", "0.0015,0.003", "--ablation-tasks", "none"]
    args = frontier.parse_args(common + ["--probe-rank", "8"])
    args.finished = _finished(args, runs)
    rates = frontier.choose_rates(args, ["mrpc"], lambda task: ["lora", "split0.5"])
    assert rates == {("mrpc", "lora", 8): 0.003, ("mrpc", "lora", 16): 0.003}  # split0.5: its probe is missing
    args = frontier.parse_args(common + ["--probe-rank", "each"])
    args.finished = _finished(args, runs)
    rates = frontier.choose_rates(args, ["mrpc"], lambda task: ["lora"])
    assert rates == {("mrpc", "lora", 8): 0.003, ("mrpc", "lora", 16): 0.0015}
    assert frontier.rates_text(rates) == "MRPC F1 lora: 0.003 (r 8), 0.0015 (r 16)"
    assert frontier.rates_text({("mrpc", "lora", 8): 0.003, ("mrpc", "lora", 16): 0.003}) == "MRPC F1 lora: 0.003 (r 8, 16)"
    with pytest.raises(SystemExit):
        frontier.parse_args(["--data-dir", "unused", "--probe-rank", "every"])


def test_the_e2e_ablation_runs_at_its_own_budget_and_the_e2e_rate():
    """GLUE's per-support grids are GLUE rates: on E2E every support takes the E2E split's rate, at
    ``--e2e-ablation-rank``'s budget rather than GLUE's ``--ablation-rank``."""
    args = frontier.parse_args(["--data-dir", "unused", "--report-only", "--ablation-rank", "8",
                                "--e2e-ablation-rank", "16", "--ablation-tasks", "mrpc,e2e",
                                "--ablation-methods", "gradient,random", "--ablation-lrs", "gradient=7.5e-4,3e-3"])
    args.finished = []
    rates = {("mrpc", "split0.5", 8): 0.003, ("e2e", "split0.5", 16): 0.002, ("e2e", "split0.5", 8): 0.5}
    chosen = frontier.ablation_rates(args, ["e2e"], rates, "split0.5")
    assert chosen == {("e2e", "gradient"): 0.002, ("e2e", "random"): 0.002}
    # on GLUE the gradient grid is probed (its runs are missing here, so no rate yet); random keeps the split's
    assert frontier.ablation_rates(args, ["mrpc"], rates, "split0.5") == {("mrpc", "random"): 0.003}
    assert frontier.ablation_rank(args, "e2e") == 16 and frontier.ablation_rank(args, "mrpc") == 8


def _expected_cell(diffs, digits, holm_p):
    """A paired cell written out from scipy: mean [95% t-interval] (n; t p, exact sign-flip p, Holm p)."""
    d = np.array(diffs)
    test = stats.ttest_1samp(d, 0.0)
    low, high = test.confidence_interval(0.95)
    flips = sum(abs(sum(s * x for s, x in zip(signs, d))) >= abs(d.sum()) - 1e-12
                for signs in itertools.product((1, -1), repeat=len(d))) / 2 ** len(d)
    return (f"{d.mean():+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}] ({len(d)}; t p {test.pvalue:.2f}, "
            f"flip p {flips:.2f}, Holm p {holm_p:.2f})")


def test_the_e2e_ablation_table_pairs_by_seed_against_grebsmo_and_lora():
    args = frontier.parse_args(["--data-dir", "unused", "--ablation-tasks", "e2e", "--e2e-ablation-rank", "16",
                                "--ablation-methods", "gradient"])

    def run(seed, bleu, loss):
        return {"key": {"seed": seed}, "scores": {"bleu": bleu}, "dev_loss": loss}

    cells = {("e2e", "lora", "grebsmo", 16): [run(1, 0.50, 1.60), run(2, 0.40, 1.50), run(3, 0.45, 1.55)],
             ("e2e", "split0.5", "grebsmo", 16): [run(1, 0.52, 1.61), run(2, 0.42, 1.52), run(3, 0.44, 1.56)],
             ("e2e", "split0.5", "gradient", 16): [run(2, 0.47, 1.45), run(1, 0.51, 1.57), run(4, 0.9, 1.0),
                                                   run(3, 0.49, 1.50)]}
    family = Family()
    table = family.render(frontier.e2e_ablation_table(args, "split0.5", cells, family))
    assert len(family) == 6  # grebsmo − LoRA (BLEU, loss), gradient − GreBsmo and − LoRA (BLEU, loss)
    row = next(line for line in table.splitlines() if line.startswith("| gradient"))
    cols = [c.strip() for c in row.strip("|").split("|")]
    # seed 4 has no partner; by seed 1, 2, 3: BLEU −1, +5, +5 vs GreBsmo and +1, +7, +4 vs LoRA
    # (×100); dev loss −0.04, −0.07, −0.06 and −0.03, −0.05, −0.05. Every flip p is 0.25 or 0.75, so
    # Holm over 6 tests: 6 × the smallest …, all capped at 1
    assert cols[2] == _expected_cell([-1.0, 5.0, 5.0], 2, 1.0)
    assert cols[3] == _expected_cell([1.0, 7.0, 4.0], 2, 1.0)
    assert cols[5] == _expected_cell([-0.04, -0.07, -0.06], 3, 1.0)
    assert cols[6] == _expected_cell([-0.03, -0.05, -0.05], 3, 1.0)
    assert frontier.e2e_ablation_table(args, None, cells, Family()) == ""


def test_tables_pool_tasks_on_standardised_differences_and_count_every_test_in_the_family():
    args = frontier.parse_args(["--data-dir", "unused", "--ranks", "8", "--splits", "0.5"])

    def run(seed, score):
        return {"key": {"seed": seed}, "score": score, "trainable_parameters": 74498}

    cells = {("mrpc", "lora", "grebsmo", 8): [run(1, 0.80), run(2, 0.82), run(3, 0.81)],
             ("mrpc", "split0.5", "grebsmo", 8): [run(1, 0.81), run(2, 0.84), run(3, 0.80)],
             ("stsb", "lora", "grebsmo", 8): [run(1, 0.850), run(2, 0.860)],
             ("stsb", "split0.5", "grebsmo", 8): [run(1, 0.851), run(2, 0.862)]}
    family = Family()
    text = family.render(frontier.frontier_table(args, ["mrpc", "stsb"], cells, family)
                         + frontier.overall_table(args, ["mrpc", "stsb"], cells, family))
    assert len(family) == 4  # two per-task comparisons, the budget's pool and every budget's pool
    assert "| DSEE 50% in S − LoRA, paired | " + _expected_cell([1.0, 2.0, -1.0], 2, 1.0) + " |" in text
    # pooled: MRPC +1, +2, −1 over rms sqrt(2) and STS-B +0.1, +0.2 over rms sqrt(0.025): effects 0.4714 and
    # 0.9487, mean 0.71; 5 pairs: patterns reaching it counted by hand below
    z = [1 / 2 ** 0.5, 2 / 2 ** 0.5, -1 / 2 ** 0.5, 0.1 / 0.025 ** 0.5, 0.2 / 0.025 ** 0.5]
    w = [1 / 6] * 3 + [1 / 4] * 2
    observed = sum(a * b for a, b in zip(w, z))
    hits = sum(abs(sum(s * a * b for s, a, b in zip(signs, w, z))) >= observed - 1e-12
               for signs in itertools.product((1, -1), repeat=5))
    assert f"{observed:+.2f} (2 tasks, 5 pairs, 4 up / 1 down; flip p {hits / 32:.2f}, Holm p" in text


def test_the_split_is_chosen_on_the_selection_seed_only():
    """Seed 0 favours the 75% split, the evaluation seeds the 50% one: the choice follows seed 0."""
    args = frontier.parse_args(["--data-dir", "unused", "--report-only", "--ranks", "8", "--splits", "0.5,0.75",
                                "--glue-lrs", "0.003"])
    args.finished = _finished(args, [("lora", 8, 0.003, 0, 0.80), ("split0.5", 8, 0.003, 0, 0.79),
                                     ("split0.75", 8, 0.003, 0, 0.82)]
                              + [(k, 8, 0.003, s, 0.80 + (0.05 if k == "split0.5" else 0)) for s in (1, 2, 3)
                                 for k in ("lora", "split0.5", "split0.75")])
    rates = frontier.choose_rates(args, ["mrpc"], lambda task: frontier.kinds(args))
    assert frontier.best_split(args, ["mrpc"], rates) == "split0.75"
    with pytest.raises(SystemExit, match="selection seed"):
        frontier.collect(frontier.parse_args(["--data-dir", "unused", "--seeds", "0,1"]), ["mrpc"],
                         lambda task: ["lora"], rates, {})


def test_runs_of_another_protocol_get_their_own_directory():
    """A 2-epoch run once found the 1-epoch run's metrics in a shared directory and would have recorded them."""
    one = frontier.parse_args(["--data-dir", "unused", "--out", "runs"])
    two = frontier.parse_args(["--data-dir", "unused", "--out", "runs", "--e2e-epochs", "2"])
    v = frontier.variant("lora", 16)
    assert frontier.run_dir(one, "e2e", v, 2e-3, 0) != frontier.run_dir(two, "e2e", v, 2e-3, 0)
    assert frontier.run_dir(one, "e2e", v, 2e-3, 0) == frontier.run_dir(one, "e2e", v, 2e-3, 0)
    warm = frontier.variant("split0.5", 16, "gradient")
    other = frontier.parse_args(["--data-dir", "unused", "--out", "runs", "--support-warmup-steps", "0"])
    assert frontier.run_dir(one, "mrpc", warm, 3e-3, 0) != frontier.run_dir(other, "mrpc", warm, 3e-3, 0)
