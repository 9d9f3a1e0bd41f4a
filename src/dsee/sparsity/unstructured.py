"""Unstructured sparsity of the final model: masks over the blocks' linear weights (paper §3.2).

    masks = unstructured_masks(model, 0.5, score="weight", scope="global")
    apply_masks_(model, masks)      # W0 ← M ⊙ W0; adapted layers switch to M ⊙ (W0 + ΔW)
    ... re-tune the adapters ...
    merge_dsee(model)               # W ← M ⊙ (W0 + ΔW): the zeros survive the merge

Pruned: q, k, v (or GPT-2's fused c_attn), the attention output, FFN in and out of every block.
Embeddings, LayerNorm, biases, the pooler and the task head are left dense.

Scores (``score``, the registry ``SCORES``; W = W0 + ΔW where a DSEE update is):
  weight        |W0|
  weight+delta  |W0 + ΔW|
  delta         |ΔW| on matrices with a DSEE update, |W0| on the others, ranked as two groups at
                the same sparsity (the two kinds of score are not comparable)
  upstream      the released code's recipe: the same two groups, each at its own ratio
                (``sparsity`` for key, output and FFN; ``adapted_sparsity`` for query and value)
  wanda         |W_ij|·‖X_j‖₂, X_j the j-th input feature over calibration tokens (Wanda, Sun et
                al. 2023); needs ``batches`` (or ``statistics={"input_norms": ...}``)
Scope: ``global`` ranks all matrices of a group together; ``layer`` ranks each matrix alone; ``row``
ranks each output row alone (Wanda's grouping). Exactly round(sparsity · n) entries are removed per
group, matrix or row, ties broken by position. ``pattern="N:M"`` instead keeps at most N of every M
consecutive input weights of each row (2:4: half; semi-structured sparsity GPUs run fast).
Entries already pruned (``current`` masks) are removed first, so masks only grow (gradual pruning).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..adapters.layer import DSEELinear, SparseLowRankDelta, linear_shape, linear_weight
from ..arch import Block, blocks
from ..registry import Registry

SCOPES = ("global", "layer", "row")
# fn(weight (rows, d_in) float32, delta (rows, d_in) or None without a DSEE update, statistics of the
# piece) -> scores; ``two_groups``: adapted and other matrices are ranked apart (their scores are not
# comparable); ``own_ratio``: the adapted group takes its own ratio (``adapted_sparsity``);
# ``needs``: statistics from calibration data; ``scope``: the grouping used when the caller gives none
# (Wanda compares within each output row: ranked across matrices its scores prune some matrices far more
# than others, because the input norms differ from layer to layer)
SCORES = Registry("score")


@SCORES.register("weight", description="|W0|")
def _weight_score(weight, delta, stats):
    return weight.abs()


@SCORES.register("delta", description="|ΔW| where a DSEE update is, |W0| elsewhere, ranked as two groups",
                 two_groups=True)
def _delta_score(weight, delta, stats):
    return weight.abs() if delta is None else delta.abs()


@SCORES.register("weight+delta", description="|W0 + ΔW|")
def _merged_score(weight, delta, stats):
    return weight.abs() if delta is None else (weight + delta).abs()


@SCORES.register("upstream", description="the released recipe: delta's two groups, each at its own ratio",
                 two_groups=True, own_ratio=True)
def _upstream_score(weight, delta, stats):
    return _delta_score(weight, delta, stats)


@SCORES.register("wanda", needs=("input_norms",), scope="row",
                 description="|W0 + ΔW|·‖X_j‖₂ over calibration tokens (Wanda; compared within output rows)")
def _wanda_score(weight, delta, stats):
    return _merged_score(weight, delta, stats) * stats["input_norms"].to(weight.device).float().unsqueeze(0)


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


def prunable_modules(model: nn.Module) -> list[str]:
    """Names of the modules ``unstructured_masks`` masks (a fused projection once)."""
    return list(dict.fromkeys(p.module_name for p in prunable_pieces(model)))


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


def _piece_stats(piece: Piece, statistics: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {kind: per_module[piece.module_name] for kind, per_module in statistics.items()}


@torch.no_grad()
def piece_score(piece: Piece, score: str, statistics: Mapping[str, Mapping[str, torch.Tensor]] | None = None
                ) -> torch.Tensor:
    """The score of every entry of ``piece``: (rows, d_in), float32."""
    weight = _base_weight(piece).float()
    delta = None if piece.delta is None else piece.delta.delta_weight().float()
    return SCORES.get(score).fn(weight, delta, _piece_stats(piece, statistics or {}))


def parse_pattern(pattern: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """"2:4" -> (2, 4): keep at most N of every M consecutive input weights."""
    if pattern is None or isinstance(pattern, tuple):
        return pattern
    try:
        n, m = (int(x) for x in str(pattern).split(":"))
    except ValueError:
        raise ValueError(f"pattern={pattern!r}: write it N:M, e.g. 2:4") from None
    if not 0 < n < m:
        raise ValueError(f"pattern={pattern!r}: needs 0 < N < M")
    return n, m


def default_scope(score: str) -> str:
    """The grouping a score is ranked in when none is asked for: its own (Wanda: ``row``) or ``global``."""
    return SCORES.get(score).options.get("scope", "global")


def _check_request(sparsity, score: str, scope: str, adapted_sparsity, pattern) -> None:
    entry = SCORES.get(score)
    if scope not in SCOPES:
        raise ValueError(f"scope={scope!r}: choose global or layer, or row (Wanda's per-output-row grouping)")
    for name, value in (("sparsity", sparsity), ("adapted_sparsity", adapted_sparsity)):
        if value is not None and not 0 <= value < 1:  # NaN fails too
            raise ValueError(f"{name}={value}: must be in [0, 1)")
    if adapted_sparsity is not None and not entry.options.get("own_ratio"):
        raise ValueError("adapted_sparsity is the upstream recipe's second ratio: use it with score='upstream'")
    if pattern is not None:
        n, m = pattern
        if sparsity is not None and abs(sparsity - (1 - n / m)) > 1e-9:
            raise ValueError(f"pattern {n}:{m} removes {1 - n / m:.0%} of the weights; sparsity={sparsity} says otherwise")
        if entry.options.get("own_ratio"):
            raise ValueError(f"pattern {n}:{m} sets one ratio for every matrix: it does not go with score='{score}'")
    elif sparsity is None:
        raise ValueError("give a sparsity or an N:M pattern")


def _statistics(model, pieces, score, statistics, batches) -> dict:
    """What the score reads from calibration data: given, or gathered from ``batches``."""
    needs = SCORES.get(score).needs
    statistics = dict(statistics or {})
    missing = [kind for kind in needs if kind not in statistics]
    if missing and batches is None:
        raise ValueError(f"score={score!r} reads {missing} from calibration data: pass batches=[...]")
    if "input_norms" in missing:
        from ..adapters.calibration import input_norms

        # block by block: no module after the last block is pruned, so the pass stops there (calibration.py)
        statistics["input_norms"] = input_norms(model, list(dict.fromkeys(p.module_name for p in pieces)), batches,
                                                last=blocks(model)[-1].module)
    return statistics


@torch.no_grad()
def unstructured_masks(
    model: nn.Module,
    sparsity: float | None = None,
    *,
    score: str = "weight",
    scope: str | None = None,
    adapted_sparsity: float | None = None,
    pattern: str | tuple[int, int] | None = None,
    batches: Iterable[dict] | None = None,
    statistics: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    current: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Boolean keep-masks, ``{module name: (d_out, d_in) bool}``, removing ``sparsity`` of the entries
    (or following ``pattern``). ``current``: masks already applied; their pruned entries stay pruned.

    ``adapted_sparsity`` (only with ``score="upstream"``) is the ratio for the matrices with a DSEE
    update; by default the same as ``sparsity``. ``batches`` feed a calibration score (wanda).
    ``scope``: ``global`` (one ranking over all matrices), ``layer`` (each matrix alone) or ``row`` (each
    output row alone); None takes the score's own (:func:`default_scope`: ``row`` for wanda, as Wanda
    compares; ``global`` otherwise).
    """
    pattern = parse_pattern(pattern)
    scope = default_scope(score) if scope is None else scope
    _check_request(sparsity, score, scope, adapted_sparsity, pattern)
    pieces = prunable_pieces(model)
    entry = SCORES.get(score)
    two_groups = entry.options.get("two_groups", False)
    if two_groups and not any(p.delta is not None for p in pieces):
        raise ValueError(f"score={score!r} ranks by |ΔW|, but no pruned matrix has a DSEE update")
    statistics = _statistics(model, pieces, score, statistics, batches)
    groups: dict[str, list[Piece]] = {}
    for p in pieces:
        groups.setdefault("adapted" if two_groups and p.delta is not None else "base", []).append(p)
    ratio = {"base": sparsity, "adapted": sparsity if adapted_sparsity is None else adapted_sparsity}
    keep: dict[str, torch.Tensor] = {}  # per piece
    for group, members in groups.items():
        scores = [_scored(p, score, statistics, current) for p in members]
        if pattern is not None:
            keep.update({p.name: n_of_m_mask(s, *pattern, p.name) for p, s in zip(members, scores)})
        elif scope == "row":
            keep.update({p.name: _row_mask(s, ratio[group]) for p, s in zip(members, scores)})
        elif scope == "layer":
            keep.update({p.name: _keep_mask(s, round(ratio[group] * s.numel())) for p, s in zip(members, scores)})
        else:
            flat = torch.cat([s.flatten() for s in scores])
            mask = _keep_mask(flat, round(ratio[group] * flat.numel()))
            offset = 0
            for p, s in zip(members, scores):
                keep[p.name] = mask[offset : offset + s.numel()].view_as(s)
                offset += s.numel()
    return _assemble(pieces, keep)


