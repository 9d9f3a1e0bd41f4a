"""Does the sparse half earn its parameters and its compute? S with RoSA's gradient support against LoRA
given the same passes over the data, at a realistic length.

The one place the frontier saw S beat LoRA (E2E, gradient Ω, half of r = 16's budget in S: dev loss
−0.046 at equal steps) was a 75-step run where choosing Ω (64 LoRA warm-up steps + 8 gradient batches)
cost more than the training. Here the training is long enough for that cost to be small, and the
cost is counted: SmolLM2-135M on ``--train-samples`` E2E rows (4,000: 500 steps of 8), one epoch,
and

- ``lora``: LoRA r = 16, the same steps;
- ``lora-extra``: LoRA r = 16 given the support's passes as extra training steps on the same data
  (``--support-warmup-steps`` + ``--support-batches`` more optimizer steps: equal forward/backward
  passes, equal data);
- ``dsee-gradient``: half of LoRA-16's parameters in S (rank 8 + an equal-budget density), Ω by RoSA's
  gradient statistic after the LoRA warm-up, trained the same steps as ``lora``;
- ``dsee-gradient-slr``: the same with S at its own learning rate (``--sparse-lr-ratio`` × the rate, as
  LoRA+ gives B its own), the ratio chosen on the selection seed from ``--ratios`` by dev loss.

Protocol (benchmarks/README.md): the ratio is chosen on seed 0 only; the evaluation seeds are fresh;
every run keeps its last model (``--select last``: no choice on the dev set); the learning rate is the
frontier's E2E rate for every method (chosen on seed 0 of that experiment). Scores: dev loss per target
token on the first ``--eval-items`` dev MRs (all their references), and BLEU (with NIST, METEOR,
ROUGE-L, CIDEr) of beam search on the same MRs. Compared paired by seed (t-interval, t-test, exact
sign-flip, Holm over the report) and BLEU per seed by a paired bootstrap.

Every finished run is appended to ``benchmarks/equal_compute_runs.jsonl`` and never run again with
the same settings; a run stopped half-way resumes from its checkpoint.

    python benchmarks/prepare_smollm2.py --out models/smollm2-135m
    python benchmarks/equal_compute_experiment.py --data-dir ../shared/data --out runs/equal-compute
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

from _protocol import SELECTION_SEED, Family, seeds_arg  # noqa: E402
from _record import HERE, record  # noqa: E402

from dsee.evaluation.statistics import paired as paired_test  # noqa: E402

RUNS_PATH = HERE / "equal_compute_runs.jsonl"
METHODS = ("lora", "lora-extra", "dsee-gradient", "dsee-gradient-slr")
LABEL = {"lora": "LoRA r = 16", "lora-extra": "LoRA r = 16 + the support's passes as steps",
         "dsee-gradient": "DSEE, half in S, gradient Ω", "dsee-gradient-slr": "same, S at its own rate"}
SHAPES = [(576, 576), (192, 576)]  # SmolLM2-135M q_proj, v_proj


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="the shared data folder, holding e2e/")
    p.add_argument("--out", default="runs/equal-compute")
    p.add_argument("--model", default="models/smollm2-135m", help="benchmarks/prepare_smollm2.py's output")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", default="1,2,3", help=f"evaluation seeds (never the selection seed, {SELECTION_SEED})")
    p.add_argument("--rank", type=int, default=16, help="LoRA's rank: the budget every method gets")
    p.add_argument("--split", type=float, default=0.5, help="share of the budget DSEE puts in S")
    p.add_argument("--lr", type=float, default=2e-3, help="every method's rate (α = 2·rank)")
    p.add_argument("--ratios", default="0.25,1,4", help="S-rate ratios tried on the selection seed")
    p.add_argument("--support-batches", type=int, default=8)
    p.add_argument("--support-warmup-steps", type=int, default=64)
    p.add_argument("--train-samples", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-items", type=int, default=500, help="dev MRs for the dev loss and the decoding")
    p.add_argument("--beams", type=int, default=5)
    p.add_argument("--runs-file", default=str(RUNS_PATH))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--report-dir", default=str(HERE))
    p.add_argument("--no-record", action="store_true")
    p.add_argument("--selection-only", action="store_true",
                   help="only the selection seed's runs at --ratios (two processes can share them out)")
    return p.parse_args(argv)


# --- the methods -----------------------------------------------------------------------------------


def steps_per_epoch(args) -> int:
    return math.ceil(args.train_samples / args.batch_size)


def support_passes(args) -> int:
    """Forward/backward passes the gradient support spends before training: warm-up steps + batches."""
    return args.support_warmup_steps + args.support_batches


def density(args) -> float:
    """S's density that buys ``split`` of LoRA-r's parameters over the adapted matrices (frontier_experiment)."""
    return args.split * args.rank * sum(o + i for o, i in SHAPES) / sum(o * i for o, i in SHAPES)


def settings(args, method: str, seed: int, ratio: float = 1.0) -> dict:
    """The RunConfig fields of a method (and the key of its record)."""
    common = {"method": "lora", "lr": args.lr, "seed": seed, "epochs": 1.0, "select": "last",
              "max_train_samples": args.train_samples, "batch_size": args.batch_size}
    if method in ("lora", "lora-extra"):
        common["adapter"] = {"rank": args.rank, "alpha": 2 * args.rank, "num_sparse": 0, "seed": seed}
        if method == "lora-extra":  # the same passes as the support's, as training steps on the same data
            common["epochs"] = 1.0 + support_passes(args) / steps_per_epoch(args)
        return common
    rank = round(args.rank * (1 - args.split))
    common.update(method="dsee", sparse_lr_ratio=ratio, support_batches=args.support_batches,
                  support_warmup_steps=args.support_warmup_steps,
                  adapter={"rank": rank, "alpha": 2 * rank, "num_sparse": None, "sparse_density": density(args),
                           "sparse_method": "gradient", "seed": seed})
    return common


def key_of(args, method: str, seed: int, ratio: float = 1.0) -> dict:
    return {"method": method, "model": args.model, "eval_items": args.eval_items, "beams": args.beams,
            **settings(args, method, seed, ratio)}


def run_dir(args, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return Path(args.out) / key["method"] / f"seed{key['seed']}-ratio{key.get('sparse_lr_ratio', 1):g}-{digest}"


def run_one(args, method: str, seed: int, ratio: float = 1.0, decode: bool = True) -> dict | None:
    """The recorded result, or trains (and decodes) the run now; None if report-only and not recorded."""
    key = key_of(args, method, seed, ratio)
    for done in args.finished:
        if done["key"] == key and (done.get("scores") is not None or not decode):
            return done
    if args.report_only:
        return None
    from dsee.train.checkpoint import has_checkpoint
    from dsee.train.generate import evaluate_generation_run
    from dsee.train.loop import train
    from dsee.train.run import METRICS, RunConfig

    path = run_dir(args, key)
    if not (path / METRICS).is_file():
        resume = has_checkpoint(path)
        print(f"\n=== {LABEL[method]}, seed {seed}" + (f", S rate × {ratio:g}" if ratio != 1 else "")
              + (" (resuming)" if resume else ""), flush=True)
        config = RunConfig(out=str(path), task="e2e", data_dir=args.data_dir, model=args.model, eval_batch_size=16,
                           max_length=128, max_eval_samples=args.eval_items, label_smoothing=0.1,
                           mixed_precision="no", **settings(args, method, seed, ratio))
        train(config, resume=resume, overwrite=not resume)
    metrics = json.loads((path / METRICS).read_text())
    entry = {"key": key, "dev_loss": metrics["dev"]["validation"]["loss"], "steps": metrics["steps"],
             "passes": metrics["steps"] + (support_passes(args) if method.startswith("dsee") else 0),
             "trainable_parameters": metrics["trainable_parameters"], "train_seconds": metrics["train_seconds"],
             "wall_seconds": metrics["wall_seconds"], "scores": None}
    if decode:
        start = time.perf_counter()
        decoded = evaluate_generation_run(path, max_items=args.eval_items, beams=args.beams, show_progress=True)
        entry.update(scores=decoded["scores"], decode_seconds=round(time.perf_counter() - start, 1),
                     predictions=(path / "predictions_validation.txt").read_text().splitlines())
    record("equal_compute_run", entry, path=args.runs_file)
    args.finished.append(entry)
    return entry


def selection_losses(args) -> dict[float, float]:
    """Per S-rate ratio of ``--ratios``, the dev loss of its run on the selection seed (missing runs are
    trained, or left out with ``--report-only``)."""
    losses = {}
    for ratio in (float(r) for r in args.ratios.split(",")):
        entry = run_one(args, "dsee-gradient", SELECTION_SEED, ratio, decode=False)
        if entry is not None:
            losses[ratio] = entry["dev_loss"]
    return losses


def selection_text(args) -> str:
    """'× 0.25: 1.3437, × 1: 1.3273, …': each recorded selection run's dev loss ('' when none is)."""
    return ", ".join(f"× {r:g}: {loss:.4f}" for r, loss in selection_losses(args).items())


