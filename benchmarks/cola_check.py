"""Why does `dsee train --task cola` with the defaults end at Matthews correlation 0?

Two measurements on GLUE CoLA (all-MiniLM-L6-v2, 2,000 training sentences, the whole dev set):

1. **A linear probe of the frozen checkpoint** (no fine-tuning): logistic regression (scikit-learn) on
   three fixed sentence features of the training sentences, scored on dev: the pooler output (what
   the classification head reads), the last layer's [CLS] vector, and the mean of the last layer's
   token vectors (what the sentence-embedding model was trained to produce). How much grammaticality
   the checkpoint carries before any training.
2. **Training runs**, one after the other, each `dsee train --task cola --max-train-samples 2000` with
   the defaults but for one change (``VARIANTS``): the defaults themselves; adapters on every linear
   map of the blocks instead of q and v (targets); the pooler trained too (head); 10 epochs instead
   of 3; full fine-tuning. Per run: the dev MCC after each epoch, how many dev sentences the kept
   model puts in each class, wall time.

Each finished run is appended to results.jsonl at once (``cola_check_run``; the probe as
``cola_check_probe``), so a long series that stops keeps what it measured. The CoLA runs of the GLUE
experiment (``glue_runs.jsonl``: learning rates, seeds, the trained pooler, full fine-tuning, all with
bf16 autocast) are summarised beside them (``--glue-runs``), labelled as such.

    python benchmarks/cola_check.py --data-dir ../shared/data/glue [--variants default,targets,...] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import print_table, record  # noqa: E402

# name -> (what changes, extra `dsee train` arguments)
VARIANTS = {
    "default": ("nothing: DSEE r = 16 on q, v; lr 1.5e-3; 3 epochs", []),
    "targets": ("adapters on every linear map of the blocks (q, k, v, o, FFN in and out)",
                ["--targets", "query,key,value,output.dense,intermediate.dense"]),
    "pooler": ("the pooler trained with the classifier (the head)", ["--modules-to-save", "pooler,classifier"]),
    "epochs10": ("10 epochs instead of 3", ["--epochs", "10"]),
    "lr5e-3": ("learning rate 5e-3 instead of 1.5e-3", ["--lr", "5e-3"]),
    "full": ("full fine-tuning (lr 5e-5, its default)", ["--method", "full"]),
}
HERE = Path(__file__).resolve().parent


def glue_experiment_cola(path: Path = HERE / "glue_runs.jsonl") -> list[dict]:
    """The CoLA runs recorded by glue_experiment.py (2,000 sentences, 3 epochs, bf16 autocast): method, rate,
    seed, dev MCC."""
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            entry = json.loads(line)["results"]
            if entry["settings"]["task"] == "cola":
                rows.append({"method": entry["settings"]["method"], "lr": entry["settings"]["lr"],
                             "seed": entry["settings"]["seed"], "mcc": round(entry["metrics"]["score"], 4)})
    return rows


def linear_probe(data_dir: str, train_samples: int, eval_samples: int | None, seed: int) -> dict[str, float]:
    """Dev MCC of a logistic regression on each frozen feature of the default checkpoint (module doc, 1)."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import matthews_corrcoef
    from transformers import AutoModel, AutoTokenizer

    from dsee.models import default_model_path
    from dsee.train.data import load_glue

    path = default_model_path()
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    train = load_glue("cola", data_dir, "train", train_samples, seed)
    dev = load_glue("cola", data_dir, "validation", eval_samples, seed)

    def features(split) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"pooler": [], "cls": [], "mean": []}
        with torch.no_grad():
            for start in range(0, len(split), 64):
                batch = tokenizer([t[0] for t in split.texts[start:start + 64]], padding=True, truncation=True,
                                  max_length=128, return_tensors="pt")
                hidden = model(**batch)
                mask = batch["attention_mask"].unsqueeze(-1).float()
                out["pooler"].append(hidden.pooler_output)
                out["cls"].append(hidden.last_hidden_state[:, 0])
                out["mean"].append((hidden.last_hidden_state * mask).sum(1) / mask.sum(1))
        return {k: torch.cat(v).numpy() for k, v in out.items()}

    train_x, dev_x = features(train), features(dev)
    probe = {}
    for name in train_x:
        for weighting in (None, "balanced"):
            fitted = LogisticRegression(max_iter=2000, class_weight=weighting).fit(train_x[name], train.labels)
            predicted = fitted.predict(dev_x[name])
            key = f"{name}{'' if weighting is None else ' balanced'}"
            probe[key] = float(matthews_corrcoef(dev.labels, predicted))
        probe[f"{name} spread"] = float(train_x[name].std(axis=0).mean())  # how much the feature varies
    return probe


