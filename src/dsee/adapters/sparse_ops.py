"""The sparse half of ΔW as autograd functions whose cost does not grow with tokens × N (paper §3.1).

S is a (d_out × d_in) matrix with N non-zeros at flat row-major indices Ω. Two ways to apply it:

    folded_linear(x, W0, b, v, Ω)   y = x·(W0 + S)ᵀ + b           one dense matmul, S folded into a copy of W0
    sparse_matmul(x, v, Ω, shape)    y = x·Sᵀ                       a CSR sparse-dense product (SpMM)

Both give the gradient of the N values as a sampled dense-dense product (SDDMM):

    ∂L/∂v_i = Σ_t  g[t, row_i] · x[t, col_i]          g = ∂L/∂y: (T, d_out),  x: (T, d_in)

computed by ``torch.sparse.sampled_addmm`` at the N positions only. Nothing of size T × N is built
in forward or kept for backward: forward keeps x (which the low-rank branch keeps anyway) and
re-forms the folded weight in backward instead of storing it (a d_out × d_in copy per call, for a
moment). The naive form, ``x[..., cols] * v`` then a scatter-add, keeps a (T, N) tensor: at 5%
density on BERT-base shapes that was 6× LoRA's step time and +5.8 GB.

``folded_linear`` serves the forward pass whenever the adapter's input dropout is inactive (the
default, and every evaluation): the sparse update then costs one scatter into a weight copy.
With active dropout the sparse branch sees a different input than W0, so ``sparse_matmul`` runs it
as its own branch. Under autocast the dense products run in the autocast dtype, like the layer
they replace; the SDDMM always runs in float32 or better (sparse kernels have no bfloat16 path).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a plain ``F.linear`` on ``x`` would compute in here (the autocast dtype if active)."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def _sparse_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32, or float64 when an input is float64: the dtypes the CPU sparse kernels support."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def coordinates(index: torch.Tensor, d_in: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of flat row-major indices into a (·, d_in) matrix, each (N,)."""
    rows = torch.div(index, d_in, rounding_mode="floor")
    return rows, index - rows * d_in