def has_own_rate_runs(ratio: float | None) -> bool:
    """Whether the chosen S-rate ratio needs runs of its own: not while unchosen (None), and not at 1,
    where S's rate is the common rate and the ``dsee-gradient`` runs are the variant itself."""
    return ratio not in (None, 1.0)


def chosen_ratio(args) -> float | None:
    """The S-rate ratio with the lowest dev loss on the selection seed (ties: the one nearer 1); None while
    a selection run is missing (report-only)."""
    losses = selection_losses(args)
    if len(losses) < len(args.ratios.split(",")):
        return None
    return min(sorted(losses, key=lambda r: abs(math.log(r))), key=losses.get)


# --- the report ------------------------------------------------------------------------------------


def dev_loss(entry: dict) -> float:
    return entry["dev_loss"]


def bleu_points(entry: dict) -> float:
    """BLEU ×100, as the tables print it."""
    return 100 * entry["scores"]["bleu"]


def mean_std(values: list[float], digits: int) -> str:
    if not values:
        return "–"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f} ({len(values)})"


def paired(runs: dict, method: str, against: str, measure) -> list[float]:
    mine = {e["key"]["seed"]: measure(e) for e in runs.get(method, [])}
    base = {e["key"]["seed"]: measure(e) for e in runs.get(against, [])}
    return [mine[s] - base[s] for s in sorted(set(mine) & set(base))]


