"""Inference latency: base model vs merged DSEE model vs unmerged (adapted) DSEE model.

BERT-base shapes (``BertForSequenceClassification(BertConfig())``, random weights, ``eval()``),
a batch of random token ids (default 8 × 128), forward passes under ``torch.inference_mode()``.

- base: the plain model.
- unmerged: a copy with ``add_dsee(DSEEConfig(rank=16, alpha=32, num_sparse=64))``, B and S set to
  non-zero values (N(0, 0.02²)) so the update is real.
- merged: a copy of the adapted model after ``merge_dsee``. It must be a plain
  ``BertForSequenceClassification`` with exactly the base model's parameter names and shapes
  (asserted), and must give the unmerged model's logits (checked).

The three are measured INTERLEAVED: ``--rounds`` rounds of ``--passes`` timed forwards per model,
the order changed every round (all 6 orders in turn). Reported: median latency per model and the ratios; merged / base
should be 1.00 within noise.

    python benchmarks/bench_merged.py [--rounds 10] [--passes 3] [--batch-size 8] [--seq-len 128]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import CpuMeter, print_table, record  # noqa: E402

from dsee import DSEEConfig, DSEELinear, add_dsee, merge_dsee  # noqa: E402

MODELS = ("base", "merged", "unmerged")
ORDERS = tuple(itertools.permutations(MODELS))  # every order in turn: each model follows each other equally often
MERGED_BASE_TOLERANCE = 0.05  # "1.00 within noise": what this benchmark calls noise on a shared machine


def build_models(quick: bool, seed: int = 0) -> dict[str, torch.nn.Module]:
    from transformers import BertConfig, BertForSequenceClassification

    if quick:
        config = BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)
    else:
        config = BertConfig()  # BERT-base
    torch.manual_seed(seed)
    base = BertForSequenceClassification(config).eval()

    unmerged = add_dsee(copy.deepcopy(base), DSEEConfig(rank=16, alpha=32, num_sparse=64))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in unmerged.modules():
            if isinstance(module, DSEELinear):
                for _, delta, _ in module.deltas():
                    delta.lora_B.normal_(0.0, 0.02, generator=g)
                    delta.sparse_values.normal_(0.0, 0.02, generator=g)
    unmerged.eval()

    merged = merge_dsee(copy.deepcopy(unmerged)).eval()
    check_merged(base, merged)
    return {"base": base, "merged": merged, "unmerged": unmerged}


def check_merged(base: torch.nn.Module, merged: torch.nn.Module) -> None:
    assert type(merged) is type(base), f"merged model is a {type(merged).__name__}, not a {type(base).__name__}"
    assert not any(isinstance(m, DSEELinear) for m in merged.modules()), "merged model still holds DSEELinear layers"
    base_shapes = {k: tuple(v.shape) for k, v in base.state_dict().items()}
    merged_shapes = {k: tuple(v.shape) for k, v in merged.state_dict().items()}
    assert merged_shapes == base_shapes, "merged model's state_dict keys or shapes differ from the base model's"
    base_params = {k: tuple(p.shape) for k, p in base.named_parameters()}
    merged_params = {k: tuple(p.shape) for k, p in merged.named_parameters()}
    assert merged_params == base_params, "merged model's parameters differ from the base model's"


def make_batch(batch_size: int, seq_len: int, vocab_size: int, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, vocab_size, (batch_size, seq_len), generator=g),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--passes", type=int, default=3, help="timed forwards per model per round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forwards per model before the rounds")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quick", action="store_true", help="tiny model and batch: a smoke run")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to results.jsonl")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_size, args.seq_len = min(args.batch_size, 2), min(args.seq_len, 16)
        args.rounds, args.passes, args.warmup = min(args.rounds, 2), min(args.passes, 2), 1
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()

    print(f"inference, batch {args.batch_size} x {args.seq_len}, {args.threads} threads"
          + (" (quick)" if args.quick else ""), flush=True)
    start = time.perf_counter()
    models = build_models(args.quick)
    batch = make_batch(args.batch_size, args.seq_len, models["base"].config.vocab_size)

    with torch.inference_mode():
        logits = {name: m(**batch).logits for name, m in models.items()}
        max_diff = (logits["merged"] - logits["unmerged"]).abs().max().item()
        base_diff = (logits["merged"] - logits["base"]).abs().max().item()
        assert max_diff < 1e-3, f"merged and unmerged logits differ by {max_diff}"
        assert base_diff > max_diff, "the update did not change the model: B and S are not in effect"
        print(f"  merged vs unmerged logits: max |diff| {max_diff:.2e} (merged vs base: {base_diff:.2e})")
        for model in models.values():
            for _ in range(args.warmup):
                model(**batch)
        times: dict[str, list[float]] = {m: [] for m in MODELS}
        meter = CpuMeter()
        for r in range(args.rounds):
            for name in ORDERS[r % len(ORDERS)]:
                for _ in range(args.passes):
                    t0 = time.perf_counter()
                    models[name](**batch)
                    times[name].append(time.perf_counter() - t0)
            summary = "  ".join(f"{m} {statistics.median(times[m]) * 1e3:.0f}" for m in MODELS)
            print(f"  round {r + 1}/{args.rounds}: median ms  {summary}", flush=True)
        timing_cpu_share = meter.share()

    medians = {m: statistics.median(times[m]) for m in MODELS}

    def quartiles(values: list[float]) -> tuple[float, float]:
        if len(values) < 2:
            return values[0], values[0]
        q = statistics.quantiles(values, n=4)
        return q[0], q[2]

    print(f"\nforward latency ({args.rounds} rounds x {args.passes} passes per model, interleaved; "
          f"cpu share {timing_cpu_share})")
    print_table(
        ["model", "passes", "median ms", "q1 ms", "q3 ms", "min ms", "vs base"],
        [[m, len(times[m]), medians[m] * 1e3, quartiles(times[m])[0] * 1e3, quartiles(times[m])[1] * 1e3,
          min(times[m]) * 1e3, medians[m] / medians["base"]] for m in MODELS],
        [None, None, ".1f", ".1f", ".1f", ".1f", ".3f"],
    )
    ratio_merged = medians["merged"] / medians["base"]
    ratio_unmerged = medians["unmerged"] / medians["base"]
    met = abs(ratio_merged - 1.0) <= MERGED_BASE_TOLERANCE
    print(f"\nunmerged / merged: {medians['unmerged'] / medians['merged']:.3f}")
    print(f"target: merged / base = 1.00 (within {MERGED_BASE_TOLERANCE:.0%}): {ratio_merged:.3f} -> "
          f"{'MET' if met else 'MISSED'}; merged model is a plain {type(models['merged']).__name__} "
          "with the base model's parameter shapes (asserted)")
    results = {
        "batch_size": args.batch_size, "seq_len": args.seq_len, "rounds": args.rounds, "passes": args.passes,
        "quick": args.quick, "threads": args.threads,
        "time": {m: {"median_s": medians[m], "passes_s": times[m]} for m in MODELS},
        "ratio_merged_base": ratio_merged,
        "ratio_unmerged_base": ratio_unmerged,
        "ratio_unmerged_merged": medians["unmerged"] / medians["merged"],
        "timing_cpu_share": timing_cpu_share,
        "merged_vs_unmerged_max_abs_logit_diff": max_diff,
        "merged_is_plain_with_base_shapes": True,
        "target": {"merged_base_tolerance": MERGED_BASE_TOLERANCE, "met": met},
        "wall_s": time.perf_counter() - start,
    }
    print(f"benchmark wall time {results['wall_s']:.0f} s")
    if not args.no_record:
        record("merged", results, timed_share=timing_cpu_share)
    return results


if __name__ == "__main__":
    main()
