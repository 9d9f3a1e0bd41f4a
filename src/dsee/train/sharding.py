"""Sharded training with PyTorch FSDP2 (``torch.distributed.fsdp.fully_shard``): ``dsee train --fsdp``.

    shard_model(model, mixed_precision)    each transformer block its own FSDP unit, then the root

Every parameter, frozen or trained, becomes a DTensor holding 1/k of its rows (dim 0) on each of the
k processes; before a block's forward (and again before its backward) its parameters are
all-gathered, after it they are freed, so a process holds the full weights of about one block at a
time. Gradients are reduce-scattered (averaged over processes), so each process keeps the gradient
and the AdamW state of its own shard of the trained tensors only (the optimizer is built over the
trained parameters after sharding). Frozen and trained tensors share a unit; FSDP2 takes both.

What is not sharded: buffers. Ω (``sparse_indices``, int64), the fused slices' rows and the prune
masks (bool) stay whole on every process; each is computed once (by the process owning its matrix
when the model is read tensor by tensor, ``streamed.py``) or identically everywhere, and
``shard_model`` broadcasts them from the main process once more, so they cannot drift apart.
``dsee train --fsdp`` builds the model on the meta device and shards it before any weight is read
(``streamed.py``): no process holds the whole model. The custom
autograd function of the folded sparse update receives the all-gathered W0 in forward and in
backward, as any ``F.linear`` would; tied embeddings live in the root unit and stay one tensor.

Saving first puts every unit back to its shards (``reshard``: after an evaluation FSDP2 leaves the
root unit gathered), then reads the shards back whole, on every process in the same order (collectives), and only
the main process keeps the result (on CPU): ``full_tensors`` for a few tensors (trained ones,
optimizer state), ``full_model_state`` for the whole model (``get_model_state_dict`` with
``full_state_dict=True, cpu_offload=True``). So the adapter file and the checkpoint are written
once, in the same format as an unsharded run's, and a checkpoint resumes with any number of
processes, sharded or not. Loading goes the other way (``shard_tensors``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import nn


def _fsdp():
    try:
        from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
    except ImportError:  # pragma: no cover - torch < 2.6
        raise ValueError(f"--fsdp needs PyTorch's FSDP2 (torch >= 2.6); this is torch {torch.__version__}") from None
    return FSDPModule, MixedPrecisionPolicy, fully_shard


def is_sharded(model: nn.Module) -> bool:
    """True when ``model`` (or a module in it) was sharded by ``fully_shard``."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return False
    return any(isinstance(m, FSDPModule) for m in model.modules())


def unit_modules(model: nn.Module) -> list[nn.Module]:
    """The modules that become FSDP units before the root: the transformer blocks.

    From dsee's block layout when the model type has one (``arch.blocks``), else transformers'
    blocks (its ``GradientCheckpointingLayer`` subclasses, outermost ones), else the classes the
    model names as not to be split across devices (``_no_split_modules``).
    """
    from ..arch import block_spec, blocks

    try:
        block_spec(model)
        return [b.module for b in blocks(model)]
    except ValueError:
        pass
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # pragma: no cover - transformers without it
        GradientCheckpointingLayer = ()  # noqa: N806
    names = set(getattr(model, "_no_split_modules", None) or ())
    found: list[nn.Module] = []
    for m in model.modules():
        inside = any(m is not o and any(m is d for d in o.modules()) for o in found)
        if not inside and (isinstance(m, GradientCheckpointingLayer) or type(m).__name__ in names):
            found.append(m)
    if not found:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ValueError(f"--fsdp shards a model block by block, and dsee does not know the blocks of model type "
                         f"{model_type!r} (no block layout, no _no_split_modules)")
    return found


def mixed_precision_policy(mixed_precision: str):
    """FSDP2's policy for ``--mixed-precision``: bf16 compute and all-gathers, fp32 gradient reduction."""
    _, MixedPrecisionPolicy, _ = _fsdp()
    if mixed_precision in ("no", "auto"):
        return MixedPrecisionPolicy()
    if mixed_precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    raise ValueError(f"--fsdp supports --mixed-precision no or bf16, not {mixed_precision}")


