"""Ω at scale: GreBsmo against one randomized SVD of the same matrix, on Llama-3-8B's shapes.

For each shape (d_out × d_in) and kind of weight, interleaved over ``--repeats`` rounds (so that a
busy machine slows both alike), the seconds of:

- ``svd``: ``torch.svd_lowrank(W, q=r + 8, niter=2)``, r = min(d_out, d_in) / 8 (the reference);
- ``grebsmo``: ``dsee.adapters.support.grebsmo(W, r)``, the low-rank part GreBsmo fits;
- ``support``: ``compute_support(W, N, "grebsmo")``, what ``add_dsee`` pays per matrix (GreBsmo,
  |W − L| and the N largest), N = 1% of the entries.

Medians per method, the ratios grebsmo / svd and support / svd (target: grebsmo ≤ 1.5× one randomized
SVD; it was 3.2-3.6×), and an estimate for a whole Llama-3-8B with every linear layer adapted: 32
blocks of q, o (4096 × 4096), k, v (1024 × 4096), gate, up (14336 × 4096) and down (4096 × 14336).

Kinds of weight (``--kinds``): ``random`` (an untrained ``nn.Linear``: Kaiming-uniform) and
``planted`` (rank min/24 with one row in 16 scaled 8×, one outlier of size 4-6 per 9,216 entries and
Gaussian noise of std 0.05: tests/test_decompose.py's 768 × 768 matrix (rank 32, 64 outliers) at
scale, where GreBsmo's rank has to grow;
the share of outliers among the N largest |W − L| is reported as the recall).

    python benchmarks/bench_grebsmo.py                   # 4096², 1024 × 4096, 14336 × 4096, 4096 × 14336
    python benchmarks/bench_grebsmo.py --quick           # small shapes: smoke test
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import CpuMeter, print_table, record  # noqa: E402

from dsee import compute_support  # noqa: E402
from dsee.adapters.support import default_rank, grebsmo  # noqa: E402

LLAMA3_8B = {(4096, 4096): 2, (1024, 4096): 2, (14336, 4096): 2, (4096, 14336): 1}  # (d_out, d_in): per block
LLAMA3_8B_BLOCKS = 32
QUICK = {(512, 512): 2, (128, 512): 2, (1792, 512): 2, (512, 1792): 1}


def make_weight(kind: str, shape: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W, flat indices of the planted outliers or None)."""
    m, n = shape
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        bound = 1 / math.sqrt(n)  # nn.Linear's default init
        return (torch.rand(m, n, generator=g) * 2 - 1) * bound, None
    r = max(1, min(m, n) // 24)
    low_rank = torch.randn(m, r, generator=g) @ torch.randn(r, n, generator=g) / r**0.5
    low_rank[torch.randperm(m, generator=g)[: max(1, m // 16)]] *= 8.0
    count = max(1, m * n // 9216)
    where = torch.randperm(m * n, generator=g)[:count]
    signs = torch.sign(torch.randn(count, generator=g))
    weight = low_rank.flatten()
    weight[where] += (4 + 2 * torch.rand(count, generator=g)) * signs
    weight = weight.view(m, n) + 0.05 * torch.randn(m, n, generator=g)
    return weight, where


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(weight: torch.Tensor, repeats: int, density: float) -> dict:
    """Interleaved seconds of the three methods on one matrix."""
    rank = default_rank(weight.shape)
    count = max(1, round(density * weight.numel()))
    runs: dict[str, list[float]] = {"svd": [], "grebsmo": [], "support": []}
    methods = {
        "svd": lambda: torch.svd_lowrank(weight, q=rank + 8, niter=2),
        "grebsmo": lambda: grebsmo(weight, rank, generator=torch.Generator().manual_seed(0)),
        "support": lambda: compute_support(weight, count, "grebsmo", seed=0),
    }
    chosen = None
    for _ in range(repeats):
        for name, fn in methods.items():
            seconds, out = timed(fn)
            runs[name].append(seconds)
            if name == "support":
                chosen = out
    return {"rank": rank, "num_sparse": count, "runs_s": runs, "chosen": chosen,
            **{f"{k}_s": statistics.median(v) for k, v in runs.items()}}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", default="random,planted")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--density", type=float, default=0.01, help="N as a share of each matrix's entries")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--quick", action="store_true", help="shapes 8× smaller, one repeat (smoke test)")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = QUICK if args.quick else LLAMA3_8B
    repeats = 1 if args.quick else args.repeats
    rows, results = [], {"shapes": {}, "repeats": repeats, "density": args.density, "threads": args.threads}
    meter = CpuMeter()
    for kind in args.kinds.split(","):
        per_block = {"svd_s": 0.0, "grebsmo_s": 0.0, "support_s": 0.0}
        for shape, count in shapes.items():
            weight, planted = make_weight(kind, shape)
            out = measure(weight, repeats, args.density)
            recall = None
            if planted is not None:  # the planted outliers among the N chosen (N ≥ the outliers here)
                chosen = set(out["chosen"].tolist())
                recall = sum(int(i) in chosen for i in planted.tolist()) / planted.numel()
            entry = {k: v for k, v in out.items() if k != "chosen"}
            entry.update(kind=kind, shape=list(shape), recall=recall, grebsmo_over_svd=out["grebsmo_s"] / out["svd_s"],
                         support_over_svd=out["support_s"] / out["svd_s"])
            results["shapes"][f"{kind} {shape[0]}x{shape[1]}"] = entry
            for key in per_block:
                per_block[key] += count * out[key]
            rows.append([kind, f"{shape[0]} × {shape[1]}", out["rank"], out["svd_s"], out["grebsmo_s"],
                         out["support_s"], entry["grebsmo_over_svd"], entry["support_over_svd"],
                         "-" if recall is None else f"{recall:.3f}"])
            print(f"  {kind} {shape}: svd {out['svd_s']:.2f} s, grebsmo {out['grebsmo_s']:.2f} s, "
                  f"support {out['support_s']:.2f} s", flush=True)
        whole = {k: LLAMA3_8B_BLOCKS * v for k, v in per_block.items()}
        results[f"llama3_8b_all_linear_{kind}"] = {**whole, "ratio": whole["grebsmo_s"] / whole["svd_s"]}
        rows.append([kind, "Llama-3-8B, 224 matrices" + (" (quick shapes)" if args.quick else ""), "-",
                     whole["svd_s"], whole["grebsmo_s"], whole["support_s"], whole["grebsmo_s"] / whole["svd_s"],
                     whole["support_s"] / whole["svd_s"], "-"])
    results["cpu_share"] = meter.share()
    print()
    print_table(["weight", "shape", "rank", "svd s", "grebsmo s", "support s", "grebsmo / svd", "support / svd",
                 "recall"], rows, [None, None, None, ".2f", ".2f", ".2f", ".2f", ".2f", None])
    worst = max(e["grebsmo_over_svd"] for e in results["shapes"].values())
    recalls = [e["recall"] for e in results["shapes"].values() if e["recall"] is not None]
    results["target"] = {"grebsmo_over_svd_max": 1.5, "worst": worst, "met": worst <= 1.5,
                         "recall_min": min(recalls) if recalls else None}
    print(f"\ntarget: grebsmo ≤ 1.5× one randomized SVD on every matrix: worst {worst:.2f}× -> "
          f"{'MET' if worst <= 1.5 else 'MISSED'}" + (f"; planted recall ≥ {min(recalls):.3f}" if recalls else ""))
    if not args.no_record:
        record("grebsmo_scale", results, timed_share=results["cpu_share"])
    return results


if __name__ == "__main__":
    main()
