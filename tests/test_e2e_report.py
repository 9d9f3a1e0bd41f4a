"""benchmarks/e2e_experiment.py's report on hand-made records: DSEE − LoRA paired by seed at the evaluation
seeds (scipy's t-interval as the oracle), the bootstrap of BLEU from recorded outputs (sacrebleu's corpus BLEU
as the oracle for Δ), and the selection seed's pilot kept out of every test."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

spec = importlib.util.spec_from_file_location("e2e_experiment", BENCH / "e2e_experiment.py")
e2e = importlib.util.module_from_spec(spec)
spec.loader.exec_module(e2e)

REFERENCES = [["the cafe is cheap and near the river"], ["a french pub with a high rating"],
              ["the eagle is a family friendly coffee shop"], ["it serves indian food in the city centre"]]
GOOD = ["the cafe is cheap and near the river", "a french pub with a high rating",
        "the eagle is a family friendly coffee shop", "it serves indian food in the city centre"]
WORSE = ["the cafe is cheap near a river", "a pub with french food and high rating",
         "the eagle is a coffee shop", "it serves food in the centre"]
BLEU = {1: (0.50, 0.48), 2: (0.52, 0.51), 3: (0.49, 0.50)}  # seed: (LoRA, DSEE)
LOSS = {1: (1.60, 1.62), 2: (1.61, 1.64), 3: (1.59, 1.60)}


def entry(method, rank, seed, bleu, loss, outputs=None):
    e = {"key": {"method": method, "rank": rank, "seed": seed}, "scores": {"bleu": bleu}, "dev_loss": loss}
    if outputs is not None:
        e["outputs"] = outputs
    return e


@pytest.fixture
def entries(monkeypatch):
    refs = types.SimpleNamespace(grouped=lambda: ([f"mr{i}" for i in range(len(REFERENCES))], REFERENCES))
    monkeypatch.setattr("dsee.train.textgen.load_e2e", lambda data_dir, split: refs)
    made = [entry("lora", 4, 0, 0.60, 1.5), entry("dsee", 4, 0, 0.10, 1.9)]  # the pilot: far apart, never tested
    for seed in (1, 2, 3):
        made.append(entry("lora", 4, seed, BLEU[seed][0], LOSS[seed][0], GOOD if seed == 1 else None))
        made.append(entry("dsee", 4, seed, BLEU[seed][1], LOSS[seed][1], WORSE if seed == 1 else None))
    made.append(entry("lora", 4, 4, 0.9, 1.0))  # seed 4 without its DSEE run: no pair
    return made


@pytest.fixture
def decoding_args(tmp_path):
    """The experiment's arguments with every reference MR decoded (the bootstrap's input)."""
    return e2e.parse_args(["--data-dir", str(tmp_path), "--decode-items", str(len(REFERENCES)), "--out", str(tmp_path)])


def interval_text(diffs, digits):
    d = np.asarray(diffs)
    half = stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)
    return f"{d.mean():+.{digits}f} [{d.mean() - half:+.{digits}f}, {d.mean() + half:+.{digits}f}] ({d.size};"


def test_differences_are_paired_by_seed_at_the_evaluation_seeds_only(entries, decoding_args):
    text = e2e.comparison(decoding_args, entries)
    row = next(line for line in text.splitlines() if line.startswith("| 4 |"))
    assert interval_text([100 * (d - lo) for lo, d in BLEU.values()], 2) in row
    assert interval_text([d - lo for lo, d in LOSS.values()], 3) in row
    assert f"| {100 * np.mean([b[0] for b in BLEU.values()]):.2f} | {100 * np.mean([b[1] for b in BLEU.values()]):.2f} |" in row
    assert "seeds 1, 2, 3" in text
    assert "r = 4: -50.00" in text  # the pilot, reported apart


def test_the_bootstrap_uses_the_recorded_outputs(entries, decoding_args):
    import sacrebleu

    text = e2e.comparison(decoding_args, entries)
    boot = [line for line in text.splitlines() if re.match(r"\| 4 \| \d \|", line)]
    assert len(boot) == 1 and boot[0].startswith("| 4 | 1 |")  # only seed 1 recorded its outputs
    refs = [[r[0] for r in REFERENCES]]
    delta = sacrebleu.corpus_bleu(WORSE, refs).score - sacrebleu.corpus_bleu(GOOD, refs).score
    assert f"| {len(REFERENCES)} of {len(REFERENCES)} | {delta:+.2f} [" in boot[0]  # every WORSE output differs
    holm = [float(p) for p in re.findall(r"Holm p (\d\.\d+)", text)]
    assert len(holm) == 3  # BLEU, dev loss, one bootstrap: one family


def test_without_evaluation_seeds_only_the_pilot_is_reported(entries, tmp_path):
    args = e2e.parse_args(["--data-dir", str(tmp_path), "--out", str(tmp_path)])
    text = e2e.comparison(args, [e for e in entries if e["key"]["seed"] == 0])
    assert "No evaluation seed" in text and "Holm" not in text and "r = 4: -50.00" in text


def test_the_report_reads_the_pilot_beside_the_evaluation_seeds(tmp_path, monkeypatch):
    runs = tmp_path / "runs.jsonl"
    args = e2e.parse_args(["--data-dir", str(tmp_path), "--ranks", "4"])
    lines = []
    for seed, (lo, ds) in {0: (0.6, 0.1), 2: (0.5, 0.49)}.items():
        for method, bleu in (("lora", lo), ("dsee", ds)):
            result = {**entry(method, 4, seed, bleu, 1.6), "key": e2e.run_key(args, method, 4, seed),
                      "trainable_parameters": 10, "trainable_share": 0.001, "train_seconds": 1.0}
            result["scores"] = {m: bleu for m in e2e.METRIC_NAMES}
            lines.append(json.dumps({"results": result}))
    runs.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(e2e, "plot", lambda entries, path: None)
    e2e.main(["--data-dir", str(tmp_path), "--ranks", "4", "--seeds", "1,2", "--report-only", "--runs-file",
              str(runs), "--report-dir", str(tmp_path / "report"), "--out", str(tmp_path)])
    text = (tmp_path / "report" / "e2e_results.md").read_text()
    assert text.startswith("Evaluation seeds 2:")
    assert "| lora | 4 | 10 (0.10%) | 50.00 |" in text and "r = 4: -50.00" in text


def test_the_bootstrap_row_counts_the_outputs_that_differ(entries, decoding_args):
    dsee_seed_1 = next(e for e in entries if e["key"] == {"method": "dsee", "rank": 4, "seed": 1})
    dsee_seed_1["outputs"] = GOOD[:3] + WORSE[3:]  # S changed only the last MR's output
    row = next(line for line in e2e.comparison(decoding_args, entries).splitlines() if line.startswith("| 4 | 1 |"))
    assert f"| 1 of {len(REFERENCES)} |" in row
