"""Is a pruned big model better than a small model at the same speed? The deployment frontier.

On GLUE MRPC, STS-B and SST-2 (2,000 training examples per task, max length 128, DSEE defaults: r = 16,
N = 64, GreBsmo Ω, batch 32, the project's learning rate):

- **all-MiniLM-L6-v2** (22M) fine-tuned (``dsee train``, 3 epochs), then pruned to 75%, 50%, 35% and
  25% of its FLOPs: heads and FFN neurons removed from every layer by gradient importance
  (``--head-score importance --ffn-score importance``), the shares that reach each FLOPs target found
  by ``dsee.sparsity.flops.shares_for_flops`` (equal shares, whole heads); re-tuned for
  ``--retune-epochs`` **with and without** ``--distill`` (the ablation);
- the **re-tune-only control**: the unpruned source re-tuned for the same epochs (``dsee prune
  --retune-only``), so that a gain from more training is not credited to pruning;
- **all-mpnet-base-v2** (110M, ``benchmarks/prepare_mpnet.py``) fine-tuned with the same recipe
  (3 epochs, ``--mpnet-epochs``), then pruned with distillation to ``--mpnet-flops`` of its FLOPs: ``match``
  is MiniLM's FLOPs over mpnet's (0.129 at 128 tokens); the final share is picked from measured
  latency, so several can be given.

Protocol (the project's): settings are chosen on ``--selection-seed`` only and evaluated on
``--seeds`` (never the selection seed). The one choice made here is the learning rate when
``--lrs`` gives several: per model and task, the rate whose source run scores best on the selection
seed; with one rate nothing is chosen and the selection seed trains nothing. Each run keeps its best
dev evaluation (one per epoch), for every method alike. Pruned models are compared, paired by seed,
with the re-tune-only control and with their source; pruned mpnet with fine-tuned MiniLM (and with
MiniLM's control). Statistics: mean paired difference with a 95% t-interval, the paired t-test and the
exact sign-flip test, Holm's adjustment over every test of the report (on the sign-flip p).

Deployment hooks: after every run, ``dsee export RUN --format onnx [--quantize int8] --out DIR`` and
``dsee eval DIR`` score what would ship (fp32 and int8 ONNX); a step the installed dsee does not
offer yet is skipped with a note, and done on a later invocation once it is there. Latency is a
phase of its own, ``--measure-latency``, to run alone on a quiet machine: one run per model and FLOPs
share, PyTorch fp32 (merged export) and the ONNX exports, timed interleaved at 1 × 128 and 32 × 128,
as ratios to the unpruned fp32 PyTorch MiniLM.

Every finished run (and every scored export, every latency measurement) is appended to
``--runs-file`` and never run again with the same settings; run directories are keyed by a digest of
their settings, and an interrupted run resumes from its checkpoint. Seeds go in the outer loop, so
a stopped experiment has every task at fewer seeds ("cut seeds before tasks"). A time estimate is
printed before anything starts (``--estimate``: only that): with the defaults about 6 hours of a quiet
2-core machine (MiniLM 2.5 h, mpnet 3.6 h, exports included; a two-rate ``--lrs`` grid adds 2 h).

    python benchmarks/prepare_mpnet.py --out models/all-mpnet-base-v2
    python benchmarks/deploy_frontier.py --data-dir ../shared/data/glue --out runs/deploy-frontier
    python benchmarks/deploy_frontier.py --data-dir ../shared/data/glue --measure-latency      # alone
    python benchmarks/deploy_frontier.py --data-dir ../shared/data/glue --report-only
    python benchmarks/deploy_frontier.py --data-dir ../shared/data/glue --quick   # smoke run (runs/ only)

Writes ``deploy_frontier_results.md`` and ``deploy_frontier_results.png`` to ``--report-dir``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _record import HERE, CpuMeter, record  # noqa: E402

from dsee.evaluation.statistics import PairedComparison, holm, paired  # noqa: E402

RUNS_PATH = HERE / "deploy_frontier_runs.jsonl"
TASK_LABEL = {"mrpc": "MRPC F1", "stsb": "STS-B", "sst2": "SST-2"}
MODEL_LABEL = {"minilm": "MiniLM", "mpnet": "mpnet"}
DSEE = {"rank": 16, "alpha": 32, "num_sparse": 64, "sparse_method": "grebsmo"}
IMPORTANCE = {"head_score": "importance", "ffn_score": "importance"}
# rough training throughput of a quiet 2-core machine, fp32 (forward + backward counted as 3 forwards):
# all-MiniLM-L6-v2 takes ~1 s and all-mpnet-base-v2 ~8 s per batch-32 step at 128 tokens
GFLOPS_PER_S = 280.0
EXPORT_SECONDS = {"minilm": 20.0, "mpnet": 60.0}  # one ONNX export with its check (rough)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="the GLUE folder (holding MRPC/, STS-B/, SST-2/)")
    p.add_argument("--out", default="runs/deploy-frontier", help="where the run directories and exports go")
    p.add_argument("--tasks", default="mrpc,stsb,sst2")
    p.add_argument("--selection-seed", type=int, default=0, help="the seed settings are chosen on (never evaluated)")
    p.add_argument("--seeds", default="1,2,3", help="evaluation seeds")
    p.add_argument("--lrs", default="1.5e-3", help="one rate, or a grid chosen per model and task on the selection seed")
    p.add_argument("--train-samples", type=int, default=2000)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--epochs", type=float, default=3, help="MiniLM fine-tuning epochs (the project's recipe)")
    p.add_argument("--mpnet-epochs", type=float, default=3,
                   help="all-mpnet-base-v2 fine-tuning epochs (the same recipe; 2 saves ~0.7 h of the budget)")
    p.add_argument("--retune-epochs", type=float, default=2, help="re-tuning epochs of every pruned run and control")
    p.add_argument("--flops", default="0.75,0.5,0.35,0.25", help="MiniLM FLOPs targets (shares of its own)")
    p.add_argument("--mpnet-flops", default="match",
                   help="mpnet FLOPs targets: shares of its own, or 'match' (MiniLM's FLOPs over mpnet's)")
    p.add_argument("--mpnet-model", default="models/all-mpnet-base-v2", help="benchmarks/prepare_mpnet.py's output")
    p.add_argument("--no-mpnet", action="store_true", help="MiniLM only")
    p.add_argument("--no-minilm", action="store_true",
                   help="mpnet only (e.g. a second process beside one with --no-mpnet: the two never share a run)")
    p.add_argument("--no-ablation", action="store_true", help="MiniLM pruned with distillation only")
    p.add_argument("--distill-weight", type=float, default=0.5)
    p.add_argument("--distill-temperature", type=float, default=2.0)
    p.add_argument("--no-deploy", action="store_true", help="no ONNX exports and export scores after the runs")
    p.add_argument("--measure-latency", action="store_true",
                   help="only measure latency (interleaved; run it alone on a quiet machine), train nothing")
    p.add_argument("--latency-rounds", type=int, default=7)
    p.add_argument("--gflops-per-s", type=float, default=GFLOPS_PER_S, help="calibrates the time estimate")
    p.add_argument("--estimate", action="store_true", help="print the plan's time estimate and stop")
    p.add_argument("--runs-file", default=str(RUNS_PATH))
    p.add_argument("--report-only", action="store_true", help="aggregate the finished runs, train nothing")
    p.add_argument("--no-record", action="store_true", help="do not append the summary to results.jsonl")
    p.add_argument("--report-dir", default=str(HERE))
    p.add_argument("--quick", action="store_true",
                   help="smoke run: SST-2, 64 examples, 1 epoch, seed 1, 50%% FLOPs; runs, records and report "
                        "under --out")
    args = p.parse_args(argv)
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.selection_seed in args.seed_list:
        p.error(f"seed {args.selection_seed} is the selection seed: settings are chosen on it, so it is never "
                "evaluated (give fresh --seeds)")
    if args.quick:
        args.tasks, args.seed_list, args.train_samples, args.max_eval_samples = "sst2", [1], 64, 64
        args.epochs = args.mpnet_epochs = args.retune_epochs = 1
        args.flops, args.lrs = "0.5", args.lrs.split(",")[0]
        args.out = str(Path(args.out).with_name(Path(args.out).name + "-quick"))
        args.runs_file = str(Path(args.out) / "runs.jsonl")
        args.report_dir = args.out
    else:
        args.max_eval_samples = None
    args.task_list = args.tasks.split(",")
    args.lr_list = [float(x) for x in args.lrs.split(",")]
    return args


# --- the models and their FLOPs shares ------------------------------------------------------------


def model_path(args, family: str) -> str:
    from dsee.models import resolve_model

    return resolve_model(None) if family == "minilm" else args.mpnet_model


# all-mpnet-base-v2's published shapes (its config.json): enough to plan, key and report its runs where the
# checkpoint is not prepared (a report rebuilt from the records on a machine without it, as in CI)
MPNET_SHAPES = {"model_type": "mpnet", "vocab_size": 30527, "hidden_size": 768, "num_hidden_layers": 12,
                "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 514,
                "relative_attention_num_buckets": 32}


def architecture(args, family: str):
    """``family``'s transformers config for a 2-label classifier: from its checkpoint, or, for mpnet without
    one, from ``MPNET_SHAPES`` (shapes are all that FLOPs shares and run keys depend on)."""
    from transformers import AutoConfig, MPNetConfig

    path = model_path(args, family)
    if family == "mpnet" and not (Path(path) / "config.json").is_file():
        shapes = {k: v for k, v in MPNET_SHAPES.items() if k != "model_type"}
        return MPNetConfig(**shapes, num_labels=2)
    return AutoConfig.from_pretrained(path, num_labels=2)


def skeleton(args, family: str):
    """The architecture of ``family`` as a classifier, on the meta device (shapes only)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    config = architecture(args, family)
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)


