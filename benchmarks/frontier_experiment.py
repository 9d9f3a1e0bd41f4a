"""Does the sparse half of DSEE earn its parameters? LoRA against DSEE at equal trainable parameters.

The frontier: score against trainable parameters, on GLUE (all-MiniLM-L6-v2: MRPC, STS-B, SST-2)
and on E2E (SmolLM2-135M: dev loss per target token, BLEU on the first dev MRs), 3 seeds each.

- LoRA at r ∈ {4, 8, 16, 32} on the query and value projections.
- DSEE at the same budgets, split between rank and sparse entries: a share ``split`` of LoRA-r's
  budget goes to S, the rest to a rank r·(1 − split). With split 1/2 (rank r/2) and 3/4 (rank r/4),
  S gets, over all adapted matrices together, as many entries as the rank it replaces had
  parameters: sparse_density = split·r·Σ(d_in + d_out) / Σ(d_out·d_in). Every matrix then holds
  round(density·d_out·d_in) entries, so the counts match LoRA's to within rounding (the table
  shows the exact trainable counts). Ω by GreBsmo (the default).
- At the split that wins on GLUE on average, at the pre-registered budget ``--ablation-rank``
  (LoRA r = 16's, the paper's setting), the support ablation on GLUE: magnitude, random and
  gradient (RoSA's choice: ``--support-batches`` batches after a ``--support-warmup-steps`` LoRA
  warm-up), against GreBsmo.
- E2E: LoRA and the winning split at ``--e2e-ranks``' budgets (an E2E run costs ~10 minutes here),
  and with ``e2e`` among ``--ablation-tasks`` the support ablation at the E2E split (when one split is
  run there) and ``--e2e-ablation-rank``'s budget, every support at that split's rate.

Fairness: every method trains the same steps on the same batches in the same order (same seed),
with α = 2·rank so that the scale s = α/r is 2 for every rank (the setting of the GLUE experiment,
r = 16, α = 32), so the sparse values move at the same speed in every split. The learning rate is
chosen per task and method kind (LoRA, each split) from ``--glue-lrs`` at seed 0 at
``--probe-rank``'s budget (1.5e-3 was the GLUE experiment's adapter rate, on the edge of its grid;
3e-3 one step further), then used at every budget and seed; the ablation takes its split's rate.
With ``--probe-rank each`` the grid is searched at every budget instead: a rate probed at rank 8 left
LoRA r = 16 three points low on MRPC (the report's learning-rate table shows every probe).
E2E uses 2e-3 (α = 2r), the step on B·A of the earlier E2E runs' 5e-4 at α/r = 8.

The CPU budget (2 cores without native bf16, fp32): GLUE keeps the GLUE experiment's protocol
(2,000 examples per task, 3 epochs: with 2, MRPC stayed within a point of the majority class at
r = 4's budget); E2E trains 1 epoch on 600 rows and decodes the first 100 dev MRs with beam 5.

Every finished run is appended to ``benchmarks/frontier_runs.jsonl`` (with the git commit, date,
machine and versions) and never run again with the same settings: the experiment resumes where it
stopped, and a run interrupted half-way resumes from its checkpoint in ``--out``.

    python benchmarks/prepare_smollm2.py --out models/smollm2-135m
    python benchmarks/frontier_experiment.py --data-dir ../shared/data --out runs/frontier
    python benchmarks/frontier_experiment.py --data-dir ../shared/data --report-only

Writes ``frontier_results.md`` and ``frontier_results.png`` to ``--report-dir``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _protocol import BEST_EPOCH_RULE, SELECTION_SEED, Family, seeds_arg  # noqa: E402
from _record import HERE, record  # noqa: E402

RUNS_PATH = HERE / "frontier_runs.jsonl"
GLUE_TASKS = ("mrpc", "stsb", "sst2")
TASK_LABEL = {"mrpc": "MRPC F1", "stsb": "STS-B", "sst2": "SST-2", "e2e": "E2E"}
# adapted (d_out, d_in) shapes per layer, for the budget-matching density
SHAPES = {
    "glue": [(384, 384), (384, 384)],  # all-MiniLM-L6-v2: query, value
    "e2e": [(576, 576), (192, 576)],  # SmolLM2-135M: q_proj, v_proj (3 key-value heads of 64)
}


def probe_rank_arg(text: str) -> int | str:
    if text == "each":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a rank nor 'each'") from None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="the shared data folder, holding glue/ and e2e/")
    p.add_argument("--out", default="runs/frontier", help="where the run directories go")
    p.add_argument("--tasks", default="mrpc,stsb,sst2,e2e")
    p.add_argument("--e2e-model", default="models/smollm2-135m", help="benchmarks/prepare_smollm2.py's output")
    p.add_argument("--ranks", default="4,8,16,32", help="LoRA ranks (GLUE); their budgets are the frontier's x axis")
    p.add_argument("--e2e-ranks", default="4,16", help="LoRA ranks on E2E (a run costs ~10 min here)")
    p.add_argument("--e2e-splits", default="winner",
                   help="splits run on E2E: 'winner' (the split that wins on GLUE) or a list like 0.5,0.75")
    p.add_argument("--splits", default="0.5,0.75", help="shares of each budget given to S")
    p.add_argument("--seeds", default="1,2,3", help="evaluation seeds: the tables pair and test these only "
                   f"(never the selection seed, {SELECTION_SEED})")
    p.add_argument("--probe-rank", type=probe_rank_arg, default=8,
                   help="the budget where learning rates are searched, when a grid has several, or 'each': "
                        "a search at every budget (a rate that suits rank 8 may not suit rank 32)")
    p.add_argument("--glue-lrs", default="1.5e-3,3e-3", help="one rate, or a grid searched at seed 0")
    p.add_argument("--e2e-lrs", default="2e-3", help="one rate, or a grid searched at seed 0")
    p.add_argument("--ablation-rank", type=int, default=16, help="the budget of the support ablation")
    p.add_argument("--e2e-ablation-rank", type=int, default=16, help="the budget of the support ablation on E2E")
    p.add_argument("--ablation-methods", default="magnitude,random,gradient")
    p.add_argument("--ablation-tasks", default="mrpc,stsb,sst2", help="the tasks the ablation runs on (CPU budget)")
    p.add_argument("--ablation-lrs", default="",
                   help="per-support grids searched at seed 0 on GLUE, e.g. 'gradient=7.5e-4,1.5e-3,3e-3;random=3e-3' "
                        "(a support not named runs at the winning split's rate)")
    p.add_argument("--support-batches", type=int, default=8)
    p.add_argument("--support-warmup-steps", type=int, default=64, help="RoSA's wl64")
    # GLUE protocol (the GLUE experiment's): 2,000 training examples, 3 epochs, batch 32, max length 128
    p.add_argument("--glue-train-samples", type=int, default=2000)
    p.add_argument("--glue-epochs", type=float, default=3)
    # E2E protocol: 600 training rows, 1 epoch, batch 8, label smoothing 0.1, beam search
    p.add_argument("--e2e-train-samples", type=int, default=600)
    p.add_argument("--e2e-epochs", type=float, default=1)
    p.add_argument("--decode-items", type=int, default=100, help="distinct dev MRs decoded and scored")
    p.add_argument("--beams", type=int, default=5)
    p.add_argument("--mixed-precision", default="no", choices=("no", "bf16"),
                   help="bf16 autocast only on CPUs with native bf16 (AVX512-BF16/AMX); emulated it is far slower")
    p.add_argument("--runs-file", default=str(RUNS_PATH))
    p.add_argument("--report-only", action="store_true", help="aggregate the finished runs, train nothing")
    p.add_argument("--report-dir", default=str(HERE))
    p.add_argument("--no-record", action="store_true", help="do not append the summary to results.jsonl")
    return p.parse_args(argv)


# --- the variants --------------------------------------------------------------------------------


def family(task: str) -> str:
    return "e2e" if task == "e2e" else "glue"


def budget_density(task: str, rank: int, split: float) -> float:
    """The density of S that buys ``split`` of LoRA-``rank``'s parameters (module doc)."""
    shapes = SHAPES[family(task)]
    return split * rank * sum(o + i for o, i in shapes) / sum(o * i for o, i in shapes)