def _scored(piece: Piece, score: str, statistics, current) -> torch.Tensor:
    """The piece's scores with its already-pruned entries (``current``) ranked lowest of all."""
    scores = piece_score(piece, score, statistics).cpu()
    mask = None if current is None else current.get(piece.module_name)
    if mask is not None:
        mask = mask.cpu() if piece.rows is None else mask.cpu()[piece.rows]
        scores = torch.where(mask, scores, torch.tensor(-float("inf")))
    return scores


def _assemble(pieces: list[Piece], keep: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-module masks, fused slices put back into their rows."""
    masks: dict[str, torch.Tensor] = {}
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
    """Keep all but the ``remove`` lowest scores; ties broken by position (stable sort)."""
    mask = torch.ones(scores.numel(), dtype=torch.bool)
    if remove > 0:
        mask[torch.sort(scores.flatten(), stable=True).indices[:remove]] = False
    return mask.view(scores.shape)


def _row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Remove round(sparsity · d_in) lowest scores of every row (Wanda's grouping): (rows, d_in)."""
    remove = round(sparsity * scores.shape[1])
    mask = torch.ones_like(scores, dtype=torch.bool)
    if remove > 0:
        order = torch.sort(scores, dim=1, stable=True).indices[:, :remove]
        mask.scatter_(1, order, False)
    return mask


def n_of_m_mask(scores: torch.Tensor, n: int, m: int, name: str = "") -> torch.Tensor:
    """Keep the N highest of every M consecutive scores along each row (ties: the earlier): (rows, d_in)."""
    rows, d_in = scores.shape
    if d_in % m:
        raise ValueError(f"{name or 'a matrix'} has {d_in} inputs, not a multiple of M = {m}: pattern {n}:{m} "
                         "cannot tile it")
    groups = scores.reshape(rows, d_in // m, m)
    order = torch.sort(groups, dim=2, descending=True, stable=True).indices[..., :n]
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, order, True)
    return mask.reshape(rows, d_in)


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
def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks the prunable weights carry now: an adapted layer's ``prune_mask``, else W0 ≠ 0."""
    out = {}
    for name in prunable_modules(model):
        module = model.get_submodule(name)
        if isinstance(module, DSEELinear) and module.prune_mask is not None:
            out[name] = module.prune_mask.clone()
        else:
            base = module.base_layer if isinstance(module, DSEELinear) else module
            out[name] = linear_weight(base) != 0
    return out


def pattern_violations(weight: torch.Tensor, n: int, m: int) -> int:
    """Groups of M consecutive inputs (per row) holding more than N non-zeros; -1 if M does not tile."""
    rows, d_in = weight.shape
    if d_in % m:
        return -1
    nonzero = (weight != 0).reshape(rows, d_in // m, m).sum(-1)
    return int((nonzero > n).sum())


@torch.no_grad()
def sparsity_report(model: nn.Module, pattern: str | tuple[int, int] | None = None) -> dict:
    """Achieved sparsity (fraction of exact zeros) of every prunable weight and overall; with
    ``pattern`` ("2:4") also whether every weight keeps it (``pattern_violations``: groups over N).

    For an adapted layer the weight is M ⊙ (W0 + ΔW), what the model computes and exports.
    """
    pattern = parse_pattern(pattern)
    per_matrix: dict[str, float] = {}
    zeros = total = violations = 0
    for name in prunable_modules(model):
        module = model.get_submodule(name)
        weight = module.effective_weight() if isinstance(module, DSEELinear) else linear_weight(module)
        z = int((weight == 0).sum())
        per_matrix[name] = z / weight.numel()
        zeros += z
        total += weight.numel()
        if pattern is not None:
            found = pattern_violations(weight, *pattern)
            violations = -1 if found < 0 or violations < 0 else violations + found
    report = {"overall": zeros / total if total else 0.0, "zeros": zeros, "entries": total, "per_matrix": per_matrix}
    if pattern is not None:
        report["pattern"] = {"n": pattern[0], "m": pattern[1], "violations": violations, "kept": violations == 0}
    return report


@torch.no_grad()
def zeros_changed(reference: nn.Module, model: nn.Module) -> dict[str, dict[str, int]]:
    """Per prunable weight, how ``model``'s exact zeros differ from ``reference``'s (the same architecture):
    ``{name: {"reference": zeros there, "zeros": zeros here, "lost": zeros of the reference that are not
    zero here, "new": zeros here that the reference did not have}}``. For a DSEELinear the weight is its
    M ⊙ (W0 + ΔW), what it exports. A sparse model fine-tuned and merged keeps its zeros when every
    "lost" is 0 (locuslab/wanda#83: LoRA's merge lost a fifth of them)."""
    out = {}
    for name in prunable_modules(reference):
        mine, theirs = model.get_submodule(name), reference.get_submodule(name)
        here = (mine.effective_weight() if isinstance(mine, DSEELinear) else linear_weight(mine)) == 0
        there = (theirs.effective_weight() if isinstance(theirs, DSEELinear) else linear_weight(theirs)) == 0
        there = there.to(here.device)
        out[name] = {"reference": int(there.sum()), "zeros": int(here.sum()), "lost": int((there & ~here).sum()),
                     "new": int((here & ~there).sum())}
    return out
