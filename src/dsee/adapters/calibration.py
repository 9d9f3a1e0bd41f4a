"""Statistics of a model's linear weights gathered from a few batches of data.

    squared_gradients(model, names, batches)   Σ_k (∂L_k/∂W)² per weight: (d_out, d_in)  (RoSA's support)
    input_norms(model, names, batches)         ‖X_j‖₂ per input column of each weight: (d_in,)  (Wanda's score)

The model runs in eval mode (no dropout, so the statistic is a function of the data and the
weights only), its trainable flags and ``.grad`` fields are restored afterwards, and nothing but
the statistics is kept: a hook adds each weight's gradient into its accumulator as soon as it is
ready and drops it, so memory is one (d_out, d_in) float32 tensor per weight.

Block by block (Wanda and SparseGPT calibrate a decoder one block at a time so that one block's
activations are alive): ``input_norms`` runs without gradients, so only the block under way holds
activations, and it stops the pass after ``stop_after`` (the last block): nothing after it (the LM
head's logits, batch × tokens × vocabulary) is computed. ``checkpointed_blocks`` makes a pass with
gradients keep only each block's input and recompute the block in the backward pass, one block at a
time (the importance scores of structured pruning). Both are the model's own forward pass, so the
statistics are exactly those of the whole model, for every architecture: a runner that fed blocks
itself would have to know what a model does between its blocks (DeBERTa-v2's convolution after the
first, the per-layer masks of sliding-window decoders).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .layer import Conv1D, DSEELinear

LossFn = Callable[[nn.Module, dict], torch.Tensor]


def model_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """The loss a transformers model returns for a batch with ``labels``."""
    out = model(**batch)
    if getattr(out, "loss", None) is None:
        raise ValueError("the model returned no loss for a calibration batch: give the batches labels, "
                         "or pass loss_fn=(model, batch) -> loss")
    return out.loss


def _weight_parameter(module: nn.Module) -> nn.Parameter:
    """The frozen weight a statistic is about: the base layer's for a DSEELinear."""
    return module.base_layer.weight if isinstance(module, DSEELinear) else module.weight


def _is_transposed(module: nn.Module) -> bool:
    base = module.base_layer if isinstance(module, DSEELinear) else module
    return isinstance(base, Conv1D)  # stored (d_in, d_out)