def variant(kind: str, rank: int, support: str = "grebsmo") -> dict:
    """A method at LoRA-``rank``'s budget: kind "lora" or "split<share>"."""
    return {"kind": kind, "budget_rank": rank, "support": support}


def adapter_settings(task: str, v: dict, seed: int) -> tuple[str, dict]:
    if v["kind"] == "lora":
        r = v["budget_rank"]
        return "lora", {"rank": r, "alpha": 2 * r, "num_sparse": 0, "seed": seed}
    split = float(v["kind"].removeprefix("split"))
    rank = round(v["budget_rank"] * (1 - split))
    return "dsee", {"rank": rank, "alpha": 2 * rank, "num_sparse": None, "seed": seed,
                    "sparse_density": budget_density(task, v["budget_rank"], split), "sparse_method": v["support"]}


def label(v: dict) -> str:
    if v["kind"] == "lora":
        return "LoRA"
    share = float(v["kind"].removeprefix("split"))
    name = f"DSEE {share:.0%} in S"
    return name if v["support"] == "grebsmo" else f"{name}, {v['support']} Ω"


# --- one run -------------------------------------------------------------------------------------


def settings_key(args, task: str, v: dict, lr: float, seed: int) -> dict:
    key = {"task": task, **v, "lr": lr, "seed": seed, "mixed_precision": args.mixed_precision}
    if family(task) == "glue":
        key.update(train_samples=args.glue_train_samples, epochs=args.glue_epochs)
    else:
        key.update(model=args.e2e_model, train_samples=args.e2e_train_samples, epochs=args.e2e_epochs,
                   decode_items=args.decode_items, beams=args.beams)
    if v["support"] == "gradient":
        key.update(support_batches=args.support_batches, support_warmup_steps=args.support_warmup_steps)
    return key


