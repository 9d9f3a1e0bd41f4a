"""Do `dsee train`'s defaults learn a small pair-classification file with no tuning?

A file outside the GLUE loader: MRPC sentence pairs written to CSV (the first 1,000 rows of a
seeded shuffle of the training set, and 400 of the dev set), then

    dsee train --train-file train.csv --validation-file dev.csv --text-columns sentence1,sentence2 \
               --label-column label --epochs 3 --out RUN              (every other setting at its default)

for the current default learning rate, and for each rate in ``--compare-lrs`` (the old default,
5e-4, by default). Prints dev accuracy and macro-F1 against the majority class's, appends to
results.jsonl.

    python benchmarks/defaults_check.py --data-dir ../shared/data/glue
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import print_table, record  # noqa: E402


def write_pairs(source: Path, target: Path, rows: int, seed: int) -> float:
    """MRPC's TSV (quality, id, id, s1, s2) to CSV (sentence1, sentence2, label); returns the majority share."""
    lines = source.read_text(encoding="utf-8-sig").splitlines()[1:]
    random.Random(seed).shuffle(lines)
    picked = [line.split("\t") for line in lines[:rows]]
    with open(target, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence1", "sentence2", "label"])
        for quality, _, _, s1, s2 in picked:
            writer.writerow([s1, s2, "paraphrase" if quality == "1" else "different"])
    ones = sum(p[0] == "1" for p in picked)
    return max(ones, len(picked) - ones) / len(picked)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="the GLUE folder (holding MRPC/)")
    p.add_argument("--compare-lrs", default="5e-4", help="rates to run besides the default (comma-separated)")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    from dsee.cli import main as dsee
    from dsee.train.settings import DEFAULT_LR

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_pairs(Path(args.data_dir) / "MRPC" / "train.tsv", tmp / "train.csv", 1000, seed=0)
        majority = write_pairs(Path(args.data_dir) / "MRPC" / "dev.tsv", tmp / "dev.csv", 400, seed=0)
        for lr in [None] + [float(x) for x in args.compare_lrs.split(",") if x]:
            out = tmp / f"run-{lr}"
            argv_ = ["train", "--train-file", str(tmp / "train.csv"), "--validation-file", str(tmp / "dev.csv"),
                     "--text-columns", "sentence1,sentence2", "--label-column", "label", "--epochs", "3",
                     "--out", str(out), "--no-progress"] + ([] if lr is None else ["--lr", str(lr)])
            assert dsee(argv_) == 0
            import json

            metrics = json.loads((out / "metrics.json").read_text())
            dev = metrics["dev"][metrics["selection_split"]]
            rows.append({"lr": lr or DEFAULT_LR["dsee"], "default": lr is None, "accuracy": metrics["score"],
                         "macro_f1": dev["f1_macro"], "majority": majority,
                         # predicting the majority class everywhere: one class at F1 2m/(1+m), the other at 0
                         "majority_macro_f1": majority / (1 + majority), "wall_s": metrics["wall_seconds"]})
    print_table(["lr", "default", "dev accuracy", "majority class", "macro-F1", "majority macro-F1", "wall s"],
                [[r["lr"], r["default"], r["accuracy"], r["majority"], r["macro_f1"], r["majority_macro_f1"],
                  r["wall_s"]] for r in rows],
                [".1e", None, ".3f", ".3f", ".3f", ".3f", ".0f"])
    if not args.no_record:
        record("defaults_check", {"rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