def squared_gradients(model: nn.Module, names: Sequence[str], batches: Iterable[dict],
                      loss_fn: LossFn | None = None, *,
                      local: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """``{name: Σ over batches of (∂loss/∂W)², (d_out, d_in) float32}`` for the linear modules ``names``.

    ``loss_fn(model, batch)`` gives each batch's loss (default: the model's own ``.loss``). The
    gradient is that of the whole model's loss with respect to W as it is now (W0 for an
    unadapted model; for a ``DSEELinear`` its frozen base weight, adapters in place). Raises
    ValueError on an empty ``batches`` or a non-finite loss.

    ``local``: for a sharded model (FSDP), what this process holds of a weight or of its gradient
    (its rows); the sums are then of those rows, in the weight's storage layout, read after each
    backward pass (FSDP sets the sharded gradients itself, where no gradient hook sees them).
    """
    loss_fn = loss_fn or model_loss
    modules = {name: model.get_submodule(name) for name in names}
    weights = {name: _weight_parameter(m) for name, m in modules.items()}
    sums = {name: torch.zeros((local or (lambda t: t))(w).shape, dtype=torch.float32, device=w.device)
            for name, w in weights.items()}
    flags = {id(p): p.requires_grad for p in model.parameters()}
    grads = {id(p): p.grad for p in model.parameters()}
    handles = []

    def accumulate(name: str):
        def hook(param: torch.Tensor) -> None:
            sums[name].add_(param.grad.detach().float().square())
            param.grad = None

        return hook

    was_training = model.training
    count = 0
    try:
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None
        for name, weight in weights.items():
            weight.requires_grad_(True)
            if local is None:  # each gradient added and dropped as soon as it is ready: one at a time in memory
                handles.append(weight.register_post_accumulate_grad_hook(accumulate(name)))
        model.eval()
        for batch in batches:
            loss = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise ValueError(f"calibration batch {count}: the loss is {float(loss)}")
            loss.backward()
            if local is not None:
                for name, weight in weights.items():
                    sums[name].add_(local(weight.grad).detach().float().square())
                    weight.grad = None
            count += 1
    finally:
        for handle in handles:
            handle.remove()
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
            p.grad = grads[id(p)]
        model.train(was_training)
    if count == 0:
        raise ValueError("no calibration batches: the squared gradients need at least one")
    if local is not None:
        return sums
    return {name: (s.t().contiguous() if _is_transposed(modules[name]) else s) for name, s in sums.items()}


class _Stop(Exception):
    """Raised after the last module a statistic needs: the rest of the forward pass is not run."""


@contextmanager
def stop_after(module: nn.Module | None):
    """Within the block, a forward pass raises ``_Stop`` as soon as ``module`` has run (None: never)."""
    if module is None:
        yield
        return

    def stop(*_):
        raise _Stop

    handle = module.register_forward_hook(stop)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def checkpointed_blocks(blocks: Sequence[nn.Module]):
    """Within the block, every module of ``blocks`` keeps only its inputs for the backward pass and runs
    again there (``torch.utils.checkpoint``, non-reentrant: the same values, hooks included), so a pass
    with gradients holds one block's activations at a time besides the blocks' inputs."""
    from torch.utils.checkpoint import checkpoint

    originals = []
    for block in blocks:
        original = block.forward
        originals.append((block, original))
        block.forward = lambda *args, _f=original, **kwargs: checkpoint(_f, *args, use_reentrant=False, **kwargs)
    try:
        yield
    finally:
        for block, original in originals:
            del block.forward  # back to the class's method (the instance attribute shadowed it)
            if block.forward != original:  # pragma: no cover - an instance attribute was there before
                block.forward = original


@torch.no_grad()
def input_norms(model: nn.Module, names: Sequence[str], batches: Iterable[dict],
                last: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """``{name: ‖X_j‖₂ over every token of every batch, (d_in,) float32}`` for the linear modules ``names``.

    X is the module's input (Wanda, Sun et al. 2023: the norm of each input feature over the
    calibration tokens). Padding positions are left out when a batch has an ``attention_mask`` of
    the inputs' leading shape. Forward passes only, in eval mode; the model is not changed.
    ``last``: a module after which no module of ``names`` runs (the last transformer block): each
    pass stops there (module doc).
    """
    modules = {name: model.get_submodule(name) for name in names}
    sums: dict[str, torch.Tensor] = {}
    current_mask: list[torch.Tensor | None] = [None]

    def accumulate(name: str):
        def hook(module, args):
            x = args[0].detach().float()  # (..., d_in)
            squares = x.square()
            mask = current_mask[0]
            if mask is not None and tuple(mask.shape) == tuple(x.shape[:-1]):
                squares = squares * mask.to(squares.dtype).unsqueeze(-1)
            total = squares.reshape(-1, x.shape[-1]).sum(0)
            sums[name] = total if name not in sums else sums[name] + total

        return hook

    handles = [m.register_forward_pre_hook(accumulate(n)) for n, m in modules.items()]
    was_training = model.training
    model.eval()
    count = 0
    try:
        for batch in batches:
            current_mask[0] = batch.get("attention_mask")
            try:
                with stop_after(last):
                    model(**{k: v for k, v in batch.items() if k != "labels"})
            except _Stop:
                pass
            count += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if count == 0:
        raise ValueError("no calibration batches: the input norms need at least one")
    missing = [n for n in names if n not in sums]
    if missing:
        raise ValueError(f"the calibration batches never reached {missing[:3]}")
    return {name: total.sqrt() for name, total in sums.items()}
