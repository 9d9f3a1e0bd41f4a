"""Less memory per process: bf16 frozen weights with fp32 adapters, and gradient checkpointing.

bf16: an adapted layer's output is its fp32 computation rounded once to bf16, and the gradients of
A, B and S are fp32-accurate (checked against a float64 oracle), so S is never folded into a bf16
copy of W0; whole models stay within 2% (of the largest logit) of their fp32 outputs. Gradient
checkpointing: the recomputed blocks give the gradients of the plain run, dropout included, to the
last bits (bitwise for BERT and Llama here; GPT-2's sums at the residual stream run in another order).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import batch, tiny_causal_lm, tiny_classifier, tiny_config
from dsee import DSEEConfig, add_dsee
from dsee.adapters.inject import merge_dsee
from dsee.adapters.layer import DSEELinear
from dsee.adapters.precision import frozen_dtypes, lower_frozen_precision_
from dsee.train.pipeline import enable_gradient_checkpointing

BF16_EPS = torch.finfo(torch.bfloat16).eps  # 2^-7: rounding to bf16 errs by at most half of it, relative


def _layer(seed: int = 0, mask: bool = False, bias: bool = True) -> DSEELinear:
    """A 24×40 DSEELinear on a bf16 W0 with fp32 A, B and S of realistic size (S ≈ 1e-3, W0 ≈ 0.1)."""
    g = torch.Generator().manual_seed(seed)
    base = nn.Linear(40, 24, bias=bias)
    with torch.no_grad():
        base.weight.copy_(torch.randn(24, 40, generator=g) * 0.1)
        if bias:
            base.bias.copy_(torch.randn(24, generator=g) * 0.1)
    layer = DSEELinear(base, {"": None}, rank=3, num_sparse=30, scaling=2.0)
    with torch.no_grad():
        layer.dsee.lora_A.copy_(torch.randn(3, 40, generator=g) * 0.1)
        layer.dsee.lora_B.copy_(torch.randn(24, 3, generator=g) * 0.01)
        layer.dsee.sparse_values.copy_(torch.randn(30, generator=g) * 1e-3)
        layer.dsee.sparse_indices.copy_(torch.randperm(24 * 40, generator=g)[:30])
        base.weight.data = base.weight.data.to(torch.bfloat16)
        if bias:
            base.bias.data = base.bias.data.to(torch.bfloat16)
    base.requires_grad_(False)
    if mask:
        layer.prune_mask = torch.rand(24, 40, generator=g) > 0.5
    return layer


def _oracle(layer: DSEELinear, x: torch.Tensor, g: torch.Tensor):
    """y and the gradients of A, B and S in float64, from the same (bf16) W0, x and output gradient."""
    d = layer.dsee
    A, B, S = (t.detach().double().requires_grad_() for t in (d.lora_A, d.lora_B, d.sparse_values))
    delta = (B @ A).flatten().index_add(0, d.sparse_indices, S).view(24, 40) * d.scaling
    weight = layer.base_layer.weight.double() + delta
    if layer.prune_mask is not None:
        weight = weight * layer.prune_mask
    bias = layer.base_layer.bias
    y = x.double() @ weight.T + (0 if bias is None else bias.double())
    y.backward(g.double())
    return y.detach(), A.grad, B.grad, S.grad


@pytest.mark.parametrize("mask", [False, True], ids=["folded", "masked"])
def test_bf16_frozen_layer_computes_in_fp32_and_rounds_once(mask):
    layer = _layer(mask=mask)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 7, 40, generator=gen).to(torch.bfloat16)
    g = torch.randn(5, 7, 24, generator=gen).to(torch.bfloat16)
    y = layer(x)
    y.backward(g)
    y_o, ga, gb, gs = _oracle(layer, x, g)
    assert y.dtype == torch.bfloat16
    # the fp32 result rounded once to bf16: within half a bf16 step of the exact value
    torch.testing.assert_close(y.double(), y_o, rtol=BF16_EPS / 2 + 1e-6, atol=1e-6)
    d = layer.dsee
    for grad, exact in ((d.lora_A.grad, ga), (d.lora_B.grad, gb), (d.sparse_values.grad, gs)):
        assert grad.dtype == torch.float32
        # fp32-accurate (relative error of the whole gradient); a bf16 path is off by ~BF16_EPS / 2 = 4e-3
        assert float((grad.double() - exact).norm() / exact.norm()) < 1e-5


def test_bf16_frozen_layer_with_active_dropout_trains_in_fp32():
    layer = _layer()
    layer.dsee.dropout = nn.Dropout(0.2)
    layer.train()
    x = torch.randn(4, 40).to(torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.float32
               for t in (layer.dsee.lora_A, layer.dsee.lora_B, layer.dsee.sparse_values))


def test_merging_a_bf16_base_forms_the_sum_in_fp32_then_rounds():
    layer = _layer(mask=True)
    d = layer.dsee
    delta = d.delta_weight().detach()
    expected = ((layer.base_layer.weight.float() + delta) * layer.prune_mask).to(torch.bfloat16)
    merged = layer.merged_base_layer()
    assert merged.weight.dtype == torch.bfloat16
    assert torch.equal(merged.weight, expected)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "deberta"])
def test_bf16_frozen_model_keeps_trained_tensors_fp32_and_outputs_close(arch):
    from conftest import randomize_adapters

    model = tiny_classifier(arch)
    add_dsee(model, DSEEConfig(rank=2, num_sparse=16))
    randomize_adapters(model)
    buffers = {n: (b.dtype, b.clone()) for n, b in model.named_buffers()}
    reference = model(**batch()).logits
    low = lower_frozen_precision_(copy.deepcopy(model))
    assert frozen_dtypes(low) == {"frozen": {torch.bfloat16}, "trained": {torch.float32}}
    for n, b in low.named_buffers():  # Ω (int64), rows, rotary frequencies: untouched
        assert b.dtype == buffers[n][0] and torch.equal(b, buffers[n][1]), n
    logits = low(**batch()).logits
    assert logits.dtype == torch.float32  # the head ran in fp32 on bf16 features
    assert (logits - reference).abs().max() <= 0.02 * reference.abs().max()
    # training: gradients and AdamW state only for the fp32 tensors
    low.train()
    low(**batch(), labels=torch.tensor([0, 1, 2])).loss.backward()
    trained = [p for p in low.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-3)
    optimizer.step()
    states = [t for s in optimizer.state.values() for t in s.values() if t.dim()]
    assert states and {t.dtype for t in states} == {torch.float32}
    assert all(p.grad is None for p in low.parameters() if not p.requires_grad)
    # merged: W0 + ΔW formed in fp32, stored in W0's dtype
    merge_dsee(low)
    assert low(**batch()).logits.dtype == torch.float32


def test_bf16_frozen_weights_keep_embeddings_tied_and_refuse_full_fine_tuning():
    model = tiny_causal_lm("gpt2")  # ties wte and lm_head
    with pytest.raises(ValueError, match="full fine-tuning"):
        lower_frozen_precision_(model)
    add_dsee(model, DSEEConfig(rank=2, num_sparse=8))
    lower_frozen_precision_(model)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="floating-point"):
        lower_frozen_precision_(model, torch.int8)


def _dropout_classifier(arch: str):
    config = tiny_config(arch)
    config.num_labels = 3
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "resid_pdrop", "attn_pdrop", "embd_pdrop",
                "attention_dropout"):
        if hasattr(config, key):
            setattr(config, key, 0.1)
    import transformers as T

    torch.manual_seed(0)
    model = T.AutoModelForSequenceClassification.from_config(config)
    add_dsee(model, DSEEConfig(rank=2, num_sparse=8, dropout=0.1, init="upstream"))
    return model.train()


def _gradients(model, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model(**batch(), labels=torch.tensor([0, 1, 2])).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_gradient_checkpointing_gives_the_same_gradients_with_dropout(arch):
    plain = _dropout_classifier(arch)
    recomputed = copy.deepcopy(plain)
    enable_gradient_checkpointing(recomputed)
    assert any(getattr(m, "gradient_checkpointing", False) for m in recomputed.modules())
    a, b = _gradients(plain, seed=5), _gradients(recomputed, seed=5)
    assert a.keys() == b.keys() and a
    for name in a:  # the same dropout masks replayed: equal up to the order of gradient sums (last bits)
        assert float((a[name] - b[name]).norm()) <= 1e-6 * float(a[name].norm()), name
    # ... while other masks (another seed) change every adapter's gradient by far more
    c = _gradients(copy.deepcopy(plain).train(), seed=6)
    assert min(float((a[n] - c[n]).norm() / a[n].norm()) for n in a if "lora_A" in n) > 1e-3


def test_sharding_units_are_the_blocks_or_the_no_split_classes():
    from dsee.train.sharding import is_sharded, shard_model, unit_modules

    llama = tiny_classifier("llama")
    assert unit_modules(llama) == list(llama.model.layers)
    deberta = tiny_classifier("deberta")  # no dsee block layout: transformers' checkpointing layers
    assert unit_modules(deberta) == list(deberta.deberta.encoder.layer)
    # without a process group of several processes there is nothing to shard
    assert shard_model(llama) is llama and not is_sharded(llama)


def test_a_bf16_run_re_evaluates_to_its_recorded_score(tmp_path, tiny_model_dir, csv_data, recwarn):
    """``--base-dtype bf16`` end to end: the adapter is saved in fp32 with the fp32 base's fingerprint,
    and ``dsee eval`` rebuilds the model with bf16 frozen weights, so it scores what training recorded."""
    pytest.importorskip("accelerate")
    from safetensors.torch import load_file

    from dsee.train.loop import evaluate_run, train
    from dsee.train.run import RunConfig

    run = tmp_path / "run"
    metrics = train(RunConfig(out=str(run), model=tiny_model_dir, train_file=csv_data[0], validation_file=csv_data[1],
                              text_columns=["text"], label_column="label", max_length=32, epochs=1, batch_size=32,
                              lr=3e-2, adapter={"rank": 4, "num_sparse": 8}, base_dtype="bf16",
                              gradient_checkpointing=True), show_progress=False)
    adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert {t.dtype for t in adapter.values() if t.is_floating_point()} == {torch.float32}
    again = evaluate_run(run)
    assert again["validation"]["accuracy"] == metrics["dev"]["validation"]["accuracy"]
    assert again["validation"]["loss"] == pytest.approx(metrics["dev"]["validation"]["loss"], abs=1e-6)
    assert not [w for w in recwarn if "base weights differ" in str(w.message)]
