"""E2E NLG on SmolLM2-135M: DSEE vs LoRA at the same rank (paper §4, data-to-text).

For each rank r (default 4, 8 and 16) and seed: a LoRA run (N = 0) and a DSEE run (N = 64, GreBsmo Ω)
on q_proj and v_proj of every layer, trained on a seeded subset of the E2E training rows (the CPU
budget), then decoded with beam search (beam 10, length penalty 0.8, no repeated 4-grams: LoRA's
recipe) on the first `--decode-items` distinct meaning representations of the dev set, scored with
BLEU, NIST, METEOR, ROUGE-L and CIDEr (`dsee.evaluation.nlg`). Every finished run is appended to
`benchmarks/e2e_runs.jsonl` (with its decoded outputs, so the tests can be recomputed from the record)
and never run again with the same settings; the report goes to `e2e_results.md`.

Protocol (the project's, ``_protocol.py``): nothing is searched here (one rate, 5e-4, for both
methods); seed 0, the selection seed, was the pilot these settings come from and is never a row of
the comparison. The evaluation seeds (``--seeds``, default 1,2,3) give DSEE − LoRA per rank, paired by
seed (mean, 95% t-interval, t and exact sign-flip p), for BLEU and for dev loss, and a paired bootstrap
of BLEU over the decoded MRs at each rank and seed; Holm's adjustment over every test of the report.

    python benchmarks/prepare_smollm2.py --out models/smollm2-135m
    python benchmarks/e2e_experiment.py --data-dir ../shared/data --model models/smollm2-135m --out runs/e2e
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _protocol import SELECTION_SEED, Family, evaluation_only  # noqa: E402
from _record import HERE, record  # noqa: E402

from dsee.train.generate import evaluate_generation_run  # noqa: E402
from dsee.train.checkpoint import has_checkpoint  # noqa: E402
from dsee.train.loop import train  # noqa: E402
from dsee.train.run import METRICS, RunConfig  # noqa: E402

RUNS_PATH = HERE / "e2e_runs.jsonl"
METRIC_NAMES = ("bleu", "nist", "meteor", "rouge_l", "cider")
PREDICTIONS = "predictions_validation.txt"  # written by the decoding, one output per dev MR


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="the folder holding e2e/")
    p.add_argument("--model", default="models/smollm2-135m")
    p.add_argument("--out", default="runs/e2e")
    p.add_argument("--ranks", default="4,8,16")
    p.add_argument("--methods", default="lora,dsee")
    p.add_argument("--seeds", default="1,2,3", help=f"seed {SELECTION_SEED} (the pilot) is reported apart, untested")
    p.add_argument("--max-train-samples", type=int, default=1000)
    p.add_argument("--epochs", type=float, default=1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--decode-items", type=int, default=50, help="distinct dev MRs decoded and scored")
    p.add_argument("--beams", type=int, default=10)
    p.add_argument("--mixed-precision", default="bf16", choices=("no", "bf16"), help="bf16 autocast on CPU")
    p.add_argument("--runs-file", default=str(RUNS_PATH))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--report-dir", default=str(HERE))
    return p.parse_args(argv)


def run_key(args, method: str, rank: int, seed: int) -> dict:
    """The settings that identify a run in the records."""
    return {"method": method, "rank": rank, "seed": seed, "model": args.model, "max_train_samples": args.max_train_samples,
            "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "label_smoothing": args.label_smoothing,
            "decode_items": args.decode_items, "beams": args.beams, "mixed_precision": args.mixed_precision}


def recorded(finished: list[dict], key: dict) -> dict | None:
    return next((done for done in finished if done["key"] == key), None)


def run_one(args, method: str, rank: int, seed: int, finished: list[dict]) -> dict | None:
    key = run_key(args, method, rank, seed)
    done = recorded(finished, key)
    if done is not None or args.report_only:
        return done
    path = Path(args.out) / f"{method}-r{rank}" / f"seed{seed}"
    adapter = {"rank": rank, "alpha": 32, "num_sparse": 0 if method == "lora" else 64, "seed": seed}
    if not (path / METRICS).is_file():
        config = RunConfig(out=str(path), model=args.model, task="e2e", data_dir=args.data_dir, method=method,
                           adapter=adapter, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                           eval_batch_size=16, max_length=args.max_length, seed=seed,
                           max_train_samples=args.max_train_samples, max_eval_samples=args.decode_items,
                           label_smoothing=args.label_smoothing, mixed_precision=args.mixed_precision)
        resume = has_checkpoint(path)
        print(f"\n=== e2e {method} r={rank} seed={seed}", flush=True)
        train(config, resume=resume, overwrite=not resume)
    metrics = json.loads((path / METRICS).read_text())
    start = time.perf_counter()
    decoded = evaluate_generation_run(path, max_items=args.decode_items, beams=args.beams)
    outputs = (path / PREDICTIONS).read_text().splitlines()
    entry = {"key": key, "scores": decoded["scores"], "outputs": outputs, "dev_loss": metrics["dev"]["validation"]["loss"],
             "trainable_parameters": metrics["trainable_parameters"], "trainable_share": metrics["trainable_share"],
             "train_seconds": metrics["train_seconds"], "decode_seconds": time.perf_counter() - start,
             "train_examples_per_second": metrics["train_examples_per_second"]}
    record("e2e_run", entry, path=args.runs_file)
    finished.append(entry)
    return entry


def table(entries: list[dict]) -> str:
    head = "| method | rank | trainable | " + " | ".join(m.upper() if m != "rouge_l" else "ROUGE-L" for m in METRIC_NAMES)
    lines = [head + " | dev loss | train s | seeds |", "|" + "---|" * (len(METRIC_NAMES) + 6)]
    groups: dict[tuple, list[dict]] = {}
    for e in entries:
        groups.setdefault((e["key"]["method"], e["key"]["rank"]), []).append(e)
    for (method, rank), mine in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cells = []
        for m in METRIC_NAMES:
            values = [e["scores"][m] for e in mine if e["scores"][m] is not None]
            scale = 100 if m in ("bleu", "meteor", "rouge_l") else 1
            cells.append(f"{scale * statistics.mean(values):.2f}" if values else "n/a")
        lines.append(f"| {method} | {rank} | {mine[0]['trainable_parameters']:,} ({100 * mine[0]['trainable_share']:.2f}%) | "
                     + " | ".join(cells) + f" | {statistics.mean(e['dev_loss'] for e in mine):.3f} | "
                     f"{statistics.mean(e['train_seconds'] for e in mine):.0f} | {len(mine)} |")
    return "\n".join(lines) + "\n\nBLEU, METEOR, ROUGE-L ×100; NIST and CIDEr as is. Mean over seeds.\n"


def by_rank_and_seed(entries: list[dict]) -> dict[int, dict[int, dict[str, dict]]]:
    """{rank: {seed: {method: entry}}} for the (rank, seed) cells where both methods finished."""
    cells: dict[int, dict[int, dict[str, dict]]] = {}
    for e in entries:
        cells.setdefault(e["key"]["rank"], {}).setdefault(e["key"]["seed"], {})[e["key"]["method"]] = e
    return {rank: {s: pair for s, pair in sorted(seeds.items()) if {"lora", "dsee"} <= set(pair)}
            for rank, seeds in sorted(cells.items())}


def seed_of(entry: dict) -> int:
    return entry["key"]["seed"]


def bleu_delta(pair: dict[str, dict]) -> float:
    """DSEE − LoRA corpus BLEU ×100 of one (rank, seed) pair, as ``by_rank_and_seed`` gives it."""
    return 100 * (pair["dsee"]["scores"]["bleu"] - pair["lora"]["scores"]["bleu"])


def comparison(args, entries: list[dict]) -> str:
    """DSEE − LoRA per rank at the evaluation seeds: BLEU ×100 and dev loss paired by seed, then the paired
    bootstrap of BLEU over the decoded MRs at each rank and seed; one Holm family. The selection seed's
    pilot follows, untested."""
    from dsee.evaluation.significance import paired_bootstrap_bleu
    from dsee.train.textgen import load_e2e

    cells = by_rank_and_seed(evaluation_only(entries, seed_of))
    pilot = by_rank_and_seed([e for e in entries if seed_of(e) == SELECTION_SEED])
    family = Family()
    lines = ["| rank | LoRA BLEU | DSEE BLEU | DSEE − LoRA, BLEU ×100 | DSEE − LoRA, dev loss |", "|---|---|---|---|---|"]
    for rank, seeds in cells.items():
        if not seeds:
            continue
        bleu = {m: statistics.mean(100 * pair[m]["scores"]["bleu"] for pair in seeds.values()) for m in ("lora", "dsee")}
        d_bleu = [bleu_delta(pair) for pair in seeds.values()]
        d_loss = [pair["dsee"]["dev_loss"] - pair["lora"]["dev_loss"] for pair in seeds.values()]
        lines.append(f"| {rank} | {bleu['lora']:.2f} | {bleu['dsee']:.2f} | {family.paired(d_bleu)} | "
                     f"{family.paired(d_loss, 3)} |")
    if len(lines) == 2:
        text = "No evaluation seed has both methods recorded yet.\n"
    else:
        text = ("\n".join(lines) + "\n\nPaired by seed (seeds " + ", ".join(map(str, sorted({s for v in cells.values()
                for s in v}))) + "): mean [95% t-interval] (pairs; t p, exact sign-flip p, Holm p over this report). "
                "Dev loss: per target token, lower is better.\n")
    boot = []
    references = None
    for rank, seeds in cells.items():
        for seed, pair in seeds.items():
            # from the records only (the pilot recorded none), so the report is the same wherever it is rebuilt
            outputs = {m: pair[m].get("outputs") for m in ("lora", "dsee")}
            if any(o is None for o in outputs.values()):
                continue
            if references is None:
                references = load_e2e(args.data_dir, "validation").grouped()[1][:args.decode_items]
            if any(len(o) != len(references) for o in outputs.values()):
                continue
            b = paired_bootstrap_bleu(outputs["lora"], outputs["dsee"], references, resamples=1000)
            # how many MRs S changed at all: where few differ, the bootstrap's Δ rests on those few
            differing = sum(a != d for a, d in zip(outputs["lora"], outputs["dsee"]))
            boot.append(f"| {rank} | {seed} | {differing} of {len(references)} | {100 * b['delta']:+.2f} "
                        f"[{100 * b['delta_low']:+.2f}, {100 * b['delta_high']:+.2f}] | {family.p_value(b['p_value'])} |")
    if boot:
        text += ("\nPaired bootstrap of BLEU over the same decoded MRs at each rank and seed (1,000 draws; 95% interval "
                 "of Δ; two-sided shift-method p, Holm over this report); outputs: the decoded MRs where DSEE's output "
                 "differs from LoRA's:\n\n| rank | seed | outputs that differ | DSEE − LoRA BLEU ×100 | p |\n"
                 "|---|---|---|---|---|\n" + "\n".join(boot) + "\n")
    pilot_text = "; ".join(f"r = {rank}: {bleu_delta(pair):+.2f}"
                           for rank, seeds in pilot.items() for pair in seeds.values())
    if pilot_text:
        text += (f"\nThe pilot on the selection seed {SELECTION_SEED} (its settings' origin, not a row of the "
                 f"comparison, untested): DSEE − LoRA BLEU ×100 {pilot_text}.\n")
    return family.render(text)


def plot(entries: list[dict], path: Path) -> None:
    """BLEU against rank, one line per method, one dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for method, marker, label in (("lora", "o", "LoRA"), ("dsee", "s", "DSEE")):
        mine = [e for e in entries if e["key"]["method"] == method]
        ranks = sorted({e["key"]["rank"] for e in mine})
        if not ranks:
            continue
        means = [100 * statistics.mean(e["scores"]["bleu"] for e in mine if e["key"]["rank"] == r) for r in ranks]
        line, = ax.plot(ranks, means, marker=marker, label=label)
        ax.scatter([e["key"]["rank"] for e in mine], [100 * e["scores"]["bleu"] for e in mine],
                   color=line.get_color(), alpha=0.35, s=14)
    ax.set_xscale("log", base=2)
    all_ranks = sorted({e["key"]["rank"] for e in entries})
    ax.set_xticks(all_ranks, [str(r) for r in all_ranks])
    ax.minorticks_off()
    ax.set_xlabel("rank r")
    ax.set_ylabel("BLEU, dev subset (line: seed mean)")
    ax.set_title("SmolLM2-135M on E2E: DSEE (N=64) vs LoRA")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def gather(args) -> list[dict]:
    """Every run of ``--seeds`` (trained unless ``--report-only`` or recorded), then the selection seed's
    recorded pilot runs at the same settings."""
    finished = [json.loads(line)["results"] for line in Path(args.runs_file).read_text().splitlines()
                if line.strip()] if Path(args.runs_file).is_file() else []
    entries = []
    seeds = [int(s) for s in args.seeds.split(",")]
    ranks, methods = [int(r) for r in args.ranks.split(",")], args.methods.split(",")
    for seed in seeds:
        for rank in ranks:
            for method in methods:
                entry = run_one(args, method, rank, seed, finished)
                if entry is not None:
                    entries.append(entry)
    if SELECTION_SEED not in seeds:  # the pilot is reported beside the comparison, never trained from here
        entries += [e for e in (recorded(finished, run_key(args, m, r, SELECTION_SEED)) for r in ranks for m in methods)
                    if e is not None]
    return entries


def main(argv=None) -> int:
    args = parse_args(argv)
    entries = gather(args)
    evaluated = evaluation_only(entries, seed_of)
    heading = (f"Evaluation seeds {', '.join(map(str, sorted({e['key']['seed'] for e in evaluated})))}" if evaluated
               else f"Only the pilot on the selection seed {SELECTION_SEED} is recorded")
    text = f"{heading}:\n\n" + table(evaluated or entries) + "\n" + comparison(args, entries)
    report = Path(args.report_dir)
    report.mkdir(parents=True, exist_ok=True)
    (report / "e2e_results.md").write_text(text)
    if entries:
        plot(evaluated or entries, report / "e2e_results.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
