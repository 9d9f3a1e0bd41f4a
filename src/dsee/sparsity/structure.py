"""Physical removal of attention heads and FFN neurons (paper §3.2, structured sparsity).

    remove_heads_(model, {layer: [head, ...]})      slice q, k, v rows and o columns of each head
    remove_neurons_(model, {layer: [neuron, ...]})  slice FFN-in rows and FFN-out columns
    structure_plan(model) / apply_structure_(model, plan)   record and replay what was removed

Indices are the block's *current* heads/neurons; the plan records them in the original
numbering, so a fresh model built from the config can be given the same shapes before loading a
pruned checkpoint. DSEE adapters on a sliced matrix are sliced with it: rows of ``lora_B`` (or
columns of ``lora_A``), and the sparse entries of S whose row (column) was removed are dropped,
the others re-indexed, so ΔW restricted to the kept rows is exactly what it was.

Grouped-query attention (Llama): query heads can only be removed in equal numbers from every
key/value group (``repeat_kv`` maps query head h to key/value head h // group size); the
key/value heads stay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..adapters.layer import Conv1D, DSEELinear, SparseLowRankDelta, linear_shape
from ..arch import Block, FusedLayout, blocks, ffn_size, num_attention_heads

HeadMap = Mapping[int, Sequence[int]]


# --- slicing one matrix ---------------------------------------------------------------------


def _param_like(old: nn.Parameter, data: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(data.contiguous(), requires_grad=old.requires_grad)


def _index_map(kept: torch.Tensor, size: int) -> torch.Tensor:
    """old index -> new index, -1 where removed: (size,)."""
    mapping = torch.full((size,), -1, dtype=torch.long, device=kept.device)
    mapping[kept] = torch.arange(len(kept), device=kept.device)
    return mapping


def _slice_plain_(layer: nn.Module, index: torch.Tensor, dim: str) -> None:
    """Keep output rows (dim "out") or input columns (dim "in") of a Linear / Conv1D, in place."""
    if isinstance(layer, Conv1D):  # weight stored (in, out)
        axis = 1 if dim == "out" else 0
        layer.weight = _param_like(layer.weight, layer.weight.index_select(axis, index))
        if dim == "out":
            layer.bias = _param_like(layer.bias, layer.bias[index])
            layer.nf = len(index)
        return
    axis = 0 if dim == "out" else 1
    layer.weight = _param_like(layer.weight, layer.weight.index_select(axis, index))
    if dim == "out":
        if layer.bias is not None:
            layer.bias = _param_like(layer.bias, layer.bias[index])
        layer.out_features = len(index)
    else:
        layer.in_features = len(index)


def _slice_delta_(delta: SparseLowRankDelta, index: torch.Tensor, dim: str) -> None:
    """Keep rows / columns of ΔW = s·(B·A + S): B rows or A columns, and S's entries there."""
    rows, cols = delta.sparse_coordinates()
    if dim == "out":
        delta.lora_B = _param_like(delta.lora_B, delta.lora_B[index])
        new_rows, new_cols = _index_map(index, delta.out_features)[rows], cols
        delta.out_features = len(index)
    else:
        delta.lora_A = _param_like(delta.lora_A, delta.lora_A[:, index])
        new_rows, new_cols = rows, _index_map(index, delta.in_features)[cols]
        delta.in_features = len(index)
    keep = (new_rows >= 0) & (new_cols >= 0)
    # monotone maps keep the row-major order, so the indices stay ascending
    delta.sparse_values = _param_like(delta.sparse_values, delta.sparse_values[keep])
    delta.sparse_indices = (new_rows[keep] * delta.in_features + new_cols[keep]).contiguous()


def keep_rows_(layer: nn.Module, rows: torch.Tensor) -> None:
    """Keep only output ``rows`` (ascending LongTensor) of a Linear, Conv1D or plain DSEELinear."""
    if isinstance(layer, DSEELinear):
        if layer.slice_names != ("",):
            raise ValueError("keep_rows_ on a fused DSEELinear: use remove_heads_")
        _slice_plain_(layer.base_layer, rows, "out")
        _slice_delta_(layer.dsee, rows, "out")
        if layer.prune_mask is not None:
            layer.prune_mask = layer.prune_mask[rows].contiguous()
        return
    _slice_plain_(layer, rows, "out")


