"""Dual sparsity on GLUE: how much accuracy each kind of pruning costs after re-tuning (paper §3.2).

For every task and seed: a DSEE source run (r=16, N=64, GreBsmo Ω) — taken from the GLUE experiment
(`glue_experiment.py`, its DSEE run at the learning rate it chose) when that run directory exists,
trained here with the same settings otherwise — then one `dsee prune` run per variant: structured
(heads + FFN neurons; |ΔW| vs importance head scores; a FLOPs curve) and unstructured 50% (scores
|W0|, |ΔW|, |W0 + ΔW|). Every pruned run re-tunes the adapters for `--retune-epochs`.

Each finished run is appended to `benchmarks/prune_runs.jsonl` (with commit, date, machine) and
never run again with the same settings, so the experiment continues where it stopped. The table
(`prune_results.md`) gives each variant's dev score minus the unpruned source's, per task and on
average (the "retune only" control shows what the extra epochs of re-tuning alone do), with the FLOPs of one forward pass at 128 tokens relative to the unpruned model; the plot
(`prune_results.png`) the score against FLOPs.

    python benchmarks/prune_experiment.py --data-dir ../shared/data/glue --out runs/prune
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _protocol import SELECTION_SEED, Family, seeds_arg  # noqa: E402
from _record import HERE, record  # noqa: E402

from dsee.train.checkpoint import has_checkpoint  # noqa: E402
from dsee.train.loop import train  # noqa: E402
from dsee.train.run import METRICS, RunConfig, load_run_config  # noqa: E402

RUNS_PATH = HERE / "prune_runs.jsonl"
GLUE_RUNS = HERE / "glue_runs.jsonl"
DSEE = {"rank": 16, "alpha": 32, "num_sparse": 64, "sparse_method": "grebsmo"}
# name -> PruneSettings fields (source filled in per task)
VARIANTS = {
    # the control: the same re-tuning with nothing pruned (re-tuning alone adds training steps)
    "retune only": dict(sparsity=0.0),
    "heads25+ffn25 delta": dict(heads=0.25, ffn=0.25, head_score="delta", ffn_score="magnitude"),
    "heads25+ffn25 importance": dict(heads=0.25, ffn=0.25, head_score="importance", ffn_score="importance"),
    "heads25+ffn40 importance": dict(heads=0.25, ffn=0.40, head_score="importance", ffn_score="importance"),
    "heads50+ffn50 importance": dict(heads=0.50, ffn=0.50, head_score="importance", ffn_score="importance"),
    "unstructured50 weight": dict(sparsity=0.5, score="weight"),
    "unstructured50 delta": dict(sparsity=0.5, score="delta"),
    "unstructured50 weight+delta": dict(sparsity=0.5, score="weight+delta"),
    # activation-aware, gradual and N:M (Wanda: Sun et al. 2023; gradual: Zhu & Gupta 2017)
    "unstructured50 wanda": dict(sparsity=0.5, score="wanda", scope="row"),
    "unstructured50 weight gradual": dict(sparsity=0.5, score="weight", schedule="gradual"),
    "unstructured50 wanda gradual": dict(sparsity=0.5, score="wanda", scope="row", schedule="gradual"),
    "2:4 weight": dict(pattern="2:4", score="weight"),
    "2:4 wanda": dict(pattern="2:4", score="wanda"),
}
# the 50% variants whose best (by average Δ over tasks and seeds) is also run at 70%
FIFTY = ("unstructured50 weight", "unstructured50 wanda", "unstructured50 weight gradual",
         "unstructured50 wanda gradual")
DEFAULT_VARIANTS = ("retune only",) + FIFTY + ("2:4 weight", "2:4 wanda")
TASK_LABEL = {"rte": "RTE", "mrpc": "MRPC", "stsb": "STS-B", "sst2": "SST-2", "cola": "CoLA"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", default="runs/prune")
    p.add_argument("--glue-out", default="runs/glue", help="the GLUE experiment's run folder (source runs)")
    p.add_argument("--glue-precision", default="no",
                   help="--mixed-precision of the sources (the GLUE experiment's runs, and the ones made here); bf16 "
                        "only on CPUs with native bf16")
    p.add_argument("--tasks", default="stsb,mrpc,sst2,rte")
    p.add_argument("--seeds", default="1,2,3", help=f"evaluation seeds (never the selection seed, {SELECTION_SEED})")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    p.add_argument("--no-best-at-70", dest="best_at_70", action="store_false",
                   help=f"do not run the best 50%% method (on seed {SELECTION_SEED}) again at 70%%")
    p.add_argument("--source-lrs", type=lambda t: [float(x) for x in t.split(",")], default=None,
                   help="the GLUE experiment's DSEE rates a source may come from (default: every rate it ran); "
                        "pins the sources when that experiment later tries more rates")
    p.add_argument("--source-lr", type=float, default=1.5e-3, help="when no GLUE-experiment run is there")
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--retune-epochs", type=float, default=2)
    p.add_argument("--max-train-samples", type=int, default=2000)
    p.add_argument("--runs-file", default=str(RUNS_PATH))
    p.add_argument("--no-record", action="store_true", help="do not append the summary to results.jsonl")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--report-dir", default=str(HERE))
    return p.parse_args(argv)


def glue_source(args, task: str, seed: int) -> Path | None:
    """The GLUE experiment's DSEE run for (task, seed) at the learning rate it chose, if on disk."""
    if not GLUE_RUNS.is_file():
        return None
    scores = {}
    for line in GLUE_RUNS.read_text().splitlines():
        s = json.loads(line)["results"]
        precision = s["settings"].get("mixed_precision", "no")
        if (s["settings"]["task"], s["settings"]["method"], s["settings"]["seed"], precision) == (
                task, "dsee", 0, args.glue_precision):
            if args.source_lrs is None or any(abs(s["settings"]["lr"] - lr) < 1e-12 for lr in args.source_lrs):
                scores[s["settings"]["lr"]] = s["metrics"]["score"]
    if not scores:
        return None
    lr = max(sorted(scores), key=scores.get)
    suffix = "" if args.glue_precision == "no" else f"-{args.glue_precision}"
    path = Path(args.glue_out) / task / "dsee" / f"lr{lr:g}" / f"seed{seed}{suffix}"
    return path if (path / METRICS).is_file() and (path / "adapter").is_dir() else None