def run_dir(args, task: str, v: dict, lr: float, seed: int) -> Path:
    """One directory per settings key: the protocol (epochs, samples, support settings) is in its name
    as a digest, so a run of another protocol never finds this one's finished metrics."""
    digest = hashlib.sha256(json.dumps(settings_key(args, task, v, lr, seed), sort_keys=True).encode()).hexdigest()
    return (Path(args.out) / task / f"{v['kind']}-{v['support']}-r{v['budget_rank']}" / f"lr{lr:g}"
            / f"seed{seed}-{args.mixed_precision}-{digest[:10]}")


def run_config(args, task: str, v: dict, lr: float, seed: int, path: Path):
    from dsee.train.run import RunConfig

    method, adapter = adapter_settings(task, v, seed)
    common = dict(out=str(path), method=method, adapter=adapter, lr=lr, seed=seed, mixed_precision=args.mixed_precision,
                  support_batches=args.support_batches, support_warmup_steps=args.support_warmup_steps)
    if family(task) == "glue":
        return RunConfig(task=task, data_dir=str(Path(args.data_dir) / "glue"), epochs=args.glue_epochs,
                         batch_size=32, max_length=128, max_train_samples=args.glue_train_samples, **common)
    return RunConfig(task="e2e", data_dir=args.data_dir, model=args.e2e_model, epochs=args.e2e_epochs,
                     batch_size=8, eval_batch_size=16, max_length=128, max_train_samples=args.e2e_train_samples,
                     max_eval_samples=args.decode_items, label_smoothing=0.1, **common)


def run_one(args, task: str, v: dict, lr: float, seed: int, finished: list[dict]) -> dict | None:
    """The recorded result of one run, or trains (and for E2E decodes) it now; None if report-only."""
    key = settings_key(args, task, v, lr, seed)
    for done in finished:
        if done["key"] == key:
            return done
    if args.report_only:
        return None
    from dsee.train.checkpoint import has_checkpoint
    from dsee.train.loop import train
    from dsee.train.run import METRICS

    path = run_dir(args, task, v, lr, seed)
    if not (path / METRICS).is_file():
        resume = has_checkpoint(path)
        print(f"\n=== {task} {label(v)} at r={v['budget_rank']}'s budget, lr={lr:g}, seed={seed}"
              + (" (resuming)" if resume else ""), flush=True)
        train(run_config(args, task, v, lr, seed, path), resume=resume, overwrite=not resume)
    metrics = json.loads((path / METRICS).read_text())
    entry = {"key": key, "score": metrics["score"], "main_metric": metrics["main_metric"],
             "dev": metrics["dev"], "trainable_parameters": metrics["trainable_parameters"],
             "trainable_share": metrics["trainable_share"], "train_seconds": metrics["train_seconds"],
             "wall_seconds": metrics["wall_seconds"], "history": eval_history(path, metrics)}
    if task == "e2e":
        from dsee.train.generate import evaluate_generation_run

        start = time.perf_counter()
        decoded = evaluate_generation_run(path, max_items=args.decode_items, beams=args.beams, show_progress=False)
        entry.update(scores=decoded["scores"], decode_seconds=time.perf_counter() - start,
                     dev_loss=metrics["dev"]["validation"]["loss"],
                     predictions=(path / "predictions_validation.txt").read_text().splitlines())
    record("frontier_run", entry, path=args.runs_file)
    finished.append(entry)
    return entry