COMPARISONS = (("dsee-gradient", "lora", "equal steps"), ("dsee-gradient", "lora-extra", "equal passes"),
               ("dsee-gradient-slr", "lora-extra", "equal passes"), ("lora-extra", "lora", "what the extra steps buy"),
               ("dsee-gradient-slr", "dsee-gradient", "what S's own rate buys"))


QUESTIONS = (("its parameters", "lora", "equal steps and equal trainable parameters"),
             ("its compute", "lora-extra", "equal forward/backward passes: LoRA trains on for the support's passes"))


def decided(loss, word: str, direction: str) -> str:
    """The answer when the t-interval excludes zero (``loss``: the PairedComparison of the dev-loss
    differences). It is established only if the exact sign-flip test agrees (p < 0.05); with few pairs
    it cannot, whatever the effect (3 pairs: p 0.25 at best), and the answer says so, with how many
    seeds agree."""
    if loss.sign_flip_p < 0.05:
        return (f"**{word}**: DSEE's dev loss is {direction} on the 95% t-interval, and the exact sign-flip "
                f"test agrees (p {loss.sign_flip_p:.2f})")
    agree = loss.negatives if loss.mean < 0 else loss.positives
    return (f"**{word} by the t-interval, not established**: DSEE's dev loss is {direction} on the 95% "
            f"t-interval, {agree} of {loss.n} seeds agreeing (exact sign-flip p {loss.sign_flip_p:.2f}; "
            f"{loss.n} pairs cannot give less than {loss.min_p:.2g})")