def full_flops(args, family: str) -> int:
    """Forward FLOPs of the unpruned ``family`` at ``--max-length`` tokens (cached)."""
    from dsee.sparsity.flops import total_flops

    cache = args.__dict__.setdefault("_flops", {})
    if family not in cache:
        cache[family] = total_flops(skeleton(args, family), args.max_length)
    return cache[family]


def flops_targets(args) -> dict[str, list[float]]:
    """FLOPs targets per family (shares of the family's own unpruned FLOPs)."""
    targets = {"minilm": [float(x) for x in args.flops.split(",") if x.strip()]}
    if not args.no_mpnet:
        match = full_flops(args, "minilm") / full_flops(args, "mpnet")
        targets["mpnet"] = [round(match, 4) if x.strip() == "match" else float(x)
                            for x in args.mpnet_flops.split(",") if x.strip()]
    return targets


def structure(args, family: str, target: float):
    """``StructureShares`` of ``family`` at ``target`` (cached)."""
    from dsee.sparsity.flops import shares_for_flops

    cache = args.__dict__.setdefault("_shares", {})
    if (family, target) not in cache:
        cache[family, target] = shares_for_flops(skeleton(args, family), target, args.max_length)
    return cache[family, target]


# --- the runs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One planned run: a source, a pruned model (``target``: its FLOPs share; ``distill``) or the control."""

    family: str  # minilm | mpnet
    task: str
    seed: int
    lr: float
    kind: str  # source | pruned | retune-only
    target: float | None = None
    distill: bool = False

    @property
    def source(self) -> "Run":
        return Run(self.family, self.task, self.seed, self.lr, "source")

    @property
    def label(self) -> str:
        if self.kind == "source":
            return f"{MODEL_LABEL[self.family]} fine-tuned"
        if self.kind == "retune-only":
            return f"{MODEL_LABEL[self.family]} re-tune only"
        return f"{MODEL_LABEL[self.family]} {self.target:.0%} FLOPs" + (" + distill" if self.distill else "")


def settings_key(args, run: Run) -> dict:
    """What a run's result depends on: finished runs are matched by it, run directories named by its digest."""
    epochs = args.epochs if run.family == "minilm" else args.mpnet_epochs
    key = {"family": run.family, "task": run.task, "seed": run.seed, "lr": run.lr, "kind": "source",
           "train_samples": args.train_samples, "max_length": args.max_length, "epochs": epochs,
           "max_eval_samples": args.max_eval_samples, "adapter": DSEE}
    if run.kind == "source":
        return key
    key.update(kind=run.kind, retune_epochs=args.retune_epochs, source_key=dict(key))
    if run.kind == "pruned":
        shares = structure(args, run.family, run.target)
        key.update(flops_target=run.target, heads=shares.heads, ffn=shares.ffn, **IMPORTANCE, distill=run.distill)
        if run.distill:
            key.update(distill_weight=args.distill_weight, distill_temperature=args.distill_temperature)
    return key


def digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def run_dir(args, run: Run) -> Path:
    name = {"source": "source", "retune-only": "retune-only"}.get(run.kind) or (
        f"flops{run.target:g}" + ("-distill" if run.distill else ""))
    return Path(args.out) / run.family / run.task / name / f"seed{run.seed}-lr{run.lr:g}-{digest(settings_key(args, run))}"


def run_config(args, run: Run):
    from dsee.train.run import RunConfig
    from dsee.train.settings import PruneSettings

    path = run_dir(args, run)
    if run.kind == "source":
        return RunConfig(out=str(path), task=run.task, data_dir=args.data_dir,
                         model=None if run.family == "minilm" else args.mpnet_model, method="dsee",
                         adapter=dict(DSEE, seed=run.seed), lr=run.lr, seed=run.seed, batch_size=32,
                         max_length=args.max_length, max_train_samples=args.train_samples,
                         max_eval_samples=args.max_eval_samples, mixed_precision="no",
                         epochs=args.epochs if run.family == "minilm" else args.mpnet_epochs)
    source = run_config(args, run.source)
    if run.kind == "retune-only":
        prune = PruneSettings(source=source.out, retune_only=True)
    else:
        shares = structure(args, run.family, run.target)
        prune = PruneSettings(source=source.out, heads=shares.heads, ffn=shares.ffn, **IMPORTANCE,
                              **({"distill": True, "distill_weight": args.distill_weight,
                                  "distill_temperature": args.distill_temperature} if run.distill else {}))
    return RunConfig.from_dict({**source.to_dict(), "out": str(path), "epochs": args.retune_epochs,
                                "prune": prune.to_dict()})


def summary(metrics: dict) -> dict:
    pruning = metrics.get("pruning") or {}
    return {"score": metrics["score"], "main_metric": metrics["main_metric"], "dev": metrics["dev"],
            "flops": metrics["flops"]["total"], "heads_per_layer": pruning.get("heads_per_layer"),
            "ffn_per_layer": pruning.get("ffn_per_layer"), "best_step": metrics["best_step"],
            "steps": metrics["steps"], "train_seconds": metrics["train_seconds"],
            "teacher_seconds": metrics.get("teacher_seconds"), "wall_seconds": metrics["wall_seconds"]}


def finished(args, key: dict) -> dict | None:
    return next((e for e in args.finished if e["key"] == key), None)


def run_one(args, run: Run) -> dict | None:
    """The recorded result of ``run``, or trains it now (its source first); None when report-only."""
    key = settings_key(args, run)
    done = finished(args, key)
    if done is not None or args.report_only:
        if done is not None and not (args.report_only or args.no_deploy):
            deploy(args, key, Path(done["run"]))  # what an earlier invocation's dsee could not do yet
        return done
    if run.kind != "source" and run_one(args, run.source) is None:
        return None
    from dsee.train.checkpoint import has_checkpoint
    from dsee.train.loop import train
    from dsee.train.run import METRICS

    path = run_dir(args, run)
    if not (path / METRICS).is_file():
        resume = has_checkpoint(path)
        print(f"\n=== {TASK_LABEL[run.task]} · {run.label} · seed {run.seed} · lr {run.lr:g}"
              + (" (resuming)" if resume else ""), flush=True)
        train(run_config(args, run), resume=resume, overwrite=not resume)
    entry = {"key": key, "run": str(path), **summary(json.loads((path / METRICS).read_text()))}
    record("deploy_frontier_run", entry, path=args.runs_file)
    args.finished.append(entry)
    if not args.no_deploy:
        deploy(args, key, path)
    return entry


# --- deployment hooks: export, score the export --------------------------------------------------

FORMATS = {"onnx-fp32": [], "onnx-int8": ["--quantize", "int8"]}
BACKENDS = ("torch fp32", *FORMATS)  # how latency is measured: PyTorch eager on the merged model, and each export