def eval_history(path: Path, metrics: dict) -> list[dict]:
    """Every dev evaluation of the run (step, epoch, main metric, loss): the record keeps the last epoch's
    score beside the best one, so a table can report either rule."""
    from dsee.train.run import read_eval_log

    split, main = metrics["selection_split"], metrics["main_metric"]
    return [{"step": e["step"], "epoch": e["epoch"], "score": e["dev"][split].get(main),
             "loss": e["dev"][split].get("loss")} for e in read_eval_log(path)]


# --- the experiment ------------------------------------------------------------------------------


def value(entry: dict, task: str) -> float:
    """The number the frontier plots, higher is better: dev score ×100 (GLUE) or BLEU ×100 (E2E)."""
    return 100 * (entry["scores"]["bleu"] if task == "e2e" else entry["score"])


def probe_value(entry: dict, task: str) -> float:
    """What picks a learning rate: the dev score (GLUE), minus the dev loss per target token (E2E)."""
    return -entry["dev_loss"] if task == "e2e" else entry["score"]


def kinds(args) -> list[str]:
    return ["lora"] + [f"split{float(s):g}" for s in args.splits.split(",")]


def ranks_of(args, task: str) -> list[int]:
    return [int(r) for r in (args.e2e_ranks if task == "e2e" else args.ranks).split(",")]


def ablation_rank(args, task: str) -> int:
    return args.e2e_ablation_rank if task == "e2e" else args.ablation_rank


def probe_rate(args, task: str, v: dict, grid: list[float]) -> float | None:
    """The one rate given, or the rate of ``grid`` whose run of ``v`` at the first seed has the best probe
    value (ties: the smaller rate); None while a probe run is missing (report-only)."""
    if len(grid) == 1:
        return grid[0]
    seed0 = SELECTION_SEED
    results = {}
    for lr in grid:
        entry = run_one(args, task, v, lr, seed0, args.finished)
        if entry is not None:
            results[lr] = probe_value(entry, task)
    return max(sorted(results), key=lambda lr: results[lr]) if len(results) == len(grid) else None


def choose_rates(args, tasks, kinds_of) -> dict[tuple[str, str, int], float]:
    """Per (task, kind, budget rank): ``probe_rate`` over the task's grid at ``--probe-rank``'s budget,
    or with ``--probe-rank each`` at that budget itself."""
    rates = {}
    for task in tasks:
        grid = [float(x) for x in (args.e2e_lrs if task == "e2e" else args.glue_lrs).split(",")]
        ranks = set(ranks_of(args, task))
        if task in args.ablation_tasks.split(","):
            ranks.add(ablation_rank(args, task))  # the ablation trains at its split's rate there
        for kind in kinds_of(task):
            for rank in sorted(ranks):
                probe_at = rank if args.probe_rank == "each" else args.probe_rank
                lr = probe_rate(args, task, variant(kind, probe_at), grid)
                if lr is not None:
                    rates[task, kind, rank] = lr
    return rates


def collect(args, tasks, kinds_of, rates, cells, seeds=None) -> None:
    """Every run of the grid at its chosen rate into ``cells[(task, kind, support, budget rank)]``, at the
    evaluation seeds (or at ``seeds``)."""
    for seed in seeds if seeds is not None else seeds_arg(args.seeds):  # seed-major: a stopped run leaves every cell fuller
        for task in tasks:
            for rank in ranks_of(args, task):
                for kind in kinds_of(task):
                    if (task, kind, rank) not in rates:
                        continue
                    entry = run_one(args, task, variant(kind, rank), rates[task, kind, rank], seed, args.finished)
                    if entry is not None:
                        cells.setdefault((task, kind, "grebsmo", rank), []).append(entry)


def paired_differences(cells, task, kind, rank, support="grebsmo", against=("lora", "grebsmo"),
                       measure=None) -> list[float]:
    """``measure(run)`` (default: ``value``) of each seed minus that of the same seed in ``against``."""
    measure = measure or (lambda e: value(e, task))
    mine = {e["key"]["seed"]: measure(e) for e in cells.get((task, kind, support, rank), [])}
    base = {e["key"]["seed"]: measure(e) for e in cells.get((task, against[0], against[1], rank), [])}
    return [mine[s] - base[s] for s in sorted(set(mine) & set(base))]


