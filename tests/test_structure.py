"""Structured pruning: removing heads / neurons equals zeroing their path in the unpruned model."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import batch, logits, randomize_adapters, tiny_classifier, tiny_config
from dsee import DSEEConfig, add_dsee
from dsee.sparsity.importance import delta_head_scores, importance_scores, magnitude_neuron_scores, removal_plan
from dsee.adapters.layer import DSEELinear, linear_weight
from dsee.arch import blocks
from dsee.sparsity.structure import apply_structure_, remove_heads_, remove_neurons_, structure_plan

ARCHS = ("bert", "roberta", "mpnet", "deberta-v2", "gpt2", "llama")
# 4 query heads per layer; llama: 2 key/value groups of 2, so one head from each group
HEADS = {"llama": {0: [0, 3], 1: [1, 2]}}
DEFAULT_HEADS = {0: [1, 2], 1: [0]}
NEURONS = {0: [0, 5, 7, 63], 1: list(range(10, 40))}


def _zero_o_columns(model, removed: dict[int, list[int]]) -> None:
    """The oracle: a head contributes nothing when its columns of the attention output are zero."""
    with torch.no_grad():
        for block in blocks(model):
            o = block.get(block.spec.o)
            weight = linear_weight(o.base_layer if isinstance(o, DSEELinear) else o)
            for h in removed.get(block.index, []):
                weight[:, h * block.head_dim:(h + 1) * block.head_dim] = 0


def _zero_ffn_columns(model, removed: dict[int, list[int]]) -> None:
    with torch.no_grad():
        for block in blocks(model):
            out = block.get(block.spec.ffn_out)
            weight = linear_weight(out.base_layer if isinstance(out, DSEELinear) else out)
            weight[:, removed.get(block.index, [])] = 0


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("adapted", [False, True])
def test_removing_heads_and_neurons_equals_zeroing_their_path(arch, adapted):
    model = tiny_classifier(arch)
    if arch == "deberta-v2":
        assert model.config.relative_attention is False  # also checked with relative attention below
    if adapted:
        add_dsee(model, DSEEConfig(rank=2, num_sparse=40))
        randomize_adapters(model)
    heads = HEADS.get(arch, DEFAULT_HEADS)
    oracle = copy.deepcopy(model)
    _zero_o_columns(oracle, heads)
    _zero_ffn_columns(oracle, NEURONS)
    ffn0 = blocks(model)[0].ffn_size  # 64; GPT-2: 4 × 48
    remove_heads_(model, heads)
    remove_neurons_(model, NEURONS)
    inputs = batch()
    torch.testing.assert_close(logits(model, inputs), logits(oracle, inputs), rtol=1e-5, atol=1e-5)
    got = [(b.num_heads, b.ffn_size) for b in blocks(model)]
    assert got == [(2, ffn0 - 4), (2 if arch == "llama" else 3, ffn0 - 30)]


def test_relative_position_attention_deberta_v2():
    config = tiny_config("deberta-v2")
    config.relative_attention, config.pos_att_type, config.max_relative_positions = True, ["c2p", "p2c"], 16
    config.num_labels = 2
    torch.manual_seed(0)
    import transformers as T

    model = T.DebertaV2ForSequenceClassification(config).eval()
    oracle = copy.deepcopy(model)
    _zero_o_columns(oracle, DEFAULT_HEADS)
    remove_heads_(model, DEFAULT_HEADS)
    torch.testing.assert_close(logits(model, batch()), logits(oracle, batch()), rtol=1e-5, atol=1e-5)


def test_adapter_rows_and_sparse_entries_follow_the_kept_heads():
    model = tiny_classifier("bert")
    add_dsee(model, DSEEConfig(rank=2, num_sparse=300))
    randomize_adapters(model)
    query = blocks(model)[0].get("attention.self.query")
    before = query.dsee.delta_weight().clone()  # (48, 48)
    remove_heads_(model, {0: [1, 2]})
    kept_rows = torch.cat([torch.arange(0, 12), torch.arange(36, 48)])
    assert torch.equal(query.dsee.delta_weight(), before[kept_rows])
    n_kept = int((before[kept_rows] != 0).sum())  # B·A is dense: count S's entries directly instead
    rows = torch.div(query.sparse_indices, 48, rounding_mode="floor")
    assert query.sparse_values.numel() == query.sparse_indices.numel() < 300
    assert bool((rows < 24).all()) and n_kept > 0
    assert bool((query.sparse_indices[1:] > query.sparse_indices[:-1]).all())  # still ascending, distinct


def test_gpt2_fused_qkv_slices_stay_aligned():
    model = tiny_classifier("gpt2")
    add_dsee(model, DSEEConfig(rank=2, num_sparse=40))
    randomize_adapters(model)
    remove_heads_(model, {0: [0, 3]})
    c_attn = blocks(model)[0].get("attn.c_attn")
    assert linear_weight(c_attn.base_layer).shape == (72, 48)  # 3 × 2 heads × 12
    assert torch.equal(c_attn.rows_q, torch.arange(0, 24)) and torch.equal(c_attn.rows_v, torch.arange(48, 72))
    assert model.transformer.h[0].attn.split_size == 24


def test_plan_replays_on_a_fresh_model():
    model = tiny_classifier("mpnet")
    remove_heads_(model, {1: [3]})
    remove_heads_(model, {1: [0]})  # current numbering: original head 0
    remove_neurons_(model, {0: [1, 2]})
    remove_neurons_(model, {0: [0]})  # original neuron 0
    plan = structure_plan(model)
    assert plan == {"heads": {"1": [0, 3]}, "neurons": {"0": [0, 1, 2]}}
    fresh = apply_structure_(tiny_classifier("mpnet", seed=5), plan)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(logits(fresh, batch()), logits(model, batch()))


@pytest.mark.parametrize("bad,match", [
    ({0: [0, 1, 2, 3]}, "would leave none"),
    ({0: [7]}, "do not exist"),
    ({9: [0]}, "layer 9 does not exist"),
])
def test_bad_head_requests_change_nothing(bad, match):
    model = tiny_classifier("bert")
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=match):
        remove_heads_(model, {1: [0], **bad})
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_grouped_query_attention_needs_balanced_groups():
    model = tiny_classifier("llama")
    with pytest.raises(ValueError, match="same number of query heads"):
        remove_heads_(model, {0: [0, 1]})  # both heads of group 0


def test_scores_and_plans():
    model = tiny_classifier("bert")
    add_dsee(model, DSEEConfig(rank=2, num_sparse=8))
    randomize_adapters(model)
    scores = delta_head_scores(model)
    assert [s.shape for s in scores] == [torch.Size([4])] * 2
    # hand-computed: Σ|ΔW_q| + Σ|ΔW_v| over the rows of head 2 of layer 0
    layer0 = blocks(model)[0]
    dq = layer0.get("attention.self.query").dsee.delta_weight().abs()[24:36].sum()
    dv = layer0.get("attention.self.value").dsee.delta_weight().abs()[24:36].sum()
    torch.testing.assert_close(scores[0][2], dq + dv)
    plan = removal_plan(scores, 0.5)
    assert all(len(v) == 2 for v in plan.values())
    assert plan[0] == sorted(torch.argsort(scores[0])[:2].tolist())
    assert sum(len(v) for v in removal_plan(scores, 0.5, per_layer=False).values()) == 4
    with pytest.raises(ValueError, match="would leave none"):
        removal_plan(scores, 0.9)
    assert [s.shape for s in magnitude_neuron_scores(model)] == [torch.Size([64])] * 2


@pytest.mark.parametrize("arch", ["bert", "mpnet"])  # MPNet: the gate sits on attn.o, past the relative bias
def test_importance_is_zero_for_a_dead_head_and_leaves_parameters_alone(arch):
    model = tiny_classifier(arch)
    _zero_o_columns(model, {0: [2]})
    inputs = {**batch(), "labels": torch.tensor([0, 1, 2])}
    before = {n: p.clone() for n, p in model.named_parameters()}
    heads, neurons = importance_scores(model, [inputs, inputs])
    assert heads[0][2] == 0 and heads[0].sum() > 0 and neurons[1].sum() > 0
    assert all(torch.equal(before[n], p) and p.grad is None for n, p in model.named_parameters())