def dsee_cli(*argv: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsee", *argv], capture_output=True, text=True, timeout=timeout)


def export_capabilities(args) -> dict[str, bool]:
    """What the installed ``dsee export`` offers: ONNX (always here), int8 quantization (``--quantize``)."""
    if "_caps" not in args.__dict__:
        helptext = dsee_cli("export", "--help").stdout
        args._caps = {"onnx-fp32": "onnx" in helptext, "onnx-int8": "--quantize" in helptext}
        args._eval_export = None  # unknown until the first export is scored
    return args._caps


def note(args, text: str) -> None:
    notes = args.__dict__.setdefault("_notes", [])
    if text not in notes:
        notes.append(text)
        print(f"note: {text}", flush=True)


def run_of(key: dict) -> Run:
    """The ``Run`` a settings key describes."""
    return Run(key["family"], key["task"], key["seed"], key["lr"], key["kind"], key.get("flops_target"),
               key.get("distill", False))


def export_dir(args, run_path: str | Path, fmt: str) -> Path:
    """Beside the runs (``dsee export`` refuses an --out inside a run): OUT/exports/<run's path>/<format>."""
    return Path(args.out) / "exports" / Path(run_path).relative_to(args.out) / fmt


def scored_json(stdout: str) -> dict | None:
    """The metrics ``dsee eval ... --json`` prints last (a JSON object starting on a line of its own)."""
    lines = stdout.splitlines()
    for i in range(len(lines)):
        if lines[i].startswith("{"):
            try:
                return json.loads("\n".join(lines[i:]))
            except json.JSONDecodeError:
                continue
    return None


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def ensure_export(args, path: str | Path, fmt: str) -> Path | None:
    """The ``fmt`` export of the run at ``path`` (made now with ``dsee export`` if missing); None when the
    installed dsee cannot make it (a note says so) or the export failed."""
    if not export_capabilities(args)[fmt]:
        note(args, f"{fmt}: `dsee export --format onnx{' '.join([''] + FORMATS[fmt])}` is not in this dsee yet; "
                   "skipped")
        return None
    out = export_dir(args, path, fmt)
    if not (out / "model.onnx").is_file():
        done = dsee_cli("export", str(path), "--format", "onnx", *FORMATS[fmt], "--out", str(out), "--overwrite")
        if done.returncode != 0:
            note(args, f"{fmt}: `dsee export` failed on {path}: {last_line(done.stderr)}")
            return None
    return out


def deploy(args, key: dict, path: Path) -> None:
    """Export the run at ``path`` as fp32 and int8 ONNX and score each export with ``dsee eval DIR``; a step
    the installed dsee cannot do yet is skipped with a note (and done on a later invocation)."""
    for fmt in FORMATS:
        dkey = {**key, "deploy": fmt}
        if finished(args, dkey) is not None:
            continue
        out = ensure_export(args, path, fmt)
        if out is None or args._eval_export is False:
            continue
        limit = [] if args.max_eval_samples is None else ["--max-eval-samples", str(args.max_eval_samples)]
        scored = dsee_cli("eval", str(out), "--json", "--data-dir", args.data_dir, *limit)
        result = scored_json(scored.stdout) if scored.returncode == 0 else None
        if result is None:
            args._eval_export = False
            note(args, f"`dsee eval DIR` does not score an export in this dsee yet (the exports are kept under "
                       f"{Path(args.out) / 'exports'}); skipped: {last_line(scored.stderr)}")
            continue
        args._eval_export = True
        split = next(iter(result))
        metric = finished(args, key)["main_metric"]
        entry = {"key": dkey, "export": str(out), "dev": result, "score": result[split].get(metric)}
        record("deploy_frontier_export", entry, path=args.runs_file)
        args.finished.append(entry)


# --- the plan and its cost -----------------------------------------------------------------------


def families(args) -> list[str]:
    """The model families this invocation covers, MiniLM first."""
    return ([] if args.no_minilm else ["minilm"]) + ([] if args.no_mpnet else ["mpnet"])


def chosen_lr(args, family: str, task: str) -> float | None:
    """The rate of ``--lrs`` whose source run scores best on the selection seed (ties: the smaller rate);
    the one rate given; None while a selection run is missing (report-only)."""
    if len(args.lr_list) == 1:
        return args.lr_list[0]
    scores = {}
    for lr in args.lr_list:
        entry = run_one(args, Run(family, task, args.selection_seed, lr, "source"))
        if entry is not None:
            scores[lr] = entry["score"]
    return max(sorted(scores), key=scores.get) if len(scores) == len(args.lr_list) else None


def evaluation_runs(args, family: str, task: str, seed: int, lr: float) -> list[Run]:
    """A seed's runs of one family on one task, in the order they train (each after its source)."""
    runs = [Run(family, task, seed, lr, "source")]
    if family == "minilm":
        runs.append(Run(family, task, seed, lr, "retune-only"))
        for target in args.targets["minilm"]:
            runs += [Run(family, task, seed, lr, "pruned", target, True)]
            if not args.no_ablation:
                runs.append(Run(family, task, seed, lr, "pruned", target, False))
    else:
        runs += [Run(family, task, seed, lr, "pruned", t, True) for t in args.targets["mpnet"]]
    return runs


def planned(args) -> list[Run]:
    """Every run, selection runs first, then seed-major (a stopped experiment has every task at fewer seeds).
    The evaluation runs use the rate chosen on the selection seed (the grid's first while it is unknown)."""
    runs = []
    if len(args.lr_list) > 1:
        runs += [Run(f, t, args.selection_seed, lr, "source") for f in families(args) for t in args.task_list
                 for lr in args.lr_list]
    for seed in args.seed_list:
        for task in args.task_list:
            for family in families(args):
                lr = args.__dict__.get("_lrs", {}).get((family, task), args.lr_list[0])
                runs += evaluation_runs(args, family, task, seed, lr)
    return runs


def padded_lengths(args, task: str) -> tuple[float, float, int]:
    """(mean padded length of a training batch of 32, of a dev batch of 64, dev examples) on ``task``."""
    import random

    from dsee.train.pipeline import load_task_data, load_tokenizer
    from dsee.train.run import RunConfig

    config = RunConfig(out="unused", task=task, data_dir=args.data_dir, max_train_samples=args.train_samples,
                       max_eval_samples=args.max_eval_samples, max_length=args.max_length)
    data = load_task_data(config)
    tokenizer = load_tokenizer(model_path(args, "minilm"))
    train = [len(e["input_ids"]) for e in data.encode(data.train, tokenizer, config)]
    dev = [len(e["input_ids"]) for e in data.encode(data.evals[data.selection_split], tokenizer, config)]
    random.Random(0).shuffle(train)

    def mean_max(lengths, size):
        return statistics.mean(max(lengths[i:i + size]) for i in range(0, len(lengths), size))

    return mean_max(train, 32), mean_max(dev, 64), len(dev)


def estimate_seconds(args, run: Run, lengths: dict) -> float:
    """Rough seconds of one run: FLOPs of its training and evaluation passes at the task's padded lengths
    over ``--gflops-per-s`` (a distilling run adds the teacher's forward), plus its exports."""
    train_len, dev_len, dev_n = lengths[run.task]
    per_token_full = full_flops(args, run.family) / args.max_length  # FLOPs per token, roughly linear in length
    share = 1.0 if run.kind != "pruned" else structure(args, run.family, run.target).flops_share
    epochs = (args.epochs if run.family == "minilm" else args.mpnet_epochs) if run.kind == "source" \
        else args.retune_epochs
    steps = math.ceil(args.train_samples / 32) * epochs
    train_flops = steps * 32 * train_len * per_token_full * (3 * share + (1 if run.distill else 0))
    eval_flops = math.ceil(epochs) * dev_n * dev_len * per_token_full * share
    deploy_s = 0 if args.no_deploy else 2 * (EXPORT_SECONDS[run.family] + 2 * dev_n * dev_len * per_token_full
                                             * share / (args.gflops_per_s * 1e9))
    return (train_flops + eval_flops) / (args.gflops_per_s * 1e9) + deploy_s


def print_estimate(args, runs: list[Run]) -> None:
    todo = [r for r in runs if finished(args, settings_key(args, r)) is None]
    lengths = {t: padded_lengths(args, t) for t in args.task_list}
    by_family: dict[str, float] = {}
    for r in todo:
        by_family[r.family] = by_family.get(r.family, 0.0) + estimate_seconds(args, r, lengths)
    if not todo:
        print(f"all {len(runs)} runs are finished", flush=True)
        return
    total = sum(by_family.values())
    parts = ", ".join(f"{MODEL_LABEL[f]} {s / 3600:.1f} h" for f, s in by_family.items())
    print(f"{len(todo)} of {len(runs)} runs to train: about {total / 3600:.1f} hours ({parts}) at "
          f"{args.gflops_per_s:g} GFLOP/s (a quiet 2-core machine; --gflops-per-s recalibrates); padded lengths "
          + ", ".join(f"{TASK_LABEL[t]} {lengths[t][0]:.0f}" for t in args.task_list), flush=True)


# --- latency (its own phase) ---------------------------------------------------------------------


def latency_models(args) -> dict[str, dict[str, object]]:
    """One finished run per (family, FLOPs share): {label: {backend: model}}, PyTorch from a merged export."""
    import tempfile

    from dsee.sparsity.export import load_pretrained
    from dsee.train.export_run import export_run

    chosen: dict[tuple[str, float], dict] = {}
    for e in args.finished:
        k = e["key"]
        if "deploy" in k or k.get("kind") not in ("source", "pruned") or k["seed"] == args.selection_seed:
            continue
        if k["family"] not in args.targets or settings_key(args, run_of(k)) != k:
            continue  # a family left out (--no-mpnet), or a run of another protocol
        share = 1.0 if k["kind"] == "source" else k["flops_target"]
        chosen.setdefault((k["family"], share), e)  # the architecture is what matters, not the seed or task
    scratch = Path(tempfile.mkdtemp(prefix="frontier-latency-"))
    models: dict[str, dict[str, object]] = {}
    for (family, share), e in sorted(chosen.items(), key=lambda kv: (kv[0][0] != "minilm", -kv[0][1])):
        label = f"{MODEL_LABEL[family]} {share:.0%}"
        torch_dir = scratch / f"{family}-{share}"
        export_run(e["run"], torch_dir)
        models[label] = {"torch fp32": load_pretrained(torch_dir)}
        for fmt in FORMATS:  # the exports the deployment hooks wrote, or made now
            onnx = ensure_export(args, e["run"], fmt)
            if onnx is not None:
                from dsee.deploy.runtime import OnnxRuntimeModel

                models[label][fmt] = OnnxRuntimeModel(onnx)
    return models


def measure_latency(args) -> None:
    """Every model on every backend timed interleaved at 1 × 128 and 32 × 128: ratios to MiniLM 100% torch."""
    import torch

    from dsee.evaluation.bench import time_models

    grouped = latency_models(args)
    flat = {f"{label} [{backend}]": m for label, by in grouped.items() for backend, m in by.items()}
    reference = "MiniLM 100% [torch fp32]"
    if reference not in flat:
        raise SystemExit("--measure-latency needs a finished unpruned MiniLM run (train first)")
    flat = {reference: flat.pop(reference), **flat}
    print(f"timing {len(flat)} models interleaved ({args.latency_rounds} rounds, {torch.get_num_threads()} threads); "
          "nothing else should run on this machine now", flush=True)
    results, meter = {}, CpuMeter()
    for batch in (1, 32):
        for t in time_models(flat, batch_size=batch, seq_len=128, rounds=args.latency_rounds):
            results.setdefault(t.name, {})[f"{batch}x128"] = {"median_s": t.median_s, "q1_s": t.q1_s,
                                                              "q3_s": t.q3_s, "ratio": t.ratio_to_first}
            print(f"{batch:>2} × 128  {t.name:40s} {1000 * t.median_s:9.1f} ms  × {t.ratio_to_first:.3f}")
    entry = {"key": {"kind": "latency", "rounds": args.latency_rounds, "threads": torch.get_num_threads()},
             "reference": reference, "models": results, "cpu_share": meter.share()}
    record("deploy_frontier_latency", entry, path=args.runs_file, timed_share=entry["cpu_share"])
    args.finished.append(entry)


# --- the report ----------------------------------------------------------------------------------


def entries_of(args, run: Run) -> dict | None:
    return finished(args, settings_key(args, run))


def score(entry: dict) -> float:
    return 100 * entry["score"]


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f} (1)"  # one seed: no spread to show
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} ({len(values)})"