def source_run(args, task: str, seed: int) -> Path | None:
    found = glue_source(args, task, seed)
    if found is not None:
        return found
    path = Path(args.out) / task / "source" / f"seed{seed}"
    if (path / METRICS).is_file() or args.report_only:  # a report reads the records, keyed by this path
        return path
    config = RunConfig(out=str(path), task=task, data_dir=args.data_dir, method="dsee", adapter=dict(DSEE, seed=seed),
                       lr=args.source_lr, epochs=args.epochs, seed=seed, max_train_samples=args.max_train_samples,
                       mixed_precision=args.glue_precision)
    resume = has_checkpoint(path)
    print(f"\n=== {task} source seed={seed}", flush=True)
    train(config, resume=resume, overwrite=not resume)
    return path


def finished_runs(path: Path) -> list[dict]:
    return [json.loads(line)["results"] for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def summary(metrics: dict) -> dict:
    pruning = metrics.get("pruning") or {}
    return {"score": metrics["score"], "main_metric": metrics["main_metric"], "flops": metrics["flops"]["total"],
            "sparsity": pruning.get("sparsity", 0.0), "pattern": pruning.get("pattern"),
            "heads_per_layer": pruning.get("heads_per_layer"),
            "ffn_per_layer": pruning.get("ffn_per_layer"), "wall_seconds": metrics["wall_seconds"],
            "trainable_parameters": metrics["trainable_parameters"]}


def variant_settings(name: str) -> dict:
    """A variant's PruneSettings fields; "unstructured70 <method>" is a 50% variant at 70%."""
    if name.startswith("unstructured70 "):
        return dict(VARIANTS[name.replace("unstructured70", "unstructured50", 1)], sparsity=0.7)
    return VARIANTS[name]


def run_variant(args, task, seed, name, source: Path, finished: list[dict]) -> dict | None:
    key = {"task": task, "seed": seed, "variant": name, "source": str(source), "retune_epochs": args.retune_epochs,
           "settings": variant_settings(name)}
    for done in finished:
        if done["key"] == key:
            return done
    if args.report_only:
        return None
    path = Path(args.out) / task / name.replace(" ", "_").replace("+", "_") / f"seed{seed}"
    if not (path / METRICS).is_file():
        config = dataclasses.replace(load_run_config(source), out=str(path), epochs=args.retune_epochs,
                                     prune=dict(variant_settings(name), source=str(source)))
        resume = has_checkpoint(path)
        print(f"\n=== {task} {name} seed={seed}", flush=True)
        train(config, resume=resume, overwrite=not resume)
    entry = {"key": key, "metrics": summary(json.loads((path / METRICS).read_text())),
             "source": summary(json.loads((source / METRICS).read_text()))}
    record("prune_run", entry, path=args.runs_file)
    finished.append(entry)
    return entry


def delta(entry: dict) -> float:
    """The pruned, re-tuned model's dev score minus its unpruned source's (×100)."""
    return 100 * (entry["metrics"]["score"] - entry["source"]["score"])


def source_of(entry: dict) -> tuple:
    return entry["key"]["task"], entry["key"]["seed"], entry["key"]["source"], entry["key"]["retune_epochs"]


def against_control(entries: list[dict], variant: str, task: str) -> list[float]:
    """Paired by source (task, seed, source run, re-tune epochs): the variant's score minus the re-tune-only
    control's (×100): what pruning costs once the extra epochs of training are given to both."""
    control = {source_of(e): e for e in entries if e["key"]["variant"] == CONTROL}
    return [100 * (e["metrics"]["score"] - control[source_of(e)]["metrics"]["score"]) for e in entries
            if e["key"]["variant"] == variant and e["key"]["task"] == task and source_of(e) in control]


def average_against_control(entries: list[dict], tasks: list[str], variant: str) -> dict[int, float]:
    """{seed: mean over the tasks of (variant − re-tune-only control) ×100}, for the seeds with both on every task."""
    control = {source_of(e): e for e in entries if e["key"]["variant"] == CONTROL}
    by_seed: dict[int, dict[str, float]] = {}
    for e in entries:
        if e["key"]["variant"] == variant and source_of(e) in control:
            by_seed.setdefault(e["key"]["seed"], {})[e["key"]["task"]] = 100 * (
                e["metrics"]["score"] - control[source_of(e)]["metrics"]["score"])
    return {seed: statistics.mean(d[t] for t in tasks) for seed, d in by_seed.items() if all(t in d for t in tasks)}


def against_source(entries: list[dict], variant: str, task: str) -> list[float]:
    return [delta(e) for e in entries if e["key"]["variant"] == variant and e["key"]["task"] == task]


def average_deltas(entries: list[dict], tasks: list[str], variant: str) -> dict[int, float]:
    """{seed: mean over the tasks of (variant − source) ×100}, for the seeds finished on every task."""
    by_seed: dict[int, dict[str, float]] = {}
    for e in entries:
        if e["key"]["variant"] == variant:
            by_seed.setdefault(e["key"]["seed"], {})[e["key"]["task"]] = delta(e)
    return {seed: statistics.mean(d[t] for t in tasks) for seed, d in by_seed.items() if all(t in d for t in tasks)}


CONTROL = "retune only"
BARS = {"unstructured50": 1.0, "2:4": 2.0}  # the bars: within 1.0 (50%) and 2.0 (2:4) points


def source_scores(entries: list[dict], task: str) -> list[float]:
    """Each source run's score (×100) once, however many variants were pruned from it."""
    unique = {source_of(e)[:3]: e["source"]["score"] for e in entries if e["key"]["task"] == task}
    return [100 * score for score in unique.values()]


def mean_text(values: list[float], digits: int = 2) -> str:
    if not values:
        return "–"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):+.{digits}f} ± {spread:.{digits}f} ({len(values)})"