def keep_columns_(layer: nn.Module, cols: torch.Tensor) -> None:
    """Keep only input ``cols`` (ascending LongTensor) of a Linear, Conv1D or DSEELinear."""
    if isinstance(layer, DSEELinear):
        _slice_plain_(layer.base_layer, cols, "in")
        for _, delta, _ in layer.deltas():
            _slice_delta_(delta, cols, "in")
        if layer.prune_mask is not None:
            layer.prune_mask = layer.prune_mask[:, cols].contiguous()
        return
    _slice_plain_(layer, cols, "in")


# --- heads ----------------------------------------------------------------------------------


def _head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rows of the heads ``heads`` in a (heads·head_dim)-row projection: (len(heads)·head_dim,)."""
    return (heads.unsqueeze(1) * head_dim + torch.arange(head_dim)).flatten()


def _check_heads(block: Block, removed: Sequence[int]) -> torch.Tensor:
    """The kept query heads of ``block`` after removing ``removed``; raises on a bad request."""
    removed_set = set(int(h) for h in removed)
    bad = [h for h in removed_set if not 0 <= h < block.num_heads]
    if bad:
        raise ValueError(f"layer {block.index}: heads {sorted(bad)} do not exist (it has {block.num_heads})")
    if len(removed_set) >= block.num_heads:
        raise ValueError(f"layer {block.index}: removing {len(removed_set)} of {block.num_heads} heads "
                         "would leave none; keep at least one head per layer")
    kept = [h for h in range(block.num_heads) if h not in removed_set]
    if block.group_size > 1:
        per_group = {g: sum(1 for h in kept if h // block.group_size == g) for g in range(block.num_kv_heads)}
        if len(set(per_group.values())) != 1:
            raise ValueError(
                f"layer {block.index}: grouped-query attention ({block.num_kv_heads} key/value heads, "
                f"{block.group_size} query heads each) needs the same number of query heads removed from "
                f"every group; this request keeps {per_group}"
            )
    return torch.tensor(kept, dtype=torch.long)


def _slice_fused_qkv_(layer: nn.Module, fused: FusedLayout, kept: torch.Tensor, num_heads: int) -> None:
    """A fused q|k|v projection (GPT-2's c_attn): keep the q, k and v rows of the heads ``kept``."""
    d_out = linear_shape(layer)[0]
    rows = fused.head_rows(kept, d_out, num_heads)
    if not isinstance(layer, DSEELinear):
        _slice_plain_(layer, rows, "out")
        return
    _slice_plain_(layer.base_layer, rows, "out")
    new_out, new_heads = len(rows), len(kept)
    head_dim = d_out // 3 // num_heads
    within = _head_rows(kept, head_dim)  # the kept positions inside one slice
    for name, delta, _ in layer.deltas():
        _slice_delta_(delta, within, "out")
        setattr(layer, layer.rows_name(name), fused.rows(name, new_out, new_heads))
    if layer.prune_mask is not None:
        layer.prune_mask = layer.prune_mask[rows].contiguous()


def _set_head_attributes(attention: nn.Module, heads: int, kv_heads: int, head_dim: int) -> None:
    for name in ("num_attention_heads", "num_heads", "n_head", "n_heads"):
        if isinstance(getattr(attention, name, None), int):
            setattr(attention, name, heads)
    if hasattr(attention, "all_head_size"):
        attention.all_head_size = heads * head_dim
    if hasattr(attention, "split_size"):  # GPT-2 splits c_attn's output in three of this width
        attention.split_size = heads * head_dim
    if hasattr(attention, "num_key_value_groups"):
        attention.num_key_value_groups = heads // kv_heads


def _slice_relative_bias(module: nn.Module, args: tuple, kwargs: dict):
    """MPNet passes one (B, all heads, L, L) position bias to every block: keep this block's heads."""
    kept = torch.tensor(module.dsee_kept_heads, dtype=torch.long)
    if len(args) > 2 and args[2] is not None:
        args = (*args[:2], args[2].index_select(1, kept.to(args[2].device)), *args[3:])
    elif kwargs.get("position_bias") is not None:
        kwargs = {**kwargs, "position_bias": kwargs["position_bias"].index_select(1, kept.to(kwargs["position_bias"].device))}
    return args, kwargs


def remove_heads_(model: nn.Module, heads: HeadMap) -> nn.Module:
    """Remove attention heads in place: ``{layer index: [head index, ...]}`` (current numbering).

    All requests are checked before anything changes. Returns ``model``.
    """
    all_blocks = blocks(model)
    plans = {}
    for layer, removed in heads.items():
        if not 0 <= int(layer) < len(all_blocks):
            raise ValueError(f"layer {layer} does not exist (the model has {len(all_blocks)})")
        if removed:
            plans[int(layer)] = _check_heads(all_blocks[int(layer)], removed)
    for layer, kept in plans.items():
        block = all_blocks[layer]
        spec, d = block.spec, block.head_dim
        if spec.qkv:
            _slice_fused_qkv_(block.get(spec.qkv), block.fused, kept, block.num_heads)
        else:
            keep_rows_(block.get(spec.q), _head_rows(kept, d))
            if block.group_size == 1:  # with grouped-query attention the key/value heads stay
                keep_rows_(block.get(spec.k), _head_rows(kept, d))
                keep_rows_(block.get(spec.v), _head_rows(kept, d))
            for extra in spec.head_rows_extra:
                if block.has(extra):
                    keep_rows_(block.get(extra), _head_rows(kept, d))
        keep_columns_(block.get(spec.o), _head_rows(kept, d))
        attention = block.attention
        original = getattr(attention, "dsee_kept_heads", list(range(block.num_heads)))
        first_time = not hasattr(attention, "dsee_kept_heads")
        attention.dsee_kept_heads = [original[h] for h in kept.tolist()]
        kv = block.num_kv_heads if block.group_size > 1 else len(kept)
        _set_head_attributes(attention, len(kept), kv, d)
        if spec.relative_bias_heads and first_time:
            attention.register_forward_pre_hook(_slice_relative_bias, with_kwargs=True)
    return model


# --- FFN neurons ----------------------------------------------------------------------------


def remove_neurons_(model: nn.Module, neurons: HeadMap) -> nn.Module:
    """Remove FFN neurons in place: ``{layer index: [neuron index, ...]}`` (current numbering)."""
    all_blocks = blocks(model)
    plans = {}
    for layer, removed in neurons.items():
        if not 0 <= int(layer) < len(all_blocks):
            raise ValueError(f"layer {layer} does not exist (the model has {len(all_blocks)})")
        block = all_blocks[int(layer)]
        size = block.ffn_size
        removed_set = set(int(n) for n in removed)
        if any(not 0 <= n < size for n in removed_set):
            raise ValueError(f"layer {layer}: FFN neuron indices must be in [0, {size})")
        if len(removed_set) >= size:
            raise ValueError(f"layer {layer}: removing {len(removed_set)} of {size} FFN neurons would leave none")
        if removed_set:
            plans[int(layer)] = (torch.tensor([n for n in range(size) if n not in removed_set], dtype=torch.long), size)
    for layer, (kept, size) in plans.items():
        block = all_blocks[layer]
        for name in block.spec.ffn_in:
            keep_rows_(block.get(name), kept)
        keep_columns_(block.get(block.spec.ffn_out), kept)
        original = getattr(block.module, "dsee_kept_neurons", list(range(size)))
        block.module.dsee_kept_neurons = [original[n] for n in kept.tolist()]
    return model


# --- recording and replaying ----------------------------------------------------------------


def structure_plan(model: nn.Module) -> dict[str, dict[str, list[int]]]:
    """What was removed, in the original numbering: {"heads": {layer: [...]}, "neurons": {...}}.

    Layer keys are strings (JSON). Empty dicts for an unpruned model.
    """
    config = model.config
    heads0 = num_attention_heads(config)
    plan: dict[str, dict[str, list[int]]] = {"heads": {}, "neurons": {}}
    for block in blocks(model):
        kept = getattr(block.attention, "dsee_kept_heads", None)
        if kept is not None and len(kept) < heads0:
            plan["heads"][str(block.index)] = [h for h in range(heads0) if h not in set(kept)]
        kept_n = getattr(block.module, "dsee_kept_neurons", None)
        if kept_n is not None:
            size0 = ffn_size(config)
            if len(kept_n) < size0:
                plan["neurons"][str(block.index)] = [n for n in range(size0) if n not in set(kept_n)]
    return plan


def apply_structure_(model: nn.Module, plan: Mapping[str, Mapping[str, Sequence[int]]]) -> nn.Module:
    """Replay ``structure_plan`` output on a model with its original shapes."""
    remove_heads_(model, {int(k): v for k, v in plan.get("heads", {}).items()})
    remove_neurons_(model, {int(k): v for k, v in plan.get("neurons", {}).items()})
    return model