def configurations(args, task: str) -> list[Run]:
    """The task's configurations in table order, as run patterns (the seed is replaced by ``seeds_of``)."""
    lr = {f: args.__dict__.get("_lrs", {}).get((f, task)) for f in ("minilm", "mpnet")}
    rows = []
    for family in families(args):
        if lr[family] is None:
            continue
        for run in evaluation_runs(args, family, task, 0, lr[family]):
            rows.append(run)
    return rows


def seeds_of(args, pattern: Run) -> dict[int, dict]:
    """The finished evaluation-seed entries of a run pattern (its seed replaced), by seed."""
    out = {}
    for seed in args.seed_list:
        e = entries_of(args, Run(pattern.family, pattern.task, seed, pattern.lr, pattern.kind, pattern.target,
                                 pattern.distill))
        if e is not None:
            out[seed] = e
    return out


def table_rows(args, task: str) -> list[tuple[Run, dict[int, dict], float | None]]:
    """(configuration, its finished evaluation seeds' entries, its FLOPs over fine-tuned MiniLM's) for every
    configuration of ``task`` with results, in table order."""
    rows, minilm_flops = [], None
    for run in configurations(args, task):
        found = seeds_of(args, run)
        if not found:
            continue
        first = next(iter(found.values()))
        if run.family == "minilm" and run.kind == "source":
            minilm_flops = first["flops"]
        rows.append((run, found, first["flops"] / minilm_flops if minilm_flops else None))
    return rows


