"""Analytic FLOPs of one forward pass, per transformer block and in total (paper §3.2, §5).

DSEE's structured sparsity removes heads and FFN neurons so that the final model is cheaper to
run ("25% fewer inference FLOPs", §5). This module counts what a forward pass of a batch of
``batch_size`` sequences of ``seq_len`` tokens (T = batch_size · seq_len rows) costs, reading the
*current* module shapes through ``layout.blocks`` (never the config: heads and neurons may have
been removed per layer). ``shares_for_flops`` runs the other way: the heads and FFN-neuron shares
to remove from every layer for a FLOPs target.

Convention: FLOPs = 2 × multiply-accumulates (MACs), as ``torch.utils.flop_counter`` counts. The
paper's §5 table is in MACs; shares are the same either way (BERT-base, L = 128, per layer:
q/k/v 24.3%, attention output 8.1%, FFN 64.9%, QKᵀ and AV 2.7%). Per block, in MACs:

    qkv       T · Σ d_out·d_in over q, k, v (or the fused c_attn); with GQA k and v are smaller
    attn_out  T · d_out·d_in of o
    scores    2 · B · H · L² · head_dim     (QKᵀ: (L × hd)·(hd × L), AV: (L × L)·(L × hd), H query heads)
    rel_pos   DeBERTa-v2 relative attention only: the projections of the 2·span relative embeddings
              (q/k with share_att_key, else pos_key_proj / pos_query_proj) plus B · H · L · 2span · hd
              per c2p / p2c product
    ffn       T · Σ d_out·d_in over ffn_in (Llama: gate and up) and ffn_out
    adapter   unmerged DSEELinear: per update and row, r·(d_in + d_out) + N (N for the sparse
              gather/scatter-add); with a prune mask the layer runs the merged-and-masked weight
              densely (counted under its part) and forms ΔW once per call: r·d_out·d_in. 0 after merging.

``other``: every nn.Linear / Conv1D outside the blocks, counted as applied to all T rows. This
overcounts heads applied to one token per sequence (BERT's pooler and classifier, RoBERTa's
classification head): by (L − 1)·B·d_out·d_in each, tiny next to the blocks. ``nn.Conv1d`` (DeBERTa's
ConvLayer) is counted as weight.numel() MACs per row, i.e. a same-length convolution.
Not counted: embedding lookups, LayerNorm, softmax, activations, biases, masking, and matrix products
outside linear modules (e.g. DeBERTa's MLM decoder multiplying by the embedding matrix).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..adapters.layer import LINEAR_TYPES, DSEELinear, linear_shape
from ..arch import blocks
from .structure import remove_heads_, remove_neurons_

PARTS = ("qkv", "attn_out", "scores", "rel_pos", "ffn", "adapter")


@dataclass
class FlopReport:
    """FLOPs (2 × MACs) of one forward pass. ``blocks[i]`` maps each of ``PARTS`` and "total" to FLOPs."""

    blocks: list[dict[str, int]]
    other: int  # linear layers outside the blocks (pooler, classifier, lm_head), on all T rows
    total: int  # sum of the block totals and ``other``
    params: dict[str, int] = field(default_factory=dict)  # ``parameter_counts`` of the model

    @property
    def nonzero_params(self) -> int:
        """Non-zero entries of the blocks' linear weights (``parameter_counts``)."""
        return self.params.get("block_linear_nonzero", 0)

    def part(self, name: str) -> int:
        """FLOPs of one part summed over blocks."""
        if name not in (*PARTS, "total"):
            raise KeyError(f"unknown part {name!r}; parts are {PARTS + ('total',)}")
        return sum(b[name] for b in self.blocks)

    def share(self, name: str) -> float:
        """Share of ``name`` (e.g. "ffn") in the FLOPs of all blocks (``other`` excluded)."""
        whole = self.part("total")
        return self.part(name) / whole if whole else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for metrics.json."""
        return {
            "total": self.total, "other": self.other, "blocks": [dict(b) for b in self.blocks],
            "parts": {p: self.part(p) for p in PARTS}, "shares": {p: self.share(p) for p in PARTS},
            "params": dict(self.params),
        }


def _linears(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Linear / Conv1D / nn.Conv1d / DSEELinear under ``root``, a DSEELinear
    counted once (its base layer is not listed again)."""
    found: list[tuple[str, nn.Module]] = []
    inside = None
    for name, module in root.named_modules():
        if inside is not None and name.startswith(inside):
            continue
        if isinstance(module, DSEELinear):
            inside = name + "."
            found.append((name, module))
        elif isinstance(module, (*LINEAR_TYPES, nn.Conv1d)):
            found.append((name, module))
    return found


