"""Uniform structured pruning -> stock checkpoints: the config's sizes describe the pruned model, so a plain
`from_pretrained` and `transformers.pipeline` load it (in a process that never imports dsee), with outputs equal
to the pruned model's. Tiny configs of every Llama-family type, a tiny Llama generation run through the CLI, and
SmolLM2-135M when its folder is there."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import transformers as T

from conftest import randomize_adapters, run_without_dsee, shared_data_dir, tiny_config
from dsee import DSEEConfig, add_dsee, merge_dsee, remove_heads_, remove_neurons_, save_pretrained, stock_config
from dsee.adapters.inject import dsee_layers
from dsee.arch import blocks
from dsee.sparsity.importance import delta_head_scores, head_group_sizes, magnitude_neuron_scores, removal_plan
from dsee.sparsity.stock import check_describable
from test_arch_registry import SMALL

ROOT = Path(__file__).resolve().parents[1]
DATA = shared_data_dir()
LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2")

GENERATE = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
path, prompts = sys.argv[1], json.loads(sys.argv[2])
model = AutoModelForCausalLM.from_pretrained(path).eval()
tokenizer = AutoTokenizer.from_pretrained(path)
with torch.no_grad():
    logits = [model(**tokenizer(p, return_tensors="pt")).logits[0].tolist() for p in prompts]
pipe = pipeline("text-generation", model=path)
texts = [pipe(p, max_new_tokens=6, do_sample=False, return_full_text=False)[0]["generated_text"] for p in prompts]
print(json.dumps({"logits": logits, "texts": texts, "heads": model.config.num_attention_heads,
                  "kv_heads": model.config.num_key_value_heads, "head_dim": model.config.head_dim,
                  "ffn": model.config.intermediate_size}))
"""


def uniform_prune_(model, heads: float, ffn: float) -> None:
    """The released recipe's scores (|ΔW| per head, magnitude per neuron), as a uniform plan."""
    head_plan = removal_plan(delta_head_scores(model), heads, group_sizes=head_group_sizes(model), uniform=True)
    remove_heads_(model, head_plan)
    remove_neurons_(model, removal_plan(magnitude_neuron_scores(model), ffn, what="FFN neurons", uniform=True))


def small_model(model_type: str, causal: bool = False):
    torch.manual_seed(0)
    config = T.AutoConfig.for_model(model_type, **SMALL[model_type])
    config.num_labels = 2
    cls = T.AutoModelForCausalLM if causal else T.AutoModelForSequenceClassification
    return cls.from_config(config).eval()


def _inputs(length: int = 9):
    ids = torch.randint(2, 97, (3, length), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, -4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("model_type", LLAMA_FAMILY)
@pytest.mark.parametrize("causal", [False, True], ids=["classifier", "causal-lm"])
def test_uniformly_pruned_llama_family_loads_with_from_pretrained(model_type, causal, tmp_path):
    model = small_model(model_type, causal)
    add_dsee(model, DSEEConfig(rank=2, num_sparse=8))
    randomize_adapters(model)
    uniform_prune_(model, heads=0.5, ffn=0.25)  # 4 query heads in 2 groups -> 1 per group; 48 -> 36 neurons
    merge_dsee(model)
    with torch.no_grad():
        expected = model(**_inputs()).logits
    info = save_pretrained(model, tmp_path / "m")
    assert info["stock"] and info["stock_problem"] is None
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["intermediate_size"]) == (2, 2, 36)
    assert config["head_dim"] == 8  # explicit: hidden_size // heads would say 16
    cls = T.AutoModelForCausalLM if causal else T.AutoModelForSequenceClassification
    again = cls.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**_inputs()).logits, expected, rtol=0, atol=0)


def test_what_has_no_stock_config_says_why(tmp_path):
    bert = small_model("bert")
    remove_heads_(bert, {0: [1], 1: [1]})  # the same count everywhere, but BERT has no head-size field
    with pytest.raises(ValueError, match="derive the head size from hidden_size / num_attention_heads"):
        stock_config(bert)
    info = save_pretrained(bert, tmp_path / "bert")
    assert not info["stock"] and "head size" in info["stock_problem"]
    llama = small_model("llama")
    remove_heads_(llama, {0: [0, 2]})  # layer 0 keeps 2 heads, layer 1 all 4
    with pytest.raises(ValueError, match=r"heads per layer \[2, 4\]"):
        stock_config(llama)
    with pytest.raises(ValueError, match="derive the head size"):
        check_describable(small_model("gpt2"), heads=True, ffn=False)
    check_describable(small_model("gpt2"), heads=False, ffn=True)  # n_inner describes any FFN size
    gpt2 = small_model("gpt2")
    remove_neurons_(gpt2, {0: [0, 1], 1: [5, 6]})
    assert stock_config(gpt2).n_inner == 126  # 4 · 32 - 2


def test_uniform_plans_refuse_what_would_not_stay_uniform():
    scores = [torch.rand(4), torch.rand(4)]
    assert removal_plan(scores, 0.5, uniform=True) == removal_plan(scores, 0.5)  # per layer already is uniform
    with pytest.raises(ValueError, match="cannot be global"):
        removal_plan(scores, 0.5, per_layer=False, uniform=True)
    with pytest.raises(ValueError, match=r"different numbers of heads \(\[4, 3\]"):
        removal_plan([torch.rand(4), torch.rand(3)], 0.5, uniform=True)
    from dsee.train.settings import PruneSettings

    with pytest.raises(ValueError, match="does not go with --global"):
        PruneSettings(source="x", heads=0.5, per_layer=False, uniform=True)
    with pytest.raises(ValueError, match="give --heads and/or --ffn"):
        PruneSettings(source="x", sparsity=0.5, uniform=True)