def diffs(args, a: Run, b: Run, measure=score, measure_b=None) -> list[float]:
    """``a`` − ``b`` per evaluation seed both have, ``b`` measured by ``measure_b`` (default: ``measure``);
    a seed where either measure is None (an export not scored) is left out."""
    ea, eb = seeds_of(args, a), seeds_of(args, b)
    pairs = [(measure(ea[s]), (measure_b or measure)(eb[s])) for s in sorted(set(ea) & set(eb))]
    return [x - y for x, y in pairs if x is not None and y is not None]


def export_score(args, entry: dict, fmt: str) -> float | None:
    done = finished(args, {**entry["key"], "deploy": fmt})
    return None if done is None or done["score"] is None else 100 * done["score"]


def latest_latency(args) -> dict | None:
    found = [e for e in args.finished if e["key"].get("kind") == "latency"]
    return found[-1] if found else None


def latency_of(latency: dict | None, run: Run, backend: str, shape: str) -> float | None:
    if latency is None:
        return None
    share = 1.0 if run.kind != "pruned" else run.target
    found = latency["models"].get(f"{MODEL_LABEL[run.family]} {share:.0%} [{backend}]", {}).get(shape)
    return None if found is None else found["ratio"]


def report(args) -> str:
    """Per task: every configuration's score (mean ± std over the evaluation seeds), FLOPs, export scores,
    latency; then the paired comparisons, Holm-adjusted over the whole report."""
    latency = latest_latency(args)
    comparisons: list[tuple[str, str, PairedComparison]] = []  # (task, what, result)
    lines = ["# The deployment frontier: pruned MiniLM and mpnet against fine-tuned MiniLM\n",
             f"Evaluation seeds {', '.join(map(str, args.seed_list))} (settings chosen on seed {args.selection_seed}); "
             f"{args.train_samples} training examples, max length {args.max_length}; epochs: MiniLM {args.epochs:g}, "
             f"mpnet {args.mpnet_epochs:g}, re-tuning {args.retune_epochs:g}. Learning rates: "
             + ", ".join(f"{MODEL_LABEL[f]} {TASK_LABEL[t]} {lr:g}" for (f, t), lr in args.__dict__.get("_lrs", {}).items())
             + ". Latency (PyTorch fp32 / ONNX Runtime fp32 / ONNX Runtime int8): " + (
                 "× the unpruned fp32 PyTorch MiniLM, interleaved "
                                f"({latency['key']['rounds']} rounds, {latency['key']['threads']} threads, cpu share "
                                f"{latency['cpu_share']})" if latency else "not measured yet (--measure-latency)") + ".\n"]
    for task in args.task_list:
        lines += [f"\n**{TASK_LABEL[task]}** (dev ×100, mean ± std (seeds))\n",
                  "| model | FLOPs × MiniLM | heads / FFN per layer | PyTorch fp32 | ONNX fp32 | ONNX int8 | "
                  "latency 1×128 | latency 32×128 |", "|---|---|---|---|---|---|---|---|"]
        for run, found, flops_ratio in table_rows(args, task):
            first = next(iter(found.values()))
            flops = "–" if flops_ratio is None else f"{flops_ratio:.3f}"
            shape = "–" if not first["heads_per_layer"] else f"{first['heads_per_layer'][0]} / {first['ffn_per_layer'][0]}"
            exports = [cell([s for s in (export_score(args, e, f) for e in found.values()) if s is not None])
                       for f in FORMATS]
            lat = [" / ".join("–" if x is None else f"{x:.3f}" for x in
                              (latency_of(latency, run, backend, shape) for backend in BACKENDS))
                   for shape in ("1x128", "32x128")]
            lines.append(f"| {run.label} | {flops} | {shape} | {cell([score(e) for e in found.values()])} | "
                         + " | ".join(exports + lat) + " |")
        comparisons += task_comparisons(args, task)
    adjusted = holm([c[2].sign_flip_p if c[2].n > 1 else None for c in comparisons])
    lines += ["\nPaired differences by seed (×100): mean [95% t-interval] (pairs; paired t p, exact sign-flip p, "
              "Holm p over every test below):\n", "| task | comparison | difference |", "|---|---|---|"]
    for (task, what, result), adj in zip(comparisons, adjusted):
        text = result.text(2, adjusted_p=adj) if result.n > 1 else f"{result.mean:+.2f} (1 pair)"
        lines.append(f"| {TASK_LABEL[task]} | {what} | {text} |")
    if getattr(args, "_notes", None):
        lines += ["\nNotes:\n"] + [f"- {n}" for n in args._notes]
    return "\n".join(lines) + "\n"


def task_comparisons(args, task: str) -> list[tuple[str, str, PairedComparison]]:
    """Every pruned MiniLM against the control and its source; with and without distillation; pruned mpnet
    against fine-tuned MiniLM and MiniLM's control."""
    out = []
    lrs = args.__dict__.get("_lrs", {})
    if ("minilm", task) not in lrs:
        return out
    minilm = Run("minilm", task, 0, lrs["minilm", task], "source")
    control = Run("minilm", task, 0, minilm.lr, "retune-only")
    for target in args.targets["minilm"]:
        for distill in ([True] if args.no_ablation else [True, False]):
            pruned = Run("minilm", task, 0, minilm.lr, "pruned", target, distill)
            for base, name in ((control, "re-tune only"), (minilm, "fine-tuned")):
                d = diffs(args, pruned, base)
                if d:
                    out.append((task, f"{pruned.label} − MiniLM {name}", paired(d)))
        if not args.no_ablation:
            d = diffs(args, Run("minilm", task, 0, minilm.lr, "pruned", target, True),
                      Run("minilm", task, 0, minilm.lr, "pruned", target, False))
            if d:
                out.append((task, f"MiniLM {target:.0%} FLOPs: distill − no distill", paired(d)))
    if ("mpnet", task) in lrs:
        for target in args.targets.get("mpnet", []):
            pruned = Run("mpnet", task, 0, lrs["mpnet", task], "pruned", target, True)
            for base, name in ((minilm, "MiniLM fine-tuned"), (control, "MiniLM re-tune only")):
                d = diffs(args, pruned, base)
                if d:
                    out.append((task, f"{pruned.label} − {name}", paired(d)))
    return out


# --- the README summary: the three targets ------------------------------------------------