def best_split(args, tasks, rates) -> str | None:
    """The split whose paired difference to LoRA, averaged over every GLUE task and budget, is largest on
    the selection seed (its runs at the chosen rates are the rate probes' own runs): chosen before, and
    apart from, the evaluation seeds."""
    selection: dict = {}
    collect(args, [t for t in tasks if t != "e2e"], lambda task: kinds(args), rates, selection, seeds=[SELECTION_SEED])
    means = {}
    for kind in kinds(args)[1:]:
        diffs = [d for task in tasks if task != "e2e" for rank in ranks_of(args, task)
                 for d in paired_differences(selection, task, kind, rank)]
        if diffs:
            means[kind] = statistics.mean(diffs)
    return max(means, key=means.get) if means else None


def ablation_grids(text: str) -> dict[str, list[float]]:
    """``'gradient=7.5e-4,1.5e-3;random=3e-3'`` -> ``{"gradient": [7.5e-4, 1.5e-3], "random": [3e-3]}``."""
    grids = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        support, sep, rates = part.partition("=")
        if not sep or not rates:
            raise SystemExit(f"--ablation-lrs: {part!r} is not SUPPORT=LR[,LR...]")
        grids[support.strip()] = [float(x) for x in rates.split(",")]
    return grids


def ablation_rates(args, tasks, rates, split) -> dict[tuple[str, str], float]:
    """Per (task, support): the winning split's rate, or with ``--ablation-lrs`` (GLUE) the rate of that
    grid with the best probe value at seed 0 (a support may need another rate than GreBsmo's)."""
    grids = ablation_grids(args.ablation_lrs)
    chosen = {}
    for task in tasks:
        rank = ablation_rank(args, task)
        if (task, split, rank) not in rates or task not in args.ablation_tasks.split(","):
            continue
        for support in args.ablation_methods.split(","):
            own = grids.get(support) if family(task) == "glue" else None
            grid = own or [rates[task, split, rank]]
            lr = probe_rate(args, task, variant(split, rank, support), grid)
            if lr is not None:
                chosen[task, support] = lr
    return chosen


def ablation(args, tasks, rates, split, cells) -> dict[tuple[str, str], float]:
    """The support ablation at ``split`` and the task's ablation budget; returns the rate of each support."""
    support_rates = ablation_rates(args, tasks, rates, split)
    for seed in seeds_arg(args.seeds):
        for (task, support), lr in support_rates.items():
            v = variant(split, ablation_rank(args, task), support)
            entry = run_one(args, task, v, lr, seed, args.finished)
            if entry is not None:
                cells.setdefault((task, split, support, ablation_rank(args, task)), []).append(entry)
    return support_rates


# --- the report ----------------------------------------------------------------------------------


def rates_text(rates: dict[tuple[str, str, int], float]) -> str:
    """``{(task, kind, rank): lr}`` -> 'MRPC F1 lora: 0.003 (r 4, 8), 0.0015 (r 16)': the budgets of each rate
    (a budget missing has no rate yet: its probe has not run)."""
    by_method: dict = {}
    for (task, kind, rank), lr in rates.items():
        by_method.setdefault((task, kind), {}).setdefault(lr, []).append(rank)
    return "; ".join(f"{TASK_LABEL[task]} {kind}: " + ", ".join(
        f"{lr:g} (r {', '.join(map(str, sorted(ranks)))})" for lr, ranks in by_lr.items())
        for (task, kind), by_lr in by_method.items())


def mean_std(values: list[float], digits: int = 2) -> str:
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f} ({len(values)})"


