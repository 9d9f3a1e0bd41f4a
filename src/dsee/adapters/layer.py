"""The DSEE adapter layer: a frozen linear map plus ΔW = s·(B·A + S) (paper §3.1).

         x ──► W0 (frozen) ─────────────────────────┐
         │                                           ▼
         └──► dropout ──► A (r×in) ──► B (out×r) ──► + ──► y
                       └─► S (N entries at Ω) ───────┘        (both branches scaled by s)

    y = x·W0ᵀ + b + s·(x·Aᵀ·Bᵀ + x·Sᵀ)

S is never a dense d_out × d_in parameter: its N values sit at fixed flat indices Ω (chosen from
W0 before training). Its product with x never builds anything of size tokens × N either
(``sparse_ops``): without active adapter dropout, s·S is folded into a transient copy of W0, so
the frozen and the sparse path share one matmul, y = x·(W0 + s·S)ᵀ + b + s·x·Aᵀ·Bᵀ; with dropout
the sparse branch is a CSR sparse-dense product. Either way the gradient of the N values is a
sampled dense-dense product at Ω.

A fused projection (GPT-2's ``c_attn``, DeBERTa's ``in_proj``) holds q, k and v in one matrix.
``DSEELinear`` then carries one ``SparseLowRankDelta`` per adapted slice, each with its own
factors and its own support, added into that slice's output rows only.

Unstructured sparsity of the final model (paper §3.2): with a ``prune_mask`` M (bool, d_out × d_in)
the layer computes y = x·(M ⊙ (W0 + ΔW))ᵀ + b, the *merged-and-masked* form. Re-tuning A, B and S
through it means the function trained and evaluated is exactly the one ``merge_dsee`` exports
(W ← M ⊙ (W0 + ΔW), which keeps the zeros), instead of a pruned W0 plus a dense ΔW that merging
would make dense again. Cost: ΔW is formed densely once per forward (d_out·d_in·r), small next to
the matmul over a batch of tokens.

Frozen weights in lower precision (``adapters.precision``): when W0 is stored in a narrower dtype
than the adapters (bf16 W0, fp32 A, B, S), the layer computes in the adapters' dtype: x and W0 are
upcast, s·S is folded (or ΔW formed) in fp32, and the result is cast back to the input's dtype, so
that neither S nor the gradients of A, B and S pass through bf16 rounding (PEFT casts the LoRA
branch's input to the adapter dtype the same way). Under autocast, autocast decides instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import LINEAR_TYPES, Conv1D, linear_shape, linear_weight  # noqa: F401 (re-exported)
from .sparse_ops import folded_linear, sparse_matmul


class SparseLowRankDelta(nn.Module):
    """ΔW = s·(B·A + S) for one (d_out × d_in) matrix, applied to an input.

    Parameters (the only trainable tensors):
        lora_A: (r, d_in)    lora_B: (d_out, r)    sparse_values: (N,)
    Buffer:
        sparse_indices: (N,) int64 flat row-major indices into the (d_out, d_in) matrix: Ω.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        num_sparse: int,
        scaling: float,
        dropout: float = 0.0,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.scaling = scaling
        factory = {"device": device, "dtype": dtype}
        self.lora_A = nn.Parameter(torch.zeros(rank, in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, **factory))
        self.sparse_values = nn.Parameter(torch.zeros(num_sparse, **factory))
        self.register_buffer("sparse_indices", torch.zeros(num_sparse, dtype=torch.long, device=device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]

    @property
    def num_sparse(self) -> int:
        return self.sparse_values.shape[0]

    def reset_parameters(self, init: str, generator: torch.Generator | None = None) -> None:
        """A: Kaiming-uniform as in LoRA/PEFT. B and S: zero ("zero") or N(0, 0.02²) ("upstream")."""
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.lora_A, a=5**0.5, generator=generator)
            if init == "upstream":
                nn.init.normal_(self.lora_B, std=0.02, generator=generator)
                nn.init.normal_(self.sparse_values, std=0.02, generator=generator)
            else:
                self.lora_B.zero_()
                self.sparse_values.zero_()

    def sparse_coordinates(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols) of Ω, each (N,)."""
        rows = torch.div(self.sparse_indices, self.in_features, rounding_mode="floor")
        return rows, self.sparse_indices - rows * self.in_features

    @property
    def dropout_active(self) -> bool:
        """True when the adapter's input dropout changes its input (training with p > 0)."""
        return isinstance(self.dropout, nn.Dropout) and self.dropout.training and self.dropout.p > 0

    def low_rank(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_in) -> s·x·Aᵀ·Bᵀ: (..., d_out), after the adapter's dropout."""
        return F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_in) -> s·(x·Aᵀ·Bᵀ + x·Sᵀ): (..., d_out).

        ``DSEELinear`` folds S into the frozen weight instead when it can; this is the stand-alone
        form, the sparse part as a CSR product (``sparse_ops.sparse_matmul``).
        """
        x = self.dropout(x)
        out = F.linear(F.linear(x, self.lora_A), self.lora_B)  # (..., d_out)
        if self.num_sparse:
            sparse = sparse_matmul(x, self.sparse_values, self.sparse_indices, self.out_features, self.in_features)
            out = out + sparse.to(out.dtype)
        return out * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """Dense ΔW = s·(B·A + S), shape (d_out, d_in); for merging and analysis only."""
        delta = self.lora_B @ self.lora_A  # under autocast: the autocast dtype
        if self.num_sparse:
            delta = delta.flatten().index_add(0, self.sparse_indices, self.sparse_values.to(delta.dtype))
            delta = delta.view(self.out_features, self.in_features)
        return delta * self.scaling


class DSEELinear(nn.Module):
    """A frozen ``nn.Linear`` / ``Conv1D`` with DSEE updates on all its output rows or on slices.

    Args:
        base_layer: the pre-trained layer; kept as is (its parameters are frozen by ``add_dsee``).
        slices: ``{name: rows}``, rows a LongTensor of output rows the update adds into, or None for
            all rows. ``num_sparse``: N for every slice, or ``{slice name: N}``. The update for slice ``name`` is the child ``dsee_<name>``; a plain
            (non-fused) layer has one slice called "" whose update is the child ``dsee``, and
            then ``lora_A``, ``lora_B``, ``sparse_values`` and ``sparse_indices`` are also
            attributes of this layer.
    """

    def __init__(
        self,
        base_layer: nn.Module,
        slices: dict[str, torch.Tensor | None],
        rank: int,
        num_sparse: int | dict[str, int],
        scaling: float,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        d_out, d_in = linear_shape(base_layer)
        weight = base_layer.weight
        # a base layer on the meta device (a model loaded tensor by tensor) still gets real adapters
        device = torch.device("cpu") if weight.is_meta else weight.device
        self.slice_names = tuple(slices)
        for name, rows in slices.items():
            rows_out = d_out if rows is None else len(rows)
            count = num_sparse[name] if isinstance(num_sparse, dict) else num_sparse
            delta = SparseLowRankDelta(d_in, rows_out, rank, count, scaling, dropout, device=device, dtype=weight.dtype)
            self.add_module(self.delta_name(name), delta)
            # the rows are a property of the architecture, not of the adapter: not saved
            self.register_buffer(self.rows_name(name), None if rows is None else rows.to(device), persistent=False)
        # unstructured sparsity of the final model: None, or a bool (d_out, d_in) mask (see module doc)
        self.register_buffer("prune_mask", None)

    @staticmethod
    def delta_name(slice_name: str) -> str:
        return f"dsee_{slice_name}" if slice_name else "dsee"

    @staticmethod
    def rows_name(slice_name: str) -> str:
        return f"rows_{slice_name}" if slice_name else "rows"

    def deltas(self) -> list[tuple[str, SparseLowRankDelta, torch.Tensor | None]]:
        """[(slice name, update, rows or None)] for every adapted slice."""
        return [(n, getattr(self, self.delta_name(n)), getattr(self, self.rows_name(n))) for n in self.slice_names]

    # --- the frozen layer's attributes, for model code that reads them (e.g. DeBERTa's in_proj.weight)
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    # --- the single update of a plain layer, as attributes of the layer itself
    def _single(self) -> SparseLowRankDelta:
        if self.slice_names != ("",):
            raise AttributeError(
                f"this DSEELinear adapts the fused slices {self.slice_names}: use layer.dsee_<slice>.lora_A etc."
            )
        return self.dsee

    @property
    def lora_A(self) -> nn.Parameter:
        return self._single().lora_A

    @property
    def lora_B(self) -> nn.Parameter:
        return self._single().lora_B

    @property
    def sparse_values(self) -> nn.Parameter:
        return self._single().sparse_values

    @property
    def sparse_indices(self) -> torch.Tensor:
        return self._single().sparse_indices

    @property
    def adapter_dtype(self) -> torch.dtype:
        """The dtype of the trained tensors (A, B, S): the dtype the layer computes in (module doc)."""
        return self.deltas()[0][1].lora_A.dtype

    def effective_weight(self) -> torch.Tensor:
        """M ⊙ (W0 + ΔW) as (d_out, d_in), ΔW of every slice added into its rows; M only if set.

        The one place the merged weight is formed, so that the masked forward and ``merge_dsee``
        compute it with the same operations, in the same order. Formed in the wider of W0's and
        the adapters' dtypes (fp32 for a bf16 W0 with fp32 adapters).
        """
        weight = linear_weight(self.base_layer)
        weight = weight.to(torch.promote_types(weight.dtype, self.adapter_dtype))
        for _, delta, rows in self.deltas():
            update = delta.delta_weight().to(weight.dtype)
            weight = weight + update if rows is None else weight.index_add(0, rows, update)
        return weight if self.prune_mask is None else weight * self.prune_mask

    def sparse_in_full_matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """s·S of every slice as (values (N_total,), flat indices into the full (d_out, d_in) weight)."""
        d_in = linear_shape(self.base_layer)[1]
        values, index = [], []
        for _, delta, rows in self.deltas():
            if not delta.num_sparse:
                continue
            flat = delta.sparse_indices
            if rows is not None:  # slice row -> row of the fused matrix
                local = torch.div(flat, d_in, rounding_mode="floor")
                flat = rows[local] * d_in + (flat - local * d_in)
            values.append(delta.sparse_values * delta.scaling)
            index.append(flat)
        return torch.cat(values), torch.cat(index)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """x: (..., d_in) -> (..., d_out), in x's dtype."""
        dtype = self.adapter_dtype
        if x.dtype != dtype and x.is_floating_point() and not torch.is_autocast_enabled(x.device.type):
            # a low-precision frozen path (bf16 W0, bf16 activations): compute in the adapters' dtype
            return self._forward(x.to(dtype), *args, **kwargs).to(x.dtype)
        return self._forward(x, *args, **kwargs)

    def _frozen(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """x·W0ᵀ + b, W0 (and b) upcast to x's dtype when stored narrower (outside autocast)."""
        weight = linear_weight(self.base_layer)
        if weight.dtype == x.dtype or torch.is_autocast_enabled(x.device.type):
            return self.base_layer(x, *args, **kwargs)
        bias = self.base_layer.bias
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    def _forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.prune_mask is not None:  # merged-and-masked form (module doc); adapter dropout unused
            weight, bias = self.effective_weight(), self.base_layer.bias
            return F.linear(x, weight, None if bias is None else bias.to(weight.dtype))
        deltas = self.deltas()
        # S folded into W0 whenever the sparse branch sees the same input as W0 (no active dropout)
        fold = any(d.num_sparse for _, d, _ in deltas) and not any(d.dropout_active for _, d, _ in deltas)
        if fold:
            values, index = self.sparse_in_full_matrix()
            y = folded_linear(x, linear_weight(self.base_layer), self.base_layer.bias, values, index)
        else:
            y = self._frozen(x, *args, **kwargs)
        for _, delta, rows in deltas:
            if fold and delta.rank == 0:
                continue
            update = delta.low_rank(x) if fold else delta(x)  # (..., len(rows)) or (..., d_out)
            update = update.to(y.dtype)
            y = y + update if rows is None else y.index_add(-1, rows, update)
        return y

    @torch.no_grad()
    def merged_base_layer(self) -> nn.Module:
        """Fold every ΔW (and the prune mask, if any) into the base weight, in place; return the base layer.

        The merge is formed in fp32 for a bf16 W0 with fp32 adapters, then cast to W0's dtype.
        """
        weight = linear_weight(self.base_layer)  # (d_out, d_in), a view for Conv1D
        weight.copy_(self.effective_weight())  # copy_ casts to the stored dtype
        return self.base_layer

    def extra_repr(self) -> str:
        d_out, d_in = linear_shape(self.base_layer)
        first = self.deltas()[0][1]
        slices = ",".join(self.slice_names) if self.slice_names != ("",) else "all"
        return f"in={d_in}, out={d_out}, slices={slices}, rank={first.rank}, num_sparse={first.num_sparse}"