SHAPES = ("1x128", "32x128")
INT8_LOSS, INT8_SPEEDUP = 0.3, 1.7  # int8 alone: at most this loss, at least this speed-up over fp32 ONNX Runtime
DEEP_TARGET, DEEP_SPEEDUP, DEEP_LOSS = 0.35, 5.0, 1.0  # MiniLM at 35% FLOPs + int8 vs fp32 PyTorch and the control


def measured_as(args, fmt: str | None):
    """How a run's entry is scored: in PyTorch (``fmt`` None) or its ``fmt`` export (None when not scored)."""
    return score if fmt is None else (lambda entry: export_score(args, entry, fmt))


def paired_by_seed(args, a: Run, b: Run, fmt_a: str | None = None, fmt_b: str | None = None) -> list[float]:
    """``a`` scored as ``fmt_a`` − ``b`` scored as ``fmt_b`` (×100), one per evaluation seed both have."""
    return diffs(args, a, b, measured_as(args, fmt_a), measured_as(args, fmt_b))


def per_task(args, make_pair) -> tuple[str, list[float]]:
    """'MRPC F1 +0.10 [..] (3; ..); ...' over the tasks with pairs, and each task's mean difference.
    ``make_pair(task, lr)`` gives the two runs (and formats) to pair on ``task``."""
    texts, means = [], []
    for task in args.task_list:
        lr = args.__dict__.get("_lrs", {}).get(("minilm", task))
        pair = make_pair(task, lr) if lr is not None else None
        d = paired_by_seed(args, *pair) if pair is not None else []
        if d:
            result = paired(d)
            texts.append(f"{TASK_LABEL[task]} " + (result.text(2) if result.n > 1 else f"{result.mean:+.2f} (1 pair)"))
            means.append(result.mean)
    return ("; ".join(texts) or "no pairs yet"), means


def speedups(latency: dict | None, run: Run, backend: str, over: str | None = None) -> list[float] | None:
    """``run`` on ``backend`` as a speed-up over ``run`` on ``over`` (None: over the unpruned fp32 PyTorch
    MiniLM, the latency record's reference), at every shape; None before latency is measured."""
    times = [latency_of(latency, run, backend, shape) for shape in SHAPES]
    base = [1.0] * len(SHAPES) if over is None else [latency_of(latency, run, over, shape) for shape in SHAPES]
    if any(t is None for t in times + base):
        return None
    return [b / t for b, t in zip(base, times)]


def judged(ok: bool, tasks: int) -> str:
    """'met (3 tasks)' / 'missed (1 task)'."""
    return ("met" if ok else "missed") + f" ({tasks} task{'s' if tasks > 1 else ''})"


def verdict(losses: list[float], bound: float, speed: list[float] | None, least: float) -> str:
    """'met' / 'missed' on every task's mean loss (≤ ``bound``) and every shape's speed-up (≥ ``least``)."""
    if not losses or speed is None:
        return "not measured yet"
    return judged(all(-m <= bound for m in losses) and all(x >= least for x in speed), len(losses))


def frontier_table(args) -> str:
    """Every configuration across the tasks (README "Deploy"): FLOPs, dev score per task (PyTorch; mean ± std
    (seeds)), the int8 export's score minus PyTorch's (mean over the pairs of every task), and time at 32 × 128
    (PyTorch / ONNX fp32 / ONNX int8, × the unpruned fp32 PyTorch MiniLM)."""
    latency = latest_latency(args)
    by_label: dict[str, dict] = {}
    for task in args.task_list:
        for run, found, flops_ratio in table_rows(args, task):
            row = by_label.setdefault(run.label, {"run": run, "flops": flops_ratio, "tasks": {}, "int8": []})
            row["tasks"][task] = cell([score(e) for e in found.values()])
            row["int8"] += [x - score(e) for e in found.values()
                            if (x := export_score(args, e, "onnx-int8")) is not None]
    head = " | ".join(TASK_LABEL[t] for t in args.task_list)
    lines = [f"| model | FLOPs × MiniLM | {head} | int8 − PyTorch (pairs) | time 32 × 128: PyTorch / ONNX fp32 / "
             "int8 |", "|---|---|" + "---|" * len(args.task_list) + "---|---|"]
    for label, row in by_label.items():
        flops = "–" if row["flops"] is None else f"{row['flops']:.3f}"
        int8 = f"{statistics.mean(row['int8']):+.2f} ({len(row['int8'])})" if row["int8"] else "–"
        times = " / ".join("–" if x is None else f"{x:.3f}"
                           for x in (latency_of(latency, row["run"], b, "32x128") for b in BACKENDS))
        lines.append(f"| {label} | {flops} | " + " | ".join(row["tasks"].get(t, "–") for t in args.task_list)
                     + f" | {int8} | {times} |")
    return "\n".join(lines) + "\n"


