"""The frontier experiment compares methods at equal trainable parameters: check its budget arithmetic."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import transformers as T

from dsee import DSEEConfig, add_dsee, count_parameters

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
spec = importlib.util.spec_from_file_location("frontier_experiment", BENCH / "frontier_experiment.py")
frontier = importlib.util.module_from_spec(spec)
spec.loader.exec_module(frontier)


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


def test_rate_table_lists_only_methods_run_at_several_rates_under_this_protocol():
    args = frontier.parse_args(["--data-dir", "unused"])

    def entry(kind, rank, lr, score, **protocol):
        key = frontier.settings_key(args, "mrpc", frontier.variant(kind, rank), lr, seed=0)
        return {"key": {**key, **protocol}, "score": score}

    args.finished = [entry("lora", 16, 0.003, 0.8292), entry("lora", 16, 0.0015, 0.8501),
                     entry("split0.5", 16, 0.003, 0.8476),  # one rate only: not a probe
                     entry("lora", 8, 0.0015, 0.80), entry("lora", 8, 0.003, 0.90, epochs=99)]  # other protocol
    table = frontier.rate_table(args, ["mrpc"])
    rows = [line for line in table.splitlines() if line.startswith("| MRPC")]
    assert rows == ["| MRPC F1 | LoRA | 16 | 0 | 0.0015: 85.01, 0.003: 82.92 |"]
    args.finished = args.finished[2:3]
    assert frontier.rate_table(args, ["mrpc"]) == ""
