"""Calibration block by block (adapters/calibration.py): the statistics of the whole model, with one
block's activations alive at a time.

- Wanda's input norms stop after the last block: equal (bitwise) to a pass through the whole model,
  on every architecture with a block layout (attention masks with padding, BERT's absolute and
  MPNet's relative positions, Llama's rotary embeddings and grouped-query attention, GPT-2's fused
  projection, DeBERTa-v2's relative attention and its convolution between blocks); the task head
  and the LM head never run.
- The importance scores of structured pruning with every block checkpointed: the gradients of the
  plain pass (float tolerance), and the forward pass keeps the blocks' inputs only (the bytes it
  saves for the backward pass shrink to about one block's worth per block).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import dsee.sparsity.importance as importance
from conftest import batch, tiny_causal_lm, tiny_classifier, tiny_config
from dsee.adapters.calibration import checkpointed_blocks, input_norms
from dsee.arch import blocks
from dsee.sparsity.unstructured import prunable_modules

ARCHS = ("bert", "roberta", "mpnet", "deberta-v2", "gpt2", "llama")


def _batches(k=3, labels=True):
    return [{**batch(seed=i), **({"labels": torch.tensor([0, 1, 2])} if labels else {})} for i in range(k)]


def _model(arch, kind):
    if kind == "classifier":
        return tiny_classifier(arch)
    return tiny_causal_lm(arch)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["classifier", "causal"])
def test_input_norms_stopping_after_the_last_block_equal_the_whole_pass(arch, kind):
    if kind == "causal" and arch not in ("gpt2", "llama"):
        pytest.skip("an encoder")
    if arch == "deberta-v2":  # its convolution between the first two blocks, so that it is exercised
        config = tiny_config(arch)
        config.conv_kernel_size = 3
        torch.manual_seed(0)
        import transformers as T

        config.num_labels = 3
        model = T.AutoModelForSequenceClassification.from_config(config).eval()
    else:
        model = _model(arch, kind)
    names = prunable_modules(model)
    batches = _batches(labels=False)
    whole = input_norms(model, names, batches)
    head_calls = []
    head = model.get_output_embeddings() if kind == "causal" else model.get_submodule(
        "classifier" if hasattr(model, "classifier") else "score")
    handle = head.register_forward_hook(lambda *a: head_calls.append(1))
    try:
        blockwise = input_norms(model, names, batches, last=blocks(model)[-1].module)
    finally:
        handle.remove()
    assert head_calls == []  # nothing after the last block ran (no logits)
    assert whole.keys() == blockwise.keys() == set(names)
    for name in names:
        assert torch.equal(whole[name], blockwise[name]), name


@pytest.mark.parametrize("arch", ARCHS)
def test_importance_with_checkpointed_blocks_equals_the_plain_pass(arch, monkeypatch):
    model = tiny_classifier(arch)
    batches = _batches(2)
    heads, neurons = importance.importance_scores(model, batches)
    monkeypatch.setattr(importance, "checkpointed_blocks", lambda modules: contextlib.nullcontext())
    plain_heads, plain_neurons = importance.importance_scores(model, batches)
    for got, expected in zip(heads + neurons, plain_heads + plain_neurons):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
        assert expected.sum() > 0


def _saved_bytes(model, inputs, checkpointed: bool) -> int:
    """Bytes the forward pass saves for the backward pass (what stays alive until it)."""
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    gate = torch.ones(1, requires_grad=True)  # something to differentiate, as the importance gates are
    handle = model.get_input_embeddings().register_forward_hook(lambda m, a, out: out * gate)
    context = checkpointed_blocks([b.module for b in blocks(model)]) if checkpointed else contextlib.nullcontext()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), context:
            model(**inputs).loss.backward()
    finally:
        handle.remove()
    return sum(saved)


def test_checkpointed_blocks_keep_only_the_blocks_inputs():
    config = tiny_config("llama")
    config.num_hidden_layers = 6
    import transformers as T

    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    inputs = {**batch(length=16), "labels": batch(length=16)["input_ids"], "use_cache": False}
    plain = _saved_bytes(model, inputs, checkpointed=False)
    checkpointed = _saved_bytes(model, inputs, checkpointed=True)
    hidden = inputs["input_ids"].numel() * config.hidden_size * 4
    # plain: every block's activations; checkpointed: the head's, each block's input, and (during the
    # backward pass, one block at a time) one block's activations again
    per_block = (plain - checkpointed) / 6
    assert checkpointed < plain / 2
    assert per_block > 5 * hidden  # a block saves several times its input: that is what is no longer kept
