"""Where each support method puts the N entries of S (paper §3.1's Ω), and on which input features.

For the trained runs given (typically the frontier experiment's, any support) and for the
data-free methods rebuilt on the same base model at the same budget, per adapted matrix:

- rows / columns touched: the share of the d_out rows and d_in columns holding at least one entry;
- top-10 columns: the share of the N entries in the 10 columns that hold the most;
- activation weight: the mean over Ω of ‖X_j‖₂ (the input feature's norm over calibration tokens in
  the pre-trained model, Wanda's statistic) divided by the mean over all columns: 1 for a support blind to activations,
  above 1 when Ω sits on the columns that multiply the largest inputs (outlier features).

Each number is the mean over the adapted matrices. A support concentrated on whole columns of
high-norm features gives every step of S a large effect on the output (AdamW moves every entry by
about the learning rate, whatever the input it multiplies), which is what this measures.

    python benchmarks/support_shape.py runs/frontier/stsb/split0.5-gradient-r8/lr0.003/seed0-no \\
        --methods grebsmo,magnitude,random
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _record import record  # noqa: E402

from dsee.adapters.calibration import input_norms  # noqa: E402
from dsee.adapters.inject import add_dsee, dsee_layers  # noqa: E402
from dsee.adapters.layer import linear_shape  # noqa: E402
from dsee.models import resolve_model  # noqa: E402
from dsee.train.pipeline import base_model, load_task_data, load_tokenizer, load_trained_model  # noqa: E402
from dsee.train.run import load_run_config  # noqa: E402
from dsee.train.support import calibration_batches  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="finished dsee run directories with a sparse update (same model and task)")
    p.add_argument("--methods", default="grebsmo,magnitude,random",
                   help="data-free supports rebuilt at the first run's budget for comparison ('' for none)")
    p.add_argument("--calibration-batches", type=int, default=8, help="training batches for ‖X_j‖")
    p.add_argument("--no-record", action="store_true", help="do not append the table to results.jsonl")
    return p.parse_args(argv)


def supports(model) -> dict[str, tuple[torch.Tensor, tuple[int, int]]]:
    """{module name: (flat indices of Ω in the full (d_out, d_in) weight, (d_out, d_in))}."""
    return {name: (layer.sparse_in_full_matrix()[1], linear_shape(layer)) for name, layer in dsee_layers(model)}


def shape_of(omega: dict, norms: dict[str, torch.Tensor]) -> dict[str, float]:
    """The four measures of the module doc, averaged over the matrices."""
    rows, cols, top10, weight = [], [], [], []
    for name, (flat, (d_out, d_in)) in omega.items():
        r, c = torch.div(flat, d_in, rounding_mode="floor"), flat % d_in
        per_col = torch.bincount(c, minlength=d_in)
        rows.append(torch.unique(r).numel() / d_out)
        cols.append(int((per_col > 0).sum()) / d_in)
        top10.append(float(per_col.topk(min(10, d_in)).values.sum()) / flat.numel())
        norm = norms[name]
        weight.append(float(norm[c].mean() / norm.mean()))
    return {"rows_touched": statistics.mean(rows), "columns_touched": statistics.mean(cols),
            "top10_columns": statistics.mean(top10), "activation_weight": statistics.mean(weight),
            "entries_per_matrix": statistics.mean(flat.numel() for flat, _ in omega.values())}


def main(argv=None) -> int:
    args = parse_args(argv)
    first = load_run_config(args.runs[0])
    tokenizer = load_tokenizer(resolve_model(first.model))
    data = load_task_data(first)
    shapes: dict[str, dict] = {}
    norms = None
    for run in args.runs:
        config = load_run_config(run)
        if (config.model, config.task) != (first.model, first.task):
            raise SystemExit(f"{run}: model/task {config.model}/{config.task} differ from the first run's")
        model = load_trained_model(run, config, tokenizer=tokenizer)
        omega = supports(model)
        if norms is None:  # of the pre-trained model, without any run's adapters: the same for every support
            batches = calibration_batches(data, tokenizer, first, args.calibration_batches)
            norms = input_norms(base_model(resolve_model(first.model), data, tokenizer), list(omega), batches)
        shapes[f"{config.dsee_config().sparse_method} ({run})"] = shape_of(omega, norms)
    for method in filter(None, args.methods.split(",")):
        model = base_model(resolve_model(first.model), data, tokenizer)
        add_dsee(model, dataclasses.replace(first.dsee_config(), sparse_method=method))
        shapes[method] = shape_of(supports(model), norms)
    lines = ["| support | entries / matrix | rows touched | columns touched | top-10 columns' share | activation weight |",
             "|---|---|---|---|---|---|"]
    for name, s in shapes.items():
        lines.append(f"| {name} | {s['entries_per_matrix']:,.0f} | {s['rows_touched']:.0%} | {s['columns_touched']:.0%} | "
                     f"{s['top10_columns']:.0%} | {s['activation_weight']:.2f} |")
    print("\n".join(lines))
    if not args.no_record:
        record("support_shape", {"model": first.model, "task": first.task, "shapes": shapes})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
