"""Sparse LLMs, fine-tuned without losing their zeros: SmolLM2-135M pruned (Wanda, 50% per output row;
2:4), then fine-tuned on E2E with DSEE and ``--keep-base-sparsity``, merged and exported; against dense
LoRA and against the pruned base fine-tuned with plain LoRA and merged (locuslab/wanda#83: the merge
fills the zeros back in).

The flow, as a user runs it (``dsee prune-base``, ``dsee train``, ``dsee export``):

    dsee prune-base models/smollm2-135m --out W50 --sparsity 0.5 --score wanda --task e2e --data-dir DATA
    dsee train --model W50 --keep-base-sparsity --task e2e --data-dir DATA ... --out RUN
    dsee export RUN --out MERGED

Variants (``--variants``; name = base-method):
  dense-lora   LoRA r = 16 on the dense model (the reference)
  w50-dsee     DSEE on the 50% Wanda base, --keep-base-sparsity: r = 8 and half of r = 16's budget in S
               (the frontier experiment's split), Ω by GreBsmo among W0's non-zeros
  p24-dsee     the same on the 2:4 Wanda base
  w50-lora     plain LoRA r = 16 on the 50% base, merged: the adapted q/v lose their zeros (counted)
  p24-lora     the same on the 2:4 base
  w50-lorakeep, p24-lorakeep (not run by default): LoRA r = 16 with --keep-base-sparsity
The E2E protocol of the frontier experiment: 600 training rows, 1 epoch, batch 8, label smoothing 0.1,
lr 2e-3 (α = 2r), dev loss per target token on the first 100 dev MRs and BLEU on them with beam 5;
evaluation seeds 1, 2, 3 (data order, adapter init). The bases are pruned once (calibration: the first
8 batches of the training data in the order of seed 0).

After every run the merged export is compared with its base, matrix by matrix
(``dsee.sparsity.unstructured.zeros_changed``): with --keep-base-sparsity every pruned matrix must keep
exactly the base's zeros (asserted: the script stops otherwise); with plain LoRA the zeros lost are
counted. Every finished run is appended to ``--runs-file`` and never run again with the same settings
key (the experiment resumes; an interrupted run resumes from its checkpoint); the report
(``sparse_llm_results.md``) pairs every variant with dense LoRA and with plain LoRA on its base by seed.

    python benchmarks/sparse_llm_experiment.py --data-dir ../shared/data --out runs/sparse-llm
    python benchmarks/sparse_llm_experiment.py --data-dir ../shared/data --report-only
    python benchmarks/sparse_llm_experiment.py --data-dir ../shared/data --out /tmp/sl --quick   # smoke test
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _protocol import Family  # noqa: E402
from _record import HERE, record  # noqa: E402
from frontier_experiment import budget_density, mean_std  # noqa: E402

RUNS_PATH = HERE / "sparse_llm_runs.jsonl"
BASES = {"dense": None, "w50": {"sparsity": 0.5}, "p24": {"pattern": "2:4"}}
BASE_LABEL = {"dense": "dense", "w50": "Wanda 50% (rows)", "p24": "Wanda 2:4"}
METHODS = {"dsee": "DSEE, keeps zeros", "lora": "LoRA, merged plainly", "lorakeep": "LoRA, keeps zeros"}
DEFAULT_VARIANTS = "dense-lora,w50-dsee,p24-dsee,w50-lora,p24-lora"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="the shared data folder, holding e2e/")
    p.add_argument("--out", default="runs/sparse-llm", help="pruned bases and run directories")
    p.add_argument("--model", default="models/smollm2-135m", help="benchmarks/prepare_smollm2.py's output")
    p.add_argument("--variants", default=DEFAULT_VARIANTS)
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--rank", type=int, default=16, help="LoRA's rank; DSEE gets r/2 and the other half in S")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--train-samples", type=int, default=600)
    p.add_argument("--epochs", type=float, default=1)
    p.add_argument("--decode-items", type=int, default=100, help="distinct dev MRs scored (dev loss and BLEU)")
    p.add_argument("--beams", type=int, default=5)
    p.add_argument("--calibration-batches", type=int, default=8, help="Wanda's calibration batches (of 8 rows)")
    p.add_argument("--runs-file", default=None, help=f"default {RUNS_PATH.name} (with --quick: in --out)")
    p.add_argument("--report-dir", default=None, help="default benchmarks/ (with --quick: --out)")
    p.add_argument("--report-only", action="store_true", help="aggregate the finished runs, train nothing")
    p.add_argument("--quick", action="store_true", help="tiny budgets (24 rows, 4 MRs, beam 2, seed 1): smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.train_samples, args.decode_items, args.beams, args.calibration_batches = 24, 4, 2, 1
        args.seeds = args.seeds if "--seeds" in (sys.argv[1:] if argv is None else argv) else "1"
    args.runs_file = args.runs_file or str(Path(args.out) / "runs.jsonl" if args.quick else RUNS_PATH)
    args.report_dir = args.report_dir or (args.out if args.quick else str(HERE))
    for name in args.variants.split(","):
        base, _, method = name.partition("-")
        if base not in BASES or method not in METHODS or (base == "dense" and method != "lora"):
            raise SystemExit(f"--variants: unknown variant {name!r} (bases {', '.join(BASES)}; methods "
                             f"{', '.join(METHODS)}; the dense base with lora only)")
    return args


def digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


# --- the pruned bases ----------------------------------------------------------------------------


def base_key(args, base: str) -> dict:
    return {"model": args.model, **BASES[base], "score": "wanda", "scope": "row", "train_samples": args.train_samples,
            "calibration_batches": args.calibration_batches, "calibration_seed": 0}


def pruned_base(args, base: str) -> str:
    """The model a variant fine-tunes: the dense checkpoint, or its pruned copy (made once, ``dsee prune-base``)."""
    if BASES[base] is None:
        return args.model
    from dsee.train.prune_base import RECORD, BasePruneSettings, prune_base
    from dsee.train.run import RunConfig

    folder = Path(args.out) / "bases" / f"{base}-{digest(base_key(args, base))}"
    if not (folder / RECORD).is_file():
        print(f"\n=== pruning {args.model}: {BASE_LABEL[base]}", flush=True)
        settings = BasePruneSettings(model=args.model, score="wanda", scope="row",
                                     calibration_batches=args.calibration_batches, **BASES[base])
        data = RunConfig(out=str(folder), model=args.model, task="e2e", data_dir=args.data_dir, batch_size=8,
                         max_length=128, max_train_samples=args.train_samples, seed=0)
        prune_base(settings, folder, data, overwrite=True)
    return str(folder)


# --- one run -------------------------------------------------------------------------------------


def adapter_of(args, method: str, seed: int) -> tuple[str, dict]:
    r = args.rank
    if method == "dsee":
        half = r // 2
        return "dsee", {"rank": half, "alpha": 2 * half, "num_sparse": None, "seed": seed,
                        "sparse_density": budget_density("e2e", r, 0.5), "keep_base_sparsity": True}
    return "lora", {"rank": r, "alpha": 2 * r, "num_sparse": 0, "seed": seed, "keep_base_sparsity": method == "lorakeep"}


def settings_key(args, variant: str, seed: int) -> dict:
    base, _, method = variant.partition("-")
    return {"variant": variant, "seed": seed, "base": base_key(args, base) if BASES[base] else args.model,
            "adapter": adapter_of(args, method, seed)[1], "lr": args.lr, "train_samples": args.train_samples,
            "epochs": args.epochs, "decode_items": args.decode_items, "beams": args.beams}


def run_one(args, variant: str, seed: int, finished: list[dict]) -> dict | None:
    """The recorded result of one run, or trains, exports, checks and decodes it now; None if report-only."""
    key = settings_key(args, variant, seed)
    for done in finished:
        if done["key"] == key:
            return done
    if args.report_only:
        return None
    from dsee.train.checkpoint import has_checkpoint
    from dsee.train.export_run import export_run
    from dsee.train.generate import evaluate_generation_run
    from dsee.train.loop import train
    from dsee.train.run import METRICS, RunConfig

    base, _, method = variant.partition("-")
    model = pruned_base(args, base)
    path = Path(args.out) / variant / f"seed{seed}-{digest(key)}"
    kind, adapter = adapter_of(args, method, seed)
    if not (path / METRICS).is_file():
        resume = has_checkpoint(path)
        print(f"\n=== {variant}, seed {seed}" + (" (resuming)" if resume else ""), flush=True)
        config = RunConfig(out=str(path), task="e2e", data_dir=args.data_dir, model=model, method=kind, adapter=adapter,
                           lr=args.lr, seed=seed, epochs=args.epochs, batch_size=8, eval_batch_size=16, max_length=128,
                           max_train_samples=args.train_samples, max_eval_samples=args.decode_items,
                           label_smoothing=0.1, mixed_precision="no")
        train(config, resume=resume, overwrite=not resume)
    merged = path.with_name(path.name + "-merged")  # an export never goes inside its run
    export_run(path, merged, overwrite=True)
    zeros = merged_zeros(model, merged)
    if adapter["keep_base_sparsity"]:
        changed = {n: c for n, c in zeros.items() if c["lost"] or c["new"]}
        assert not changed, f"{variant} seed {seed}: the merged model does not keep the base's zeros: {changed}"
    metrics = json.loads((path / METRICS).read_text())
    start = time.perf_counter()
    decoded = evaluate_generation_run(path, max_items=args.decode_items, beams=args.beams, show_progress=False)
    entry = {"key": key, "dev_loss": metrics["dev"]["validation"]["loss"], "scores": decoded["scores"],
             "decode_seconds": time.perf_counter() - start, "train_seconds": metrics["train_seconds"],
             "trainable_parameters": metrics["trainable_parameters"], "zeros": zeros,
             "predictions": (path / "predictions_validation.txt").read_text().splitlines()}
    record("sparse_llm_run", entry, path=args.runs_file)
    finished.append(entry)
    return entry


def merged_zeros(base_model: str, merged: Path) -> dict[str, dict[str, int]]:
    """``zeros_changed`` of the merged export against the model it was fine-tuned from, plus each matrix's size."""
    import torch
    from transformers import AutoModelForCausalLM

    from dsee.sparsity.unstructured import zeros_changed

    reference = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32)
    changes = zeros_changed(reference, model)
    for name, change in changes.items():
        change["entries"] = model.get_submodule(name).weight.numel()
    return changes


