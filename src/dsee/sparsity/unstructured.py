"""Unstructured sparsity of the final model: magnitude masks over the blocks' linear weights (paper §3.2).

    masks = unstructured_masks(model, 0.5, score="weight", scope="global")
    apply_masks_(model, masks)      # W0 ← M ⊙ W0; adapted layers switch to M ⊙ (W0 + ΔW)
    ... re-tune the adapters ...
    merge_dsee(model)               # W ← M ⊙ (W0 + ΔW): the zeros survive the merge

Pruned: q, k, v (or GPT-2's fused c_attn), the attention output, FFN in and out of every block.
Embeddings, LayerNorm, biases, the pooler and the task head are left dense.

Scores (``score``):
  weight        |W0|
  weight+delta  |W0 + ΔW|
  delta         |ΔW| on matrices with a DSEE update, |W0| on the others, ranked as two groups at
                the same sparsity (the two kinds of score are not comparable)
  upstream      the released code's recipe: the same two groups, each at its own ratio
                (``sparsity`` for key, output and FFN; ``adapted_sparsity`` for query and value)
Scope: ``global`` ranks all matrices of a group together; ``layer`` ranks each matrix alone. Either
way exactly round(sparsity · n) entries are removed per group (global) or per matrix (layer),
ties broken by position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..adapters.layer import DSEELinear, SparseLowRankDelta, linear_shape, linear_weight
from ..arch import Block, blocks
from ..registry import Registry

SCOPES = ("global", "layer")
# fn(weight (rows, d_in) float32, delta (rows, d_in) or None when the matrix has no DSEE update) -> scores;
# ``two_groups``: adapted and other matrices are ranked apart (their scores are not comparable);
# ``own_ratio``: the adapted group takes its own ratio (``adapted_sparsity``)
SCORES = Registry("score")


@SCORES.register("weight", description="|W0|")
def _weight_score(weight, delta):
    return weight.abs()


@SCORES.register("delta", description="|ΔW| where a DSEE update is, |W0| elsewhere, ranked as two groups",
                 two_groups=True)
def _delta_score(weight, delta):
    return weight.abs() if delta is None else delta.abs()


@SCORES.register("weight+delta", description="|W0 + ΔW|")
def _merged_score(weight, delta):
    return weight.abs() if delta is None else (weight + delta).abs()


@SCORES.register("upstream", description="the released recipe: delta's two groups, each at its own ratio",
                 two_groups=True, own_ratio=True)
def _upstream_score(weight, delta):
    return _delta_score(weight, delta)


@dataclass(frozen=True)
class Piece:
    """A prunable weight: a module, or a slice of rows of a fused projection."""

    name: str  # "<module>" or "<module>:q" for a slice
    module_name: str
    module: nn.Module
    rows: torch.Tensor | None  # rows of the module's (d_out, d_in) weight, None: all
    delta: SparseLowRankDelta | None  # the DSEE update on exactly these rows, if any


def prunable_pieces(model: nn.Module) -> list[Piece]:
    """The q, k, v, o, FFN-in and FFN-out weights of every block, fused q|k|v split in its slices."""
    pieces = []
    for block in blocks(model):
        spec = block.spec
        names = [spec.q, spec.k, spec.v] if not spec.qkv else []
        names += [spec.o, *spec.ffn_in, spec.ffn_out]
        if spec.qkv:
            pieces += _fused_pieces(block)
        for rel in names:
            module = block.get(rel)
            delta = module.deltas()[0][1] if isinstance(module, DSEELinear) and module.slice_names == ("",) else None
            pieces.append(Piece(block.full_name(rel), block.full_name(rel), module, None, delta))
    return pieces


def _fused_pieces(block: Block) -> list[Piece]:
    """The q, k and v slices of a block's fused projection, each a piece of its own."""
    name, module = block.full_name(block.spec.qkv), block.get(block.spec.qkv)
    d_out = linear_shape(module)[0]
    adapted = {n: d for n, d, _ in module.deltas()} if isinstance(module, DSEELinear) else {}
    return [Piece(f"{name}:{s}", name, module, block.fused.rows(s, d_out, block.num_heads), adapted.get(s))
            for s in "qkv"]


def _base_weight(piece: Piece) -> torch.Tensor:
    module = piece.module.base_layer if isinstance(piece.module, DSEELinear) else piece.module
    weight = linear_weight(module)  # (d_out, d_in)
    return weight if piece.rows is None else weight[piece.rows]


@torch.no_grad()
def piece_score(piece: Piece, score: str) -> torch.Tensor:
    """The magnitude score of every entry of ``piece``: (rows, d_in), float32."""
    weight = _base_weight(piece).float()
    delta = None if piece.delta is None else piece.delta.delta_weight().float()
    return SCORES.get(score).fn(weight, delta)


