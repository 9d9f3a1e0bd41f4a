"""Properties of add_dsee / merge_dsee / remove_dsee on every supported architecture."""

from __future__ import annotations

import pytest
import torch

from conftest import ARCHS, batch, logits, randomize_adapters, tiny_causal_lm, tiny_classifier
from dsee import DSEEConfig, add_dsee, count_parameters, merge_dsee, remove_dsee
from dsee.adapters.inject import dsee_layers
from dsee.adapters.layer import linear_shape

SMALL = DSEEConfig(rank=4, alpha=8, num_sparse=16)


def test_identity_at_init(arch):
    model = tiny_classifier(arch)
    inputs = batch()
    before = logits(model, inputs)
    add_dsee(model, SMALL)
    assert torch.equal(logits(model, inputs), before)


def test_default_targets_are_query_and_value(arch):
    model = add_dsee(tiny_classifier(arch), SMALL)
    matched = model.dsee_state.targets_matched
    assert len(matched) == 2 * 2  # q and v in each of 2 layers
    expected = {
        "bert": ("attention.self.query", "attention.self.value"),
        "roberta": ("attention.self.query", "attention.self.value"),
        "mpnet": ("attn.q", "attn.v"),
        "deberta": ("attention.self.in_proj:q", "attention.self.in_proj:v"),
        "deberta-v2": ("attention.self.query_proj", "attention.self.value_proj"),
        "gpt2": ("attn.c_attn:q", "attn.c_attn:v"),
        "llama": ("self_attn.q_proj", "self_attn.v_proj"),
    }[arch]
    assert all(any(m.endswith(e) for e in expected) for m in matched)
    assert {e for e in expected if any(m.endswith(e) for m in matched)} == set(expected)


def test_trainable_count_formula(arch):
    model = tiny_classifier(arch)
    cfg = SMALL
    add_dsee(model, cfg)
    expected = 0
    for _, layer in dsee_layers(model):
        _, d_in = linear_shape(layer.base_layer)
        for _, delta, _ in layer.deltas():
            expected += cfg.rank * (d_in + delta.out_features) + cfg.num_sparse
    head = sum(p.numel() for n in model.dsee_state.modules_to_save for p in model.get_submodule(n).parameters())
    assert head > 0
    assert count_parameters(model).trainable == expected + head
    trainable_names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(".dsee" in n or any(n.startswith(h + ".") for h in model.dsee_state.modules_to_save) for n in trainable_names)


def test_llama_grouped_query_value_is_narrower():
    model = add_dsee(tiny_classifier("llama"), SMALL)
    v = model.get_submodule("model.layers.0.self_attn.v_proj")
    q = model.get_submodule("model.layers.0.self_attn.q_proj")
    assert v.lora_B.shape == (24, 4) and q.lora_B.shape == (48, 4)
    assert int(v.sparse_indices.max()) < 24 * 48


