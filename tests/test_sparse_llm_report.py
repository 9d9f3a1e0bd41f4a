"""The sparse-LLM experiment's table from hand-made runs: pairing by seed against dense LoRA and against
plain LoRA on the same base, zeros lost, matrices that keep every zero; and its variant names."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
spec = importlib.util.spec_from_file_location("sparse_llm_experiment", BENCH / "sparse_llm_experiment.py")
experiment = importlib.util.module_from_spec(spec)
spec.loader.exec_module(experiment)


def _run(variant, seed, loss, bleu, lost):
    zeros = {"q": {"reference": 50, "zeros": 50 - lost, "lost": lost, "new": 0, "entries": 100},
             "k": {"reference": 50, "zeros": 50, "lost": 0, "new": 0, "entries": 100}}
    return {"key": {"variant": variant, "seed": seed}, "dev_loss": loss, "scores": {"bleu": bleu},
            "trainable_parameters": 1000, "zeros": zeros}


def test_the_table_pairs_by_seed_and_counts_the_zeros(tmp_path):
    args = experiment.parse_args(["--data-dir", "x", "--out", str(tmp_path), "--runs-file", str(tmp_path / "r.jsonl")])
    cells = {"dense-lora": [_run("dense-lora", 1, 1.50, 0.60, 0), _run("dense-lora", 2, 1.60, 0.62, 0)],
             "w50-dsee": [_run("w50-dsee", 2, 1.70, 0.58, 0), _run("w50-dsee", 1, 1.55, 0.61, 0)],
             "w50-lora": [_run("w50-lora", 1, 1.52, 0.59, 50), _run("w50-lora", 2, 1.66, 0.59, 50)]}
    lines = [line.strip("| ").split(" | ") for line in experiment.report(args, cells).splitlines()
             if line.startswith(("| w50", "| dense"))]
    rows = {cells_[0]: cells_ for cells_ in lines}
    dsee, lora = rows["w50-dsee (DSEE, keeps zeros)"], rows["w50-lora (LoRA, merged plainly)"]
    assert dsee[3] == "50.00 ± 0.00 (2) %" and dsee[4] == "0 of 100" and dsee[5] == "2 of 2"
    assert lora[3] == "25.00 ± 0.00 (2) %" and lora[4] == "50 of 100" and lora[5] == "1 of 2"
    # seed 1: 1.55 − 1.50, seed 2: 1.70 − 1.60; BLEU ×100: +1 and −4
    # t = 3.0 and −0.6 with 1 df; exact sign flips of 2 pairs: 2 of 4 patterns as extreme, and all 4; Holm over
    # the report's 6 tests (w50-dsee against both references, w50-lora against dense LoRA): 6 × 0.5 ≥ 1
    assert dsee[8].startswith("+0.075 [") and dsee[8].endswith("(2; t p 0.20, flip p 0.50, Holm p 1.00)")
    assert dsee[9].startswith("-1.50 [") and dsee[9].endswith("(2; t p 0.66, flip p 1.00, Holm p 1.00)")
    # against plain LoRA on the same base: +0.03 and +0.04 (loss), +2 and −1 (BLEU)
    assert dsee[10].startswith("+0.035 [") and dsee[10].endswith("(2; t p 0.09, flip p 0.50, Holm p 1.00)")  # t = 7.0
    assert dsee[11].startswith("+0.50 [") and dsee[11].endswith("(2; t p 0.80, flip p 1.00, Holm p 1.00)")  # t = 1/3
    assert not "".join(rows["dense-lora (LoRA, merged plainly)"][8:]).strip()  # the reference: nothing to pair


@pytest.mark.parametrize("variants", ["dense-dsee", "w70-dsee", "w50-full"])
def test_unknown_variants_are_refused(variants):
    with pytest.raises(SystemExit, match="unknown variant"):
        experiment.parse_args(["--data-dir", "x", "--variants", variants])