def table(entries: list[dict], tasks: list[str], variants: list[str]) -> str:
    """Per task, then pooled: each variant against its unpruned source and against the re-tune-only control
    (the same source re-tuned for the same epochs with nothing removed), paired by seed."""
    family = Family()
    lines = ["| variant | FLOPs | sparsity | task | Δ vs unpruned source | Δ vs re-tune-only control |",
             "|---|---|---|---|---|---|"]
    sources = " / ".join(f"{TASK_LABEL.get(t, t)} {statistics.mean(v):.2f} ({len(v)})"
                         for t in tasks for v in [source_scores(entries, t)] if v)
    for v in variants:
        mine = [e for e in entries if e["key"]["variant"] == v]
        if not mine:
            continue
        flops = statistics.mean(e["metrics"]["flops"] / e["source"]["flops"] for e in mine)
        sparsity = statistics.mean(e["metrics"]["sparsity"] for e in mine)
        for i, task in enumerate(tasks):
            head = f"| {v} | {100 * flops:.1f}% | {100 * sparsity:.0f}% |" if i == 0 else "| | | |"
            control = "" if v == CONTROL else family.paired(against_control(entries, v, task))
            lines.append(f"{head} {TASK_LABEL.get(task, task)} | {family.paired(against_source(entries, v, task))} | "
                         f"{control} |")
    pooled_lines = ["| variant | average Δ vs source (± std over seeds) | pooled vs source | "
                    "average Δ vs control | pooled vs control | bar (average Δ vs source, vs control) |",
                    "|---|---|---|---|---|---|"]
    for v in variants:
        if not any(e["key"]["variant"] == v for e in entries):
            continue
        by_seed = average_deltas(entries, tasks, v)
        vs_control = list(average_against_control(entries, tasks, v).values())
        bar = next((limit for prefix, limit in BARS.items() if v.startswith(prefix)), None)
        verdict = ""
        if bar is not None and by_seed:
            verdicts = [f"{'met' if statistics.mean(d) >= -bar else 'missed'}" for d in (list(by_seed.values()), vs_control) if d]
            verdict = f"≥ −{bar}: " + ", ".join(verdicts)
        pooled_source = family.pooled({t: against_source(entries, v, t) for t in tasks})
        pooled_control = "" if v == CONTROL else family.pooled({t: against_control(entries, v, t) for t in tasks})
        pooled_lines.append(f"| {v} | {mean_text(list(by_seed.values()))} | {pooled_source} | "
                            f"{'' if v == CONTROL else mean_text(vs_control)} | {pooled_control} | {verdict} |")
    text = ("Unpruned sources (dev score ×100, mean over seeds): " + sources + ".\n\nPer task, paired by seed "
            "(×100; mean [95% t-interval] (pairs; t-test p, exact sign-flip p, Holm p over the "
            f"{len(family)} tests of this report)):\n\n" + "\n".join(lines) + "\n\nOver the tasks:\n\n"
            + "\n".join(pooled_lines)
            + "\n\nAverage Δ: the mean over the tasks per seed, then mean ± std over the seeds finished on every "
              "task. Pooled: each task's differences over their root mean square, averaged per task and over "
              "tasks (+1 = every pair up), with the exact sign-flip test. The re-tune-only control is the source "
              "re-tuned for the same epochs with nothing removed, so Δ vs control is what pruning costs beyond "
              "extra training. FLOPs: one forward pass at 128 tokens.\n")
    return family.render(text)


