"""The functions that turn the experiments' records into reported numbers, on hand-made records."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prune = _load("prune_experiment")
glue = _load("glue_experiment")
tables = _load("tables")


def _pruned(task, seed, variant, score, source_score, source="src"):
    return {"key": {"task": task, "seed": seed, "variant": variant, "source": f"{source}/{task}/{seed}",
                    "retune_epochs": 2, "settings": {}},
            "metrics": {"score": score, "flops": 100, "sparsity": 0.5}, "source": {"score": source_score, "flops": 100}}


ENTRIES = [
    # seed 1: source 0.80 (mrpc) / 0.70 (stsb); seed 2: 0.82 / 0.72
    _pruned("mrpc", 1, "retune only", 0.81, 0.80), _pruned("stsb", 1, "retune only", 0.71, 0.70),
    _pruned("mrpc", 2, "retune only", 0.84, 0.82), _pruned("stsb", 2, "retune only", 0.72, 0.72),
    _pruned("mrpc", 1, "unstructured50 wanda", 0.79, 0.80), _pruned("stsb", 1, "unstructured50 wanda", 0.70, 0.70),
    _pruned("mrpc", 2, "unstructured50 wanda", 0.83, 0.82), _pruned("stsb", 2, "unstructured50 wanda", 0.70, 0.72),
    _pruned("mrpc", 3, "unstructured50 wanda", 0.90, 0.85),  # stsb missing at seed 3: not in the averages
]


def test_prune_deltas_against_source_and_control():
    assert prune.against_source(ENTRIES, "unstructured50 wanda", "mrpc") == pytest.approx([-1.0, 1.0, 5.0])
    # paired by source run with the re-tune-only control: seed 3 has no control, so it drops out
    assert prune.against_control(ENTRIES, "unstructured50 wanda", "mrpc") == pytest.approx([-2.0, -1.0])
    assert prune.against_control(ENTRIES, "unstructured50 wanda", "stsb") == pytest.approx([-1.0, -2.0])
    # mean over tasks per seed, only the seeds finished on every task: seed 1 (−1 + 0)/2, seed 2 (+1 − 2)/2
    assert prune.average_deltas(ENTRIES, ["mrpc", "stsb"], "unstructured50 wanda") == pytest.approx({1: -0.5, 2: -0.5})


def test_each_source_counts_once_however_many_variants_came_from_it():
    """A source pruned into several variants appeared once per variant: 'unpruned' was a weighted mean."""
    assert sorted(prune.source_scores(ENTRIES, "mrpc")) == pytest.approx([80.0, 82.0, 85.0])


def test_prune_table_reports_both_deltas_with_their_tests():
    text = prune.table(ENTRIES, ["mrpc", "stsb"], ["retune only", "unstructured50 wanda"])
    assert "MRPC 82.33 (3)" in text  # (80 + 82 + 85) / 3, each source once
    row = next(line for line in text.splitlines() if line.startswith("| unstructured50 wanda |") and "MRPC" in line)
    cols = [c.strip() for c in row.strip("|").split("|")]
    assert cols[4].startswith("+1.67 [") and "(3; t p" in cols[4]  # vs source: −1, +1, +5
    assert cols[5].startswith("-1.50 [") and "(2; t p" in cols[5]  # vs control: −2, −1
    pooled_row = next(line for line in text.splitlines() if line.startswith("| unstructured50 wanda | -0.50 ± 0.00 (2)"))
    assert "-1.50 ± 0.00 (2)" in pooled_row  # vs control per seed: (−2 − 1)/2, (−1 − 2)/2
    # paired by seed, not by position: a control missing on one task drops that seed for every task
    partial = [e for e in ENTRIES if not (e["key"]["variant"] == "retune only" and e["key"]["seed"] == 1
                                         and e["key"]["task"] == "stsb")]
    assert prune.average_against_control(partial, ["mrpc", "stsb"], "unstructured50 wanda") == pytest.approx({2: -1.5})


def test_seventy_percent_follows_the_selection_seed_only():
    selection = [_pruned("mrpc", 0, "unstructured50 weight", 0.80, 0.80), _pruned("mrpc", 0, "unstructured50 wanda", 0.70, 0.80)]
    evaluation = [_pruned("mrpc", 1, "unstructured50 wanda", 0.99, 0.80)]  # would favour wanda if it counted
    assert prune.best_fifty(selection + evaluation, ["mrpc"], list(prune.FIFTY)) == "unstructured50 weight"


def _glue_run(seed, score):
    return {"seed": seed, "score": score, "trainable_parameters": 10, "trainable_share": 0.01, "wall_seconds": 1.0,
            "train_examples_per_second": 5.0, "main_metric": "f1"}


def test_glue_rate_on_the_selection_seed_and_means_over_the_evaluation_seeds():
    results = {("mrpc", "lora"): {1e-3: [_glue_run(0, 0.80), _glue_run(1, 0.90), _glue_run(2, 0.88)],
                                  2e-3: [_glue_run(0, 0.85), _glue_run(1, 0.70), _glue_run(2, 0.72)]},
               ("mrpc", "dsee"): {1e-3: [_glue_run(0, 0.84), _glue_run(1, 0.86), _glue_run(2, 0.90)]}}
    assert glue.best_lr(results["mrpc", "lora"]) == 2e-3  # seed 0 decides, however the other seeds fare
    table = glue.aggregate(results, ["mrpc"], ["lora", "dsee"])
    assert table["mrpc", "lora"]["mean"] == pytest.approx(71.0) and table["mrpc", "lora"]["seeds"] == 2
    assert table["mrpc", "dsee"]["mean"] == pytest.approx(88.0)
    assert glue.paired_scores(results, "mrpc", "dsee", "lora") == pytest.approx([16.0, 18.0])
    assert glue.seed_averages(results, ["mrpc"], ["lora"]) == {"lora": pytest.approx({1: 70.0, 2: 72.0})}


def test_step_rows_read_the_paired_ratio_and_peak_memory(monkeypatch):
    record = {"model": "bert-base", "methods": ["lora", "dsee:1%"], "_commit": "x", "_date": "d",
              "time": {"lora": {"ratio_to_lora": 1.0, "ratio_to_lora_paired": 1.0},
                       "dsee:1%": {"ratio_to_lora": 1.07, "ratio_to_lora_paired": 1.02}},
              "memory": {"default": {"lora": {"total_peak_mb": 2000.0}, "dsee:1%": {"total_peak_mb": 2100.0}}}}
    monkeypatch.setattr(tables, "step_record", lambda model: record)
    assert tables.step_rows("bert-base") == [("dsee:1%", 1.02, 1.07, pytest.approx(1.05))]


# --- the equal-compute experiment (S at equal compute) -----------------------------------------------

equal = _load("equal_compute_experiment")


def _equal_args(finished=()):
    args = equal.parse_args(["--data-dir", "unused", "--report-only"])
    args.finished = list(finished)
    return args


def test_lora_extra_gets_exactly_the_support_passes_as_steps():
    args = _equal_args()
    extra = equal.settings(args, "lora-extra", 1)
    steps = equal.steps_per_epoch(args)
    assert steps == 500
    assert extra["epochs"] * steps == pytest.approx(steps + args.support_warmup_steps + args.support_batches)
    assert equal.settings(args, "lora", 1)["epochs"] == 1.0


def test_dsee_spends_half_of_loras_parameters_in_s():
    args = _equal_args()
    dsee = equal.settings(args, "dsee-gradient", 1)["adapter"]
    lora_params = sum(16 * (o + i) for o, i in equal.SHAPES)
    s_params = dsee["sparse_density"] * sum(o * i for o, i in equal.SHAPES)
    assert dsee["rank"] == 8
    assert s_params == pytest.approx(lora_params / 2)


def _ec_run(method, seed, loss, bleu, ratio=1.0):
    args = _equal_args()
    return {"key": equal.key_of(args, method, seed, ratio), "dev_loss": loss, "steps": 500, "passes": 500,
            "trainable_parameters": 10, "train_seconds": 1.0, "scores": {"bleu": bleu, "nist": 1.0},
            "predictions": []}


def test_ratio_is_chosen_on_the_selection_seed_nearest_one_on_ties():
    selection = [_ec_run("dsee-gradient", 0, 1.5, 0.5, r) for r in (0.25, 1.0, 4.0)]
    selection[0]["dev_loss"] = selection[2]["dev_loss"] = 1.4  # 0.25 and 4 tie below 1
    args = _equal_args(finished=selection)
    assert equal.chosen_ratio(args) == 0.25  # |log 0.25| = |log 4|: the first of the sorted ties
    args = _equal_args(finished=selection[:2])  # a selection run missing: no choice yet
    assert equal.chosen_ratio(args) is None


def test_verdict_follows_the_interval_of_the_dev_loss():
    runs = {"lora-extra": [_ec_run("lora-extra", s, 1.60, 0.60) for s in (1, 2, 3)],
            "dsee-gradient": [_ec_run("dsee-gradient", s, 1.60 + d, 0.60) for s, d in ((1, -0.03), (2, -0.02), (3, -0.025))]}
    text = equal.verdict(runs, 1.0)
    assert "earn its compute" in text and "-0.025 [" in text and "Provisional" not in text
    # 3 of 3 seeds lower: the sign-flip p is its floor, 2 / 2^3, so the answer says it is not established
    assert "**yes by the t-interval, not established**: DSEE's dev loss is lower" in text
    assert "3 of 3 seeds agreeing (exact sign-flip p 0.25; 3 pairs cannot give less than 0.25)" in text
    assert "**yes by" in equal.verdict(runs, None) and "Provisional" in equal.verdict(runs, None)  # no S rate yet
    assert "earn its parameters" in text and "Not decided yet: 0 of the 3" in text  # no plain-LoRA runs
    runs["dsee-gradient"][0]["dev_loss"] = 1.65  # differences +0.05, −0.02, −0.025: the interval holds zero
    assert "no measurable gain" in equal.verdict(runs, 1.0)
    for e, d in zip(runs["dsee-gradient"], (0.03, 0.02, 0.025)):
        e["dev_loss"] = 1.60 + d
    assert "**no by the t-interval, not established**: DSEE's dev loss is higher" in equal.verdict(runs, 1.0)
    # a chosen S rate other than 1 puts the S-rate runs on the DSEE side: none recorded here
    assert "Not decided yet: 0 of the 3" in equal.verdict(runs, 4.0).split("\n")[1]


def test_verdict_says_when_the_sign_flip_test_agrees():
    """With 6 seeds all lower, the exact sign-flip p is 2 / 2^6 = 0.03: the t-interval's answer stands."""
    runs = {"lora": [_ec_run("lora", s, 1.60, 0.60) for s in range(1, 7)],
            "dsee-gradient": [_ec_run("dsee-gradient", s, 1.58 - 0.001 * s, 0.60) for s in range(1, 7)]}
    text = equal.verdict(runs, 1.0, needed=6)
    assert "**yes**: DSEE's dev loss is lower on the 95% t-interval, and the exact sign-flip test agrees (p 0.03)" in text
    assert "not established" not in text