def train_variant(name: str, data_dir: str, out: Path, train_samples: int, eval_samples: int | None,
                  epochs: str | None) -> dict:
    from dsee.cli import main as dsee

    argv = ["train", "--task", "cola", "--data-dir", data_dir, "--max-train-samples", str(train_samples),
            "--out", str(out), "--no-progress", *VARIANTS[name][1]]
    if eval_samples is not None:
        argv += ["--max-eval-samples", str(eval_samples)]
    if epochs is not None and "--epochs" not in argv:
        argv += ["--epochs", epochs]
    start = time.perf_counter()
    assert dsee(argv) == 0, argv
    wall = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    log = [json.loads(line) for line in (out / "eval_log.jsonl").read_text().splitlines()]
    return {"variant": name, "change": VARIANTS[name][0], "mcc": metrics["score"],
            "mcc_by_epoch": [round(entry["dev"]["validation"]["matthews_correlation"], 4) for entry in log],
            "best_epoch": next(e["epoch"] for e in log if e["step"] == metrics["best_step"]),
            "predicted_classes": metrics.get("predicted_classes"), "degenerate": metrics.get("degenerate") is not None,
            "trainable_share": metrics["trainable_share"], "wall_s": round(wall, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="the GLUE folder (holding CoLA/)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--train-samples", type=int, default=2000)
    p.add_argument("--no-probe", action="store_true", help="skip the linear probe")
    p.add_argument("--glue-runs", action="store_true", help="also print the CoLA runs of glue_runs.jsonl")
    p.add_argument("--quick", action="store_true", help="a smoke test: 100 sentences, 100 dev, 1 epoch, not recorded")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    train_samples, eval_samples, epochs = (100, 100, "1") if args.quick else (args.train_samples, None, None)

    keep = not (args.no_record or args.quick)
    if args.glue_runs:
        print("CoLA in glue_runs.jsonl (glue_experiment.py: 2,000 sentences, 3 epochs, bf16 autocast)")
        print_table(["method", "lr", "seed", "dev MCC"], [[r["method"], r["lr"], r["seed"], r["mcc"]]
                                                          for r in glue_experiment_cola()], [None, ".1e", None, ".4f"])
    if not args.no_probe:
        probe = linear_probe(args.data_dir, train_samples, eval_samples, seed=42)
        print("linear probe of the frozen checkpoint (dev MCC; spread: mean std of the feature over sentences)")
        print_table(["feature", "MCC", "MCC balanced", "spread"],
                    [[f, probe[f], probe[f"{f} balanced"], probe[f"{f} spread"]] for f in ("pooler", "cls", "mean")],
                    [None, ".3f", ".3f", ".3f"])
        if keep:
            record("cola_check_probe", {"train_samples": train_samples, "probe": probe})
    rows = []
    with tempfile.TemporaryDirectory(prefix="cola-check-") as tmp:
        for name in names:  # one at a time: the machine's cores are the budget
            rows.append(train_variant(name, args.data_dir, Path(tmp) / name, train_samples, eval_samples, epochs))
            print(json.dumps(rows[-1]), flush=True)
            if keep:
                record("cola_check_run", {"train_samples": train_samples, **rows[-1]})
    print_table(["variant", "dev MCC (kept)", "MCC by epoch", "predicted classes", "trainable", "wall s"],
                [[r["variant"], r["mcc"], " ".join(f"{m:.3f}" for m in r["mcc_by_epoch"]),
                  json.dumps(r["predicted_classes"]), r["trainable_share"], r["wall_s"]] for r in rows],
                [None, ".4f", None, None, ".4f", ".0f"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