# --- the report ----------------------------------------------------------------------------------


def bleu(entry: dict) -> float:
    return 100 * entry["scores"]["bleu"]


def sparsity_of(entry: dict, which: str) -> float:
    zeros = entry["zeros"]
    return sum(z[which] for z in zeros.values()) / sum(z["entries"] for z in zeros.values())


def paired(family: Family, mine: list[dict], theirs: list[dict], measure, digits: int) -> str:
    """Paired difference by seed (mine − theirs): mean, 95% t-interval, pairs, paired t p, exact sign-flip p
    and its Holm adjustment over the report's tests (``family``)."""
    by_seed = {e["key"]["seed"]: measure(e) for e in theirs}
    return family.paired([measure(e) - by_seed[e["key"]["seed"]] for e in mine if e["key"]["seed"] in by_seed],
                         digits)


def report(args, cells: dict[str, list[dict]]) -> str:
    lines = ["# Sparse LLMs fine-tuned: SmolLM2-135M on E2E", "",
             f"Generated by `benchmarks/sparse_llm_experiment.py` from `{Path(args.runs_file).name}`: "
             f"{args.train_samples} training rows, {args.epochs:g} epoch, batch 8, label smoothing 0.1, lr {args.lr:g}; "
             f"dev loss per target token and BLEU (×100, beam {args.beams}) on the first {args.decode_items} dev MRs; "
             f"LoRA r = {args.rank}, DSEE r = {args.rank // 2} + half of LoRA's budget in S. Mean ± std (seeds); "
             "paired differences by seed (mean [95% t-interval] (pairs; paired t p, exact sign-flip p, Holm p over "
             "the report's tests)). Sparsity: exact zeros of the blocks' "
             "q, k, v, o and FFN weights of the merged export; 'lost': zeros of the pruned base that the merge "
             "filled in.", "",
             "| variant | base | trainable | merged sparsity | base zeros lost | matrices keeping every zero | dev loss "
             "| BLEU | Δ dev loss vs dense LoRA | Δ BLEU vs dense LoRA | Δ dev loss vs LoRA on the base | Δ BLEU vs "
             "LoRA on the base |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    reference = cells.get("dense-lora", [])
    family = Family()
    for variant, runs in cells.items():
        if not runs:
            continue
        base, _, method = variant.partition("-")
        plain = cells.get(f"{base}-lora", []) if method != "lora" else []
        lost = sum(sum(z["lost"] for z in e["zeros"].values()) for e in runs) / len(runs)
        base_zeros = sum(sum(z["reference"] for z in e["zeros"].values()) for e in runs) / len(runs)
        kept = min(sum(z["lost"] == 0 for z in e["zeros"].values()) for e in runs)
        row = [f"{variant} ({METHODS[method]})", BASE_LABEL[base], f"{runs[0]['trainable_parameters']:,}",
               mean_std([100 * sparsity_of(e, "zeros") for e in runs]) + " %",
               f"{lost:,.0f} of {base_zeros:,.0f}" if base_zeros else "–",
               f"{kept} of {len(runs[0]['zeros'])}", mean_std([e["dev_loss"] for e in runs], 3),
               mean_std([bleu(e) for e in runs]),
               paired(family, runs, reference, lambda e: e["dev_loss"], 3) if variant != "dense-lora" else "",
               paired(family, runs, reference, bleu, 2) if variant != "dense-lora" else "",
               paired(family, runs, plain, lambda e: e["dev_loss"], 3) if plain else "",
               paired(family, runs, plain, bleu, 2) if plain else ""]
        lines.append("| " + " | ".join(row) + " |")
    return family.render("\n".join(lines) + "\n")


def main(argv=None) -> dict:
    args = parse_args(argv)
    runs_file = Path(args.runs_file)
    finished = [json.loads(line)["results"] for line in runs_file.read_text().splitlines() if line.strip()] \
        if runs_file.is_file() else []
    cells: dict[str, list[dict]] = {}
    for seed in (int(s) for s in args.seeds.split(",")):  # seed-major: a stopped experiment leaves every cell fuller
        for variant in args.variants.split(","):
            entry = run_one(args, variant, seed, finished)
            if entry is not None:
                cells.setdefault(variant, []).append(entry)
    text = report(args, cells)
    print("\n" + text)
    out = Path(args.report_dir) / "sparse_llm_results.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"report written to {out}")
    return {"cells": {k: len(v) for k, v in cells.items()}, "report": str(out)}


if __name__ == "__main__":
    main()