def test_smollm2_grouped_query_plan_keeps_the_groups_even():
    """9 query heads in 3 key/value groups: 25% removes one head from every group (3 of 9)."""
    scores = [torch.arange(9.0).flip(0), torch.rand(9)]
    plan = removal_plan(scores, 0.25, group_sizes=[3, 3], uniform=True)
    assert plan[0] == [2, 5, 8] and all(sorted(h // 3 for h in heads) == [0, 1, 2] for heads in plan.values())


# --- a generation run through the CLI: dsee prune --uniform, dsee export, a pipeline without dsee

@pytest.fixture(scope="module")
def llama_generation_run(tmp_path_factory):
    pytest.importorskip("accelerate")
    if DATA is None:
        pytest.skip("the E2E data and the GPT-2 vocabulary come from the shared data folder")
    from dsee.train.loop import train
    from dsee.train.run import RunConfig

    tokenizer = T.GPT2Tokenizer(vocab=str(DATA / "gpt2-bpe" / "encoder.json"), merges=str(DATA / "gpt2-bpe" / "vocab.bpe"))
    config = tiny_config("llama")
    config.vocab_size = len(tokenizer)
    config.eos_token_id = config.bos_token_id = config.pad_token_id = tokenizer.eos_token_id
    base = tmp_path_factory.mktemp("llama-gen")
    torch.manual_seed(0)
    T.AutoModelForCausalLM.from_config(config).save_pretrained(base / "model")
    tokenizer.save_pretrained(base / "model")
    run = base / "run"
    train(RunConfig(out=str(run), model=str(base / "model"), task="e2e", data_dir=str(DATA), max_train_samples=32,
                    max_eval_samples=4, max_length=48, epochs=1, batch_size=16, lr=1e-2,
                    adapter={"rank": 2, "num_sparse": 8}), show_progress=False)
    return run


def _compare_with_pipeline(model, tokenizer, export_dir, prompts, atol):
    """Logits and greedy continuations of ``model`` (dsee's) against a fresh process loading ``export_dir``."""
    got = run_without_dsee(GENERATE, str(export_dir), json.dumps(prompts))
    for prompt, logits in zip(prompts, got["logits"]):
        with torch.no_grad():
            expected = model(**tokenizer(prompt, return_tensors="pt")).logits[0]
        torch.testing.assert_close(torch.tensor(logits), expected, rtol=0, atol=atol)
    merged = merge_dsee(model) if dsee_layers(model) else model  # greedy ties: the weights exported, exactly
    ids = [tokenizer(p, return_tensors="pt") for p in prompts]
    with torch.no_grad():
        texts = [tokenizer.decode(merged.generate(**x, max_new_tokens=6, do_sample=False)[0, x["input_ids"].shape[1]:],
                                  skip_special_tokens=True) for x in ids]
    assert got["texts"] == texts
    return got


def test_a_uniformly_pruned_generation_run_exports_a_stock_checkpoint(llama_generation_run, tmp_path):
    from dsee.cli import main
    from dsee.train.pipeline import load_run

    pruned = tmp_path / "pruned"
    assert main(["prune", str(llama_generation_run), "--out", str(pruned), "--heads", "0.5", "--ffn", "0.25",
                 "--uniform", "--head-score", "importance", "--ffn-score", "importance", "--importance-batches", "1",
                 "--retune-epochs", "1", "--no-progress"]) == 0
    out = tmp_path / "export"
    assert main(["export", str(pruned), "--out", str(out)]) == 0
    assert json.loads((out / "dsee_export.json").read_text())["stock"]
    _, model, tokenizer = load_run(pruned)  # the pruned run's model, adapters unmerged, as dsee evaluates it
    assert [b.num_heads for b in blocks(model)] == [2, 2] and [b.ffn_size for b in blocks(model)] == [48, 48]
    got = _compare_with_pipeline(model, tokenizer, out, ["name[Aromi], food[Chinese] ||", "name[Zizzi] ||"], 1e-5)
    assert (got["heads"], got["kv_heads"], got["head_dim"], got["ffn"]) == (2, 2, 12, 48)


# --- the real SmolLM2-135M (not in CI: prepared by benchmarks/prepare_smollm2.py)

SMOLLM2 = Path(os.environ.get("DSEE_SMOLLM2_DIR", ROOT / "models" / "smollm2-135m"))


@pytest.mark.slow
@pytest.mark.skipif(not (SMOLLM2 / "config.json").is_file(),
                    reason="SmolLM2-135M is not prepared (python benchmarks/prepare_smollm2.py --out models/smollm2-135m)")
def test_smollm2_uniformly_pruned_loads_with_a_stock_pipeline(tmp_path):
    from dsee.models import load_causal_lm

    tokenizer = T.AutoTokenizer.from_pretrained(SMOLLM2)
    model = load_causal_lm(str(SMOLLM2)).eval()
    add_dsee(model, DSEEConfig(rank=4, num_sparse=16))
    randomize_adapters(model, scale=0.005)
    uniform_prune_(model, heads=0.34, ffn=0.25)  # 1 of 3 query heads per key/value group: 9 -> 6; 1536 -> 1152
    assert {(b.num_heads, b.num_kv_heads, b.ffn_size) for b in blocks(model)} == {(6, 3, 1152)}
    merge_dsee(model)
    out = tmp_path / "smollm2-pruned"
    assert save_pretrained(model, out, tokenizer=tokenizer)["stock"]
    got = _compare_with_pipeline(model, tokenizer, out, ["The capital of France is", "Once upon a time"], 1e-4)
    assert (got["heads"], got["kv_heads"], got["head_dim"], got["ffn"]) == (6, 3, 64, 1152)  # 6 · 64 != 576
