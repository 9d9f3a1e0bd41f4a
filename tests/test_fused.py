"""Fused projections: adapting the q and v slices of one matrix equals adapting separate matrices."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from dsee.arch import FusedLayout
from dsee.adapters.layer import DSEELinear


def _fill(delta, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        delta.lora_A.copy_(torch.randn(delta.lora_A.shape, generator=g))
        delta.lora_B.copy_(torch.randn(delta.lora_B.shape, generator=g))
        delta.sparse_values.copy_(torch.randn(delta.sparse_values.shape, generator=g))
        n = delta.out_features * delta.in_features
        delta.sparse_indices.copy_(torch.randperm(n, generator=g)[: delta.num_sparse].sort().values)


def _copy(src, dst):
    with torch.no_grad():
        for name in ("lora_A", "lora_B", "sparse_values", "sparse_indices"):
            getattr(dst, name).copy_(getattr(src, name))


def test_conv1d_equals_transposed_linear():
    torch.manual_seed(0)
    conv = Conv1D(24, 16)  # in 16, out 24, weight stored (16, 24)
    linear = nn.Linear(16, 24)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
        linear.bias.copy_(conv.bias)
    a = DSEELinear(conv, {"": None}, rank=3, num_sparse=7, scaling=2.0)
    b = DSEELinear(linear, {"": None}, rank=3, num_sparse=7, scaling=2.0)
    _fill(a.dsee, 1)
    _copy(a.dsee, b.dsee)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(a(x), b(x))
    torch.testing.assert_close(a.merged_base_layer().weight.T, b.merged_base_layer().weight)


def _separate_reference(weight_rows, bias, slices, deltas, x, layout_rows):
    """q, k, v as three separate DSEE-adapted nn.Linear layers, outputs placed back in fused order."""
    out = torch.empty(*x.shape[:-1], weight_rows.shape[0])
    for part in "qkv":
        rows = layout_rows[part]
        lin = nn.Linear(weight_rows.shape[1], len(rows))
        with torch.no_grad():
            lin.weight.copy_(weight_rows[rows])
            lin.bias.copy_(bias[rows])
        if part in slices:
            layer = DSEELinear(lin, {"": None}, rank=3, num_sparse=5, scaling=0.5)
            _copy(deltas[part], layer.dsee)
            out[..., rows] = layer(x)
        else:
            out[..., rows] = lin(x)
    return out


def _check_fused(layout: FusedLayout, base: nn.Module, weight_rows, bias, heads):
    d_out = weight_rows.shape[0]
    rows = {p: layout.rows(p, d_out, heads) for p in "qkv"}
    assert torch.equal(torch.cat(list(rows.values())).sort().values, torch.arange(d_out))
    fused = DSEELinear(base, {s: rows[s] for s in ("q", "v")}, rank=3, num_sparse=5, scaling=0.5)
    deltas = {}
    for i, (name, delta, _) in enumerate(fused.deltas()):
        _fill(delta, 10 + i)
        deltas[name] = delta
    x = torch.randn(2, 4, weight_rows.shape[1])
    expected = _separate_reference(weight_rows, bias, ("q", "v"), deltas, x, rows)
    torch.testing.assert_close(fused(x), expected, atol=1e-5, rtol=1e-5)


def test_gpt2_c_attn_slices_equal_separate_layers():
    torch.manual_seed(0)
    conv = Conv1D(3 * 16, 16)
    layout = FusedLayout("attn.c_attn", "blocks")
    _check_fused(layout, conv, conv.weight.detach().T.clone(), conv.bias.detach().clone(), heads=4)


def test_deberta_per_head_in_proj_slices_equal_separate_layers():
    torch.manual_seed(0)
    lin = nn.Linear(16, 3 * 16)
    layout = FusedLayout("attention.self.in_proj", "per_head")
    rows_q = layout.rows("q", 48, 4)
    assert rows_q.tolist()[:5] == [0, 1, 2, 3, 12]  # head_dim 4: q of head 0, then q of head 1
    _check_fused(layout, lin, lin.weight.detach().clone(), lin.bias.detach().clone(), heads=4)


def test_deberta_model_query_slice_matches_its_own_split():
    """In a real DeBERTa layer, the adapted q rows are the ones the model uses as queries."""
    from conftest import tiny_classifier
    from dsee import DSEEConfig, add_dsee

    model = tiny_classifier("deberta")
    attn = model.deberta.encoder.layer[0].attention.self
    x = torch.randn(1, 3, 48)
    add_dsee(model, DSEEConfig(rank=2, num_sparse=4))
    layer = attn.in_proj
    with torch.no_grad():
        layer.dsee_q.lora_B.fill_(1.0)  # changes q only
    qp = attn.transpose_for_scores(layer(x))
    q, k, v = qp.chunk(3, dim=-1)
    q0, k0, v0 = attn.transpose_for_scores(layer.base_layer(x)).chunk(3, dim=-1)
    assert not torch.allclose(q, q0)
    assert torch.equal(k, k0) and torch.equal(v, v0)
