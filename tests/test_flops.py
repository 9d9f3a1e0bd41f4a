"""Analytic FLOPs (dsee.sparsity.flops) against torch's FlopCounterMode on real forward passes."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from conftest import tiny_config
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import dsee
from dsee import DSEEConfig, add_dsee
from dsee.sparsity.flops import PARTS, flops_ratio, forward_flops, parameter_counts, shares_for_flops
from dsee.adapters.layer import DSEELinear, linear_shape
from dsee.arch import blocks
from dsee.sparsity.structure import remove_heads_, remove_neurons_

B, L = 2, 16  # batch, sequence length
T_ROWS = B * L
ARCHS = ("bert", "roberta", "mpnet", "deberta-v2", "gpt2", "llama")
CAUSAL = ("gpt2", "llama")
HEADS = {"llama": {0: [0, 2]}}  # one query head from each of the 2 key/value groups
HEADS_DEFAULT = {0: [1, 2], 1: [0]}
NEURONS = {0: list(range(10))}


def build(arch: str, **overrides) -> nn.Module:
    """A tiny model with eager attention (CPU sdpa's flash kernel is invisible to FlopCounterMode)."""
    torch.manual_seed(0)
    config = tiny_config(arch)
    config.num_labels = 3
    for key, value in overrides.items():
        setattr(config, key, value)
    auto = T.AutoModelForCausalLM if arch in CAUSAL else T.AutoModelForSequenceClassification
    return auto.from_config(config, attn_implementation="eager").eval()


def counted(model: nn.Module) -> int:
    """FLOPs FlopCounterMode sees in one forward pass on a (B, L) batch without padding.

    Run with autograd on: under no_grad its module tracker fails on DeBERTa's relative embeddings
    (a view of a parameter without grad_fn).
    """
    ids = torch.randint(2, 101, (B, L), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return counter.get_total_flops()


def head_overcount(model: nn.Module) -> int:
    """What the analytic count adds over the real pass: a classifier's pooler / head is applied to one
    token per sequence, but counted on all T rows. 0 for causal LMs (lm_head runs on every token)."""
    macs = sum(m.in_features * m.out_features for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and ("pooler" in n or "classifier" in n))
    return 2 * B * (L - 1) * macs


def dims(model: nn.Module) -> tuple[int, int]:
    config = model.config
    return getattr(config, "hidden_size", None) or config.n_embd, config.num_attention_heads


@pytest.mark.parametrize("arch", ARCHS)
def test_dense_matches_flop_counter(arch: str) -> None:
    model = build(arch)
    report = forward_flops(model, L, B)
    assert report.total - counted(model) == head_overcount(model)
    assert report.total == sum(b["total"] for b in report.blocks) + report.other
    # each block is the closed form for the unpruned shapes
    hidden, heads = dims(model)
    b0 = report.blocks[0]
    kv = getattr(model.config, "num_key_value_heads", heads)
    assert b0["qkv"] == 2 * T_ROWS * hidden * hidden * (heads + 2 * kv) // heads
    assert b0["attn_out"] == 2 * T_ROWS * hidden * hidden
    assert b0["scores"] == 2 * 2 * B * heads * L * L * (hidden // heads)
    assert b0["adapter"] == b0["rel_pos"] == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_removed_heads_and_neurons(arch: str) -> None:
    model = build(arch)
    before = forward_flops(model, L, B).total
    hidden, heads = dims(model)
    head_dim = hidden // heads
    removed = HEADS.get(arch, HEADS_DEFAULT)
    remove_heads_(model, removed)
    report = forward_flops(model, L, B)
    assert report.total - counted(model) == head_overcount(model)
    gqa = arch == "llama"  # key/value heads stay: only q rows and o columns go
    per_head = (2 if gqa else 4) * T_ROWS * head_dim * hidden + 2 * B * L * L * head_dim
    n_heads = sum(len(h) for h in removed.values())
    assert before - report.total == 2 * n_heads * per_head
    assert blocks(model)[0].num_heads == heads - len(removed[0])

    before = report.total
    remove_neurons_(model, NEURONS)
    report = forward_flops(model, L, B)
    assert report.total - counted(model) == head_overcount(model)
    matrices = 3 if arch == "llama" else 2  # gate, up, down
    assert before - report.total == 2 * len(NEURONS[0]) * matrices * T_ROWS * hidden
    assert report.blocks[1]["ffn"] - report.blocks[0]["ffn"] == 2 * len(NEURONS[0]) * matrices * T_ROWS * hidden


@pytest.mark.parametrize("share_att_key", [True, False])
def test_deberta_relative_attention(share_att_key: bool) -> None:
    """c2p and p2c: the 2·span relative embeddings projected per block, and two more products."""
    model = build("deberta-v2", relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=8,
                  share_att_key=share_att_key, conv_kernel_size=3)
    report = forward_flops(model, L, B)
    assert report.total - counted(model) == head_overcount(model)
    hidden, _ = dims(model)
    span2 = 2 * 8
    assert report.blocks[0]["rel_pos"] == 2 * (2 * span2 * hidden * hidden + 2 * B * L * span2 * hidden)
    remove_heads_(model, {1: [3]})
    report = forward_flops(model, L, B)
    assert report.total - counted(model) == head_overcount(model)
    assert report.blocks[1]["rel_pos"] == report.blocks[0]["rel_pos"] * 3 // 4


def adapted(model: nn.Module) -> list[tuple[int, int, int, int]]:
    """(d_in, d_out, rank, N) of every DSEE update in the model."""
    return [(d.in_features, d.out_features, d.rank, d.num_sparse)
            for m in model.modules() if isinstance(m, DSEELinear) for _, d, _ in m.deltas()]


@pytest.mark.parametrize("arch", ["bert", "mpnet", "gpt2", "llama"])
def test_adapter_term_and_merge(arch: str) -> None:
    model = build(arch)
    base = forward_flops(model, L, B)
    add_dsee(model, DSEEConfig(rank=4, num_sparse=8))
    updates = adapted(model)
    assert len(updates) == 2 * model.config.num_hidden_layers  # q and v per block
    closed = sum(T_ROWS * (r * (d_in + d_out) + n) for d_in, d_out, r, n in updates)
    v_out = 24 if arch == "llama" else 48  # Llama's v_proj: 2 key/value heads of 12
    assert closed == T_ROWS * 2 * ((4 * (48 + 48) + 8) + (4 * (48 + v_out) + 8))  # 2 blocks · (q, v)
    report = forward_flops(model, L, B)
    assert sum(b["adapter"] for b in report.blocks) == 2 * closed
    assert report.total == base.total + 2 * closed
    # the counter sees A and B as matmuls; the sparse gather / scatter-add (N per row) is not a matmul
    sparse = 2 * sum(T_ROWS * n for *_, n in updates)
    assert report.total - counted(model) == head_overcount(model) + sparse
    dsee.merge_dsee(model)
    merged = forward_flops(model, L, B)
    assert all(b["adapter"] == 0 for b in merged.blocks)
    assert merged.total == base.total == counted(model) + head_overcount(model)


def test_masked_adapter_forms_delta_once() -> None:
    """With a prune mask the layer runs M ⊙ (W0 + ΔW) densely: B·A once per call, not per row."""
    model = build("bert")
    base = forward_flops(model, L, B).total
    add_dsee(model, DSEEConfig(rank=4, num_sparse=8))
    layers = [m for m in model.modules() if isinstance(m, DSEELinear)]
    with torch.no_grad():
        for layer in layers:
            mask = torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(1)) > 0.5
            layer.base_layer.weight.mul_(mask)
            layer.prune_mask = mask
    report = forward_flops(model, L, B)
    assert report.total - base == 2 * sum(r * d_in * d_out for d_in, d_out, r, _ in adapted(model))
    assert report.total - counted(model) == head_overcount(model)
    kept = sum(int(layer.prune_mask.sum()) for layer in layers)
    masked = sum(layer.prune_mask.numel() for layer in layers)
    counts = parameter_counts(model)
    assert report.nonzero_params == counts["block_linear_nonzero"] == counts["block_linear"] - (masked - kept)


@pytest.fixture(scope="module")
def bert_base() -> nn.Module:
    torch.manual_seed(0)
    return T.BertModel(T.BertConfig(), add_pooling_layer=False).eval()


def test_bert_base_shares_match_paper(bert_base: nn.Module) -> None:
    """Paper §5 table (MACs, BERT-base, L = 128): q/k/v 24.3%, attn output 8.1%, FFN 64.9%, QKᵀ+AV 2.7%."""
    report = forward_flops(bert_base, 128)
    assert len(report.blocks) == 12 and report.other == 0
    for part, paper in {"qkv": 24.3, "attn_out": 8.1, "ffn": 64.9, "scores": 2.7}.items():
        assert abs(100 * report.share(part) - paper) <= 0.1, (part, report.share(part))
    assert sum(report.share(p) for p in PARTS) == pytest.approx(1.0)
    json.dumps(report.to_dict())
    # per layer, in MACs: 3·768²·128 + 768²·128 + 2·768·3072·128 + 2·12·128²·64
    assert report.blocks[5]["total"] == 2 * (4 * 768 * 768 * 128 + 2 * 768 * 3072 * 128 + 2 * 12 * 128 * 128 * 64)


def test_flops_ratio() -> None:
    reference, pruned = build("bert"), build("bert")
    remove_neurons_(pruned, {0: list(range(32)), 1: list(range(32))})  # half of each FFN
    ffn = 2 * 2 * T_ROWS * 48 * 64  # both blocks' FFN FLOPs, halved
    ratio = flops_ratio(pruned, reference, L, B)
    assert ratio == pytest.approx(1 - ffn / forward_flops(reference, L, B).total)
    assert ratio < 1


def test_parameter_counts_zeros() -> None:
    model = build("llama")
    counts = parameter_counts(model)
    per_block = 48 * 48 * 2 + 48 * 24 * 2 + 3 * 48 * 64  # q, o; k, v (2 kv heads); gate, up, down
    assert counts["block_linear"] == 2 * per_block
    assert counts["block_linear_nonzero"] == counts["block_linear"]  # random init has no exact zeros
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        blocks(model)[1].get("mlp.up_proj").weight[3, :7] = 0.0  # 7 zeros
        blocks(model)[0].get("self_attn.k_proj").weight[0, 0] = 0.0  # and one more
        model.lm_head.weight[0, :5] = 0.0  # outside the blocks: not counted
    after = parameter_counts(model)
    assert after["block_linear_nonzero"] == counts["block_linear"] - 8
    assert after["block_linear"] == counts["block_linear"] and after["total"] == counts["total"]
    assert forward_flops(model, L, B).nonzero_params == counts["block_linear"] - 8


def test_linear_shape_of_block_modules_is_what_is_counted() -> None:
    """GPT-2's fused Conv1D c_attn counts 3·hidden rows; removing a head removes 3·head_dim of them."""
    model = build("gpt2")
    c_attn = blocks(model)[0].get("attn.c_attn")
    assert linear_shape(c_attn) == (144, 48)
    remove_heads_(model, {0: [0]})
    assert forward_flops(model, L, B).blocks[0]["qkv"] == 2 * T_ROWS * 108 * 48


@pytest.mark.parametrize("arch", ["bert", "mpnet", "llama"])
@pytest.mark.parametrize("target", [0.75, 0.5, 0.35, 0.25])
def test_shares_for_a_flops_target_hit_it_on_the_pruned_model(arch: str, target: float) -> None:
    """The shares, removed per layer by the recipe's own plan, give the FLOPs share promised, within half a
    neuron per layer of the target unless a bound is reached; heads go whole (Llama: one per key/value
    group at a time, and each group keeps one)."""
    from dsee.sparsity.importance import magnitude_neuron_scores, removal_plan

    model = build(arch)
    shares = shares_for_flops(model, target, seq_len=L)
    head_scores = [torch.arange(b.num_heads, dtype=torch.float) for b in blocks(model)]
    groups = [b.group_size for b in blocks(model)]
    remove_heads_(model, removal_plan(head_scores, shares.heads, group_sizes=groups))
    remove_neurons_(model, removal_plan(magnitude_neuron_scores(model), shares.ffn, what="FFN neurons"))
    reference = forward_flops(build(arch), L).total
    assert forward_flops(model, L).total / reference == pytest.approx(shares.flops_share, rel=1e-12)
    assert all(4 - b.num_heads == shares.heads_removed and 64 - b.ffn_size == shares.neurons_removed
               for b in blocks(model))
    fewer = build(arch)
    remove_neurons_(fewer, {i: [0] for i in range(2)})
    one_neuron = 1 - forward_flops(fewer, L).total / reference  # one neuron of every layer
    if shares.neurons_removed in (0, 63):  # a bound: the closest the architecture gets
        assert arch == "llama" and target <= 0.35 and shares.flops_share > target
    else:
        assert abs(shares.flops_share - target) <= one_neuron / 2 + 1e-12
    if arch == "llama":
        assert shares.heads_removed % 2 == 0  # 2 key/value groups, the same number from each


def test_total_flops_counts_an_architecture_on_the_meta_device() -> None:
    model = build("mpnet")
    with torch.device("meta"):
        skeleton = type(model)(model.config)
    assert dsee.sparsity.flops.total_flops(skeleton, L, B) == forward_flops(model, L, B).total


def test_shares_for_flops_read_the_architecture_only() -> None:
    with pytest.raises(ValueError, match="must be in"):
        shares_for_flops(build("bert"), 0.0)
    pruned = build("bert")
    remove_neurons_(pruned, {0: [0, 1]})
    assert shares_for_flops(pruned, 0.5, seq_len=L) == shares_for_flops(build("bert"), 0.5, seq_len=L)