def _macs_per_row(module: nn.Module) -> int:
    if isinstance(module, nn.Conv1d):
        return module.weight.numel()  # out · in/groups · kernel, per output position
    d_out, d_in = linear_shape(module.base_layer if isinstance(module, DSEELinear) else module)
    return d_out * d_in


def _adapter_macs(module: nn.Module, rows: int) -> int:
    """MACs of the DSEE updates of one call of ``module`` on ``rows`` rows (0 for a plain layer)."""
    if not isinstance(module, DSEELinear):
        return 0
    if module.prune_mask is not None:  # ΔW = B·A formed once per call; the dense matmul is the base's
        return sum(d.rank * d.out_features * d.in_features for _, d, _ in module.deltas())
    return rows * sum(d.rank * (d.in_features + d.out_features) + d.num_sparse for _, d, _ in module.deltas())


def _relative_span(attention: nn.Module) -> int:
    """2·span, the number of relative-position embeddings DeBERTa-v2 projects; 0 without relative attention."""
    if not getattr(attention, "relative_attention", False):
        return 0
    return 2 * int(attention.pos_ebd_size)


def forward_flops(model: nn.Module, seq_len: int, batch_size: int = 1, nonzero: int | None = None) -> FlopReport:
    """FLOPs of one forward pass of ``batch_size`` sequences of ``seq_len`` tokens (module doc);
    ``nonzero``: passed on to ``parameter_counts``."""
    return FlopReport(*_count_flops(model, seq_len, batch_size), parameter_counts(model, nonzero))


def total_flops(model: nn.Module, seq_len: int, batch_size: int = 1) -> int:
    """``forward_flops(...).total`` from the shapes alone: no parameter counts, so a model on the meta
    device (an architecture without weights) can be counted."""
    return _count_flops(model, seq_len, batch_size)[2]


def _count_flops(model: nn.Module, seq_len: int, batch_size: int) -> tuple[list[dict[str, int]], int, int]:
    """(per-block FLOPs, ``other``, total): what ``forward_flops`` reports, read from the shapes alone."""
    tokens = batch_size * seq_len
    counted: set[int] = set()
    reports: list[dict[str, int]] = []
    for block in blocks(model):
        spec, attention = block.spec, block.attention
        parts = dict.fromkeys(PARTS, 0)
        roles = {spec.qkv: "qkv", spec.q: "qkv", spec.k: "qkv", spec.v: "qkv", spec.o: "attn_out",
                 spec.ffn_out: "ffn", **dict.fromkeys(spec.ffn_in, "ffn")}
        roles.pop("", None)
        rel = _relative_span(attention)
        shared = bool(rel) and bool(getattr(attention, "share_att_key", False))
        rel_inputs = {spec.q, spec.k} if shared else set(spec.head_rows_extra) if rel else set()
        for name, module in _linears(block.module):
            calls: list[tuple[str, int]] = []  # (part, rows) of each call of the module
            if name in roles:
                calls.append((roles[name], tokens))
            if name in rel_inputs:
                calls.append(("rel_pos", rel))
            if not calls:  # not in the layout table: counted with ``other``
                continue
            counted.add(id(module))
            for part, rows in calls:
                parts[part] += rows * _macs_per_row(module)
                parts["adapter"] += _adapter_macs(module, rows)
        per_product = batch_size * block.num_heads * seq_len * block.head_dim
        parts["scores"] = 2 * per_product * seq_len  # QKᵀ and AV
        if rel:
            types = set(getattr(attention, "pos_att_type", None) or ()) & {"c2p", "p2c"}
            parts["rel_pos"] += len(types) * per_product * rel
        flops = {k: 2 * v for k, v in parts.items()}
        flops["total"] = sum(flops.values())
        reports.append(flops)
    other = 0
    for _, module in _linears(model):
        if id(module) not in counted:
            other += 2 * (tokens * _macs_per_row(module) + _adapter_macs(module, tokens))
    return reports, other, sum(b["total"] for b in reports) + other


@torch.no_grad()
def parameter_counts(model: nn.Module, nonzero: int | None = None) -> dict[str, int]:
    """Parameters of the model and of its blocks' linear weights.

    ``total``: every parameter (adapters included, shared ones once). ``block_linear``: d_out·d_in
    summed over the linear layers inside the blocks (biases excluded). ``block_linear_nonzero``:
    the entries of those weights that are not exactly 0, for a DSEELinear of its effective weight
    M ⊙ (W0 + ΔW), i.e. what ``merge_dsee`` would export; unstructured pruning shows up here.
    ``nonzero``: that count when it was taken elsewhere (a model whose weights are not all here:
    loaded tensor by tensor, ``train/streamed.py``); shapes are read from the model either way.
    """
    linear = count = 0
    for _, module in block_linears(model):
        linear += module.weight.numel()
        if nonzero is None:
            count += nonzero_entries(module)
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "block_linear": linear, "block_linear_nonzero": count if nonzero is None else nonzero}