def broadcast_buffers(model: nn.Module) -> None:
    """Every buffer (Ω, rows, prune masks, ...) as the main process has it: FSDP2 leaves buffers alone."""
    with torch.no_grad():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def shard_model(model: nn.Module, mixed_precision: str = "no") -> nn.Module:
    """``fully_shard`` every transformer block, then the root (module doc); in place, returns ``model``.

    Needs an initialised process group (torchrun / accelerate launch); with one process there is
    nothing to shard and the model is returned as it is.
    """
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return model
    _, _, fully_shard = _fsdp()
    policy = mixed_precision_policy(mixed_precision)
    return_freed_buffers()
    broadcast_buffers(model)
    for unit in unit_modules(model):
        fully_shard(unit, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


MMAP_THRESHOLD = 4 << 20  # bytes: buffers from this size up are mapped, and unmapped when freed


def return_freed_buffers(threshold: int = MMAP_THRESHOLD) -> bool:
    """Have glibc return freed buffers of ``threshold`` bytes and more to the system (``mallopt``).

    Why: every FSDP unit all-gathers its weights into new buffers before its forward and backward
    and frees them after, and glibc's dynamic mmap threshold soon serves such sizes from its heap,
    which keeps what is freed: two processes training a 0.47B-parameter Llama (bf16 frozen weights,
    2 × 128 tokens) grew by 0.9 GB each in their first step with it, by 0.2 GB with a fixed 4 MiB
    threshold, set before the model was built (set later, the heap has already kept what the build
    freed: one of the two processes still grew by 0.55 GB). ``shard_model`` sets it too, for a model
    built whole. Not done when ``MALLOC_MMAP_THRESHOLD_`` is set (the user's choice) or off glibc.
    Returns whether the threshold was set.
    """
    import ctypes
    import ctypes.util
    import os

    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        return False


def reshard(model: nn.Module) -> nn.Module:
    """Every unit of ``model`` back to its shards. FSDP2 leaves the root unit gathered after a forward
    pass (it expects the backward to need it next): after an evaluation the root's parameters would
    otherwise be whole copies, in the compute dtype under mixed precision, not the trained shards."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return model
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    return model


def _is_dtensor(t: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, DTensor)


def full_tensors(tensors: Mapping[str, torch.Tensor], main: bool) -> dict[str, torch.Tensor]:
    """Whole CPU copies of ``tensors`` on the main process (``{}`` elsewhere).

    Sharded ones (DTensors) are all-gathered one at a time, in the order given, so every process
    must call this with the same names in the same order.
    """
    out = {}
    for name, t in tensors.items():
        whole = t.full_tensor() if _is_dtensor(t) else t
        if main:
            out[name] = whole.detach().cpu().clone()
    return out


def full_model_state(model: nn.Module, main: bool) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` whole, on CPU, on the main process (``{}`` elsewhere); every process calls it."""
    if not is_sharded(model):
        return {k: v.detach() for k, v in model.state_dict().items()} if main else {}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if main else {}


def shard_tensors(tensors: Mapping[str, torch.Tensor], like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole tensors cut as the sharded tensors in ``like`` are (DTensors with the same placements); others as they are."""
    out = {}
    for name, whole in tensors.items():
        target = like.get(name)
        if target is not None and _is_dtensor(target):
            from torch.distributed.tensor import distribute_tensor

            whole = distribute_tensor(whole.to(target.dtype), target.device_mesh, target.placements)
        out[name] = whole
    return out


def full_optimizer_state(optimizer, main: bool) -> dict:
    """``optimizer.state_dict()`` with every sharded state tensor whole (``{}`` off the main process).

    The same numbering of parameters as an unsharded optimizer's (the order they were given in).
    """
    state = optimizer.state_dict()
    gathered: dict[int, dict] = {}
    for index in sorted(state["state"]):
        entry = state["state"][index]
        tensors = {k: v for k, v in entry.items() if torch.is_tensor(v)}
        whole = full_tensors(tensors, main)
        gathered[index] = {k: whole.get(k, v) if torch.is_tensor(v) else v for k, v in entry.items()}
    return {"state": gathered, "param_groups": state["param_groups"]} if main else {}


def shard_optimizer_state(optimizer, state: dict) -> dict:
    """A whole optimizer state (as ``full_optimizer_state`` returns it) cut to this process's shards."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    out: dict[int, dict] = {}
    for index, entry in state["state"].items():
        param = params[int(index)]
        out[index] = {k: (shard_tensors({"t": v}, {"t": param})["t"] if torch.is_tensor(v) and v.dim() > 0 else v)
                      for k, v in entry.items()}
    return {"state": out, "param_groups": state["param_groups"]}