def test_base_weights_bitwise_unchanged_after_training(arch):
    model = tiny_classifier(arch)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    add_dsee(model, DSEEConfig(rank=4, num_sparse=16, init="upstream"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    labels = torch.tensor([0, 1, 2])
    for step in range(3):
        loss = model(**batch(step), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    heads = model.dsee_state.modules_to_save
    state = model.state_dict()
    adapters = dict(dsee_layers(model))
    changed_adapter = False
    for key, value in base.items():
        module = key.rsplit(".", 1)[0]
        wrapped = module in adapters
        new_key = f"{module}.base_layer.{key.rsplit('.', 1)[1]}" if wrapped else key
        if any(key.startswith(h + ".") for h in heads):
            continue
        assert torch.equal(state[new_key], value), key
    for _, layer in adapters.items():
        for _, delta, _ in layer.deltas():
            changed_adapter |= bool(delta.lora_B.abs().sum() > 0) and bool(delta.sparse_values.abs().sum() > 0)
    assert changed_adapter


def test_merge_equals_adapted_and_gives_plain_model(arch, tmp_path):
    model = tiny_classifier(arch)
    base_keys = set(model.state_dict())
    inputs = batch()
    base = logits(model, inputs)
    add_dsee(model, SMALL)
    randomize_adapters(model)
    adapted = logits(model, inputs)
    assert not torch.allclose(adapted, base)  # ΔW is not negligible, so the merge is really tested
    merge_dsee(model)
    assert not dsee_layers(model) and model.dsee_state is None
    assert set(model.state_dict()) == base_keys
    torch.testing.assert_close(logits(model, inputs), adapted, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)  # a plain transformers checkpoint
    reloaded = type(model).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(logits(reloaded, inputs), adapted, atol=1e-5, rtol=1e-5)


def test_remove_restores_base_function(arch):
    model = tiny_classifier(arch)
    inputs = batch()
    before = logits(model, inputs)
    add_dsee(model, SMALL)
    randomize_adapters(model)
    remove_dsee(model)
    assert torch.equal(logits(model, inputs), before)
    assert all(p.requires_grad for p in model.parameters())


def test_causal_lm_trains_no_head():
    model = tiny_causal_lm("llama")
    add_dsee(model, SMALL)
    assert model.dsee_state.modules_to_save == ()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".dsee" in n for n in trainable)


def test_sparse_update_is_stored_as_n_values():
    model = add_dsee(tiny_classifier("bert"), DSEEConfig(rank=2, num_sparse=5))
    layer = dsee_layers(model)[0][1]
    assert layer.sparse_values.shape == (5,) and layer.sparse_indices.dtype == torch.int64
    big = [t for t in layer.dsee.state_dict().values() if t.numel() >= 48 * 48]
    assert big == []


def test_sparse_branch_matches_dense_reference():
    """x·Sᵀ by gather/scatter equals the dense matrix product with S built densely."""
    model = add_dsee(tiny_classifier("bert"), DSEEConfig(rank=1, num_sparse=40))
    layer = dsee_layers(model)[0][1]
    delta = layer.dsee
    with torch.no_grad():
        delta.sparse_values.copy_(torch.randn(40))
        delta.lora_B.zero_()
    x = torch.randn(2, 5, 48)
    dense = torch.zeros(48 * 48)
    dense[delta.sparse_indices] = delta.sparse_values.detach()
    expected = x @ dense.view(48, 48).T * delta.scaling
    torch.testing.assert_close(delta(x), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(delta.delta_weight(), dense.view(48, 48) * delta.scaling)


@pytest.mark.parametrize("method", ["grebsmo", "upstream", "magnitude", "random"])
def test_every_support_method_builds(method):
    model = add_dsee(tiny_classifier("bert"), DSEEConfig(rank=2, num_sparse=10, sparse_method=method))
    for _, layer in dsee_layers(model):
        idx = layer.sparse_indices
        assert idx.numel() == 10 and idx.unique().numel() == 10


def test_support_is_chosen_from_the_weight():
    """Magnitude support = the top-N |W0| of each matrix, so Ω really comes from W0."""
    model = tiny_classifier("bert")
    weight = model.bert.encoder.layer[1].attention.self.value.weight.detach().clone()
    add_dsee(model, DSEEConfig(rank=2, num_sparse=7, sparse_method="magnitude"))
    idx = model.bert.encoder.layer[1].attention.self.value.sparse_indices
    assert set(idx.tolist()) == set(weight.abs().flatten().topk(7).indices.tolist())


def test_deterministic_given_seed():
    a = add_dsee(tiny_classifier("gpt2"), DSEEConfig(rank=3, num_sparse=9, sparse_method="random", seed=5))
    b = add_dsee(tiny_classifier("gpt2"), DSEEConfig(rank=3, num_sparse=9, sparse_method="random", seed=5))
    for (_, la), (_, lb) in zip(dsee_layers(a), dsee_layers(b)):
        for (_, da, _), (_, db, _) in zip(la.deltas(), lb.deltas()):
            assert torch.equal(da.lora_A, db.lora_A) and torch.equal(da.sparse_indices, db.sparse_indices)


def test_explicit_targets_exact_suffix_and_regex():
    model = add_dsee(tiny_classifier("bert"), DSEEConfig(rank=2, num_sparse=3, targets=["intermediate.dense"]))
    assert len(model.dsee_state.targets_matched) == 2
    model = add_dsee(tiny_classifier("bert"), DSEEConfig(rank=2, num_sparse=3, targets=[r"bert\.encoder\.layer\.1\..*\.(key|query)"]))
    assert model.dsee_state.targets_matched == (
        "bert.encoder.layer.1.attention.self.key",
        "bert.encoder.layer.1.attention.self.query",
    )
    model = add_dsee(tiny_classifier("bert"), DSEEConfig(rank=2, num_sparse=3, targets="bert.encoder.layer.0.output.dense"))
    assert model.dsee_state.targets_matched == ("bert.encoder.layer.0.output.dense",)


def test_upstream_init_moves_off_the_base():
    model = tiny_classifier("bert")
    inputs = batch()
    before = logits(model, inputs)
    add_dsee(model, DSEEConfig(rank=4, num_sparse=16, init="upstream"))
    assert not torch.allclose(logits(model, inputs), before)
    assert all(layer.lora_B.abs().sum() > 0 for _, layer in dsee_layers(model))


@pytest.mark.parametrize("arch_name", ARCHS)
def test_bfloat16_forward_and_merge(arch_name):
    model = tiny_classifier(arch_name).to(torch.bfloat16)
    add_dsee(model, SMALL)
    randomize_adapters(model)
    out = logits(model, batch())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    merge_dsee(model)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


@pytest.mark.parametrize("arch_name, heads", [("bert", ("classifier",)), ("deberta", ("pooler", "classifier")),
                                              ("deberta-v2", ("pooler", "classifier")), ("gpt2", ("score",))])
def test_default_modules_to_save_are_the_new_head(arch_name, heads):
    """DeBERTa's ContextPooler is part of the new classification head: frozen at random it would
    make a saved adapter irreproducible, so it is trained and saved like the classifier."""
    model = add_dsee(tiny_classifier(arch_name), SMALL)
    assert model.dsee_state.modules_to_save == heads