def block_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(full name, module) of the linear layers inside the blocks, as ``parameter_counts`` counts them."""
    return [(f"{block.name}.{name}", module) for block in blocks(model) for name, module in _linears(block.module)]


def nonzero_entries(module: nn.Module) -> int:
    """Entries of a block linear layer's weight that are not exactly 0 (a DSEELinear's M ⊙ (W0 + ΔW))."""
    weight = module.effective_weight() if isinstance(module, DSEELinear) else module.weight
    return int(torch.count_nonzero(weight))


def flops_ratio(pruned: nn.Module, reference: nn.Module, seq_len: int, batch_size: int = 1) -> float:
    """forward_flops(pruned).total / forward_flops(reference).total (e.g. 0.75 for "25% fewer FLOPs")."""
    return forward_flops(pruned, seq_len, batch_size).total / forward_flops(reference, seq_len, batch_size).total


@dataclass(frozen=True)
class StructureShares:
    """How much structured pruning reaches a FLOPs target (``shares_for_flops``).

    ``heads`` / ``ffn``: the shares of every layer's heads and FFN neurons to remove (``dsee prune
    --heads --ffn``, per layer); ``heads_removed`` / ``neurons_removed``: the counts per layer they
    give; ``flops_share``: forward FLOPs of the pruned model over the unpruned one's, achieved.
    """

    heads: float
    ffn: float
    heads_removed: int
    neurons_removed: int
    flops_share: float


def _skeleton(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s architecture (from its config) on the meta device: shapes only, no memory."""
    with torch.device("meta"):
        return type(model)(copy.deepcopy(model.config))


def _flops_removing(model: nn.Module, heads: int, neurons: int, seq_len: int) -> int:
    """Forward FLOPs of ``model``'s architecture with ``heads`` and ``neurons`` removed from every layer."""
    skeleton = _skeleton(model)
    layers = range(len(blocks(skeleton)))
    for block in blocks(skeleton):  # grouped-query attention: the same number from every key/value group
        per_group = heads // block.num_kv_heads if block.group_size > 1 else None
        if per_group is not None:
            chosen = [g * block.group_size + i for g in range(block.num_kv_heads) for i in range(per_group)]
        else:
            chosen = list(range(heads))
        remove_heads_(skeleton, {block.index: chosen})
    remove_neurons_(skeleton, {layer: list(range(neurons)) for layer in layers})
    return total_flops(skeleton, seq_len)


def shares_for_flops(model: nn.Module, target: float, seq_len: int = 128) -> StructureShares:
    """The heads and FFN-neuron shares whose removal from every layer leaves ``target`` of the forward
    FLOPs of ``model``'s architecture at ``seq_len`` tokens. Only the model's class and config are read:
    the unpruned architecture is rebuilt on the meta device (no memory) and counted there, without
    adapters, since the shares are for the exported, merged model.

    The rule: the same share of heads and of neurons (as 25% + 25% and 50% + 50% are), the heads
    rounded to whole heads per layer (whole key/value groups' worth with grouped-query attention),
    then the neuron share solved for the target given those heads, rounded to whole neurons. FLOPs
    are linear in the heads and neurons kept (every part of ``forward_flops`` is), so the solution is
    exact up to that rounding: within half a neuron per layer of the target unless a bound is hit
    (at least one head and one neuron stay). Layers must have equal head and FFN sizes.
    """
    if not 0 < target <= 1:
        raise ValueError(f"FLOPs target {target}: must be in (0, 1]")
    layout = blocks(_skeleton(model))
    sizes = {(b.num_heads, b.num_kv_heads, b.ffn_size) for b in layout}
    if len(sizes) != 1:
        raise ValueError(f"the layers differ in heads or FFN size ({sorted(sizes)}): shares for a FLOPs target "
                         "need equal layers")
    ((num_heads, kv_heads, ffn), ) = sizes
    step = kv_heads if num_heads // kv_heads > 1 else 1  # heads removed in whole steps (GQA: one per group)
    full = _flops_removing(model, 0, 0, seq_len)
    per_head = (full - _flops_removing(model, step, 0, seq_len)) / step  # FLOPs of one head in every layer
    per_neuron = full - _flops_removing(model, 0, 1, seq_len)  # of one neuron in every layer
    goal = target * full
    equal = (full - goal) / (per_head * num_heads + per_neuron * ffn)  # the same share of both
    heads = min(max(round(equal * num_heads / step) * step, 0), num_heads - step)
    neurons = min(max(round((full - heads * per_head - goal) / per_neuron), 0), ffn - 1)
    achieved = _flops_removing(model, heads, neurons, seq_len) / full
    return StructureShares(heads / num_heads, neurons / ffn, heads, neurons, achieved)