def frontier_table(args, tasks, cells, family: Family) -> str:
    lines = []
    for task in tasks:
        ranks = ranks_of(args, task)
        metric = "BLEU" if task == "e2e" else TASK_LABEL[task]
        lines += [f"\n**{TASK_LABEL[task]}** ({metric} ×100, mean ± std (seeds); trainable parameters below)\n",
                  "| method | " + " | ".join(f"r = {r}'s budget" for r in ranks) + " |",
                  "|---|" + "---|" * len(ranks)]
        present = [k for k in kinds(args) if any((task, k, "grebsmo", r) in cells for r in ranks)]
        for kind in present:
            row, counts = [], []
            for rank in ranks:
                mine = cells.get((task, kind, "grebsmo", rank), [])
                row.append(mean_std([value(e, task) for e in mine]))
                counts.append(f"{mine[0]['trainable_parameters']:,}" if mine else "–")
            v = variant(kind, ranks[0])
            lines.append(f"| {label(v)} | " + " | ".join(row) + " |")
            lines.append("| ↳ trainable | " + " | ".join(counts) + " |")
        if task == "e2e":
            for kind in present:
                row = [mean_std([e["dev_loss"] for e in cells.get((task, kind, "grebsmo", r), [])], 3) for r in ranks]
                lines.append(f"| {label(variant(kind, 4))}: dev loss | " + " | ".join(row) + " |")
        for kind in present[1:]:
            row = [family.paired(paired_differences(cells, task, kind, rank)) for rank in ranks]
            lines.append(f"| {label(variant(kind, 4))} − LoRA, paired | " + " | ".join(row) + " |")
            if task == "e2e":
                loss = lambda e: e["dev_loss"]  # noqa: E731
                row = [family.paired(paired_differences(cells, task, kind, rank, measure=loss), 3) for rank in ranks]
                lines.append(f"| {label(variant(kind, 4))} − LoRA, dev loss, paired | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def overall_table(args, tasks, cells, family: Family) -> str:
    """Per budget, the GLUE tasks pooled on standardised differences (each task's paired differences over
    their root mean square: F1, correlation and accuracy never add up raw), every task counted once."""
    tasks = [t for t in tasks if t != "e2e"]  # BLEU is tested on its own below
    if not tasks:
        return ""
    ranks = [int(r) for r in args.ranks.split(",")]
    lines = ["\nGLUE pooled over the tasks on standardised differences (each task's DSEE − LoRA differences "
             "divided by their root mean square, averaged per task, then over tasks: +1 = every pair up; exact "
             "sign-flip test over all pairs):\n",
             "| split | " + " | ".join(f"r = {r}" for r in ranks) + " | every budget |", "|---|" + "---|" * (len(ranks) + 1)]
    for kind in kinds(args)[1:]:
        row, everything = [], {}
        for rank in ranks:
            groups = {task: paired_differences(cells, task, kind, rank) for task in tasks}
            everything.update({f"{task} r{rank}": d for task, d in groups.items()})
            row.append(family.pooled(groups))
        row.append(family.pooled(everything, noun="task × budget cells"))
        lines.append(f"| {label(variant(kind, 4))} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def ablation_table(args, tasks, split, cells, family: Family) -> str:
    tasks = [t for t in tasks if t in args.ablation_tasks.split(",") and t != "e2e"]
    if split is None or not tasks:
        return ""
    supports = ["grebsmo"] + args.ablation_methods.split(",")
    rank = args.ablation_rank
    lines = [f"\nSupport ablation at the winning split ({label(variant(split, rank))}), r = {rank}'s budget "
             "(mean ± std (seeds); paired difference to GreBsmo):\n",
             "| support | " + " | ".join(TASK_LABEL[t] for t in tasks) + " |", "|---|" + "---|" * len(tasks)]
    for support in supports:
        cells_row = []
        for task in tasks:
            text = mean_std([value(e, task) for e in cells.get((task, split, support, rank), [])])
            if support != "grebsmo":
                diffs = paired_differences(cells, task, split, rank, support, against=(split, "grebsmo"))
                text += f"; {family.paired(diffs)}" if diffs else ""
            cells_row.append(text)
        lines.append(f"| {support} | " + " | ".join(cells_row) + " |")
    lora = [mean_std([value(e, t) for e in cells.get((t, "lora", "grebsmo", rank), [])]) for t in tasks]
    lines.append("| (LoRA) | " + " | ".join(lora) + " |")
    return "\n".join(lines) + "\n"


def e2e_ablation_table(args, split, cells, family: Family) -> str:
    """The support ablation on E2E: BLEU and dev loss per support, each paired by seed against GreBsmo
    and against LoRA at the same budget (dev loss: lower is better)."""
    rank = args.e2e_ablation_rank
    if split is None or "e2e" not in args.ablation_tasks.split(",") or ("e2e", split, "grebsmo", rank) not in cells:
        return ""

    def compare(support, against, measure, digits) -> str:
        return family.paired(paired_differences(cells, "e2e", split, rank, support, against, measure), digits)

    bleu, loss = (lambda e: value(e, "e2e")), (lambda e: e["dev_loss"])
    lines = [f"\nE2E support ablation ({label(variant(split, rank))}, r = {rank}'s budget; mean ± std (seeds); "
             "paired differences by seed):\n",
             "| support | BLEU ×100 | − GreBsmo | − LoRA | dev loss | − GreBsmo | − LoRA |", "|---|---|---|---|---|---|---|"]
    for support in ["grebsmo"] + args.ablation_methods.split(","):
        mine = cells.get(("e2e", split, support, rank), [])
        own = support != "grebsmo"
        row = [mean_std([bleu(e) for e in mine]), compare(support, (split, "grebsmo"), bleu, 2) if own else "",
               compare(support, ("lora", "grebsmo"), bleu, 2), mean_std([loss(e) for e in mine], 3),
               compare(support, (split, "grebsmo"), loss, 3) if own else "",
               compare(support, ("lora", "grebsmo"), loss, 3)]
        lines.append(f"| {support} | " + " | ".join(row) + " |")
    lora = cells.get(("e2e", "lora", "grebsmo", rank), [])
    lines.append(f"| (LoRA) | {mean_std([bleu(e) for e in lora])} | | | {mean_std([loss(e) for e in lora], 3)} | | |")
    return "\n".join(lines) + "\n"


def rate_table(args, tasks) -> str:
    """Every method and budget trained at more than one learning rate (same seed, same protocol), so a
    reader sees how much of a gap the rate could explain: rate probes beyond ``--probe-rank``'s included."""
    groups: dict = {}
    for entry in args.finished:
        k = entry["key"]
        if k["task"] not in tasks:
            continue
        if settings_key(args, k["task"], variant(k["kind"], k["budget_rank"], k["support"]), k["lr"], k["seed"]) != k:
            continue  # another protocol (precision, sample count, epochs, decode settings)
        group = (k["task"], k["kind"], k["support"], k["budget_rank"], k["seed"])
        groups.setdefault(group, {})[k["lr"]] = value(entry, k["task"])
    probed = {g: by_lr for g, by_lr in groups.items() if len(by_lr) > 1}
    if not probed:
        return ""
    lines = ["\nLearning-rate sensitivity: every method, budget and seed run at several rates (score ×100 per "
             "rate; the probes pick a rate at the first seed):\n", "| task | method | budget r | seed | score by rate |", "|---|---|---|---|---|"]
    for (task, kind, support, rank, seed), by_lr in sorted(probed.items()):  # budgets in numeric order
        scores = ", ".join(f"{lr:g}: {score:.2f}" for lr, score in sorted(by_lr.items()))
        lines.append(f"| {TASK_LABEL[task]} | {label(variant(kind, rank, support))} | {rank} | {seed} | {scores} |")
    return "\n".join(lines) + "\n"


def bleu_tests(args, cells, family: Family) -> str:
    """Paired bootstrap of BLEU (same decoded MRs), each split against LoRA at the same budget and seed."""
    if not any(k[0] == "e2e" for k in cells):
        return ""
    from dsee.evaluation.significance import paired_bootstrap_bleu
    from dsee.train.textgen import load_e2e

    _, references = load_e2e(args.data_dir, "validation").grouped()
    references = references[:args.decode_items]
    lines = ["\nE2E: each split against LoRA, paired bootstrap of BLEU over the same decoded MRs "
             "(1,000 draws; 95% interval of Δ; two-sided shift-method p):\n",
             "| split | budget r | seed | LoRA | DSEE | Δ [95%] | p |", "|---|---|---|---|---|---|---|"]
    for kind in kinds(args)[1:]:
        for rank in ranks_of(args, "e2e"):
            lora = {e["key"]["seed"]: e for e in cells.get(("e2e", "lora", "grebsmo", rank), [])}
            for e in cells.get(("e2e", kind, "grebsmo", rank), []):
                base = lora.get(e["key"]["seed"])
                if base is None:
                    continue
                t = paired_bootstrap_bleu(base["predictions"], e["predictions"], references, resamples=1000)
                lines.append(f"| {kind.removeprefix('split')} | {rank} | {e['key']['seed']} | {100 * t['baseline']:.2f} | "
                             f"{100 * t['system']:.2f} | {100 * t['delta']:+.2f} [{100 * t['delta_low']:+.2f}, "
                             f"{100 * t['delta_high']:+.2f}] | {family.p_value(t['p_value'])} |")
    return "\n".join(lines) + "\n"


def plot(args, tasks, cells, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(tasks) + (["e2e-loss"] if "e2e" in tasks else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        task = "e2e" if panel == "e2e-loss" else panel
        for kind, marker in zip(kinds(args), "osD^v"):
            xs, ys, es = [], [], []
            for rank in ranks_of(args, task):
                mine = cells.get((task, kind, "grebsmo", rank), [])
                if not mine:
                    continue
                vals = [e["dev_loss"] if panel == "e2e-loss" else value(e, task) for e in mine]
                xs.append(statistics.mean(e["trainable_parameters"] for e in mine))
                ys.append(statistics.mean(vals))
                es.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
            if xs:
                ax.errorbar(xs, ys, yerr=es, marker=marker, capsize=3, label=label(variant(kind, 4)))
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel("dev loss per target token" if panel == "e2e-loss" else
                      ("BLEU ×100" if task == "e2e" else "dev score ×100"))
        ax.set_title(("E2E (SmolLM2-135M)" if task == "e2e" else f"{TASK_LABEL[task]} (MiniLM)")
                     + (": dev loss" if panel == "e2e-loss" else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def gather(args) -> dict:
    """Every run of the experiment (trained now unless report-only, then only what is recorded): the
    learning rates, ``cells`` at the evaluation seeds, the winning split and the ablation's rates."""
    tasks = args.tasks.split(",")
    glue = [t for t in tasks if t != "e2e"]
    runs = Path(args.runs_file)
    args.finished = [json.loads(line)["results"] for line in runs.read_text().splitlines() if line.strip()] \
        if runs.is_file() else []
    cells: dict = {}
    # 1. GLUE: LoRA and every split at every budget; 2. the support ablation at the winning split
    rates = choose_rates(args, glue, lambda task: kinds(args))
    collect(args, glue, lambda task: kinds(args), rates, cells)
    split = best_split(args, glue, rates)
    support_rates = ablation(args, glue, rates, split, cells) if split is not None else {}
    # 3. E2E: LoRA and the winning split (or the splits asked for) at its budgets; its support ablation
    e2e_split = None
    if "e2e" in tasks:
        e2e_kinds = ["lora"] + ([split] if args.e2e_splits == "winner" and split else
                                [] if args.e2e_splits == "winner" else
                                [f"split{float(x):g}" for x in args.e2e_splits.split(",")])
        e2e_rates = choose_rates(args, ["e2e"], lambda task: e2e_kinds)
        rates.update(e2e_rates)
        collect(args, ["e2e"], lambda task: e2e_kinds, e2e_rates, cells)
        e2e_split = e2e_kinds[1] if len(e2e_kinds) == 2 else None  # the ablation needs one split there
        if e2e_split is not None:
            support_rates.update(ablation(args, ["e2e"], e2e_rates, e2e_split, cells))
    return {"tasks": tasks, "rates": rates, "cells": cells, "split": split, "e2e_split": e2e_split,
            "support_rates": support_rates}


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    found = gather(args)
    tasks, rates, cells, split, e2e_split, support_rates = (found[k] for k in (
        "tasks", "rates", "cells", "split", "e2e_split", "support_rates"))
    chosen = rates_text(rates)
    if args.ablation_lrs:
        chosen += f"; ablation (grids {args.ablation_lrs}): " + "; ".join(
            f"{TASK_LABEL[t]} {s}: {lr:g}" for (t, s), lr in support_rates.items())
    family = Family()
    body = (frontier_table(args, tasks, cells, family) + overall_table(args, tasks, cells, family)
            + ablation_table(args, tasks, split, cells, family) + e2e_ablation_table(args, e2e_split, cells, family)
            + bleu_tests(args, cells, family))
    text = ("# LoRA vs DSEE at equal trainable parameters\n\n"
            f"Protocol (benchmarks/README.md): learning rates and the split chosen on seed {SELECTION_SEED} only; "
            f"the tables evaluate seeds {args.seeds} (a cell shows how many it has); best-epoch rule: {BEST_EPOCH_RULE}. "
            "Paired cells: mean difference [95% t-interval] (pairs; paired t-test p, exact sign-flip p, Holm p over "
            f"the {len(family)} tests of this report, on the sign-flip or bootstrap p).\n\n"
            f"Learning rates (chosen on seed {SELECTION_SEED}): {chosen}.\n"
            + family.render(body) + rate_table(args, tasks))
    report = Path(args.report_dir)
    report.mkdir(parents=True, exist_ok=True)
    (report / "frontier_results.md").write_text(text)
    if cells:
        plot(args, tasks, cells, report / "frontier_results.png")
    print(text)
    if not args.no_record and not args.report_only:
        settings = {k: v for k, v in vars(args).items() if k != "finished"}
        record("frontier_experiment", {"settings": settings, "hours": (time.perf_counter() - start) / 3600,
                                       "winning_split": split, "rates": {f"{t}/{k}/r{r}": lr for (t, k, r), lr in rates.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
