"""Inference latency of exported models, measured side by side (``dsee bench``).

Models are timed in alternating blocks, the order reversed every round, so a slow stretch of a
shared machine hits all of them alike; the median over rounds is reported, with quartiles, and
each model's median relative to the first. ``torch.inference_mode``; one warm-up pass per model.
CPU always; a CUDA GPU too when present (synchronised around each timed block).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Timing:
    name: str
    device: str
    median_s: float
    q1_s: float
    q3_s: float
    examples_per_s: float
    ratio_to_first: float  # median / the first model's median (< 1: faster)


def _inputs(model: nn.Module, batch_size: int, seq_len: int, device) -> dict[str, torch.Tensor]:
    vocab = int(getattr(model.config, "vocab_size", 1000))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(min(5, vocab - 1), vocab, (batch_size, seq_len), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def time_models(models: dict[str, nn.Module], *, batch_size: int = 32, seq_len: int = 128, rounds: int = 7,
                passes: int = 2, device: str | torch.device = "cpu") -> list[Timing]:
    """Median seconds per forward pass of each model (interleaved rounds of ``passes`` passes)."""
    device = torch.device(device)
    names = list(models)
    inputs = {n: _inputs(models[n], batch_size, seq_len, device) for n in names}
    for n in names:
        models[n].to(device).eval()
    samples: dict[str, list[float]] = {n: [] for n in names}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        for n in names:  # warm-up
            models[n](**inputs[n])
        for r in range(rounds):
            for n in names if r % 2 == 0 else reversed(names):
                sync()
                start = time.perf_counter()
                for _ in range(passes):
                    models[n](**inputs[n])
                sync()
                samples[n].append((time.perf_counter() - start) / passes)
    first = statistics.median(samples[names[0]])
    result = []
    for n in names:
        q1, med, q3 = statistics.quantiles(samples[n], n=4) if len(samples[n]) > 1 else [samples[n][0]] * 3
        med = statistics.median(samples[n])
        result.append(Timing(n, str(device), med, q1, q3, batch_size / med, med / first))
    return result


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def semi_structured_candidates(model: nn.Module) -> list[str]:
    """The prunable linear weights of ``model`` that hold a 2:4 pattern (every 4 consecutive inputs of
    a row have at most 2 non-zeros): what ``to_sparse_semi_structured`` can run with sparse kernels."""
    from ..sparsity.unstructured import pattern_violations, prunable_modules

    try:
        names = prunable_modules(model)
    except ValueError:  # a model type without a block layout
        return []
    out = []
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):  # GPT-2's Conv1D stores (in, out): the kernel wants Linear
            continue
        weight = module.weight.detach()
        if (weight == 0).any() and pattern_violations(weight, 2, 4) == 0:
            out.append(name)
    return out


def semi_structured_copy(model: nn.Module, dtype: torch.dtype = torch.float16) -> nn.Module:
    """A CUDA copy of ``model`` whose 2:4 weights are ``torch.sparse.SparseSemiStructuredTensor``s
    (NVIDIA's sparse tensor cores). Raises RuntimeError without CUDA: there is no such kernel on CPU."""
    if not torch.cuda.is_available():
        raise RuntimeError("2:4 semi-structured sparse kernels need a CUDA GPU (Ampere or newer)")
    import copy

    from torch.sparse import to_sparse_semi_structured

    names = semi_structured_candidates(model)
    clone = copy.deepcopy(model).to("cuda", dtype).eval()
    for name in names:
        module = clone.get_submodule(name)
        module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
    return clone