def verdict(runs: dict, ratio: float | None, needed: int = 3) -> str:
    """Plain answers to the issue's question, from the dev loss (the score without decoding noise): S earns
    its parameters / compute only if DSEE's dev loss is lower than LoRA's / LoRA-with-extra-steps' with a
    95% t-interval below zero, on ``needed`` seeds at least, and it is established only if the exact
    sign-flip test agrees (``decided``). The DSEE side is the S-rate variant chosen on
    the selection seed (the common rate when the choice was 1; until that choice is made, ``ratio`` None,
    the common rate, and the answer says it is provisional). BLEU is quoted beside it, not decisive."""
    dsee = "dsee-gradient-slr" if has_own_rate_runs(ratio) else "dsee-gradient"
    answers = []
    for what, against, held in QUESTIONS:
        losses = paired(runs, dsee, against, dev_loss)
        if len(losses) < needed:
            answers.append(f"- Does S earn {what} ({held})? Not decided yet: {len(losses)} of the {needed} "
                           "seeds needed are recorded for both sides.")
            continue
        loss = paired_test(losses)
        bleu = paired_test(paired(runs, dsee, against, bleu_points))
        low, high = loss.ci
        if high < 0:
            answer = decided(loss, "yes", "lower")
        elif low > 0:
            answer = decided(loss, "no", "higher")
        else:
            answer = "**no measurable gain**: the interval of the dev-loss difference holds zero"
        answers.append(f"- Does S earn {what} ({held})? {answer} ({LABEL[dsee]} − {LABEL[against]}: "
                       f"{loss.mean:+.3f} [{low:+.3f}, {high:+.3f}], {loss.n} seeds; BLEU ×100 {bleu.mean:+.2f}"
                       + (f" [{bleu.ci[0]:+.2f}, {bleu.ci[1]:+.2f}]" if bleu.ci else "") + ")."
                       + (" Provisional: S at the common rate, as S's own rate is not chosen on the selection seed "
                          "yet." if ratio is None else ""))
    return "\n".join(answers) + "\n"


