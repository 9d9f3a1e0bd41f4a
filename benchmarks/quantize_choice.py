"""Which int8 graph to ship? The choices behind ``dsee.deploy.quantize``, measured on a fine-tuned run.

From the run's kept model (merged), exported as fp32 ONNX as is (``export_onnx(fuse=False)``):

- ``fp32``, ``fp32 fused``: the references (ORT's fused operators: ``fusion.fuse_for_ort``);
- ``int8 unfused``: dynamic int8 (``quantize_int8``, per channel) of the graph as exported;
- ``fuse, then int8``: the fused graph quantized (its ``Attention`` node keeps Q|K|V in fp32);
- ``int8, then fuse``: what ``export_onnx(quantize="int8")`` ships; ``... per tensor``: one scale per matrix;
  ``int8 matmuls only``: the embedding tables (Gather) left in fp32; ``int8 but FFN down fp32``: the
  FFN down-projections (``quantize.ffn_down_projections``) left in fp32;
- ``static int8, then fuse``: ``onnxruntime.quantization.quantize_static`` (QDQ, MinMax, uint8
  activations, int8 per-channel weights, the same operators) calibrated on ``--calibration-batches``
  training batches of the run (a seeded order, as ``--sparse-method gradient`` takes them).

Each is scored on the run's whole dev set (its main metric, through ``compute_metrics``) and compared
with the fp32 graph (largest logit difference, share of equal predicted classes), and timed
interleaved at 1 × 128 and 32 × 128 as the CPU time of the calling thread at 1 thread
(``time.thread_time``: what another process on a shared machine hardly changes; ``--wall`` for wall
time at torch's thread count). The graphs are kept in ``--work-dir`` and reused.

    python benchmarks/quantize_choice.py --run runs/sst2-int8 [--rounds 7] [--calibration-batches 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import CpuMeter, print_table, record  # noqa: E402

from dsee import OnnxRuntimeModel, export_onnx, merge_dsee  # noqa: E402
from dsee.adapters.inject import dsee_layers  # noqa: E402
from dsee.deploy.fusion import fuse_for_ort  # noqa: E402
from dsee.deploy.quantize import OP_TYPES, compare_outputs, ffn_down_projections, quantize_int8  # noqa: E402
from dsee.evaluation.bench import time_models  # noqa: E402
from dsee.train.metrics import compute_metrics  # noqa: E402
from dsee.train.pipeline import load_run, load_task_data  # noqa: E402
from dsee.train.support import calibration_batches  # noqa: E402

VARIANTS = ("fp32", "fp32 fused", "int8 unfused", "fuse, then int8", "int8, then fuse", "int8, then fuse, per tensor",
            "int8 matmuls only, then fuse", "int8 but FFN down fp32, then fuse", "static int8, then fuse")


def static_int8(source: Path, target: Path, batches: list[dict]) -> None:
    """quantize_static: QDQ, MinMax over ``batches``, uint8 activations, int8 per-channel weights."""
    from onnxruntime import quantization as q

    names = [i.name for i in OnnxRuntimeModel(source).session.get_inputs()]

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{n: b[n].numpy().astype(np.int64) for n in names} for b in batches])

        def get_next(self):
            return next(self.feeds, None)

    q.quantize_static(str(source), str(target), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                      activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                      calibrate_method=q.CalibrationMethod.MinMax, op_types_to_quantize=list(OP_TYPES))


def build(work: Path, run: str, calibration: int) -> tuple[dict[str, Path], list[dict], dict]:
    """Every variant's graph under ``work`` (reused when there), the dev batches, what the run is."""
    config, model, tokenizer = load_run(run)
    if dsee_layers(model):
        merge_dsee(model)
    data = load_task_data(config, with_train=True)
    split = data.selection_split
    examples = data.encode(data.evals[split], tokenizer, config)
    collate = data.collator(tokenizer)
    dev = [collate(examples[i: i + config.eval_batch_size]) for i in range(0, len(examples), config.eval_batch_size)]
    files = {name: work / name.replace(", ", "-").replace(" ", "-") / "model.onnx" for name in VARIANTS}

    def make(name: str, how) -> None:
        if not files[name].is_file():
            files[name].parent.mkdir(parents=True, exist_ok=True)
            how(files[name])

    make("fp32", lambda f: export_onnx(model, f.parent, tokenizer=tokenizer, fuse=False))
    plain = files["fp32"]
    make("fp32 fused", lambda f: fuse_for_ort(plain, f))
    make("int8 unfused", lambda f: quantize_int8(plain, f))
    make("fuse, then int8", lambda f: quantize_int8(files["fp32 fused"], f))
    for name, per_channel in (("int8, then fuse", True), ("int8, then fuse, per tensor", False)):
        make(name, lambda f, pc=per_channel: (quantize_int8(plain, f.parent / "q.onnx", per_channel=pc),
                                               fuse_for_ort(f.parent / "q.onnx", f)))
    make("int8 matmuls only, then fuse", lambda f: (quantize_int8(plain, f.parent / "q.onnx", op_types=("MatMul",)),
                                                    fuse_for_ort(f.parent / "q.onnx", f)))
    make("int8 but FFN down fp32, then fuse",
         lambda f: (quantize_int8(plain, f.parent / "q.onnx", keep_fp32=tuple(ffn_down_projections(plain))),
                    fuse_for_ort(f.parent / "q.onnx", f)))
    train = calibration_batches(data, tokenizer, config, calibration, cycle=False)
    make("static int8, then fuse", lambda f: (static_int8(plain, f.parent / "q.onnx", train),
                                              fuse_for_ort(f.parent / "q.onnx", f)))
    info = {"run": run, "task": config.task or config.validation_file, "metric_kind": data.metric_kind,
            "main_metric": data.main_metric, "split": split, "dev_examples": len(examples),
            "calibration_batches": len(train), "labels": [b.pop("labels") for b in dev]}
    return files, dev, info


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a fine-tuned classification run")
    p.add_argument("--work-dir", default=None, help="where the graphs go (default: RUN-quantize beside the run)")
    p.add_argument("--calibration-batches", type=int, default=8)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--shapes", default="1x128,32x128")
    p.add_argument("--wall", action="store_true", help="wall time at torch's thread count instead of 1-thread CPU time")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    start = time.perf_counter()
    if not args.wall:
        torch.set_num_threads(1)
    work = Path(args.work_dir) if args.work_dir else Path(args.run).parent / f"{Path(args.run).name}-quantize"
    files, dev, info = build(work, args.run, args.calibration_batches)
    labels = torch.cat(info.pop("labels")).numpy()
    runners = {name: OnnxRuntimeModel(f, threads=torch.get_num_threads()) for name, f in files.items()}
    quality = {}
    for name, runner in runners.items():
        logits = np.concatenate([runner.run(runner.feed(b))[0] for b in dev])
        scores = compute_metrics(info["metric_kind"], logits.squeeze(-1) if logits.shape[-1] == 1 else logits, labels)
        vs = compare_outputs(runners["fp32"], runner, dev, classes=logits.shape[-1] > 1)
        quality[name] = {"scores": scores, "vs_fp32": vs, "bytes": sum(f.stat().st_size for f in files[name].parent.iterdir()
                                                                       if f.name.startswith("model.onnx"))}
    meter = CpuMeter()
    clock = time.perf_counter if args.wall else time.thread_time
    timings = {}
    for shape in args.shapes.split(","):
        batch, length = (int(x) for x in shape.split("x"))
        found = time_models(runners, batch_size=batch, seq_len=length, rounds=args.rounds,
                            passes=4 if batch == 1 else 1, clock=clock)
        timings[shape] = {t.name: {"median_s": t.median_s, "q1_s": t.q1_s, "q3_s": t.q3_s,
                                   "over_fp32": t.ratio_to_first} for t in found}
    share = meter.share()
    main_metric = info["main_metric"]
    rows = [[name, 100 * q["scores"][main_metric], q["vs_fp32"]["max_abs_diff"],
             100 * q["vs_fp32"].get("same_class_share", float("nan")), q["bytes"] / 1e6,
             *(timings[s][name]["over_fp32"] for s in timings)] for name, q in quality.items()]
    print(f"\n{info['run']} ({info['task']}, {info['dev_examples']} {info['split']} examples); time: "
          f"{'wall' if args.wall else 'CPU time of the calling thread, 1 thread'}, {args.rounds} interleaved rounds, "
          f"as a share of fp32 (cpu share {share})")
    print_table(["graph", main_metric, "max |logit diff|", "same class %", "MB", *(f"time {s}" for s in timings)],
                rows, [None, ".2f", ".3f", ".1f", ".1f", *(".3f" for _ in timings)])
    results = {**info, "quality": quality, "timings": timings, "clock": "wall" if args.wall else "thread_time",
               "threads": torch.get_num_threads(), "rounds": args.rounds, "timing_cpu_share": share,
               "wall_s": time.perf_counter() - start}
    if not args.no_record:
        record("quantize_choice", results)
    return results


if __name__ == "__main__":
    main()
