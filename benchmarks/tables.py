"""Every number README.md and benchmarks/README.md cite, generated from the records by this one script.

A generated block sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` in either
file; its text is what the function ``NAME`` below makes of the records (``results.jsonl`` and the
experiments' ``*_runs.jsonl``), and nothing else. The experiments' full reports (``*_results.md`` and
their plots) are regenerated the same way, by each experiment script in report-only mode with the
settings in ``REPORTS``. So a number without a record cannot be cited, and a test
(tests/test_tables.py) checks that the committed blocks are exactly what the records give.

    python benchmarks/tables.py            # rewrite every block and report from the records
    python benchmarks/tables.py --check    # exit 1, naming the block, if a committed block differs

A benchmark's block reads its latest record (the last line of its kind): re-running a benchmark and
then this script updates the documents; an old line is never edited.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _protocol import SELECTION_SEED, Family, evaluation_only  # noqa: E402

from dsee.evaluation.statistics import paired, pooled  # noqa: E402

DOCUMENTS = (ROOT / "README.md", HERE / "README.md")
BLOCK = re.compile(r"(<!-- generated:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S)

# the experiments' report settings (report-only: nothing is trained); the data folder is needed only
# where a report reads references (E2E)
REPORTS = {
    "glue_experiment": ["--data-dir", "{data}/glue", "--no-extend-edges", "--seeds", "1,2,3", "--no-record"],
    "prune_experiment": ["--data-dir", "{data}/glue", "--tasks", "stsb,mrpc", "--seeds", "1,2,3",
                         "--variants", "retune only,unstructured50 weight,unstructured50 wanda,2:4 wanda", "--no-record"],
    "frontier_experiment": ["--data-dir", "{data}", "--tasks", "mrpc,stsb,sst2,e2e", "--ranks", "4,8,16,32",
                            "--e2e-ranks", "4,16", "--e2e-splits", "0.5", "--splits", "0.5,0.75", "--seeds",
                            "1,2,3,4,5", "--probe-rank", "each", "--glue-lrs", "0.0015,0.003", "--e2e-lrs", "0.002",
                            "--ablation-rank", "8", "--ablation-tasks", "mrpc,stsb,e2e", "--ablation-methods",
                            "gradient,random,magnitude", "--ablation-lrs",
                            "gradient=0.0015,0.003;random=0.0015,0.003;magnitude=0.0015,0.003",
                            "--no-record"],
    "sparse_llm_experiment": ["--data-dir", "{data}", "--seeds", "1,2,3"],
    "equal_compute_experiment": ["--data-dir", "{data}", "--seeds", "1,2,3", "--no-record"],
    "deploy_frontier": ["--data-dir", "{data}/glue", "--seeds", "1,2,3", "--no-record"],
    "e2e_experiment": ["--data-dir", "{data}", "--seeds", "1,2,3"],
}


# --- the records -----------------------------------------------------------------------------------


def seeds(n: int) -> str:
    """'1 seed', '3 seeds'."""
    return f"{n} seed" + ("" if n == 1 else "s")


def seed_counts(groups) -> str:
    """'3 seeds' when every group has 3, '2–3 seeds' otherwise."""
    counts = sorted({len(g) for g in groups})
    return seeds(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]} seeds"


def read_jsonl(name: str) -> list[dict]:
    path = HERE / name
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def records(benchmark: str, where: Callable[[dict], bool] = lambda r: True) -> list[dict]:
    """Every record of ``benchmark`` in results.jsonl satisfying ``where``, oldest first (each its ``results``,
    plus the record's commit and date under ``_commit`` and ``_date``)."""
    return [dict(entry["results"], _commit=entry["commit"], _date=entry["date"][:10], _argv=entry["argv"])
            for entry in read_jsonl("results.jsonl") if entry["benchmark"] == benchmark and where(entry)]


def latest(benchmark: str, where: Callable[[dict], bool] = lambda r: True) -> dict:
    """The last of ``records(benchmark, where)``."""
    found = records(benchmark, where)
    if not found:
        raise LookupError(f"no record of {benchmark!r} in results.jsonl")
    return found[-1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def report_argv(script: str, data_dir: str) -> list[str]:
    """``script``'s canonical report settings (REPORTS), in report-only mode: nothing is trained."""
    return [a.format(data=data_dir) for a in REPORTS[script]] + ["--report-only"]


def report_settings(script: str, args: argparse.Namespace):
    """(the experiment script as a module, its parsed report settings)."""
    module = load_script(script)
    return module, module.parse_args(report_argv(script, args.data_dir))


def source(record: dict) -> str:
    return f"record {record['_date']}, commit {record['_commit']}"


# --- speed and memory ------------------------------------------------------------------------------


def step_record(model: str) -> dict:
    return latest("step", lambda e: e["results"].get("model") == model and not e["results"].get("quick"))


def step_rows(model: str) -> list[tuple[str, float, float, float]]:
    """(method, paired time ratio, median time ratio, peak RSS ratio) against PEFT LoRA, one per DSEE budget."""
    r = step_record(model)
    memory = r["memory"]["default"]
    lora_peak = memory["lora"]["total_peak_mb"]
    return [(m, r["time"][m]["ratio_to_lora_paired"], r["time"][m]["ratio_to_lora"],
             memory[m]["total_peak_mb"] / lora_peak) for m in r["methods"] if m.startswith("dsee")]


def step(_: argparse.Namespace) -> str:
    lines = ["| model | DSEE budget | step time / LoRA, paired by round | median / median | peak RSS / LoRA |",
             "|---|---|---|---|---|"]
    for model, name in (("bert-base", "BERT-base"), ("llama-135m", "SmolLM2-135M shapes")):
        for method, ratio, median, memory in step_rows(model):
            budget = method.removeprefix("dsee:").replace("N64", "N = 64")
            lines.append(f"| {name} | {budget} | {ratio:.3f} | {median:.3f} | {memory:.3f} |")
    sources = "; ".join(f"{m}: {source(step_record(m))}" for m in ("bert-base", "llama-135m"))
    return "\n".join(lines) + f"\n\nPaired: the median over rounds of each round's DSEE / LoRA time ({sources}).\n"


def support(_: argparse.Namespace) -> str:
    r = latest("support")
    lines = ["| matrices | grebsmo | upstream | magnitude | random |", "|---|---|---|---|---|"]
    for name, s in r["sets"].items():
        times = [f"{s['methods'][m]['total_s']:.2f} s" if m in s["methods"] else "–"
                 for m in ("grebsmo", "upstream", "magnitude", "random")]
        lines.append(f"| {s['matrices']} × {s['shape']} ({name}) | " + " | ".join(times) + " |")
    return "\n".join(lines) + f"\n\nTotal seconds for all matrices, median of {r['repeats']} ({source(r)}).\n"


def merged(_: argparse.Namespace) -> str:
    r = latest("merged", lambda e: not e["results"].get("quick"))
    return (f"Merged / base model latency {r['ratio_merged_base']:.3f}, unmerged / base {r['ratio_unmerged_base']:.3f} "
            f"(batch {r['batch_size']} × {r['seq_len']}, {r['rounds']} interleaved rounds; {source(r)}).\n")


def deploy_record() -> dict:
    return latest("deploy_inference", lambda e: not e["results"].get("quick"))


def deploy(_: argparse.Namespace) -> str:
    r = deploy_record()
    lines = ["| model | FLOPs | ideal × | PyTorch × | ONNX Runtime × | ORT × / ideal | ORT / PyTorch latency |",
             "|---|---|---|---|---|---|---|"]
    for name, m in r["models"].items():
        lines.append(f"| {name} | {m['flops_ratio']:.3f} | {m['ideal_speedup']:.2f} | {m['speedup']['torch']:.2f} | "
                     f"{m['speedup']['onnxruntime']:.2f} | {m['ort_share_of_ideal']:.2f} | {m['ort_over_torch']:.2f} |")
    return ("\n".join(lines) + f"\n\nall-MiniLM-L6-v2 with DSEE adapters merged, batch {r['batch_size']} × {r['seq_len']}, "
            f"{r['threads']} threads, {r['rounds']} interleaved rounds (timing cpu share {r['timing_cpu_share']}; "
            f"{source(r)}).\n")


def deploy_latency_record() -> dict:
    return latest("deploy_latency", lambda e: not e["results"].get("quick"))


def deploy_latency(_: argparse.Namespace) -> str:
    """bench_deploy.py (fused attention and int8): speed-ups over the unpruned PyTorch model, per shape."""
    r = deploy_latency_record()
    backends = ("torch", "ort", "ort fused", "ort int8")
    lines = ["| batch | model | FLOPs | PyTorch ms (quartiles) | PyTorch × | ORT as exported × | ORT fused × | "
             "ORT int8 × | fused / PyTorch |", "|---|---|---|---|---|---|---|---|---|"]
    for shape in r["shapes"]:
        for name, m in r["latency"][shape].items():
            q1, q3 = (1e3 * x for x in m["quartiles_s"]["torch"])
            lines.append(f"| {shape.replace('x', ' × ')} | {name} | {m['flops_ratio']:.3f} | "
                         f"{1e3 * m['median_s']['torch']:.1f} ({q1:.1f}–{q3:.1f}) | "
                         + " | ".join(f"{m['speedup_vs_unpruned_torch'][b]:.2f}" for b in backends)
                         + f" | {m['fused_over_torch']:.2f} |")
    text = "\n".join(lines) + (f"\n\nall-MiniLM-L6-v2 with DSEE adapters merged; medians of {r['rounds']} interleaved "
                               f"rounds, {r['threads']} threads, {r['clock']} clock (timing cpu share "
                               f"{r['timing_cpu_share']}); ONNX Runtime {r['versions']['onnxruntime']}.")
    cost = r.get("score_cost")
    if cost:
        vs = cost["int8"]["quantization"]["vs_fp32"]
        text += (f" int8 on a fine-tuned run ({cost['run']}, {cost['split']} {cost['main_metric']}): fp32 export "
                 f"{100 * cost['fp32_score']:.2f}, int8 export {100 * cost['int8_score']:.2f} "
                 f"({100 * cost['int8_minus_fp32']:+.2f} points, both scored by `dsee eval`); the same class for "
                 f"{vs['same_class_share']:.1%} of {vs['rows']} dev rows; files {cost['fp32']['bytes_on_disk'] / 1e6:.1f} "
                 f"→ {cost['int8']['bytes_on_disk'] / 1e6:.1f} MB.")
    return text + f" ({source(r)}).\n"


def grebsmo_scale(_: argparse.Namespace) -> str:
    """bench_grebsmo.py: GreBsmo and the whole support choice against one randomized SVD."""
    r = latest("grebsmo_scale", lambda e: not e["results"].get("quick"))
    res = r
    lines = ["| weight | shape | rank | SVD s | GreBsmo s | GreBsmo + top-N s | GreBsmo / SVD | GreBsmo + top-N / SVD | "
             "planted outliers found |", "|---|---|---|---|---|---|---|---|---|"]
    for s in res["shapes"].values():
        recall = "–" if s["recall"] is None else f"{s['recall']:.3f}"
        lines.append(f"| {s['kind']} | {s['shape'][0]} × {s['shape'][1]} | {s['rank']} | {s['svd_s']:.2f} | "
                     f"{s['grebsmo_s']:.2f} | {s['support_s']:.2f} | {s['grebsmo_over_svd']:.2f} | "
                     f"{s['support_over_svd']:.2f} | {recall} |")
    for kind in ("random", "planted"):
        w = res[f"llama3_8b_all_linear_{kind}"]
        lines.append(f"| {kind} | Llama-3-8B, all 224 linear matrices (estimate) | – | {w['svd_s']:.0f} | "
                     f"{w['grebsmo_s']:.0f} | {w['support_s']:.0f} | {w['ratio']:.2f} | "
                     f"{w['support_s'] / w['svd_s']:.2f} | |")
    target = res["target"]
    return ("\n".join(lines) + f"\n\nMedians of {res['repeats']} interleaved repeats, {res['threads']} threads, N = "
            f"{res['density']:.0%} of each matrix; SVD: `torch.svd_lowrank(W, q = rank + 8, niter = 2)`. Target GreBsmo "
            f"≤ {target['grebsmo_over_svd_max']}× the SVD on every matrix: worst {target['worst']:.2f}×, "
            f"{'met' if target['met'] else 'missed'} ({source(r)}).\n")


def pruned_speed(_: argparse.Namespace) -> str:
    r = latest("pruned_inference")
    lines = ["| model | FLOPs | speed-up | non-zeros in block weights | file (dense) | file (compact) |",
             "|---|---|---|---|---|---|"]
    for name, m in r["models"].items():
        p = m["params"]
        compact = f"{m['compact_file_bytes'] / 1e6:.1f} MB" if "compact_file_bytes" in m else "–"
        lines.append(f"| {name} | {m['flops_ratio']:.3f} | {m['speedup']:.2f}× | "
                     f"{p['block_linear_nonzero'] / p['block_linear']:.2f} | {m['dense_file_bytes'] / 1e6:.1f} MB | {compact} |")
    return "\n".join(lines) + f"\n\nBatch {r['batch_size']} × {r['seq_len']}, {r['rounds']} rounds ({source(r)}).\n"


def fsdp_record() -> dict:
    """The SmolLM2-135M comparison of 1 and 2 processes (not the synthetic model's loading benchmark)."""
    return latest("bench_fsdp", lambda e: not e["results"].get("checkpoint_mb") and e["results"]["model"] != "synthetic Llama")


def fsdp(_: argparse.Namespace) -> str:
    r = fsdp_record()
    base = next(row for row in r["rows"] if row["variant"] == "fp32" and row["processes"] == 1)
    names = {"fp32": "fp32", "gc": "+ checkpointing", "bf16": "+ bf16 frozen", "gc+bf16": "+ both"}
    lines = ["| variant | processes | frozen MB | trained MB | AdamW MB | train peak MB | train peak / 1 process fp32 |",
             "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {names.get(row['variant'], row['variant'])} | {row['processes']} | {row['frozen_mb']:.1f} | "
                     f"{row['trained_mb']:.2f} | {row['optimizer_mb']:.2f} | {row['train_peak_mb']:.0f} | "
                     f"{row['train_peak_mb'] / base['train_peak_mb']:.3f} |")
    return (f"\n".join(lines) + f"\n\n{r['model']}, global batch {r['batch_size']} × {r['seq_len']}, per process the "
            f"largest over the processes ({source(r)}).\n")


def fsdp_loading(_: argparse.Namespace) -> str:
    """bench_fsdp.py --synthetic, every record: per-process memory of loading a large checkpoint whole or tensor
    by tensor, and of the training steps after it (which grow with the tokens per process)."""
    found = records("bench_fsdp", lambda e: e["results"]["model"] == "synthetic Llama")
    if not found:
        raise LookupError("no record of bench_fsdp --synthetic in results.jsonl")
    names = {"bf16": "bf16 frozen", "gc+bf16": "bf16 frozen + checkpointing"}
    lines = ["| tokens per process | variant | loading | loading peak MB | / fp32 checkpoint | training peak MB | "
             "/ fp32 checkpoint |", "|---|---|---|---|---|---|---|"]
    for r in found:
        size = r["checkpoint_mb"]
        for row in r["rows"]:
            lines.append(f"| {row['per_process_batch']} × {r['seq_len']} | {names.get(row['variant'], row['variant'])} | "
                         f"{row['loading']} | {row['build_peak_mb']:.0f} | {row['build_peak_mb'] / size:.2f} | "
                         f"{row['train_peak_mb']:.0f} | {row['train_peak_mb'] / size:.2f} |")
    size = found[-1]["checkpoint_mb"]
    return ("\n".join(lines) + f"\n\nA Llama of {size:.0f} MB in fp32 (random weights) on 2 processes, per process the "
            f"largest over the processes; target: every peak ≤ 0.5 × the fp32 checkpoint + 1 GB = {0.5 * size + 1024:.0f} MB "
            f"({'; '.join(source(r) for r in found)}).\n")


def cola_check(_: argparse.Namespace) -> str:
    """cola_check.py: the frozen checkpoint's linear probe, then one run per change to the defaults (latest of each)."""
    probe = latest("cola_check_probe")
    runs = {r["variant"]: r for r in records("cola_check_run")}  # the latest run of each variant
    p = probe["probe"]
    lines = [f"Linear probe of the frozen checkpoint (logistic regression on {probe['train_samples']:,} training "
             f"sentences, dev MCC ×100): pooler output {100 * p['pooler']:.1f} (class-balanced "
             f"{100 * p['pooler balanced']:.1f}), last-layer [CLS] {100 * p['cls']:.1f} ({100 * p['cls balanced']:.1f}), "
             f"mean of the last layer's tokens {100 * p['mean']:.1f} ({100 * p['mean balanced']:.1f}) ({source(probe)}).",
             "", "| change to the defaults | dev MCC ×100 per epoch | kept model's predictions per class | one class only |",
             "|---|---|---|---|"]
    for r in runs.values():
        per_epoch = ", ".join(f"{100 * m:.1f}" for m in r["mcc_by_epoch"])
        classes = ", ".join(f"{k} {v}" for k, v in r["predicted_classes"].items())
        lines.append(f"| {r['change']} | {per_epoch} | {classes} | {'yes' if r.get('degenerate') else 'no'} |")
    last = list(runs.values())[-1]
    return "\n".join(lines) + (f"\n\nall-MiniLM-L6-v2, CoLA, {last['train_samples']:,} training sentences, the whole "
                               f"dev set; the kept model is the best epoch's ({source(last)}).\n")


def defaults(_: argparse.Namespace) -> str:
    r = latest("defaults_check")
    lines = ["| learning rate | dev accuracy | majority class | macro-F1 | majority macro-F1 |", "|---|---|---|---|---|"]
    for row in r["rows"]:
        f1 = f"{row['macro_f1']:.3f}" if "macro_f1" in row else "not recorded"
        majority_f1 = f"{row['majority_macro_f1']:.3f}" if "majority_macro_f1" in row else "not recorded"
        lines.append(f"| {row['lr']:g}{' (default)' if row.get('default') else ''} | {row['accuracy']:.3f} | "
                     f"{row['majority']:.3f} | {f1} | {majority_f1} |")
    return "\n".join(lines) + f"\n\n({source(r)})\n"


# --- the experiments -------------------------------------------------------------------------------


def frontier_cells(args: argparse.Namespace):
    """The frontier report's evaluation cells under its canonical settings (REPORTS)."""
    frontier, report_args = report_settings("frontier_experiment", args)
    return frontier, report_args, frontier.gather(report_args)["cells"]


def equal_compute(args: argparse.Namespace) -> str:
    """Whether S earns its parameters and its compute (E2E, SmolLM2-135M): the experiment's own answer
    and its runs per method, from its records under the REPORTS settings."""
    experiment, report_args = report_settings("equal_compute_experiment", args)
    ratio, runs = experiment.collect(report_args, list(experiment.METHODS))
    counts = "; ".join(f"{experiment.LABEL[m]}: {len(runs.get(m, []))}" for m in experiment.METHODS
                       if m != "dsee-gradient-slr" or experiment.has_own_rate_runs(ratio))
    tried = experiment.selection_text(report_args)
    chosen = "not yet chosen" if ratio is None else f"× {ratio:g} chosen"
    return (experiment.verdict(runs, ratio) + f"\nS's own rate (a multiple of the common rate) on seed {SELECTION_SEED}, "
            f"dev loss {tried or 'none recorded'}: {chosen}. Runs recorded at the evaluation seeds "
            f"{report_args.seeds}: {counts}. Full report: `equal_compute_results.md`.\n")


def frontier_summary(args: argparse.Namespace) -> str:
    """DSEE (half the budget in S) − LoRA at every budget: per task, pooled; E2E BLEU and dev loss."""
    frontier, report_args, cells = frontier_cells(args)
    family = Family()
    ranks = frontier.ranks_of(report_args, "mrpc")
    glue = ["mrpc", "stsb", "sst2"]
    lines = ["| budget | " + " | ".join(frontier.TASK_LABEL[t] for t in glue) + " | pooled (standardised) |",
             "|---|" + "---|" * (len(glue) + 1)]
    for rank in ranks:
        groups = {t: frontier.paired_differences(cells, t, "split0.5", rank) for t in glue}
        lines.append(f"| r = {rank} | " + " | ".join(family.paired(groups[t]) for t in glue)
                     + f" | {family.pooled(groups)} |")
    loss = lambda e: e["dev_loss"]  # noqa: E731
    e2e = ["", "| E2E budget | BLEU ×100 | dev loss per target token |", "|---|---|---|"]
    for rank in frontier.ranks_of(report_args, "e2e"):
        e2e.append(f"| r = {rank} | {family.paired(frontier.paired_differences(cells, 'e2e', 'split0.5', rank))} | "
                   f"{family.paired(frontier.paired_differences(cells, 'e2e', 'split0.5', rank, measure=loss), 3)} |")
    text = ("\n".join(lines + e2e) + f"\n\nDSEE with half of LoRA-r's budget in S − LoRA r, paired by seed; rates "
            f"chosen on seed {SELECTION_SEED}, evaluation seeds {report_args.seeds} (5 at r = 16); cells: mean "
            "[95% t-interval] (pairs; t p, exact sign-flip p, Holm p over this block's "
            f"{len(family)} tests). Full report: `frontier_results.md`.\n")
    return family.render(text)


def deploy_frontier(args: argparse.Namespace) -> str:
    """The deployment frontier (README "Deploy"): every configuration across the tasks, then the issue's
    three targets, from the frontier's records under its REPORTS settings."""
    module, report_args = report_settings("deploy_frontier", args)
    module.load(report_args)
    module.choose_rates(report_args)
    runs = [e for e in report_args.finished if e["key"].get("kind") in ("source", "pruned", "retune-only")
            and "deploy" not in e["key"] and e["key"]["seed"] in report_args.seed_list]
    seeds_done = sorted({e["key"]["seed"] for e in runs})
    tasks_done = [module.TASK_LABEL[t] for t in report_args.task_list if any(e["key"]["task"] == t for e in runs)]
    return (module.frontier_table(report_args) + "\n" + module.targets_summary(report_args)
            + f"\n{len(runs)} runs recorded at evaluation seeds {', '.join(map(str, seeds_done)) or 'none'} "
            f"(of {report_args.seeds}) on {', '.join(tasks_done) or 'no task'}; the protocol's plan is "
            f"{len(module.planned(report_args))} runs. Full report and plot: `deploy_frontier_results.md`, "
            "`deploy_frontier_results.png`.\n")


def glue_results(args: argparse.Namespace):
    glue, report_args = report_settings("glue_experiment", args)
    return glue, report_args, glue.gather(report_args)


def glue_summary(args: argparse.Namespace) -> str:
    glue, report_args, results = glue_results(args)
    tasks, methods = report_args.tasks.split(","), ["full", "lora", "dsee"]
    table = glue.aggregate(results, tasks, methods)
    return glue.markdown(table, tasks, methods) + glue.by_seed_markdown(results, tasks, methods)


def prune_entries(args: argparse.Namespace):
    prune, report_args = report_settings("prune_experiment", args)
    finished = prune.finished_runs(Path(report_args.runs_file))
    tasks, variants = report_args.tasks.split(","), report_args.variants.split(",")
    entries = prune.run_all(report_args, tasks, variants, finished)
    selection = prune.run_all(report_args, tasks, [v for v in variants if v in prune.FIFTY], finished,
                              seeds=[SELECTION_SEED])
    best = prune.best_fifty(selection, tasks, variants)
    if best is not None:
        variants = variants + [best.replace("unstructured50", "unstructured70", 1)]
        entries = prune.run_all(report_args, tasks, variants[-1:], finished, entries)
    return prune, tasks, variants, entries


def prune_summary(args: argparse.Namespace) -> str:
    prune, tasks, variants, entries = prune_entries(args)
    return prune.table(entries, tasks, variants)


def structured_seed0(args: argparse.Namespace) -> str:
    """The older structured-pruning runs (seed 0 only, bf16 sources from the GLUE experiment): Δ against the
    source and against the re-tune-only control, per task and averaged; one seed, so no test."""
    prune = load_script("prune_experiment")
    entries = [e for e in prune.finished_runs(HERE / "prune_runs.jsonl")
               if e["key"]["seed"] == SELECTION_SEED and "bf16" in e["key"]["source"]]
    tasks = ["stsb", "mrpc", "sst2", "rte"]
    variants = [v for v in prune.VARIANTS if any(e["key"]["variant"] == v for e in entries)]
    lines = ["| variant | FLOPs | " + " | ".join(prune.TASK_LABEL[t] for t in tasks) + " | average Δ vs source | "
             "average Δ vs re-tune-only |", "|---|---|" + "---|" * (len(tasks) + 2)]
    for v in variants:
        mine = [e for e in entries if e["key"]["variant"] == v]
        cells = []
        for t in tasks:
            d = prune.against_source(entries, v, t)
            cells.append(f"{d[0]:+.1f}" if d else "–")
        vs_source = statistics.mean(d for t in tasks for d in prune.against_source(entries, v, t))
        control = [d for t in tasks for d in prune.against_control(entries, v, t)]
        flops = statistics.mean(e["metrics"]["flops"] / e["source"]["flops"] for e in mine)
        lines.append(f"| {v} | {100 * flops:.1f}% | " + " | ".join(cells) + f" | {vs_source:+.2f} | "
                     + (f"{statistics.mean(control):+.2f} |" if control and v != prune.CONTROL else "– |"))
    return "\n".join(lines) + ("\n\nSeed 0 only (the seed these settings were chosen on), sources from the bf16 "
                               "GLUE experiment, 2 epochs of re-tuning, 2,000 examples: a pilot, not a protocol result.\n")


def e2e_n64_results(args: argparse.Namespace):
    """(the E2E N = 64 experiment as a module, its report settings, its runs: evaluation seeds and pilot)."""
    module, report_args = report_settings("e2e_experiment", args)
    return module, report_args, module.gather(report_args)


def e2e_n64(args: argparse.Namespace) -> str:
    """DSEE (N = 64) − LoRA on E2E at each rank, paired by seed, with the bootstrap and the seed-0 pilot."""
    module, report_args, entries = e2e_n64_results(args)
    return module.comparison(report_args, entries) + "\nFull report: `e2e_results.md`.\n"


# --- the README's summary ----------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "missed"


def e2e_n64_row(args: argparse.Namespace) -> tuple[str, str, str]:
    """The Measured row of the E2E N = 64 comparison: mean DSEE − LoRA BLEU per rank at the evaluation
    seeds (the seed-0 pilot until they are recorded, labelled so)."""
    module, _, entries = e2e_n64_results(args)
    evaluated = module.by_rank_and_seed(evaluation_only(entries, module.seed_of))
    cells = {rank: pairs for rank, pairs in evaluated.items() if pairs}
    label = "seed 0 only: the pilot its settings come from, untested"
    if not cells:
        cells = {rank: pairs for rank, pairs in module.by_rank_and_seed(entries).items() if pairs}
    else:
        label = f"evaluation seeds {', '.join(map(str, sorted({s for p in cells.values() for s in p})))}"
    deltas = {rank: statistics.mean(module.bleu_delta(pair) for pair in pairs.values()) for rank, pairs in cells.items()}
    return (f"E2E (SmolLM2-135M, N = 64, {label}): DSEE − LoRA at r = " + ", ".join(map(str, deltas)),
            ", ".join(f"{d:+.2f}" for d in deltas.values()) + f" BLEU (mean over {seed_counts(cells.values())})",
            f"DSEE ≥ LoRA: {verdict(all(d >= 0 for d in deltas.values()))}")


def measured(args: argparse.Namespace) -> str:
    rows: list[tuple[str, str, str]] = []
    bert = step_rows("bert-base")
    limits = {"dsee:N64": (1.05, None), "dsee:1%": (1.10, 1.05), "dsee:5%": (1.25, 1.10)}
    ok = all(t <= limits[m][0] and (limits[m][1] is None or mem <= limits[m][1]) for m, t, _, mem in bert)
    rows.append(("training step, BERT-base 8 × 128, DSEE / PEFT LoRA r = 16: N = 64, 1%, 5% of each matrix in S",
                 ", ".join(f"{t:.3f}" for _, t, _, _ in bert) + "× time (paired by round); "
                 + ", ".join(f"{mem:.3f}" for *_, mem in bert) + "× peak RSS",
                 f"≤ 1.05, 1.10, 1.25× time; ≤ 1.05 (1%), 1.10 (5%) memory: {verdict(ok)}"))
    llama = step_rows("llama-135m")
    rows.append(("same, SmolLM2-135M shapes: " + ", ".join(m.removeprefix("dsee:") for m, *_ in llama),
                 ", ".join(f"{t:.3f}" for _, t, _, _ in llama) + "× time (paired); peak RSS "
                 + f"{min(mem for *_, mem in llama):.3f}–{max(mem for *_, mem in llama):.3f}×", ""))
    sup = latest("support")["sets"]["bert-base"]
    rows.append((f"support selection, {sup['matrices']} BERT-base matrices, `grebsmo`",
                 f"{sup['methods']['grebsmo']['total_s']:.2f} s", f"≤ 10 s: {verdict(sup['methods']['grebsmo']['total_s'] <= 10)}"))
    glue, report_args, results = glue_results(args)
    tasks = report_args.tasks.split(",")
    averages = glue.seed_averages(results, tasks, ["full", "lora", "dsee"])
    complete = sorted(set.intersection(*(set(v) for v in averages.values())))  # seeds finished on every task
    mean = {m: statistics.mean(averages[m][s] for s in complete) for m in ("dsee", "lora", "full")}
    vs = {m: pooled({t: glue.paired_scores(results, t, "dsee", m) for t in tasks}) for m in ("lora", "full")}
    rows.append((f"GLUE (MiniLM, bf16, {seeds(len(complete))} evaluated on every task): DSEE r = 16, "
                 f"N = 64 vs LoRA r = 16 vs full, average of {len(tasks)} tasks, mean over seeds "
                 + ", ".join(map(str, complete)),
                 f"{mean['dsee']:.1f} vs {mean['lora']:.1f} vs {mean['full']:.1f}; "
                 f"DSEE − LoRA pooled {vs['lora'].effect:+.2f} (flip p {vs['lora'].sign_flip_p:.2f}), − full "
                 f"{vs['full'].effect:+.2f} (flip p {vs['full'].sign_flip_p:.2f})",
                 f"DSEE ≥ LoRA: {verdict(mean['dsee'] >= mean['lora'])}; within 1 of full: "
                 f"{verdict(mean['full'] - mean['dsee'] <= 1)} (CoLA: adapters stay at the majority class)"))
    rows.append(e2e_n64_row(args))
    prune, ptasks, variants, pentries = prune_entries(args)
    for v, bar in (("unstructured50 weight", 1.0), ("unstructured50 wanda", 1.0), ("2:4 wanda", 2.0)):
        by_seed = prune.average_deltas(pentries, ptasks, v)
        control = list(prune.average_against_control(pentries, ptasks, v).values())
        if not by_seed:
            continue
        text = f"{statistics.mean(by_seed.values()):+.2f} vs source ({seeds(len(by_seed))})"
        text += f", {statistics.mean(control):+.2f} vs re-tune-only ({seeds(len(control))})" if control else ", no control yet"
        rows.append((f"MiniLM, {v.replace('unstructured50', '50%')} (score), re-tuned, STS-B + MRPC average",
                     text, f"≥ −{bar}: {verdict(statistics.mean(by_seed.values()) >= -bar)} (vs source)"))
    frontier, fargs, cells = frontier_cells(args)
    glue_tasks = ["mrpc", "stsb", "sst2"]
    pooled_rows = [(r, pooled({t: frontier.paired_differences(cells, t, "split0.5", r) for t in glue_tasks}))
                   for r in frontier.ranks_of(fargs, "mrpc")]
    rows.append(("MiniLM, DSEE half in S − LoRA at r = " + " / ".join(str(r) for r, _ in pooled_rows)
                 + "'s budget (MRPC, STS-B, SST-2; pooled on standardised differences)",
                 " / ".join(f"{p.effect:+.2f} (flip p {p.sign_flip_p:.2f}, {p.n} pairs)" for _, p in pooled_rows),
                 "DSEE above LoRA beyond noise: missed"))
    loss = lambda e: e["dev_loss"]  # noqa: E731
    e2e = []
    for r in frontier.ranks_of(fargs, "e2e"):
        b = frontier.paired_differences(cells, "e2e", "split0.5", r)
        d = frontier.paired_differences(cells, "e2e", "split0.5", r, measure=loss)
        if b:
            e2e.append(f"r = {r}: {statistics.mean(b):+.2f} BLEU, {statistics.mean(d):+.3f} dev loss ({len(b)} seeds, "
                       f"flip p {paired(d).sign_flip_p:.2f})")
    rows.append(("E2E (SmolLM2-135M), DSEE half in S − LoRA, GreBsmo Ω", "; ".join(e2e), ""))
    r = deploy_record()
    shares = [m["ort_share_of_ideal"] for n, m in r["models"].items() if n != "unpruned"]
    over = [m["ort_over_torch"] for m in r["models"].values()]
    rows.append(("MiniLM pruned (heads / FFN): ONNX Runtime speed-up over unpruned ONNX, share of the FLOPs ideal",
                 ", ".join(f"{m['speedup']['onnxruntime']:.2f}" for n, m in r["models"].items() if n != "unpruned")
                 + f"×; {min(shares):.2f}–{max(shares):.2f}", f"≥ 0.9: {verdict(min(shares) >= 0.9)}"))
    rows.append(("same, ONNX Runtime latency / PyTorch eager (export without fused attention)",
                 f"{min(over):.2f}–{max(over):.2f}", f"≤ 1: {verdict(max(over) <= 1)}"))
    d = deploy_latency_record()
    fused = {shape: d["latency"][shape]["unpruned"]["fused_over_torch"] for shape in d["shapes"]}
    rows.append(("unpruned MiniLM, ONNX Runtime with fused attention / PyTorch eager latency at "
                 + " and ".join(s.replace("x", " × ") for s in fused),
                 ", ".join(f"{v:.2f}" for v in fused.values()),
                 "≤ 0.9: " + ", ".join(f"{verdict(v <= 0.9)} at {s.replace('x', ' × ')}" for s, v in fused.items())))
    int8 = {shape: d["latency"][shape]["heads 50% + ffn 50%"]["speedup_vs_unpruned_torch"]["ort int8"]
            for shape in d["shapes"]}
    cost = d.get("score_cost")
    rows.append(("MiniLM 50% heads + 50% FFN, ONNX Runtime int8, speed-up over unpruned PyTorch fp32; int8 − fp32 "
                 "dev score of a run",
                 ", ".join(f"{v:.2f}× at {s.replace('x', ' × ')}" for s, v in int8.items())
                 + (f"; {100 * cost['int8_minus_fp32']:+.2f} points ({cost['main_metric']})" if cost else ""), ""))
    f = fsdp_record()
    base = next(row for row in f["rows"] if row["variant"] == "fp32" and row["processes"] == 1)
    two = {row["variant"]: row for row in f["rows"] if row["processes"] == 2}
    rows.append(("SmolLM2-135M training, 2 FSDP processes: frozen weights per process; + checkpointing + bf16 frozen: "
                 "training peak / one fp32 process",
                 f"{two['fp32']['frozen_mb'] / base['frozen_mb']:.3f}; {two['gc+bf16']['train_peak_mb'] / base['train_peak_mb']:.3f}",
                 "≈ 1/2; < 0.5"))
    d = latest("defaults_check")["rows"]
    default = next(row for row in d if row.get("default"))
    if "macro_f1" in default:
        rows.append(("`dsee train --epochs 3` defaults on 1,000 MRPC pairs: dev accuracy and macro-F1 vs the majority "
                     "class's", f"{default['accuracy']:.3f} vs {default['majority']:.3f}; {default['macro_f1']:.3f} vs "
                     f"{default['majority_macro_f1']:.3f}", "clearly above (macro-F1)"))
    else:
        rows.append(("`dsee train --epochs 3` defaults on 1,000 MRPC pairs: dev accuracy vs majority class",
                     f"{default['accuracy']:.3f} vs {default['majority']:.3f}", "clearly above"))
    lines = ["| what | measured | target |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


BLOCKS: dict[str, Callable[[argparse.Namespace], str]] = {
    "step": step, "support": support, "merged": merged, "deploy": deploy, "pruned-speed": pruned_speed,
    "fsdp": fsdp, "fsdp-loading": fsdp_loading, "cola-check": cola_check, "deploy-latency": deploy_latency, "grebsmo-scale": grebsmo_scale, "defaults": defaults, "frontier-summary": frontier_summary, "glue-summary": glue_summary,
    "prune-summary": prune_summary, "equal-compute": equal_compute, "structured-seed0": structured_seed0, "e2e-n64": e2e_n64, "measured": measured,
    "deploy-frontier": deploy_frontier,
}


# --- writing and checking --------------------------------------------------------------------------


def render(text: str, args: argparse.Namespace, cache: dict[str, str]) -> str:
    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in BLOCKS:
            raise SystemExit(f"unknown generated block {name!r} (known: {', '.join(BLOCKS)})")
        if name not in cache:
            cache[name] = BLOCKS[name](args).rstrip("\n") + "\n"
        return match.group(1) + cache[name] + match.group(4)

    return BLOCK.sub(fill, text)


REPORT_FILES = {"glue_experiment": "glue_results.md", "prune_experiment": "prune_results.md",
                "frontier_experiment": "frontier_results.md", "sparse_llm_experiment": "sparse_llm_results.md",
                "equal_compute_experiment": "equal_compute_results.md", "deploy_frontier": "deploy_frontier_results.md",
                "e2e_experiment": "e2e_results.md"}


def write_reports(args: argparse.Namespace, folder: Path = HERE) -> None:
    """Each experiment's report (``*_results.md`` and its plot) from its records, into ``folder``."""
    for script in REPORTS:
        argv = report_argv(script, args.data_dir) + ["--report-dir", str(folder)]
        with contextlib.redirect_stdout(io.StringIO()):
            load_script(script).main(argv)


def stale_reports(args: argparse.Namespace) -> list[str]:
    """The committed ``*_results.md`` that differ from what the records give now."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_reports(args, Path(tmp))
        return [name for name in REPORT_FILES.values()
                if (Path(tmp) / name).read_text() != (HERE / name).read_text()]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"),
                   help="the shared data folder (E2E references for the BLEU tests)")
    p.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    p.add_argument("--no-reports", dest="reports", action="store_false",
                   help="only the README blocks, not the experiments' *_results.md")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cache: dict[str, str] = {}
    stale = []
    for document in DOCUMENTS:
        text = document.read_text()
        new = render(text, args, cache)
        if new != text:
            stale.append(document)
            if not args.check:
                document.write_text(new)
    if args.check:
        for document in stale:
            old = {m["name"]: m["body"] for m in BLOCK.finditer(document.read_text())}
            differing = [name for name, body in old.items() if cache.get(name) != body]
            print(f"{document.name}: generated blocks differ from the records: {', '.join(differing)} "
                  "(run python benchmarks/tables.py)")
        reports = stale_reports(args) if args.reports else []
        for name in reports:
            print(f"{name}: differs from what the records give (run python benchmarks/tables.py)")
        return 1 if stale or reports else 0
    if args.reports:
        write_reports(args)
    print(f"{len(cache)} blocks from the records" + (f"; rewrote {', '.join(str(d.relative_to(ROOT)) for d in stale)}" if stale else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
