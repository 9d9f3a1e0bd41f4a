"""Frozen weights in low precision, trained tensors in fp32 (what PEFT users do with LoRA on big decoders).

    lower_frozen_precision_(model, torch.bfloat16)

casts every frozen floating-point parameter (W0 of every layer, embeddings, norms) to bf16 and
leaves the trained ones (A, B, S of every adapter, the task head and other ``modules_to_save``)
and every buffer (Ω, prune masks, rotary frequencies) as they are. The frozen weights then take
half the memory, and so do the activations between blocks, which run in bf16.

Where fp32 meets bf16:
- an adapted layer computes in its adapters' dtype: x and W0 upcast, S folded in fp32, the result
  cast back to bf16 (``layer.DSEELinear``); so the update and its gradients are never rounded to bf16;
- a trained module (``modules_to_save``, e.g. the classifier head) gets its floating-point inputs cast
  to its own dtype by a forward pre-hook: its output (the logits) is fp32;
- the optimizer sees only the trained, fp32 tensors: its state is fp32;
- merging (``merge_dsee``) forms M ⊙ (W0 + ΔW) in fp32 and casts it to W0's dtype.

Full fine-tuning has no frozen weights, so there is nothing for this to do there.
"""

from __future__ import annotations

import torch
from torch import nn

from .inject import is_adapted

HOOK_ATTRIBUTE = "_dsee_input_cast_hook"


def _cast_floating(value, dtype: torch.dtype):
    if torch.is_tensor(value) and value.is_floating_point() and value.dtype != dtype:
        return value.to(dtype)
    if isinstance(value, (tuple, list)):
        return type(value)(_cast_floating(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast_floating(v, dtype) for k, v in value.items()}
    return value


def cast_inputs_to_own_dtype(module: nn.Module) -> None:
    """A forward pre-hook on ``module`` casting its floating-point inputs to its parameters' dtype (once)."""
    if getattr(module, HOOK_ATTRIBUTE, None) is not None:
        return
    dtype = next(module.parameters()).dtype

    def hook(_module, args, kwargs):
        return _cast_floating(args, dtype), _cast_floating(kwargs, dtype)

    setattr(module, HOOK_ATTRIBUTE, module.register_forward_pre_hook(hook, with_kwargs=True))


def lower_frozen_precision_(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Cast the frozen floating-point parameters of an adapted ``model`` to ``dtype`` in place (module doc).

    Raises ValueError, changing nothing, when the model has no DSEE adapters (full fine-tuning
    freezes nothing) or ``dtype`` is not a floating-point type.
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"frozen weights can be stored in a floating-point dtype, not {dtype}")
    if not is_adapted(model):
        raise ValueError("low-precision frozen weights need a model with DSEE adapters (add_dsee): with full "
                         "fine-tuning every weight is trained, none is frozen")
    with torch.no_grad():
        for p in model.parameters():
            if not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)  # the same Parameter object: ties (embeddings) stay tied
    for name in model.dsee_state.modules_to_save:
        module = model.get_submodule(name)
        if any(True for _ in module.parameters()):
            cast_inputs_to_own_dtype(module)
    return model


def frozen_dtypes(model: nn.Module) -> dict[str, set[torch.dtype]]:
    """{"frozen": dtypes of the frozen parameters, "trained": of the trained ones}: for reports and tests."""
    out: dict[str, set[torch.dtype]] = {"frozen": set(), "trained": set()}
    for p in model.parameters():
        out["trained" if p.requires_grad else "frozen"].add(p.dtype)
    return out
