"""Does a pruned model train slower per example? Training steps of unpruned and pruned models, side by side.

Re-tuning a 50% + 50% pruned all-MiniLM-L6-v2 once printed 26.7 training examples/s against 64.9 for
training the unpruned model (one run each, on a loaded machine). Here every model is built by the
recipe itself (``dsee.train.pipeline.build_model``, as ``dsee train`` and ``dsee prune`` build them)
from one DSEE source run, and timed on the same batches:

- ``train``: the freshly adapted model ``dsee train`` starts from (the reference of every ratio);
- ``retune only``: the source run's model, nothing removed (``dsee prune --retune-only``);
- ``heads 25% + ffn 25%``, ``heads 50% + ffn 50%``: removed by gradient importance;
- ``heads 50% + ffn 50% + distill``: the same, with the teacher's forward pass in every step
  (``--distill``: the unpruned source, adapters merged, no gradients);
- ``unstructured 50%``: the masked merged form, M ⊙ (W0 + ΔW) formed in every forward pass.

Two measurements, both interleaved (the order reversed every round) and reported as ratios:

1. **step**: optimizer steps (forward, backward, clipping, AdamW) on the same ``--batches`` batches of
   the task's training data (dynamic padding as in training, or ``--pad-to-max``); median seconds per
   step over ``--rounds`` rounds (the first round is a warm-up and is dropped).
2. **recipe**: whole ``train()`` runs of ``--recipe-steps`` steps per variant, ``--recipe-runs``
   times, alternating; examples/s as ``metrics.json`` reports it (evaluation, loading and the
   importance scores excluded, as there); the median per variant.

``FLOPs ×``: one forward pass at the batches' mean length, over the ``train`` model's: the ideal.
With ``--threads 1`` the step measurement also reports CPU seconds of the timing thread per step
(``time.thread_time``: all of torch's work runs on it then, so other load on the machine barely
moves it): the way to compare on a busy machine.

    python benchmarks/bench_retune.py --data-dir ../shared/data/glue [--task sst2] [--threads 2]
    python benchmarks/bench_retune.py --data-dir ../shared/data/glue --quick      # smoke run, not recorded
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import CpuMeter, print_table, record  # noqa: E402

from dsee.models import resolve_model  # noqa: E402
from dsee.sparsity.flops import forward_flops  # noqa: E402
from dsee.train.distill import load_teacher  # noqa: E402
from dsee.train.losses import training_loss  # noqa: E402
from dsee.train.pipeline import build_model, load_task_data, load_tokenizer  # noqa: E402
from dsee.train.run import RunConfig, load_run_config  # noqa: E402
from dsee.train.settings import PruneSettings  # noqa: E402

IMPORTANCE = dict(head_score="importance", ffn_score="importance")
# variant -> PruneSettings fields (None: the model `dsee train` starts from)
VARIANTS = {
    "train": None,
    "retune only": dict(retune_only=True),
    "heads 25% + ffn 25%": dict(heads=0.25, ffn=0.25, **IMPORTANCE),
    "heads 50% + ffn 50%": dict(heads=0.5, ffn=0.5, **IMPORTANCE),
    "heads 50% + ffn 50% + distill": dict(heads=0.5, ffn=0.5, distill=True, **IMPORTANCE),
    "unstructured 50%": dict(sparsity=0.5),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="the GLUE folder (holding SST-2/, MRPC/, ...)")
    p.add_argument("--task", default="sst2")
    p.add_argument("--source", default=None, help="a finished DSEE run on --task (default: a short one is trained)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--pad-to-max", action="store_true", help="every batch padded to --max-length")
    p.add_argument("--batches", type=int, default=4, help="distinct batches, one step each per round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--recipe-runs", type=int, default=3, help="train() runs per variant (0: none)")
    p.add_argument("--recipe-steps", type=int, default=16)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 batches, 2 rounds, 1 recipe run of 2 "
                   "steps; not recorded")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.rounds, args.recipe_runs, args.recipe_steps = 2, 2, 1, 2
    return args


def source_run(args, scratch: Path) -> Path:
    """``--source``, or a short DSEE run on the task (its scores do not matter here, its shapes do)."""
    if args.source:
        return Path(args.source)
    from dsee.train.loop import train

    path = scratch / "source"
    train(RunConfig(out=str(path), task=args.task, data_dir=args.data_dir,
                    max_train_samples=max(args.batches, args.recipe_steps) * args.batch_size,
                    max_eval_samples=args.batch_size, max_length=args.max_length, batch_size=args.batch_size,
                    epochs=1), show_progress=False)
    return path


def variant_config(source: Path, name: str, out: Path, **changes) -> RunConfig:
    config = load_run_config(source)
    prune = VARIANTS[name]
    settings = None if prune is None else PruneSettings(source=str(source), **prune).to_dict()
    return dataclasses.replace(config, out=str(out), prune=settings, **changes)


def fixed_batches(args, config: RunConfig, data, tokenizer) -> list[dict]:
    examples = data.encode(data.train, tokenizer, config)[: args.batches * args.batch_size]
    if len(examples) < args.batches * args.batch_size:
        raise SystemExit(f"{args.task} has {len(examples)} training examples: fewer than --batches × --batch-size")
    collate = data.collator(tokenizer)
    if args.pad_to_max:
        collate.pad_to_multiple_of = args.max_length  # every example is at most max_length long
        collate.__post_init__()
    return [collate(examples[i * args.batch_size:(i + 1) * args.batch_size]) for i in range(args.batches)]


class Stepper:
    """One variant: its model, AdamW and (distilling) teacher; ``step`` is what ``loop.optimizer_step`` does
    on one process without Accelerate."""

    def __init__(self, config: RunConfig, data, tokenizer) -> None:
        self.config, self.data = config, data
        self.model = build_model(config, data, resolve_model(config.model), tokenizer).train()
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=config.learning_rate)
        settings = PruneSettings.from_dict(config.prune) if config.prune else None
        self.teacher = load_teacher(settings, data, tokenizer) if settings is not None and settings.distill else None

    def step(self, batch: dict) -> None:
        loss = training_loss(self.model, batch, self.data, self.config, self.teacher)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad()


def time_steps(steppers: dict[str, Stepper], batches: list[dict], rounds: int) -> dict[str, dict]:
    """Median seconds per optimizer step of each variant, interleaved rounds (the first dropped), and the
    teacher's share of a distilling variant's time."""
    names = list(steppers)
    samples: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}  # thread CPU seconds per step (meaningful on 1 thread)
    teacher: dict[str, float] = dict.fromkeys(names, 0.0)
    for r in range(rounds + 1):
        for n in names if r % 2 == 0 else reversed(names):
            torch.manual_seed(r)  # the same dropout draws for every variant
            stepper = steppers[n]
            if stepper.teacher is not None:
                stepper.teacher.pop_usage()
            start, start_cpu = time.perf_counter(), time.thread_time()
            for batch in batches:
                stepper.step(batch)
            elapsed, elapsed_cpu = time.perf_counter() - start, time.thread_time() - start_cpu
            if r == 0:
                continue  # warm-up
            samples[n].append(elapsed / len(batches))
            cpu[n].append(elapsed_cpu / len(batches))
            if stepper.teacher is not None:
                teacher[n] += stepper.teacher.pop_usage()[0] / len(batches)
    return {n: {"median_s": statistics.median(samples[n]), "samples_s": samples[n],
                "median_thread_cpu_s": statistics.median(cpu[n]), "teacher_share": teacher[n] / sum(samples[n])}
            for n in names}


def recipe_rates(args, source: Path, scratch: Path) -> dict[str, list[float]]:
    """examples/s of whole ``train()`` runs, variants alternating (``--recipe-runs`` rounds)."""
    from dsee.train.loop import train

    names = list(VARIANTS)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.recipe_runs):
        for i, n in enumerate(names if r % 2 == 0 else list(reversed(names))):
            config = variant_config(source, n, scratch / f"recipe-{r}-{i}", epochs=1,
                                    max_train_samples=args.recipe_steps * args.batch_size,
                                    max_eval_samples=args.batch_size, batch_size=args.batch_size)
            metrics = train(config, overwrite=True, show_progress=False)
            rates[n].append(metrics["train_examples_per_second"])
    return rates


def main(argv=None) -> dict:
    args = parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-retune-") as tmp:
        scratch = Path(tmp)
        source = source_run(args, scratch)
        config = dataclasses.replace(load_run_config(source), max_length=args.max_length)
        data = load_task_data(config)
        tokenizer = load_tokenizer(resolve_model(config.model))
        batches = fixed_batches(args, config, data, tokenizer)
        steppers = {n: Stepper(variant_config(source, n, scratch / "unused", max_length=args.max_length), data,
                               tokenizer) for n in VARIANTS}
        mean_length = round(statistics.mean(b["input_ids"].shape[1] for b in batches))
        flops = {n: forward_flops(s.model, mean_length).total for n, s in steppers.items()}
        meter = CpuMeter()
        steps = time_steps(steppers, batches, args.rounds)
        step_share = meter.share()
        del steppers
        meter = CpuMeter()
        recipe = recipe_rates(args, source, scratch) if args.recipe_runs else {}
        recipe_share = meter.share() if recipe else None
    ref, ref_rate = steps["train"]["median_s"], statistics.median(recipe["train"]) if recipe else None
    single = torch.get_num_threads() == 1
    ref_cpu = steps["train"]["median_thread_cpu_s"]
    rows = []
    for n in VARIANTS:
        rate = statistics.median(recipe[n]) if recipe else None
        cpu_ratio = steps[n]["median_thread_cpu_s"] / ref_cpu if single else "–"
        rows.append([n, 1000 * steps[n]["median_s"], args.batch_size / steps[n]["median_s"], steps[n]["median_s"] / ref,
                     cpu_ratio, flops[n] / flops["train"], steps[n]["teacher_share"],
                     rate if rate is not None else "–", ref_rate / rate if rate else "–"])
    print(f"\nall-MiniLM-L6-v2 on {args.task}, batch {args.batch_size}, mean length {mean_length}, "
          f"{args.rounds} interleaved rounds of {args.batches} steps (cpu share {step_share}); recipe: "
          f"{args.recipe_runs} train() runs of {args.recipe_steps} steps per variant (cpu share {recipe_share})")
    print_table(["variant", "ms/step", "ex/s", "time × train", "thread CPU × train", "FLOPs × train",
                 "teacher share", "recipe ex/s", "recipe time × train"], rows,
                [None, ".1f", ".1f", ".3f", ".3f", ".3f", ".2f", ".1f", ".3f"])
    results = {"task": args.task, "batch_size": args.batch_size, "mean_length": mean_length,
               "pad_to_max": args.pad_to_max, "rounds": args.rounds, "batches": args.batches,
               "threads": torch.get_num_threads(), "step_cpu_share": step_share, "recipe_cpu_share": recipe_share,
               "variants": {n: {**steps[n], "time_ratio": steps[n]["median_s"] / ref,
                                "thread_cpu_ratio": steps[n]["median_thread_cpu_s"] / ref_cpu if single else None,
                                "flops_ratio": flops[n] / flops["train"], "recipe_examples_per_s": recipe.get(n)}
                            for n in VARIANTS},
               "wall_s": time.perf_counter() - start}
    if not (args.quick or args.no_record):
        record("retune_speed", results, timed_share=step_share)
    return results


if __name__ == "__main__":
    main()