def test_report_shows_every_selection_runs_dev_loss():
    selection = [_ec_run("dsee-gradient", 0, loss, 0.5, r) for r, loss in ((0.25, 1.5), (1.0, 1.4), (4.0, 1.45))]
    args = _equal_args(finished=selection)
    text = equal.report(args, {}, equal.chosen_ratio(args))
    assert "from 0.25,1,4 (dev loss × 0.25: 1.5000, × 1: 1.4000, × 4: 1.4500): 1 (" in text


def test_selection_only_reads_the_recorded_runs_and_trains_nothing(tmp_path, capsys):
    """``--selection-only`` answers from the records (``--report-only``: a missing run is not trained)."""
    runs_file = tmp_path / "runs.jsonl"
    selection = [_ec_run("dsee-gradient", 0, loss, 0.5, r) for r, loss in ((0.25, 1.5), (1.0, 1.4), (4.0, 1.45))]
    runs_file.write_text("".join(json.dumps({"results": e}) + "\n" for e in selection))
    argv = ["--data-dir", "unused", "--report-only", "--selection-only", "--runs-file", str(runs_file)]
    assert equal.main(argv) == 0
    assert capsys.readouterr().out.strip().endswith(": 1.0")
    runs_file.write_text("".join(json.dumps({"results": e}) + "\n" for e in selection[:2]))
    assert equal.main(argv) == 0
    assert capsys.readouterr().out.strip().endswith(": None")  # a selection run is missing: no choice