def _csr(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A CSR tensor from coordinates sorted by (row, col)."""
    crow = torch.zeros(shape[0] + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=shape[0]).cumsum(0)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": it is what we rely on, knowingly
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, cols, values, shape, check_invariants=False)


def _sorted(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``index`` in ascending order and the permutation that sorted it (None if it already was)."""
    if index.numel() < 2 or bool((index[1:] > index[:-1]).all()):
        return index, None
    order = torch.argsort(index)
    return index[order], order


def sddmm(grad_out: torch.Tensor, x: torch.Tensor, index: torch.Tensor, d_out: int, d_in: int) -> torch.Tensor:
    """Σ_t grad_out[t, row_i]·x[t, col_i] for every flat index i of ``index``: (N,).

    grad_out: (..., d_out), x: (..., d_in) with the same leading dimensions (tokens). Computed in
    float32 (float64 for float64 inputs) by ``torch.sparse.sampled_addmm`` at the N positions;
    where that kernel is missing (a device without it) by a dense product and a gather.
    """
    dtype = _sparse_dtype(grad_out, x)
    if index.numel() == 0:
        return torch.zeros(0, dtype=dtype, device=x.device)
    g = grad_out.reshape(-1, d_out)  # (T, d_out)
    a = x.reshape(-1, d_in)  # (T, d_in)
    flat, order = _sorted(index)
    rows, cols = coordinates(flat, d_in)
    # the kernel reads mat1 by rows and mat2 by columns: give it gᵀ (d_out, T) and x column-major
    mat1 = g.t().to(dtype).contiguous()
    mat2 = a.t().to(dtype).contiguous().t()
    try:
        pattern = _csr(rows, cols, torch.zeros(flat.numel(), dtype=dtype, device=x.device), (d_out, d_in))
        values = torch.sparse.sampled_addmm(pattern, mat1, mat2, beta=0.0).values()
    except (RuntimeError, NotImplementedError):  # pragma: no cover - devices without the SDDMM kernel
        values = (mat1 @ mat2)[rows, cols]
    if order is None:
        return values
    out = torch.empty_like(values)
    out[order] = values
    return out


def fold(weight: torch.Tensor, values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """W0 + S as a new (d_out, d_in) tensor, in the promoted dtype of ``weight`` and ``values``.

    ``weight`` may be a strided view (GPT-2's Conv1D weight transposed); it is not modified.
    """
    dtype = torch.promote_types(weight.dtype, values.dtype)
    folded = weight.detach().to(dtype, copy=True)
    rows, cols = coordinates(index, weight.shape[1])
    folded.index_put_((rows, cols), values.detach().to(dtype), accumulate=True)
    return folded


class _FoldedLinear(torch.autograd.Function):
    """y = x·(W0 + S)ᵀ + b; gradients for x, W0 (if it requires one), b (likewise) and S's values."""

    @staticmethod
    def forward(ctx, x, weight, bias, values, index):
        dtype = _compute_dtype(x)
        folded = fold(weight, values, index).to(dtype)
        y = F.linear(x.to(dtype), folded, None if bias is None else bias.to(dtype))
        ctx.save_for_backward(x, weight, values, index)
        ctx.compute_dtype = dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, weight, values, index = ctx.saved_tensors
        dtype = ctx.compute_dtype
        d_out, d_in = weight.shape
        grad_x = grad_w = grad_b = grad_v = None
        if ctx.needs_input_grad[0]:  # g·(W0 + S), the folded weight formed again rather than stored
            grad_x = (grad_y.to(dtype) @ fold(weight, values, index).to(dtype)).to(x.dtype)
        if ctx.needs_input_grad[1]:  # only when W0 itself is trained (not by DSEE)
            grad_w = (grad_y.reshape(-1, d_out).to(dtype).t() @ x.reshape(-1, d_in).to(dtype)).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_b = grad_y.reshape(-1, d_out).sum(0).to(ctx.bias_dtype)
        if ctx.needs_input_grad[3]:
            grad_v = sddmm(grad_y, x, index, d_out, d_in).to(values.dtype)
        return grad_x, grad_w, grad_b, grad_v, None


class _SparseMatmul(torch.autograd.Function):
    """y = x·Sᵀ with S given by its N values at flat ``index`` of a (d_out, d_in) matrix."""

    @staticmethod
    def forward(ctx, x, values, index, d_out, d_in):
        dtype = _sparse_dtype(x, values)
        flat, order = _sorted(index)
        vals = values.to(dtype) if order is None else values.to(dtype)[order]
        rows, cols = coordinates(flat, d_in)
        s = _csr(rows, cols, vals, (d_out, d_in))
        lead = x.shape[:-1]
        y = torch.sparse.mm(s, x.reshape(-1, d_in).to(dtype).t()).t()  # (T, d_out)
        ctx.save_for_backward(x, values, index)
        ctx.shape = (d_out, d_in)
        return y.reshape(*lead, d_out).to(_compute_dtype(x))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        x, values, index = ctx.saved_tensors
        d_out, d_in = ctx.shape
        grad_x = grad_v = None
        if ctx.needs_input_grad[0]:  # g·S = (Sᵀ·gᵀ)ᵀ, Sᵀ in CSR: sort the entries by (col, row)
            dtype = _sparse_dtype(grad_y, values)
            rows, cols = coordinates(index, d_in)
            transposed = cols * d_out + rows
            flat_t, order = _sorted(transposed)
            vals = values.to(dtype) if order is None else values.to(dtype)[order]
            rows_t, cols_t = coordinates(flat_t, d_out)
            st = _csr(rows_t, cols_t, vals, (d_in, d_out))
            grad_x = torch.sparse.mm(st, grad_y.reshape(-1, d_out).to(dtype).t()).t()
            grad_x = grad_x.reshape(x.shape).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_v = sddmm(grad_y, x, index, d_out, d_in).to(values.dtype)
        return grad_x, grad_v, None, None, None


def folded_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, values: torch.Tensor,
                  index: torch.Tensor) -> torch.Tensor:
    """x: (..., d_in) -> x·(W0 + S)ᵀ + b: (..., d_out). ``weight`` (d_out, d_in), ``values``/``index`` (N,)."""
    return _FoldedLinear.apply(x, weight, bias, values, index)


def sparse_matmul(x: torch.Tensor, values: torch.Tensor, index: torch.Tensor, d_out: int, d_in: int) -> torch.Tensor:
    """x: (..., d_in) -> x·Sᵀ: (..., d_out), S with ``values`` (N,) at flat ``index`` (N,) of (d_out, d_in)."""
    return _SparseMatmul.apply(x, values, index, d_out, d_in)