def report(args, runs: dict, ratio: float | None) -> str:
    family = Family()
    lines = ["| method | trainable | steps | forward/backward passes | dev loss | BLEU ×100 | NIST | train s | decode s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method in METHODS:
        mine = runs.get(method, [])
        if not mine:
            continue
        nist = [e["scores"]["nist"] for e in mine]
        lines.append(f"| {LABEL[method]} | {mine[0]['trainable_parameters']:,} | {mine[0]['steps']} | {mine[0]['passes']} | "
                     f"{mean_std([dev_loss(e) for e in mine], 3)} | {mean_std([bleu_points(e) for e in mine], 2)} | "
                     f"{mean_std(nist, 2)} | {statistics.mean(e['train_seconds'] for e in mine):.0f} | "
                     f"{statistics.mean(e['decode_seconds'] for e in mine):.0f} |")
    tests = ["| comparison | what it holds equal | dev loss (lower is better) | BLEU ×100 |", "|---|---|---|---|"]
    for method, against, what in COMPARISONS:
        if runs.get(method) and runs.get(against):
            tests.append(f"| {LABEL[method]} − {LABEL[against]} | {what} | "
                         f"{family.paired(paired(runs, method, against, dev_loss), 3)} | "
                         f"{family.paired(paired(runs, method, against, bleu_points), 2)} |")
    boot = bleu_tests(args, runs, family)
    tried = selection_text(args)
    selection = (f"S-rate ratio chosen on seed {SELECTION_SEED} from {args.ratios}"
                 + (f" (dev loss {tried})" if tried else "") + ": "
                 + (f"{ratio:g}" if ratio is not None else "not yet (a selection run is missing)")
                 + (" (S's own rate is then the common rate: no separate runs)" if ratio == 1.0 else ""))
    text = ("# S at equal compute (SmolLM2-135M, E2E)\n\n"
            f"{args.train_samples:,} training rows, batch {args.batch_size} ({steps_per_epoch(args)} steps an epoch), "
            f"rate {args.lr:g} (α = 2r), label smoothing 0.1, the last model of each run (no selection on dev); "
            f"dev loss per target token and beam-{args.beams} BLEU on the first {args.eval_items} dev MRs. "
            f"The gradient support spends {support_passes(args)} passes ({args.support_warmup_steps} LoRA warm-up steps, "
            f"{args.support_batches} gradient batches) before training. {selection}. Evaluation seeds {args.seeds}.\n\n"
            + "\n".join(lines) + "\n\n" + verdict(runs, ratio) + "\nPaired by seed: mean [95% t-interval] (pairs; t-test p, exact sign-flip p, Holm p "
            f"over the {'{tests}'} tests of this report):\n\n" + "\n".join(tests) + "\n" + boot)
    return family.render(text.replace("{tests}", str(len(family))))


def bleu_tests(args, runs: dict, family: Family) -> str:
    from dsee.evaluation.significance import paired_bootstrap_bleu
    from dsee.train.textgen import load_e2e

    pairs = [(m, a) for m, a, _ in COMPARISONS[:3] if runs.get(m) and runs.get(a)]
    if not pairs:
        return ""
    _, references = load_e2e(args.data_dir, "validation").grouped()
    references = references[:args.eval_items]
    lines = ["\nBLEU per seed, paired bootstrap over the same decoded MRs (1,000 draws; 95% interval of Δ; shift-method "
             "p, in the same Holm family):\n", "| comparison | seed | Δ BLEU [95%] | p |", "|---|---|---|---|"]
    for method, against in pairs:
        base = {e["key"]["seed"]: e for e in runs[against]}
        for e in runs[method]:
            other = base.get(e["key"]["seed"])
            if other is None:
                continue
            t = paired_bootstrap_bleu(other["predictions"], e["predictions"], references, resamples=1000)
            lines.append(f"| {LABEL[method]} − {LABEL[against]} | {e['key']['seed']} | {100 * t['delta']:+.2f} "
                         f"[{100 * t['delta_low']:+.2f}, {100 * t['delta_high']:+.2f}] | {family.p_value(t['p_value'])} |")
    return "\n".join(lines) + "\n"


def plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, method in enumerate(m for m in METHODS if runs.get(m)):
        mine = sorted(runs[method], key=lambda e: e["key"]["seed"])
        for ax, values in ((ax1, [dev_loss(e) for e in mine]), (ax2, [bleu_points(e) for e in mine])):
            ax.plot([i] * len(values), values, "o", alpha=0.6)
            ax.errorbar([i], [statistics.mean(values)], yerr=[statistics.stdev(values) if len(values) > 1 else 0],
                        fmt="_", color="black", capsize=6)
    for ax, name in ((ax1, "dev loss per target token"), (ax2, "BLEU ×100")):
        shown = [m for m in METHODS if runs.get(m)]
        ax.set_xticks(range(len(shown)), [m for m in shown], fontsize=8)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    ax1.set_title("dev loss (per seed; bar: mean ± std)", fontsize=10)
    ax2.set_title("BLEU", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def read_finished(args) -> None:
    """``args.finished``: every run recorded in ``--runs-file`` (``run_one`` returns these instead of training)."""
    runs_file = Path(args.runs_file)
    args.finished = [json.loads(line)["results"] for line in runs_file.read_text().splitlines() if line.strip()] \
        if runs_file.is_file() else []


def collect(args, methods) -> tuple[float | None, dict]:
    """The chosen S-rate ratio and every method's runs at the evaluation seeds, from the records (and,
    unless ``--report-only``, by running what is missing)."""
    read_finished(args)
    ratio = chosen_ratio(args) if "dsee-gradient-slr" in methods else None
    runs: dict = {}
    for seed in seeds_arg(args.seeds):  # seed-major: a stopped experiment has every method at fewer seeds
        for method in methods:
            if method == "dsee-gradient-slr" and not has_own_rate_runs(ratio):
                continue
            entry = run_one(args, method, seed, ratio if method == "dsee-gradient-slr" else 1.0)
            if entry is not None:
                runs.setdefault(method, []).append(entry)
    return ratio, runs


def main(argv=None) -> int:
    args = parse_args(argv)
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    if args.selection_only:
        read_finished(args)
        print(f"S-rate ratio with the lowest dev loss among {args.ratios}: {chosen_ratio(args)}")
        return 0
    start = time.perf_counter()
    ratio, runs = collect(args, methods)
    text = report(args, runs, ratio)
    out = Path(args.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "equal_compute_results.md").write_text(text)
    if runs:
        plot(runs, out / "equal_compute_results.png")
    print(text)
    if not (args.report_only or args.no_record):
        record("equal_compute_experiment", {"settings": {k: v for k, v in vars(args).items() if k != "finished"},
                                            "ratio": ratio, "hours": (time.perf_counter() - start) / 3600})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