def targets_summary(args) -> str:
    """The issue's targets as a table (README "Deploy"): int8 alone; MiniLM at 35% FLOPs + int8; pruned mpnet
    at MiniLM's FLOPs against fine-tuned MiniLM. Per task, paired by seed (never pooled across metrics)."""
    latency = latest_latency(args)
    shapes = " / ".join(s.replace("x", " × ") for s in SHAPES)

    def speed_text(x):
        return "latency not measured yet" if x is None else "speed-up " + ", ".join(f"{v:.2f}×" for v in x) + f" at {shapes}"

    source = lambda task, lr: Run("minilm", task, 0, lr, "source")  # noqa: E731
    control = lambda task, lr: Run("minilm", task, 0, lr, "retune-only")  # noqa: E731
    deep = lambda task, lr: Run("minilm", task, 0, lr, "pruned", DEEP_TARGET, True)  # noqa: E731
    rows = ["| target | measured (×100, mean [95% t-interval] (seeds; t p, flip p)) | verdict |", "|---|---|---|"]

    text, means = per_task(args, lambda t, lr: (source(t, lr), source(t, lr), "onnx-int8", "onnx-fp32"))
    speed = speedups(latency, source("mrpc", 0.0), "onnx-int8", over="onnx-fp32")
    rows.append(f"| int8 alone (MiniLM fine-tuned): int8 − fp32 ONNX score ≥ −{INT8_LOSS:g}; speed-up over fp32 "
                f"ONNX Runtime ≥ {INT8_SPEEDUP:g}× | {text}; {speed_text(speed)} | "
                f"{verdict(means, INT8_LOSS, speed, INT8_SPEEDUP)} |")

    text, means = per_task(args, lambda t, lr: (deep(t, lr), control(t, lr), "onnx-int8", None))
    speed = speedups(latency, deep("mrpc", 0.0), "onnx-int8")
    rows.append(f"| MiniLM at {DEEP_TARGET:.0%} FLOPs + distill, int8: score − the re-tune-only control ≥ "
                f"−{DEEP_LOSS:g}; speed-up over unpruned fp32 PyTorch ≥ {DEEP_SPEEDUP:g}× | {text}; "
                f"{speed_text(speed)} | {verdict(means, DEEP_LOSS, speed, DEEP_SPEEDUP)} |")

    def above(means):
        return "not measured yet" if not means else judged(all(m > 0 for m in means), len(means))

    for target in args.targets.get("mpnet", []):
        def mpnet_pair(task, lr, target=target, base=source):
            mpnet_lr = args._lrs.get(("mpnet", task))
            return None if mpnet_lr is None else (Run("mpnet", task, 0, mpnet_lr, "pruned", target, True),
                                                  base(task, lr))
        text, means = per_task(args, mpnet_pair)
        # the fair baseline: MiniLM trained as many epochs as the pruned mpnet (fine-tuning + re-tuning)
        control_text, control_means = per_task(args, lambda t, lr: mpnet_pair(t, lr, base=control))
        speed = speedups(latency, Run("mpnet", "mrpc", 0, 0.0, "pruned", target, True), "torch fp32")
        rows.append(f"| mpnet at {target:.1%} of its FLOPs (MiniLM's) + distill, PyTorch: score − fine-tuned MiniLM "
                    f"> 0; and − MiniLM re-tune only (as many epochs) | {text}; against the control: {control_text}; "
                    f"{speed_text(speed)} (× MiniLM, both fp32 PyTorch) | {above(means)}; against the control: "
                    f"{above(control_means)} |")
    return "\n".join(rows) + "\n"


def plot(args, path: Path) -> bool:
    """Per task: dev score against latency (32×128, × unpruned fp32 PyTorch MiniLM) when measured, else
    FLOPs; with latency and export scores, the int8 ONNX models too (hollow markers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latency = latest_latency(args)
    fig, axes = plt.subplots(1, len(args.task_list), figsize=(4.6 * len(args.task_list), 4), squeeze=False)
    drawn = False
    for ax, task in zip(axes[0], args.task_list):
        series: dict[str, list[tuple[float, float, float]]] = {}
        for run, found, flops_ratio in table_rows(args, task):
            x = latency_of(latency, run, "torch fp32", "32x128") if latency else flops_ratio
            if x is None:
                continue
            name = run.label if run.kind != "pruned" else (
                f"{MODEL_LABEL[run.family]} pruned" + (" + distill" if run.distill else ""))
            int8_x = latency_of(latency, run, "onnx-int8", "32x128")
            int8 = [v for v in (export_score(args, e, "onnx-int8") for e in found.values()) if v is not None]
            for label, at, values in ((name, x, [score(e) for e in found.values()]),
                                      (f"{name}, int8 ONNX", int8_x, int8)):
                if at is not None and values:
                    series.setdefault(label, []).append((at, statistics.mean(values),
                                                         statistics.stdev(values) if len(values) > 1 else 0.0))
        for name, points in series.items():
            points.sort()
            style = "o-" if "pruned" in name else "s"
            ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points], fmt=style,
                        capsize=3, label=name, mfc="none" if "int8" in name else None)
            drawn = True
        ax.set_xscale("log")  # from a quarter of MiniLM to several times it
        ax.set_xlabel("latency 32×128, × unpruned fp32 MiniLM" if latency else "FLOPs, × unpruned MiniLM")
        ax.set_ylabel("dev score ×100")
        ax.set_title(TASK_LABEL[task])
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7)
    fig.tight_layout()
    if drawn:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


# --- main ----------------------------------------------------------------------------------------


def load(args) -> None:
    """The finished runs of ``--runs-file`` and the FLOPs targets, onto ``args``."""
    runs_file = Path(args.runs_file)
    args.finished = [json.loads(line)["results"] for line in runs_file.read_text().splitlines() if line.strip()] \
        if runs_file.is_file() else []
    args.targets = flops_targets(args)


def choose_rates(args) -> None:
    """``args._lrs``: the rate of every (family, task) chosen on the selection seed (trained first if missing,
    unless report-only; a pair still missing one is left out)."""
    args._lrs = {}
    for family in families(args):
        for task in args.task_list:
            lr = chosen_lr(args, family, task)
            if lr is not None:
                args._lrs[family, task] = lr


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.no_mpnet and args.no_minilm:
        raise SystemExit("--no-mpnet and --no-minilm together leave no model to run")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    runs_file = Path(args.runs_file)
    if not (args.no_mpnet or args.report_only) and not (Path(args.mpnet_model) / "config.json").is_file():
        raise SystemExit(f"{args.mpnet_model}: no all-mpnet-base-v2 there; run benchmarks/prepare_mpnet.py "
                         "(or --no-mpnet)")
    load(args)
    if args.measure_latency:
        measure_latency(args)
        return 0
    runs_file.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if not args.report_only:
        print_estimate(args, planned(args))
        if args.estimate:
            return 0
    choose_rates(args)
    for seed in args.seed_list:  # seed-major: a stopped experiment leaves every task at fewer seeds
        for task in args.task_list:
            for family in families(args):
                if (family, task) in args._lrs:
                    for run in evaluation_runs(args, family, task, seed, args._lrs[family, task]):
                        run_one(args, run)
    text = report(args)
    out = Path(args.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "deploy_frontier_results.md").write_text(text)
    drawn = plot(args, out / "deploy_frontier_results.png")
    print(text + (f"\nwrote {out / 'deploy_frontier_results.md'}" + (" and the plot" if drawn else "")))
    if not (args.report_only or args.quick or args.no_record):
        record("deploy_frontier", {"settings": {k: v for k, v in vars(args).items() if not k.startswith("_")
                                                and k != "finished"},
                                   "hours": (time.perf_counter() - start) / 3600})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