def best_fifty(entries: list[dict], tasks: list[str], variants: list[str]) -> str | None:
    """The 50% unstructured variant with the best average Δ on the selection seed (not an evaluation seed)."""
    selection = [e for e in entries if e["key"]["seed"] == SELECTION_SEED]
    means = {v: statistics.mean(d.values()) for v in FIFTY if v in variants
             for d in [average_deltas(selection, tasks, v)] if d}
    return max(means, key=means.get) if means else None


def plot(entries: list[dict], tasks: list[str], path: Path) -> None:
    """Left: score against FLOPs for heads + neurons removed (when run). Right: the average Δ against
    sparsity for each unstructured method (0% is the source; 2:4 sits at 50%)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if any("heads" in e["key"]["variant"] for e in entries):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    else:  # no heads/neurons removed in these runs: only the unstructured panel
        fig, ax2 = plt.subplots(1, 1, figsize=(6.5, 4.5))
        ax1 = None
    if ax1 is not None:
        for t in tasks:
            mine = [e for e in entries if e["key"]["task"] == t and "heads" in e["key"]["variant"]
                    and "importance" in e["key"]["variant"]]
            if mine:
                points = sorted((e["metrics"]["flops"] / e["source"]["flops"], 100 * e["metrics"]["score"])
                                for e in mine)
                ax1.plot([100 * x for x, _ in points], [y for _, y in points], "o-", label=TASK_LABEL.get(t, t))
        ax1.set_xlabel("inference FLOPs (% of unpruned, 128 tokens)")
        ax1.set_ylabel("dev score (×100) after re-tuning")
        ax1.set_title("heads + FFN neurons removed (importance)", fontsize=10)
        ax1.invert_xaxis()
    methods = {"magnitude": ("weight", ""), "wanda": ("wanda", ""), "magnitude, gradual": ("weight", " gradual"),
               "wanda, gradual": ("wanda", " gradual")}
    for label_, (score, schedule) in methods.items():
        xs, ys, es = [0.0], [0.0], [0.0]
        for level in (50, 70):
            d = average_deltas(entries, tasks, f"unstructured{level} {score}{schedule}")
            if d:
                xs.append(level)
                ys.append(statistics.mean(d.values()))
                es.append(statistics.stdev(d.values()) if len(d) > 1 else 0.0)
        if len(xs) > 1:
            ax2.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=label_)
    for score in ("weight", "wanda"):
        d = average_deltas(entries, tasks, f"2:4 {score}")
        if d:
            ax2.errorbar([50], [statistics.mean(d.values())], yerr=[statistics.stdev(d.values()) if len(d) > 1 else 0],
                         marker="s", capsize=3, linestyle="none", label=f"2:4, {'magnitude' if score == 'weight' else score}")
    ax2.axhline(-1.0, color="grey", linestyle="--", linewidth=0.8)
    ax2.set_xlabel("unstructured sparsity of the blocks' weights (%)")
    ax2.set_ylabel("average Δ dev score vs unpruned DSEE (×100)")
    ax2.set_title("unstructured, re-tuned (dashed: the 1-point bar at 50%)", fontsize=10)
    for ax in filter(None, (ax1, ax2)):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a panel with nothing run yet stays empty
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_all(args, tasks, variants, finished, entries=None, seeds=None) -> list[dict]:
    """Every (seed, task, variant) run, seed-major (a stopped experiment has every cell at fewer seeds)."""
    entries = list(entries or [])
    for seed in seeds or seeds_arg(args.seeds):
        for task in tasks:
            source = source_run(args, task, seed)
            if source is None:
                continue
            for name in variants:
                entry = run_variant(args, task, seed, name, source, finished)
                if entry is not None:
                    entries.append(entry)
    return entries


def known(variant: str) -> bool:
    return variant in VARIANTS or variant.replace("unstructured70", "unstructured50", 1) in VARIANTS


def main(argv=None) -> int:
    args = parse_args(argv)
    tasks, variants = args.tasks.split(","), args.variants.split(",")
    unknown = [v for v in variants if not known(v)]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {list(VARIANTS)} (and 'unstructured70 ...' of each 50% one)")
    finished = finished_runs(Path(args.runs_file))
    start = time.perf_counter()
    entries = run_all(args, tasks, variants, finished)
    if args.best_at_70:  # the best 50% method on the selection seed, again at 70% on the evaluation seeds
        selection = run_all(args, tasks, [v for v in variants if v in FIFTY], finished, seeds=[SELECTION_SEED])
        best = best_fifty(selection, tasks, variants)
        if best is not None:
            variants = variants + [best.replace("unstructured50", "unstructured70", 1)]
            entries = run_all(args, tasks, variants[-1:], finished, entries)
    text = table(entries, tasks, variants)
    report = Path(args.report_dir)
    report.mkdir(parents=True, exist_ok=True)
    (report / "prune_results.md").write_text(text)
    plot(entries, tasks, report / "prune_results.png")
    print(text)
    if not (args.report_only or args.no_record):
        record("prune_experiment", {"settings": vars(args), "runs": len(entries),
                                    "hours": (time.perf_counter() - start) / 3600})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
