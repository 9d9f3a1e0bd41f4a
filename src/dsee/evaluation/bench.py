"""Inference latency of exported models, measured side by side (``dsee bench``).

Models are timed in alternating blocks, the order reversed every round, so a slow stretch of a
shared machine hits all of them alike; the median over rounds is reported, with quartiles, and
each model's median relative to the first. ``torch.inference_mode``; one warm-up pass per model.
CPU always; a CUDA GPU too when present (synchronised around each timed block).

Backends: a model is a PyTorch module or an ONNX Runtime session
(``deploy.runtime.OnnxRuntimeModel``, CPU only); both kinds are timed in the same interleaved
rounds on the same token ids, so "how much faster where I deploy it" is one table
(``backend_models``: every exported directory on every backend asked for).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

BACKENDS = ("torch", "onnxruntime")


@dataclass(frozen=True)
class Timing:
    name: str
    device: str
    median_s: float
    q1_s: float
    q3_s: float
    examples_per_s: float
    ratio_to_first: float  # median / the first model's median (< 1: faster)


def _inputs(model, batch_size: int, seq_len: int, device) -> dict[str, torch.Tensor]:
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", None) or 1000)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(min(5, vocab - 1), vocab, (batch_size, seq_len), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def _forward(model, inputs: dict[str, torch.Tensor], device: torch.device) -> Callable[[], object]:
    """One forward pass of ``model`` on ``inputs`` as a call without arguments (inputs prepared once)."""
    if isinstance(model, nn.Module):
        model.to(device).eval()
        return lambda: model(**inputs)
    if device.type != "cpu":
        raise ValueError(f"{type(model).__name__} runs on the CPU only, not on {device}")
    feed = model.feed(inputs)  # an ONNX Runtime session: numpy inputs converted outside the timing
    return lambda: model.run(feed)


def time_models(models: dict[str, object], *, batch_size: int = 32, seq_len: int = 128, rounds: int = 7,
                passes: int = 2, device: str | torch.device = "cpu",
                clock: Callable[[], float] = time.perf_counter) -> list[Timing]:
    """Median seconds per forward pass of each model (interleaved rounds of ``passes`` passes).

    A model is an ``nn.Module`` or an ``OnnxRuntimeModel`` (CPU); all get the same token ids when
    their vocabularies agree. ``clock``: wall time by default; ``time.thread_time`` measures the CPU
    time of the calling thread instead, which other work on a shared machine hardly changes, but
    which counts all the work only when the models run on that one thread (torch and ONNX
    Runtime at 1 thread).
    """
    device = torch.device(device)
    names = list(models)
    calls = {n: _forward(models[n], _inputs(models[n], batch_size, seq_len, device), device) for n in names}
    samples: dict[str, list[float]] = {n: [] for n in names}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        for n in names:  # warm-up
            calls[n]()
        for r in range(rounds):
            for n in names if r % 2 == 0 else reversed(names):
                sync()
                start = clock()
                for _ in range(passes):
                    calls[n]()
                sync()
                samples[n].append((clock() - start) / passes)
    first = statistics.median(samples[names[0]])
    result = []
    for n in names:
        q1, med, q3 = statistics.quantiles(samples[n], n=4) if len(samples[n]) > 1 else [samples[n][0]] * 3
        med = statistics.median(samples[n])
        result.append(Timing(n, str(device), med, q1, q3, batch_size / med, med / first))
    return result


def parse_backends(text: str) -> list[str]:
    """"torch", "onnxruntime" or "torch,onnxruntime" -> the list (in the order given, once each)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in BACKENDS]
    if not items or bad:
        raise ValueError(f"--backend {text!r}: choose {', '.join(BACKENDS)}, or both as {','.join(BACKENDS)}")
    return list(dict.fromkeys(items))


def backend_models(directories: list[str | Path], backends: list[str], scratch: str | Path,
                   log: Callable[[str], None] | None = None) -> dict[str, object]:
    """Every exported directory on every backend, keyed "DIR" (one backend) or "DIR [backend]".

    A directory written by ``save_pretrained`` / ``dsee export`` loads in PyTorch and is exported
    to ONNX under ``scratch`` for ONNX Runtime (checked against PyTorch as every export is); an
    ONNX export (``model.onnx``) runs on ONNX Runtime only.
    """
    from ..deploy.onnx_export import ONNX_FILE, export_onnx
    from ..deploy.runtime import OnnxRuntimeModel
    from ..sparsity.export import load_pretrained

    out: dict[str, object] = {}
    for i, directory in enumerate(map(Path, directories)):
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: no such exported model directory")
        is_onnx = (directory / ONNX_FILE).is_file()
        if is_onnx and "torch" in backends:
            raise ValueError(f"{directory} is an ONNX export: time it with --backend onnxruntime, or give the "
                             "directory `dsee export` wrote without --format onnx")
        model = None if is_onnx else load_pretrained(directory)
        for backend in backends:
            name = str(directory) if len(backends) == 1 else f"{directory} [{backend}]"
            if backend == "torch":
                out[name] = model
                continue
            onnx_dir = directory
            if not is_onnx:
                onnx_dir = Path(scratch) / f"onnx-{i}"
                check = export_onnx(model, onnx_dir)["check"]
                if log is not None:
                    log(f"{directory}: exported to ONNX for onnxruntime (matches PyTorch within "
                        f"{check['max_abs_diff']:.2g})")
            out[name] = OnnxRuntimeModel(onnx_dir)
    return out


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
