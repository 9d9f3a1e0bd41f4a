"""Which heads and FFN neurons to remove: scores and removal plans (paper §3.2, structured sparsity).

Head scores (higher = more important):
  delta       the released code's rule: Σ|ΔW_q| + Σ|ΔW_v| over the head's rows (DSEE updates needed)
  importance  Michel et al. (2019): |∂loss/∂g_h| summed over a few training batches, where g_h = 1
              gates head h's context on its way into the attention output (a hook multiplies the
              input of ``o``, (B, T, heads·head_dim), by g repeated head_dim times); normalised by
              the layer's ℓ2 norm, as Michel et al. do, so that layers compare in a global ranking
Neuron scores:
  magnitude   ‖row n of every FFN-in matrix‖₂ · ‖column n of FFN-out‖₂
  importance  |∂loss/∂g_n| with a gate on the input of FFN-out, (B, T, neurons)

Plans: ``{layer: [index, ...]}`` of what to remove, per layer (the same fraction of every layer,
the released recipe) or global (one ranking over all layers); never a whole layer.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..adapters.calibration import checkpointed_blocks
from ..adapters.layer import DSEELinear, linear_weight
from ..arch import blocks
from ..registry import Registry

# fn(model, batches, cache) -> one (units,) score tensor per block; ``cache`` lets the head and the
# neuron importance share one pass over the batches
HEAD_SCORES = Registry("head score")
NEURON_SCORES = Registry("FFN-neuron score")


def _delta_rows(module: nn.Module, slice_name: str) -> torch.Tensor | None:
    """|ΔW| summed over columns, per output row of the q or v slice: (rows,), or None if not adapted."""
    if not isinstance(module, DSEELinear):
        return None
    for name, delta, _ in module.deltas():
        if name in ("", slice_name):
            return delta.delta_weight().abs().sum(dim=1)
    return None


@torch.no_grad()
def delta_head_scores(model: nn.Module) -> list[torch.Tensor]:
    """Σ|ΔW_q| + Σ|ΔW_v| per query head, one (heads,) tensor per block."""
    scores = []
    for block in blocks(model):
        spec, d = block.spec, block.head_dim
        if spec.qkv:
            q_rows = _delta_rows(block.get(spec.qkv), "q")
            v_rows = _delta_rows(block.get(spec.qkv), "v")
        else:
            q_rows, v_rows = _delta_rows(block.get(spec.q), ""), _delta_rows(block.get(spec.v), "")
        if q_rows is None and v_rows is None:
            raise ValueError(f"layer {block.index}: head score 'delta' needs DSEE updates on the query or value "
                             "projection; use 'importance'")
        score = torch.zeros(block.num_heads)
        if q_rows is not None:
            score += q_rows.float().cpu().view(block.num_heads, d).sum(1)
        if v_rows is not None:  # with grouped-query attention a value head serves group_size query heads
            score += v_rows.float().cpu().view(-1, d).sum(1).repeat_interleave(block.group_size)
        scores.append(score)
    return scores


@torch.no_grad()
def magnitude_neuron_scores(model: nn.Module) -> list[torch.Tensor]:
    scores = []
    for block in blocks(model):
        rows = sum(_weight(block.get(n)).float().norm(dim=1) for n in block.spec.ffn_in)
        cols = _weight(block.get(block.spec.ffn_out)).float().norm(dim=0)
        scores.append((rows * cols).cpu())
    return scores


def _weight(module: nn.Module) -> torch.Tensor:
    return module.effective_weight() if isinstance(module, DSEELinear) else linear_weight(module)


def importance_scores(model: nn.Module, batches: Iterable[dict]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(head scores, neuron scores): |∂loss/∂gate| summed over ``batches`` (each with ``labels``).

    The model is run in eval mode (no dropout); its parameters and their ``.grad`` are untouched.
    Block by block: each block keeps only its input for the backward pass and runs again there
    (``calibration.checkpointed_blocks``), so one block's activations are alive at a time; the
    gradients are those of the plain pass (tested).
    """
    all_blocks = blocks(model)
    head_gates = [torch.ones(b.num_heads, requires_grad=True) for b in all_blocks]
    neuron_gates = [torch.ones(b.ffn_size, requires_grad=True) for b in all_blocks]
    handles = []
    for block, hg, ng in zip(all_blocks, head_gates, neuron_gates):
        handles.append(block.get(block.spec.o).register_forward_pre_hook(_gate_hook(hg, block.head_dim)))
        handles.append(block.get(block.spec.ffn_out).register_forward_pre_hook(_gate_hook(ng, 1)))
    head_total = [torch.zeros(b.num_heads) for b in all_blocks]
    neuron_total = [torch.zeros(b.ffn_size) for b in all_blocks]
    was_training = model.training
    model.eval()
    # no key/value cache: the blocks run again in the backward pass and would append to it twice
    config = getattr(model, "config", None)
    cached = getattr(config, "use_cache", None)
    if cached:
        config.use_cache = False
    try:
        for batch in batches:
            with checkpointed_blocks([b.module for b in all_blocks]):
                loss = model(**batch).loss
                grads = torch.autograd.grad(loss, head_gates + neuron_gates, allow_unused=True)
            for i in range(len(all_blocks)):
                if grads[i] is not None:
                    head_total[i] += grads[i].detach().abs().cpu()
                g = grads[len(all_blocks) + i]
                if g is not None:
                    neuron_total[i] += g.detach().abs().cpu()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        if cached:
            config.use_cache = cached
    return [_normalise(s) for s in head_total], [_normalise(s) for s in neuron_total]