def _lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Flat indices of the ``count`` lowest scores; ties broken by position (stable sort)."""
    if count <= 0:
        return torch.empty(0, dtype=torch.long)
    return torch.sort(scores.flatten(), stable=True).indices[:count]


@torch.no_grad()
def unstructured_masks(
    model: nn.Module,
    sparsity: float,
    *,
    score: str = "weight",
    scope: str = "global",
    adapted_sparsity: float | None = None,
) -> dict[str, torch.Tensor]:
    """Boolean keep-masks, ``{module name: (d_out, d_in) bool}``, removing ``sparsity`` of the entries.

    ``adapted_sparsity`` (only with ``score="upstream"``) is the ratio for the matrices with a DSEE
    update; by default the same as ``sparsity``.
    """
    entry = SCORES.get(score)
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r}: choose global or layer")
    for name, value in (("sparsity", sparsity), ("adapted_sparsity", adapted_sparsity)):
        if value is not None and not 0 <= value < 1:
            raise ValueError(f"{name}={value}: must be in [0, 1)")
    if adapted_sparsity is not None and not entry.options.get("own_ratio"):
        raise ValueError("adapted_sparsity is the upstream recipe's second ratio: use it with score='upstream'")
    pieces = prunable_pieces(model)
    two_groups = entry.options.get("two_groups", False)
    if two_groups and not any(p.delta is not None for p in pieces):
        raise ValueError(f"score={score!r} ranks by |ΔW|, but no pruned matrix has a DSEE update")
    groups: dict[str, list[Piece]] = {}
    for p in pieces:
        groups.setdefault("adapted" if two_groups and p.delta is not None else "base", []).append(p)
    ratio = {"base": sparsity, "adapted": sparsity if adapted_sparsity is None else adapted_sparsity}

    keep: dict[str, torch.Tensor] = {}  # per piece
    for group, members in groups.items():
        scores = [piece_score(p, score) for p in members]
        if scope == "layer":
            for p, s in zip(members, scores):
                keep[p.name] = _keep_mask(s, round(ratio[group] * s.numel()))
            continue
        flat = torch.cat([s.flatten() for s in scores])
        mask = _keep_mask(flat, round(ratio[group] * flat.numel()))
        offset = 0
        for p, s in zip(members, scores):
            keep[p.name] = mask[offset : offset + s.numel()].view_as(s)
            offset += s.numel()

    masks: dict[str, torch.Tensor] = {}  # per module: fused slices assembled back
    for p in pieces:
        piece_mask = keep[p.name].to(_base_weight(p).device)
        if p.rows is None:
            masks[p.module_name] = piece_mask
        else:
            full = masks.setdefault(p.module_name, torch.ones(len(p.rows) * 3, piece_mask.shape[1], dtype=torch.bool,
                                                               device=piece_mask.device))
            full[p.rows.to(full.device)] = piece_mask
    return masks


def _keep_mask(scores: torch.Tensor, remove: int) -> torch.Tensor:
    mask = torch.ones(scores.numel(), dtype=torch.bool)
    mask[_lowest(scores.cpu(), remove)] = False
    return mask.view(scores.shape)


@torch.no_grad()
def apply_masks_(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Zero the masked entries of W0 in place; adapted layers also keep the mask (merged-and-masked form)."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        if name not in modules:
            raise ValueError(f"mask for {name!r}, which is not a module of this model")
        module = modules[name]
        base = module.base_layer if isinstance(module, DSEELinear) else module
        weight = linear_weight(base)
        if tuple(mask.shape) != tuple(weight.shape):
            raise ValueError(f"mask for {name} is {tuple(mask.shape)}, the weight {tuple(weight.shape)}")
        mask = mask.to(device=weight.device, dtype=torch.bool)
        weight.mul_(mask)
        if isinstance(module, DSEELinear):
            module.prune_mask = mask.clone()
    return model


@torch.no_grad()
def sparsity_report(model: nn.Module) -> dict:
    """Achieved sparsity (fraction of exact zeros) of every prunable weight and overall.

    For an adapted layer the weight is M ⊙ (W0 + ΔW), what the model computes and exports.
    """
    per_matrix: dict[str, float] = {}
    zeros = total = 0
    seen = set()
    for p in prunable_pieces(model):
        if p.module_name in seen:
            continue
        seen.add(p.module_name)
        module = p.module
        weight = module.effective_weight() if isinstance(module, DSEELinear) else linear_weight(module)
        z = int((weight == 0).sum())
        per_matrix[p.module_name] = z / weight.numel()
        zeros += z
        total += weight.numel()
    return {"overall": zeros / total if total else 0.0, "zeros": zeros, "entries": total, "per_matrix": per_matrix}
