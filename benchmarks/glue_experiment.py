"""GLUE experiment: full fine-tuning vs LoRA vs DSEE (and DSEE's support-selection ablation).

For every task and method, one `dsee.train` run per setting (same loop, same epochs, same batches
for every method). The learning rate of each (task, method) is searched at the first seed: every
rate of the method's grid is run at seed 0 and the best dev score picks the rate (when the best is
on the grid's edge, one rate further out, ×2 or ÷2, is tried too); the other seeds run at that rate
only. The support-selection ablations (Ω by magnitude, by random positions) are
DSEE with another support and take the rate searched for DSEE, to save CPU time. So does the
diagnostic `dsee+pooler` (DSEE with the checkpoint's untrained BERT pooler trained in full, as full
fine-tuning trains it), run at the first seed only. The table reports mean ± std over seeds at the
chosen rate, trainable parameters, wall time per run and training throughput.

Each finished run is appended, with the git commit, date, machine and versions, to
`benchmarks/glue_runs.jsonl` (committed), and a run found there with the same settings is not run
again: the experiment can be stopped and continued later, even on another machine. A run stopped
half-way resumes from its checkpoint in `--out`.

    python benchmarks/glue_experiment.py --data-dir ../shared/data/glue --out runs/glue

Writes a Markdown table and a PNG plot to `--report-dir` (glue_results.md, glue_results.png) and
appends the aggregated numbers to benchmarks/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _protocol import SELECTION_SEED, Family, evaluation_only, seeds_arg  # noqa: E402
from _record import HERE, record  # noqa: E402

from dsee.train.checkpoint import has_checkpoint  # noqa: E402
from dsee.train.loop import train  # noqa: E402
from dsee.train.run import METRICS, RunConfig  # noqa: E402

# method name -> (training method, DSEE settings)
METHODS = {
    "full": ("full", None),
    "lora": ("lora", {"rank": 16, "alpha": 32, "num_sparse": 0}),
    "dsee": ("dsee", {"rank": 16, "alpha": 32, "num_sparse": 64, "sparse_method": "grebsmo"}),
    "dsee-magnitude": ("dsee", {"rank": 16, "alpha": 32, "num_sparse": 64, "sparse_method": "magnitude"}),
    "dsee-random": ("dsee", {"rank": 16, "alpha": 32, "num_sparse": 64, "sparse_method": "random"}),
    # a diagnostic: this checkpoint's BERT pooler was never trained (sentence-transformers mean-pools),
    # and adapters leave it frozen while full fine-tuning trains it; here it is trained in full too
    "dsee+pooler": ("dsee", {"rank": 16, "alpha": 32, "num_sparse": 64, "sparse_method": "grebsmo",
                             "modules_to_save": ["pooler", "classifier"]}),
}
RUNS_PATH = HERE / "glue_runs.jsonl"
# the support-selection ablations are DSEE with another Ω: they take the rate searched for "dsee"
SEARCH_LIKE = {"dsee-magnitude": "dsee", "dsee-random": "dsee", "dsee+pooler": "dsee"}
# diagnostics run at the first seed only
FIRST_SEED_ONLY = {"dsee+pooler"}
TASK_LABEL = {"rte": "RTE", "mrpc": "MRPC", "stsb": "STS-B", "cola": "CoLA", "sst2": "SST-2"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="folder with the GLUE task folders")
    p.add_argument("--out", default="runs/glue", help="where the run directories go")
    p.add_argument("--model", default=None, help="default: the embedded all-MiniLM-L6-v2")
    p.add_argument("--tasks", default="rte,mrpc,stsb,cola,sst2")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", default="1,2", help=f"evaluation seeds; rates are searched on seed {SELECTION_SEED} "
                   "(the selection seed), which the table never shows")
    p.add_argument("--lrs-adapter", default="5e-4,1.5e-3", help="learning rates searched for lora and dsee")
    p.add_argument("--lrs-full", default="3e-5,1e-4", help="learning rates searched for full fine-tuning")
    p.add_argument("--no-extend-edges", dest="extend_edges", action="store_false",
                   help="do not try one rate beyond the grid when the best is on its edge")
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-train-samples", default="rte=2000,mrpc=2000,stsb=2000,cola=2000,sst2=2000",
                   help="per task, e.g. sst2=8000,cola=4000; a task not named uses its whole training set")
    p.add_argument("--mixed-precision", default="bf16", choices=("no", "bf16"),
                   help="bf16 autocast (1.5x faster training steps on this project's AVX512-BF16 CPUs)")
    p.add_argument("--runs-file", default=str(RUNS_PATH), help="finished runs, one JSON line each (appended)")
    p.add_argument("--no-record", action="store_true", help="do not append the summary to results.jsonl")
    p.add_argument("--report-only", action="store_true", help="aggregate the finished runs, train nothing")
    p.add_argument("--report-dir", default=str(Path(__file__).resolve().parent),
                   help="where glue_results.md and glue_results.png go (default: benchmarks/)")
    return p.parse_args(argv)


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def run_dir(out: Path, task: str, method: str, lr: float, seed: int, precision: str = "no") -> Path:
    return out / task / method / f"lr{lr:g}" / (f"seed{seed}" + ("" if precision == "no" else f"-{precision}"))


def settings_key(args, task: str, method: str, lr: float, seed: int, limits: dict[str, int]) -> dict:
    """Everything that makes two runs the same run."""
    key = {"task": task, "method": method, "lr": lr, "seed": seed, "model": args.model, "epochs": args.epochs,
           "batch_size": args.batch_size, "max_length": args.max_length, "max_train_samples": limits.get(task)}
    if args.mixed_precision != "no":  # runs recorded before this option were fp32 and keep their key
        key["mixed_precision"] = args.mixed_precision
    return key


def load_finished(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line)["results"] for line in path.read_text().splitlines() if line.strip()]


def run_one(args, task: str, method: str, lr: float, seed: int, limits: dict[str, int],
            finished: list[dict]) -> dict | None:
    """The kept metrics of one run, with its ``seed``: recorded ones, or trained now (None if report-only)."""
    key = settings_key(args, task, method, lr, seed, limits)
    for done in finished:
        if done["settings"] == key:
            return dict(done["metrics"], seed=seed)
    if args.report_only:
        return None
    path = run_dir(Path(args.out), task, method, lr, seed, args.mixed_precision)
    if (path / METRICS).is_file():
        metrics = json.loads((path / METRICS).read_text())
    else:
        kind, adapter = METHODS[method]
        config = RunConfig(out=str(path), model=args.model, task=task, data_dir=args.data_dir, method=kind,
                           adapter=dict(adapter, seed=seed) if adapter else None, lr=lr, epochs=args.epochs,
                           batch_size=args.batch_size, max_length=args.max_length, seed=seed,
                           max_train_samples=limits.get(task), mixed_precision=args.mixed_precision)
        resume = has_checkpoint(path)
        print(f"\n=== {task} {method} lr={lr:g} seed={seed}{' (resuming)' if resume else ''}", flush=True)
        metrics = train(config, resume=resume, overwrite=not resume)
    kept = {k: metrics[k] for k in ("score", "main_metric", "dev", "trainable_parameters", "trainable_share",
                                    "total_parameters", "wall_seconds", "train_examples",
                                    "train_examples_per_second", "best_step", "steps")}
    record("glue_run", {"settings": key, "metrics": kept}, path=args.runs_file)
    finished.append({"settings": key, "metrics": kept})
    return dict(kept, seed=seed)


def selection_score(runs: list[dict]) -> float:
    return next(m["score"] for m in runs if m["seed"] == SELECTION_SEED)


def best_lr(by_lr: dict[float, list[dict]]) -> float:
    """The learning rate with the best dev score on the selection seed (ties: the smaller rate)."""
    return max(sorted(by_lr), key=lambda lr: selection_score(by_lr[lr]))


def evaluated(runs: list[dict]) -> list[dict]:
    """The runs of the evaluation seeds (the selection seed's run chose the rate: it is not evaluated)."""
    return evaluation_only(runs, lambda m: m["seed"])


def aggregate(results: dict, tasks: list[str], methods: list[str]) -> dict:
    """Per (task, method): the lr chosen on the selection seed, and mean/std over the evaluation seeds run at it."""
    table = {}
    for task in tasks:
        for method in methods:
            by_lr = results.get((task, method), {})
            if not by_lr:
                continue
            chosen = best_lr(by_lr)
            runs = evaluated(by_lr[chosen])
            if not runs:
                continue
            scores = [100 * m["score"] for m in runs]
            table[task, method] = {
                "lr": chosen,
                "mean": statistics.mean(scores),
                "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                "seeds": len(scores),
                "trainable": runs[0]["trainable_parameters"],
                "share": runs[0]["trainable_share"],
                "wall_s": statistics.mean(m["wall_seconds"] for m in runs),
                "ex_per_s": statistics.mean(m["train_examples_per_second"] for m in runs),
                "metric": runs[0]["main_metric"],
            }
    return table


def markdown(table: dict, tasks: list[str], methods: list[str]) -> str:
    head = "| method | trainable | " + " | ".join(TASK_LABEL.get(t, t) for t in tasks) + " | average | s/run | train ex/s |"
    lines = [head, "|" + "---|" * (len(tasks) + 5)]
    for method in methods:
        cells, means, walls, speeds, share = [], [], [], [], None
        for task in tasks:
            r = table.get((task, method))
            if r is None:
                cells.append("–")
                continue
            cells.append(f"{r['mean']:.1f} ± {r['std']:.1f} ({r['seeds']})")
            means.append(r["mean"])
            walls.append(r["wall_s"])
            speeds.append(r["ex_per_s"])
            share = r["share"]
        avg = f"{statistics.mean(means):.1f}" if len(means) == len(tasks) else "–"
        share_text = f"{100 * share:.2f}%" if share is not None else "–"
        wall = f"{statistics.mean(walls):.0f}" if walls else "–"
        speed = f"{statistics.mean(speeds):.0f}" if speeds else "–"
        lines.append(f"| {method} | {share_text} | " + " | ".join(cells) + f" | {avg} | {wall} | {speed} |")
    metrics = ", ".join(f"{TASK_LABEL.get(t, t)}: {next(r['metric'] for (tt, _), r in table.items() if tt == t)}"
                        for t in tasks if any(tt == t for tt, _ in table))
    lrs = "; ".join(f"{TASK_LABEL.get(t, t)} {m} {table[t, m]['lr']:g}" for t in tasks for m in methods if (t, m) in table)
    return ("\n".join(lines) + f"\n\nCells: mean ± std over the evaluation seeds (number of seeds). Metrics (×100): "
            f"{metrics}.\nChosen learning rates (searched on seed {SELECTION_SEED}, not evaluated): {lrs}.\n")


def seed_averages(results: dict, tasks: list[str], methods: list[str]) -> dict[str, dict[int, float]]:
    """{method: {seed: average over all tasks}} at the chosen rates, for the evaluation seeds finished on
    every task (the GLUE average: a convention; tests below pool standardised differences instead)."""
    out: dict[str, dict[int, float]] = {}
    for method in methods:
        per_task = []
        for task in tasks:
            by_lr = results.get((task, method))
            if not by_lr:
                break
            per_task.append({m["seed"]: 100 * m["score"] for m in evaluated(by_lr[best_lr(by_lr)])})
        else:
            common = set.intersection(*(set(d) for d in per_task)) if per_task else set()
            out[method] = {seed: statistics.mean(d[seed] for d in per_task) for seed in sorted(common)}
    return out


def paired_scores(results: dict, task: str, method: str, against: str) -> list[float]:
    """``method`` − ``against`` (×100) at each evaluation seed both ran, at their chosen rates."""
    def by_seed(m: str) -> dict[int, float]:
        by_lr = results.get((task, m))
        return {r["seed"]: 100 * r["score"] for r in evaluated(by_lr[best_lr(by_lr)])} if by_lr else {}

    mine, base = by_seed(method), by_seed(against)
    return [mine[s] - base[s] for s in sorted(set(mine) & set(base))]


def by_seed_markdown(results: dict, tasks: list[str], methods: list[str]) -> str:
    """The task average per seed, and DSEE − each method paired by seed: per task, then pooled on
    standardised differences (tasks use different metrics)."""
    averages = seed_averages(results, tasks, methods)
    seeds = sorted({s for by_seed in averages.values() for s in by_seed})
    if not seeds:
        return ""
    lines = ["", "Average over the tasks, by evaluation seed (a seed is counted once it has finished on every task):",
             "", "| method | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|" + "---|" * (len(seeds) + 1)]
    for method, by_seed in averages.items():
        lines.append(f"| {method} | " + " | ".join(f"{by_seed[s]:.2f}" if s in by_seed else "–" for s in seeds) + " |")
    family = Family()
    others = [m for m in methods if m != "dsee"]
    lines += ["", "DSEE − method, paired by seed (×100; mean [95% t-interval] (pairs; t-test p, exact sign-flip p, "
              "Holm p over this table's tests)); pooled: standardised differences over the tasks:", "",
              "| DSEE − | " + " | ".join(TASK_LABEL.get(t, t) for t in tasks) + " | pooled |",
              "|" + "---|" * (len(tasks) + 2)]
    for method in others:
        groups = {t: paired_scores(results, t, "dsee", method) for t in tasks}
        if not any(groups.values()):
            continue
        lines.append(f"| {method} | " + " | ".join(family.paired(groups[t]) for t in tasks)
                     + f" | {family.pooled(groups)} |")
    return family.render("\n".join(lines) + "\n")


def plot(table: dict, tasks: list[str], methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.8 * len(tasks) + 2, 4))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        xs, ys, es = [], [], []
        for j, task in enumerate(tasks):
            r = table.get((task, method))
            if r:
                xs.append(j + (i - (len(methods) - 1) / 2) * width)
                ys.append(r["mean"])
                es.append(r["std"])
        ax.bar(xs, ys, width, yerr=es, capsize=2, label=method)
    ax.set_xticks(range(len(tasks)), [TASK_LABEL.get(t, t) for t in tasks])
    ax.set_ylabel("dev score (×100, mean ± std over seeds)")
    ax.set_title("all-MiniLM-L6-v2 on GLUE: full fine-tuning vs LoRA vs DSEE")
    ax.legend(fontsize=8, ncol=len(methods))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def gather(args) -> dict:
    """``results[(task, method)][lr]`` = the runs at that rate (the selection seed's, then the evaluation
    seeds' at the chosen rate): recorded ones, the others trained now unless report-only."""
    tasks = args.tasks.split(",")
    methods = args.methods.split(",")
    seeds = seeds_arg(args.seeds)
    limits = {k: int(v) for k, v in (item.split("=") for item in args.max_train_samples.split(",") if item)}
    finished = load_finished(Path(args.runs_file))
    results: dict = {}
    first, rest = SELECTION_SEED, seeds
    for task in tasks:  # the learning-rate search, on the selection seed
        for method in sorted(methods, key=lambda m: m in SEARCH_LIKE):  # searched methods first
            grid = floats(args.lrs_full if method == "full" else args.lrs_adapter)
            if method in SEARCH_LIKE and (task, SEARCH_LIKE[method]) in results:
                grid = [best_lr(results[task, SEARCH_LIKE[method]])]
            for lr in grid:
                metrics = run_one(args, task, method, lr, first, limits, finished)
                if metrics is not None:
                    results.setdefault((task, method), {})[lr] = [metrics]
            # a best rate on the edge of a searched grid says the optimum may lie outside it: one step
            # further (×2 or ÷2), kept only if it scores better (best_lr decides)
            by_lr = results.get((task, method), {})
            if args.extend_edges and len(grid) > 1 and by_lr and len(by_lr) == len(grid):
                best = best_lr(by_lr)
                tie = sum(selection_score(m) == selection_score(by_lr[best]) for m in by_lr.values()) > 1
                if best in (min(grid), max(grid)) and not tie:  # a tie (e.g. all stuck at chance) says nothing
                    lr = best * 2 if best == max(grid) else best / 2
                    metrics = run_one(args, task, method, lr, first, limits, finished)
                    if metrics is not None:
                        by_lr[lr] = [metrics]
    for seed in rest:  # seed-major, so that a stopped experiment has every cell at fewer seeds
        for task in tasks:
            for method in methods:
                by_lr = results.get((task, method))
                if not by_lr or method in FIRST_SEED_ONLY:
                    continue
                lr = best_lr(by_lr)
                metrics = run_one(args, task, method, lr, seed, limits, finished)
                if metrics is not None:
                    by_lr[lr].append(metrics)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    tasks = args.tasks.split(",")
    methods = args.methods.split(",")
    start = time.perf_counter()
    results = gather(args)
    table = aggregate(results, tasks, methods)
    text = markdown(table, tasks, methods) + by_seed_markdown(results, tasks, methods)
    report = Path(args.report_dir)
    report.mkdir(parents=True, exist_ok=True)
    (report / "glue_results.md").write_text(text)
    plot(table, tasks, methods, report / "glue_results.png")
    print(text)
    if not args.no_record:
        record("glue_experiment", {
            "settings": {k: v for k, v in vars(args).items() if k not in ("report_only", "no_record")},
            "cells": {f"{t}/{m}": r for (t, m), r in table.items()},
            "hours": (time.perf_counter() - start) / 3600,
        })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