def _gate_hook(gate: torch.Tensor, width: int):
    def hook(module, args):
        x = args[0]  # (..., units·width)
        scale = gate.to(x.device, x.dtype).repeat_interleave(width)
        return (x * scale, *args[1:])

    return hook


def _normalise(scores: torch.Tensor) -> torch.Tensor:
    norm = scores.norm()
    return scores / norm if norm > 0 else scores


def removal_plan(scores: list[torch.Tensor], fraction: float, *, per_layer: bool = True,
                 group_sizes: list[int] | None = None, what: str = "heads", uniform: bool = False
                 ) -> dict[int, list[int]]:
    """The lowest-scoring ``fraction`` of units to remove: ``{layer: [index, ...]}``.

    Per layer: round(fraction · units) from every layer. Global: round(fraction · all units) from
    one ranking, skipping a unit that would be its layer's last. With grouped-query attention
    (``group_sizes[i] > 1``) per-layer removal takes the same number from every key/value group.
    ``uniform``: the plan must leave every layer the same size (what a stock config can describe,
    ``stock.stock_config``): per layer, on layers of equal sizes and group sizes; refused otherwise.
    Raises ValueError when a layer would be emptied.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"{what} fraction {fraction}: must be in [0, 1)")
    group_sizes = group_sizes or [1] * len(scores)
    if uniform:
        if not per_layer:
            raise ValueError(f"a uniform plan removes the same number of {what} from every layer: it cannot be global")
        if len({len(s) for s in scores}) > 1 or len(set(group_sizes)) > 1:
            raise ValueError(f"the layers have different numbers of {what} ({[len(s) for s in scores]}, groups of "
                             f"{group_sizes}): a per-layer fraction would not leave them equal")
    plan: dict[int, list[int]] = {}
    if per_layer:
        for layer, (s, g) in enumerate(zip(scores, group_sizes)):
            per_group = round(fraction * g) if g > 1 else round(fraction * len(s))
            size = g if g > 1 else len(s)
            if per_group >= size:
                raise ValueError(f"removing {fraction:.0%} of the {what} of layer {layer} ({size}"
                                 f"{' per key/value group' if g > 1 else ''}) would leave none")
            groups = s.view(-1, g) if g > 1 else s.view(1, -1)
            removed = []
            for gi, row in enumerate(groups):
                order = torch.sort(row, stable=True).indices[:per_group]
                removed += [gi * row.numel() + int(i) for i in order]
            if removed:
                plan[layer] = sorted(removed)
        return plan
    if any(g > 1 for g in group_sizes):
        raise ValueError("global head selection with grouped-query attention is not supported: use per-layer")
    flat = torch.cat(scores)
    owner = torch.cat([torch.full((len(s),), i) for i, s in enumerate(scores)])
    index = torch.cat([torch.arange(len(s)) for s in scores])
    target = round(fraction * flat.numel())
    left = [len(s) for s in scores]
    for k in torch.sort(flat, stable=True).indices.tolist():
        if target == 0:
            break
        layer = int(owner[k])
        if left[layer] == 1:
            continue  # never a whole layer
        plan.setdefault(layer, []).append(int(index[k]))
        left[layer] -= 1
        target -= 1
    return {k: sorted(v) for k, v in sorted(plan.items())}


def head_group_sizes(model: nn.Module) -> list[int]:
    return [b.group_size for b in blocks(model)]


def _importance(model: nn.Module, batches, cache: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    if "importance" not in cache:
        cache["importance"] = importance_scores(model, batches)
    return cache["importance"]


@HEAD_SCORES.register("delta", description="Σ|ΔW_q| + Σ|ΔW_v| over the head's rows (the released code's rule)")
def _delta_heads(model, batches, cache):
    return delta_head_scores(model)


@HEAD_SCORES.register("importance", needs=("batches",), description="|∂loss/∂gate| (Michel et al. 2019)")
def _importance_heads(model, batches, cache):
    return _importance(model, batches, cache)[0]


@NEURON_SCORES.register("magnitude", description="‖FFN-in rows‖·‖FFN-out column‖")
def _magnitude_neurons(model, batches, cache):
    return magnitude_neuron_scores(model)


@NEURON_SCORES.register("importance", needs=("batches",), description="|∂loss/∂gate| (Michel et al. 2019)")
def _importance_neurons(model, batches, cache):
    return _importance(model, batches, cache)[1]
