"""The sparse update's autograd functions and the layer that uses them, against dense references.

Paper §3.1: ΔW = s·(B·A + S) with S holding N values at fixed positions Ω. The layer folds s·S into
a copy of W0 (no active dropout) or applies it as a CSR product (active dropout); both must give the
gradients of a dense float64 computation, and neither may keep anything of size tokens × N.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import batch, tiny_causal_lm, tiny_classifier
from dsee import DSEEConfig, add_dsee
from dsee.adapters.inject import dsee_layers
from dsee.adapters.layer import DSEELinear, linear_weight
from dsee.adapters.sparse_ops import folded_linear, sddmm, sparse_matmul

torch.set_default_dtype(torch.float32)


def _case(d_out=7, d_in=5, n=9, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(d_out * d_in, generator=g)[:n]  # not sorted: the functions must not care
    x = torch.randn(2, 3, d_in, generator=g, dtype=dtype, requires_grad=True)
    values = torch.randn(n, generator=g, dtype=dtype, requires_grad=True)
    return x, values, index


def test_folded_linear_passes_gradcheck_in_float64():
    x, values, index = _case()
    weight = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b, v: folded_linear(x, w, b, v, index), (x, weight, bias, values))


def test_folded_linear_on_a_transposed_weight_view():
    """GPT-2's Conv1D stores its weight (d_in, d_out): the function receives a transposed view."""
    x, values, index = _case()
    stored = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, v: folded_linear(x, w.T, None, v, index), (x, stored, values))


def test_sparse_matmul_passes_gradcheck_in_float64():
    x, values, index = _case()
    assert torch.autograd.gradcheck(lambda x, v: sparse_matmul(x, v, index, 7, 5), (x, values))


def test_sddmm_equals_the_dense_product_at_the_positions():
    x, _, index = _case(d_out=11, d_in=13, n=40)
    g = torch.randn(2, 3, 11, dtype=torch.float64)
    dense = torch.einsum("bto,bti->oi", g, x.detach()).flatten()[index]
    assert torch.allclose(sddmm(g, x.detach(), index, 11, 13), dense, rtol=0, atol=1e-12)


def _dense_reference(layer: DSEELinear, x: torch.Tensor) -> torch.Tensor:
    """y = x·W0ᵀ + b + Σ_slices s·x·(B·A + S)ᵀ into the slice's rows, S built as a dense matrix."""
    weight = linear_weight(layer.base_layer).detach().double()
    y = x @ weight.T
    if layer.base_layer.bias is not None:
        y = y + layer.base_layer.bias.detach().double()
    for _, delta, rows in layer.deltas():
        dense_s = torch.zeros(delta.out_features * delta.in_features, dtype=torch.float64)
        dense_s = dense_s.index_add(0, delta.sparse_indices, delta.sparse_values.double())
        update = delta.lora_B.double() @ delta.lora_A.double() + dense_s.view(delta.out_features, delta.in_features)
        contribution = delta.scaling * x @ update.T
        y = y + contribution if rows is None else y.index_add(-1, rows, contribution)
    return y


def _adapted_layers(kind: str):
    if kind == "plain":
        model = tiny_classifier("bert")
    elif kind == "gpt2":
        model = tiny_causal_lm("gpt2")
    else:  # DeBERTa v1: q, k, v interleaved per head in one in_proj
        model = tiny_classifier("deberta")
    add_dsee(model, DSEEConfig(rank=3, sparse_density=0.2, init="upstream"))
    return model, dsee_layers(model)


@pytest.mark.parametrize("kind", ["plain", "gpt2", "deberta"])
@pytest.mark.parametrize("dropout", [False, True])
def test_layer_gradients_equal_a_dense_float64_reference(kind, dropout):
    """Fused slices included; with active dropout (a fixed mask here) the CSR path is taken."""
    model, layers = _adapted_layers(kind)
    name, layer = layers[0]
    layer.double()
    x = torch.randn(2, 4, linear_weight(layer.base_layer).shape[1], dtype=torch.float64, requires_grad=True)
    if dropout:
        g = torch.Generator().manual_seed(3)

        class FixedMask(nn.Dropout):  # an active dropout whose mask the reference can reproduce
            def __init__(self, mask):
                super().__init__(0.5)
                self.mask = mask

            def forward(self, inputs):
                return inputs * self.mask

        masks = {}
        for slice_name, delta, _ in layer.deltas():
            masks[slice_name] = (torch.rand(x.shape, generator=g) > 0.5).double() * 2
            delta.dropout = FixedMask(masks[slice_name])
        layer.train()
        assert all(d.dropout_active for _, d, _ in layer.deltas())
    params = [p for p in layer.parameters() if p.requires_grad]
    ours = layer(x)
    grads = torch.autograd.grad(ours.square().sum(), [x, *params])
    if dropout:  # the reference, slice by slice with its mask
        weight = linear_weight(layer.base_layer).detach()
        ref = x @ weight.T + (layer.base_layer.bias.detach() if layer.base_layer.bias is not None else 0)
        for slice_name, delta, rows in layer.deltas():
            xd = x * masks[slice_name]
            dense_s = torch.zeros(delta.out_features * delta.in_features, dtype=torch.float64)
            dense_s = dense_s.index_add(0, delta.sparse_indices, delta.sparse_values).view(delta.out_features, -1)
            contribution = delta.scaling * xd @ (delta.lora_B @ delta.lora_A + dense_s).T
            ref = ref + contribution if rows is None else ref.index_add(-1, rows, contribution)
    else:
        ref = _dense_reference(layer, x)
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *params])
    assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)


def _largest_saved(fn) -> int:
    """numel of the largest tensor autograd saves while ``fn`` runs."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return max(sizes)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_nothing_of_size_tokens_times_n_is_kept_for_backward(dropout):
    """T = 256 tokens, a 32×32 matrix at 50% density: N = 512, T·N = 131,072 > every legitimate tensor."""
    layer_in = nn.Linear(32, 32)
    model = nn.Sequential(layer_in)
    add_dsee(model, DSEEConfig(rank=2, sparse_density=0.5, dropout=dropout, targets=["0"], sparse_method="random"))
    model.train()
    layer = model[0]
    x = torch.randn(4, 64, 32, requires_grad=True)
    tokens, n = 256, layer.dsee.num_sparse
    assert n == 512
    largest = _largest_saved(lambda: layer(x).sum())
    assert largest < tokens * n
    assert largest <= x.numel()  # x itself (also the low-rank branch's input) is the largest


def test_autocast_bf16_keeps_float32_gradients_close_to_float32():
    model = tiny_classifier("bert")
    add_dsee(model, DSEEConfig(rank=4, sparse_density=0.1, init="upstream"))
    model.train()
    inputs = {**batch(), "labels": torch.tensor([0, 1, 2])}
    model(**inputs).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and "sparse" in n}
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**inputs).loss
    loss.backward()
    for name, grad in reference.items():
        got = dict(model.named_parameters())[name].grad
        assert got.dtype == torch.float32
        assert torch.allclose(got, grad, rtol=0.1, atol=0.05 * grad.abs().max().item())
