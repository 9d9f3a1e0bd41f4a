"""The ``dsee`` command line: parse arguments, call the library. Nothing else lives here.

The options of ``adapt``, ``train``, ``prune``, ``eval`` and ``generate`` are generated from the
configuration dataclasses (``DSEEConfig``, ``RunConfig``, ``PruneSettings``, ``DecodingSettings``;
see ``dsee.options``), so each option's default and help are written once, next to the field.
``dsee train --seed S`` seeds the run (data order, head) and the adapter (A, random Ω) alike.

Every option is applied or refused: an option the run would record but not use is an error (exit 2).
Every failure is one line on stderr: the user's (bad input, bad files, a write the file system
refuses) with exit code 2, a diverged run with 1, a bug in dsee with 1 as well; ``--debug`` (or
``DSEE_DEBUG=1``) adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .adapters.config import DSEEConfig
from .deploy import MissingExtra
from .options import add_options, given, values


def adapter_config(args: argparse.Namespace, seed: int | None = None) -> DSEEConfig:
    kwargs = values(args, DSEEConfig, exclude=("seed",) if seed is not None else ())
    return DSEEConfig(**kwargs, **({"seed": seed} if seed is not None else {}))


def cmd_adapt(args: argparse.Namespace) -> int:
    """Put DSEE adapters on a model and print the parameter report (optionally save the adapter)."""
    from .adapters.inject import add_dsee
    from .adapters.io import save_adapter
    from .adapters.summary import parameter_report
    from .models import load_sequence_classifier, resolve_model

    config = adapter_config(args)
    model = load_sequence_classifier(resolve_model(args.model), num_labels=args.num_labels)
    start = time.perf_counter()
    add_dsee(model, config)
    print(f"model: {resolve_model(args.model)}\n{parameter_report(model)}\n"
          f"support selection: {time.perf_counter() - start:.2f} s ({config.sparse_method})")
    if args.out:
        save_adapter(model, args.out)
        print(f"adapter saved to {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Fine-tune on a GLUE task or the user's own data; print the dev score and the trainable share."""
    from .train.loop import train
    from .train.run import load_run_config
    from .train.settings import RunConfig

    if args.resume:  # the saved settings, nothing else: an option given with --resume would be ignored
        refuse_options_with_resume(args, [(RunConfig, ("out",)), (DSEEConfig, ("seed",))])
        if args.overwrite:
            raise ValueError("--resume continues a run and --overwrite replaces it: give one of them")
        config = load_run_config(args.out)
        config.out = args.out
    else:
        adapter = None if args.method == "full" else adapter_config(args, seed=args.seed).to_dict()
        config = RunConfig(**values(args, RunConfig), adapter=adapter)
        refuse_options_not_applying(args, adapter, config)
    metrics = train(config, resume=args.resume, overwrite=args.overwrite, show_progress=not args.no_progress)
    print_once(format_train_summary(metrics))
    return 0


def print_once(text: str) -> None:
    """Print on the main process only (under torchrun every process runs the command)."""
    from .train.launch import is_main_process

    if is_main_process():
        print(text)


def refuse_options_with_resume(args: argparse.Namespace, classes) -> None:
    from .options import given

    flags = [flag for cls, exclude in classes for flag in given(args, cls, exclude=exclude)]
    if flags:
        raise ValueError(f"--resume continues the run with its saved settings; {', '.join(flags)} would be "
                         "ignored: drop them (or start a new run)")


def refuse_options_not_applying(args: argparse.Namespace, adapter: dict | None, config) -> None:
    """Options that the chosen method or support would silently ignore are errors instead: each given adapter
    option is compared with what the run will use (``config.adapter``)."""
    from .options import cli_fields, given

    flags = given(args, DSEEConfig, exclude=("seed",))
    if args.method == "full" and flags:
        raise ValueError(f"--method full trains every weight: the adapter options {', '.join(flags)} do not apply")
    used = config.dsee_config()
    why = " (LoRA: no sparse part)" if args.method == "lora" else ""
    for f, meta, _ in cli_fields(DSEEConfig) if used is not None else ():
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        if flag not in flags:
            continue
        if adapter[f.name] != config.adapter[f.name]:  # RunConfig overrode it (--method lora: N = 0)
            raise ValueError(f"{flag} {getattr(args, f.name)} does not apply: --method {args.method} trains "
                             f"{f.name} = {config.adapter[f.name]}{why}")
        if f.name == "sparse_method" and not used.has_sparse:
            raise ValueError(f"{flag} chooses the support of the sparse part, which this run does not have "
                             f"(N = 0){why}")
    data_aware = adapter is not None and DSEEConfig.from_dict(adapter).sparse_method == "gradient"
    for flag, value, default in (("--support-batches", args.support_batches, 8),
                                 ("--support-warmup-steps", args.support_warmup_steps, 0)):
        if value != default and not data_aware:
            raise ValueError(f"{flag} is read only by --sparse-method gradient")


def format_train_summary(metrics: dict) -> str:
    dev = metrics["dev"].get(metrics["selection_split"], {})
    shown = ", ".join(f"{k} {v:.4f}" for k, v in dev.items() if k != "loss")
    if metrics["best_step"] < 0:
        shown = (f"no checkpoint kept: the dev {metrics['main_metric']} was undefined at every evaluation "
                 "(e.g. constant predictions)")
    lines = [f"{metrics['task']} · {metrics['method']} · {metrics['model']}",
             f"dev ({metrics['selection_split']}, best step {metrics['best_step']}): {shown}",
             f"trainable: {metrics['trainable_parameters']:,} of {metrics['total_parameters']:,} parameters "
             f"({100 * metrics['trainable_share']:.3f}%) · wall time {metrics['wall_seconds']:.0f} s · "
             f"{metrics['train_examples_per_second']:.1f} training examples/s"]
    pruning = metrics.get("pruning")
    if pruning:
        flops = metrics.get("flops", {}).get("total")
        lines.append(f"sparsity {pruning.get('sparsity', 0):.1%} · heads per layer {pruning.get('heads_per_layer')} · "
                     f"FFN per layer {pruning.get('ffn_per_layer')}"
                     + (f" · {flops / 1e9:.2f} GFLOPs per sequence" if flops else ""))
    degenerate = metrics.get("degenerate")
    if degenerate:
        lines.append(f"warning: one class only: {degenerate['message']}; try {degenerate['try']}")
    lines += [f"warning: {warning}" for warning in metrics.get("warnings", [])]
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    """Re-compute the dev metrics of a saved run from its kept checkpoint (generation: decode and score),
    or score an exported directory (PyTorch or ONNX, fp32 or int8) on its run's data."""
    from .train.run import RUN_CONFIG, load_run_config

    if not (Path(args.run) / RUN_CONFIG).is_file():  # an export (or neither: the error says so)
        return _eval_export(args)
    if load_run_config(args.run).is_generation:
        from .train.generate import DecodingSettings, evaluate_generation_run

        decoding = DecodingSettings(**values(args, DecodingSettings))
        result = evaluate_generation_run(args.run, split=args.split, data_dir=args.data_dir,
                                         max_items=args.max_eval_samples, **decoding.to_dict())
        for name, value in result["scores"].items():
            print(f"{result['split']:12s} {name:8s} " + ("unavailable" if value is None else f"{value:.4f}"))
        print(f"({result['items']} distinct sources, beam {result['beams']}; predictions and scores in {args.run})")
        return 0
    from .train.evaluation import evaluate_run

    results = evaluate_run(args.run, data_dir=args.data_dir, max_eval_samples=args.max_eval_samples, split=args.split)
    saved_path = Path(args.run) / "metrics.json"
    saved = json.loads(saved_path.read_text())["dev"] if saved_path.is_file() else {}
    _print_metrics(results, saved, "metrics.json", args.json)
    return 0


def _eval_export(args: argparse.Namespace) -> int:
    from .train.export_eval import describe_export, evaluate_export, read_record

    results = evaluate_export(args.run, data_dir=args.data_dir, max_eval_samples=args.max_eval_samples,
                              split=args.split)
    print(describe_export(args.run))
    _print_metrics(results, read_record(args.run).get("dev") or {}, "the run's metrics.json", args.json)
    return 0


def _print_metrics(results: dict, saved: dict, source: str, as_json: bool) -> None:
    """One line per split and metric, beside the value recorded before (``saved``: {split: {metric: value}})."""
    for split, metrics in results.items():
        for name, value in metrics.items():
            before = saved.get(split, {}).get(name)
            note = f"   ({source}: {before:.4f})" if isinstance(before, float) else ""
            print(f"{split:24s} {name:22s} {value:.4f}{note}")
    if as_json:
        print(json.dumps(results, indent=2))


def cmd_prune(args: argparse.Namespace) -> int:
    """Prune a trained run (unstructured and/or heads and FFN neurons), re-tune the adapters: a new run."""
    import dataclasses

    from .train.loop import train
    from .train.pruning import check_source
    from .train.run import check_out_apart
    from .train.settings import SCALE_FIELDS, PruneSettings

    if args.resume and args.overwrite:
        raise ValueError("--resume continues a run and --overwrite replaces it: give one of them")
    if args.resume:  # the saved settings: the pruning options need not be given again, and may not differ
        metrics = train(resumed_prune_config(args), resume=True, show_progress=not args.no_progress)
        print_once(format_train_summary(metrics))
        return 0
    settings = PruneSettings(**values(args, PruneSettings))
    source = check_source(settings.source)
    check_out_apart(settings.source, args.out)  # before the lock creates --out
    changes = {"out": args.out, "prune": settings.to_dict(), "epochs": args.retune_epochs}
    changes.update({k: v for k, v in (("lr", args.lr), ("data_dir", args.data_dir)) if v is not None})
    changes.update({name: getattr(args, name) for name in SCALE_FIELDS})  # this run's, not the source's
    metrics = train(dataclasses.replace(source, **changes), resume=args.resume, overwrite=args.overwrite,
                    show_progress=not args.no_progress)
    print_once(format_train_summary(metrics))
    return 0


def resumed_prune_config(args: argparse.Namespace):
    """The saved settings of the pruned run ``--out``; an error if it is not one pruned from ``RUN``, or if a given
    option differs from what it was pruned and re-tuned with (it would be ignored)."""
    from .options import cli_fields, was_given
    from .train.run import check_out_apart, load_run_config
    from .train.settings import SCALE_FIELDS, PruneSettings, RunConfig

    check_out_apart(args.source, args.out)
    saved = load_run_config(args.out)
    if saved.prune is None:
        raise ValueError(f"{args.out} is not a pruned run: continue it with dsee train --out {args.out} --resume")
    if Path(saved.prune["source"]).resolve() != Path(args.source).resolve():
        raise ValueError(f"{args.out} was pruned from {saved.prune['source']}, not from {args.source}: continue it with "
                         f"dsee prune {saved.prune['source']} --out {args.out} --resume")
    differ = []
    for cls, fields, saved_values in ((PruneSettings, None, saved.prune), (RunConfig, SCALE_FIELDS, saved.to_dict())):
        for f, meta, _ in cli_fields(cls):
            if f.name == "source" or (fields is not None and f.name not in fields):
                continue
            value = getattr(args, f.name)
            if was_given(args, f.name, f.default) and value != saved_values.get(f.name):
                differ.append(f"{meta['flag'] or '--' + f.name.replace('_', '-')} {value} (saved: "
                              f"{saved_values.get(f.name)})")
    for name, default, kept in (("retune_epochs", 3.0, saved.epochs), ("lr", None, saved.learning_rate),
                                ("data_dir", None, saved.data_dir)):
        if was_given(args, name, default) and getattr(args, name) != kept:
            differ.append(f"--{name.replace('_', '-')} {getattr(args, name)} (saved: {kept})")
    if differ:
        raise ValueError(f"--resume continues {args.out} with the settings it was started with; {', '.join(differ)} "
                         "would be ignored: drop them, or start it again with --overwrite")
    saved.out = args.out
    return saved


def cmd_prune_base(args: argparse.Namespace) -> int:
    """Prune a pre-trained model (before fine-tuning): zeros written into its weights, a stock checkpoint."""
    from .train.prune_base import BasePruneSettings, prune_base
    from .train.settings import RunConfig

    settings = BasePruneSettings(**values(args, BasePruneSettings))
    data_given = given(args, RunConfig, exclude=("out", "batch_size", "seed", "max_length"))
    data_config = None
    if settings.needs_calibration:
        data = values(args, RunConfig, exclude=("model", "out"))
        if data.get("train_file") and not data.get("validation_file"):
            data["validation_file"] = data["train_file"]  # read only for calibration: no dev set needed
        data_config = RunConfig(out=args.out, model=settings.model, **data)
    elif data_given:
        raise ValueError(f"{', '.join(data_given)}: only a calibration score (--score wanda) reads data")
    record = prune_base(settings, args.out, data_config, overwrite=args.overwrite)
    pattern = record.get("pattern")
    print(f"pruned {settings.model} to {record['sparsity']:.2%} zeros"
          + (f" ({pattern['n']}:{pattern['m']} {'kept' if pattern['kept'] else 'VIOLATED'})" if pattern else "")
          + f" by {settings.score}; saved to {args.out}. Fine-tune it keeping its zeros: dsee train --model {args.out} "
          "--keep-base-sparsity ...")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a run's kept model, adapters merged (keeping prune masks' zeros), as a self-contained directory."""
    from .train.export_run import export_run

    info = export_run(args.run, args.out, compact=args.compact, overwrite=args.overwrite, merge=not args.no_merge,
                      format=args.format, quantize=args.quantize, per_channel=not args.per_tensor,
                      fp32_ffn_down=args.fp32_ffn_down,
                      fuse=not args.no_fuse, check_batches=args.check_batches)
    if info["format"] == "onnx":
        print(format_onnx_export(args.run, args.out, info))
        return 0
    print(f"exported {args.run} to {args.out}: {info['weights_file']}, {info['bytes_on_disk'] / 1e6:.2f} MB on disk "
          f"(dense {info['dense_bytes'] / 1e6:.2f} MB); "
          + ("loads with transformers' from_pretrained and pipeline" if info["stock"]
             else f"load it with dsee.load_pretrained ({info['stock_problem']})"))
    return 0


def format_onnx_export(run: str, out: str, info: dict) -> str:
    """What ``dsee export --format onnx`` wrote: size, fusions, the check against PyTorch, int8's difference."""
    fusion = info["fusion"]
    fused = ", ".join(f"{n} {op}" for op, n in fusion.get("ops", {}).items()) if fusion["applied"] else \
        f"none ({fusion.get('error') or fusion.get('reason')})"
    lines = [f"exported {run} to {out}: {info['weights_file']}, {info['bytes_on_disk'] / 1e6:.2f} MB on disk; "
             f"fused: {fused}",
             f"fp32 graph: ONNX Runtime matches PyTorch within {info['check']['max_abs_diff']:.2g} "
             f"(checked on {info['check_data']})"]
    quantization = info.get("quantization")
    if quantization:
        vs = quantization["vs_fp32"]
        same = f", same predicted class on {vs['same_class_share']:.1%} of {vs['rows']} rows" \
            if "same_class_share" in vs else f" over {vs['rows']} rows"
        kept = f", {quantization['kept_fp32']} FFN down-projections in fp32" if quantization.get("kept_fp32") else ""
        lines.append(f"{quantization['kind']} ({'per channel' if quantization['per_channel'] else 'per tensor'}{kept}): "
                     f"largest output difference from fp32 {vs['max_abs_diff']:.3g}{same}; score it with "
                     f"`dsee eval {out}`")
    lines.append("run it with onnxruntime or dsee.OnnxRuntimeModel")
    return "\n".join(lines)


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate with a fine-tuned run: one output line per input line."""
    from .files import atomic_write_text
    from .train.generate import DecodingSettings, generate_run_texts, read_sources

    if (args.input is None) == (args.text is None):
        raise ValueError("give --input FILE (one source per line) or --text \"...\"")
    if args.output is not None and Path(args.output).is_dir():
        raise IsADirectoryError(f"--output {args.output} is a directory; give a file name")
    sources = read_sources(args.input) if args.input is not None else [args.text]
    decoding = DecodingSettings(**values(args, DecodingSettings))
    text = "".join(o.replace("\n", " ") + "\n" for o in generate_run_texts(args.run, sources, decoding))
    if args.output:
        atomic_write_text(args.output, text)
        print(f"{len(sources)} outputs written to {args.output}")
    else:
        print(text, end="")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Latency of exported models side by side, in PyTorch and/or ONNX Runtime."""
    import tempfile

    from .evaluation.bench import backend_models, parse_backends

    backends = parse_backends(args.backend)
    if "onnxruntime" in backends:
        import torch

        print(f"threads: torch {torch.get_num_threads()}, onnxruntime {torch.get_num_threads()} intra-op (1 inter-op, "
              "sequential, all graph optimizations)")
    with tempfile.TemporaryDirectory(prefix="dsee-bench-") as scratch:
        models = backend_models([args.dir, *(args.vs or [])], backends, scratch, log=print)
        _bench(args, models)
    return 0


def _bench(args: argparse.Namespace, models: dict) -> None:
    from torch import nn

    from .evaluation.bench import devices, semi_structured_candidates, semi_structured_copy, time_models

    torch_models = {name: model for name, model in models.items() if isinstance(model, nn.Module)}
    two_of_four = [name for name, model in torch_models.items() if semi_structured_candidates(model)]
    if two_of_four and "cuda" not in devices():
        print(f"2:4 sparse kernels: skipped for {', '.join(two_of_four)} (they need a CUDA GPU; on CPU the "
              "weights run dense)")
    elif two_of_four:
        models.update({f"{name} [2:4 kernels]": semi_structured_copy(models[name]) for name in two_of_four})
    for device in devices():
        here = {n: m for n, m in models.items() if (device == "cuda" or not n.endswith("[2:4 kernels]"))
                and (device == "cpu" or isinstance(m, nn.Module))}  # ONNX Runtime: its CPU provider only
        if not here:
            continue
        for t in time_models(here, batch_size=args.batch_size, seq_len=args.seq_len, rounds=args.rounds,
                             device=device):
            print(f"{t.device:5s} {t.name:50s} median {1000 * t.median_s:8.1f} ms (q1 {1000 * t.q1_s:.1f}, "
                  f"q3 {1000 * t.q3_s:.1f}) · {t.examples_per_s:7.1f} ex/s · ×{t.ratio_to_first:.3f} of the first")


def cmd_report(args: argparse.Namespace) -> int:
    from .evaluation.report import load_rows, markdown, write_report

    paths = write_report(args.runs, args.out)
    print(markdown(load_rows(args.runs)))
    print(f"wrote {paths['table']} and {paths['plot']}")
    return 0


# --- the parser ---------------------------------------------------------------------------------

QUANTIZE_CHOICES = ("int8",)  # dsee.deploy.quantize.KINDS (not imported here: the command line starts fast)
MODEL_HELP = "Hub id or local path (default: the embedded all-MiniLM-L6-v2)"


def _run_control(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_adapt(sub) -> None:
    p = sub.add_parser("adapt", help="add DSEE adapters to a model and print the parameter report")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--num-labels", type=int, default=2, help="size of the classification head")
    p.add_argument("--out", default=None, help="save the (untrained) adapter to this directory")
    add_options(p, DSEEConfig)
    p.set_defaults(func=cmd_adapt)


def _add_train(sub) -> None:
    from .train.settings import RunConfig

    p = sub.add_parser("train", help="fine-tune with DSEE, LoRA or full fine-tuning and keep the best dev checkpoint")
    groups: dict = {}
    add_options(p, RunConfig, groups=groups)
    add_options(p, DSEEConfig, exclude=("seed",), groups=groups)  # --seed seeds the run and the adapter
    _run_control(p)
    p.set_defaults(func=cmd_train)


def _add_eval(sub) -> None:
    from .train.generate import DecodingSettings

    p = sub.add_parser("eval", help="re-compute the dev metrics of a saved run, or score an exported model on its "
                                     "run's data")
    p.add_argument("run", help="a run directory, or a directory `dsee export` wrote (PyTorch or ONNX, fp32 or int8)")
    p.add_argument("--data-dir", default=None, help="override the run's data folder")
    p.add_argument("--max-eval-samples", type=int, default=None)
    p.add_argument("--split", default="validation", help="validation (default) or test, where the data has it")
    p.add_argument("--json", action="store_true", help="also print the metrics as JSON")
    add_options(p, DecodingSettings)
    p.set_defaults(func=cmd_eval)


def _add_prune(sub) -> None:
    import dataclasses

    from .train.settings import SCALE_FIELDS, PruneSettings, RunConfig

    p = sub.add_parser("prune", help="make a trained run's model sparse and re-tune its adapters (a new run)")
    add_options(p, PruneSettings)
    # --fsdp, --gradient-checkpointing, --base-dtype: how this re-tuning runs (not taken from the source run)
    add_options(p, RunConfig, exclude=[f.name for f in dataclasses.fields(RunConfig) if f.name not in SCALE_FIELDS])
    p.add_argument("--out", required=True, help="the new run directory")
    p.add_argument("--retune-epochs", type=float, default=3.0, help="epochs of adapter re-tuning (0: none)")
    p.add_argument("--lr", type=float, default=None, help="default: the source run's")
    p.add_argument("--data-dir", default=None, help="override the source run's data folder")
    _run_control(p)
    p.set_defaults(func=cmd_prune)


def _add_prune_base(sub) -> None:
    import dataclasses

    from .train.prune_base import BasePruneSettings
    from .train.settings import DATA, GENERATION, RunConfig

    p = sub.add_parser("prune-base", help="make a pre-trained model sparse before fine-tuning it (then: dsee train "
                       "--keep-base-sparsity)")
    add_options(p, BasePruneSettings)
    # the task data whose training split calibrates Wanda's score
    keep = {"batch_size", "seed"}
    add_options(p, RunConfig, exclude=[f.name for f in dataclasses.fields(RunConfig) if f.name not in keep and
                                       f.metadata.get("cli", {}).get("group") not in (DATA, GENERATION)],
                title="calibration data (Wanda): the task's training split")
    p.add_argument("--out", required=True, help="the directory of the pruned model")
    p.add_argument("--overwrite", action="store_true", help="replace a model this command wrote before")
    p.set_defaults(func=cmd_prune_base)


def _add_export_and_generate(sub) -> None:
    from .train.generate import DecodingSettings

    p = sub.add_parser("export", help="write a run's model with merged adapters as a self-contained directory")
    p.add_argument("run")
    p.add_argument("--out", required=True)
    p.add_argument("--compact", action="store_true", help="store mostly-zero matrices as bitmask + values")
    p.add_argument("--no-merge", action="store_true", help="keep the adapters unmerged")
    p.add_argument("--format", default="transformers", choices=("transformers", "onnx"),
                   help="transformers: save_pretrained (a stock checkpoint where a stock config describes the model); "
                        "onnx: model.onnx for ONNX Runtime, any model, checked against PyTorch (needs dsee[onnx])")
    p.add_argument("--quantize", default=None, choices=QUANTIZE_CHOICES,
                   help="onnx: int8 weights (dynamic int8 by ONNX Runtime's quantizer, per output channel); the "
                        "largest difference from the fp32 graph on dev batches goes to the manifest")
    p.add_argument("--per-tensor", action="store_true", help="int8: one scale per weight matrix, not per channel")
    p.add_argument("--fp32-ffn-down", action="store_true",
                   help="int8: keep the FFN down-projections in fp32 (closer to fp32, slower; GELU/ReLU FFNs)")
    p.add_argument("--no-fuse", action="store_true",
                   help="onnx: keep the graph as exported (default: ONNX Runtime's fused attention, layer norm, GELU)")
    p.add_argument("--check-batches", type=int, default=None,
                   help="onnx: dev batches of the run's data on which the graph is checked against PyTorch and "
                        "int8 against fp32 (default 4; 0: built-in sentences only)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("generate", help="generate text with a fine-tuned decoder run")
    p.add_argument("run")
    p.add_argument("--input", default=None, help="a text file, one source per line (-: standard input)")
    p.add_argument("--text", default=None, help="one source")
    p.add_argument("--output", default=None, help="write the outputs here (default: print them)")
    add_options(p, DecodingSettings)
    p.set_defaults(func=cmd_generate)


def _add_bench_and_report(sub) -> None:
    p = sub.add_parser("bench", help="latency and throughput of exported models, side by side")
    p.add_argument("dir")
    p.add_argument("--vs", action="append", help="another exported directory (repeatable)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--backend", default="torch",
                   help="torch, onnxruntime, or both as torch,onnxruntime: every model on each, timed interleaved "
                        "(ONNX Runtime: CPU, all graph optimizations, torch's thread count; a dsee export is "
                        "converted to ONNX first, an ONNX export runs on onnxruntime only)")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("report", help="table and plots of dev score against FLOPs and sparsity across runs")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default="report")
    p.set_defaults(func=cmd_report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsee", description="DSEE: sparse + low-rank efficient tuning of transformers")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_adapt, _add_train, _add_eval, _add_prune, _add_prune_base, _add_export_and_generate,
                _add_bench_and_report):
        add(sub)
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true",
                             help=f"show the traceback of a failure (or set {DEBUG_VARIABLE}=1)")
    parser.set_defaults(commands=sub.choices)
    return parser


# errors of the user's making: a message and exit code 2 (a bug in dsee: a message and exit code 1)
# (MissingExtra: an optional package the request needs is not installed; the message says how to add it;
# OSError: a path, a file, a write the file system refused: see ``failure_message``)
USER_ERRORS = (ValueError, OSError, MissingExtra)
DEBUG_VARIABLE = "DSEE_DEBUG"


def failure_message(err: BaseException, args: argparse.Namespace) -> tuple[str, int]:
    """(one line naming the problem and what to do, exit code) for a failure that reached the command line."""
    from .files import as_os_error, cannot_write
    from .train.lock import RunBusyError

    os_error = as_os_error(err)
    if os_error is not None:
        os_error = cannot_write(os_error)
        text = str(os_error) if os_error.filename is None or str(os_error.filename) in str(os_error) else \
            f"{os_error.filename}: {os_error.strerror}"
        return text + _continue_hint(args), 2
    if isinstance(err, (*USER_ERRORS, RunBusyError)):
        return str(err), 2
    return (f"internal error: {type(err).__name__}: {err} (a bug in dsee: run again with --debug, or "
            f"{DEBUG_VARIABLE}=1, to see the traceback, and report it)"), 1


def _continue_hint(args: argparse.Namespace) -> str:
    """After a write failure in a run: how to go on once the cause is fixed."""
    out = getattr(args, "out", None)
    if args.command not in ("train", "prune") or not out or not (Path(out) / "run_config.json").is_file():
        return ""
    source = f"{args.source} " if args.command == "prune" else ""
    return f"; once fixed, continue with `dsee {args.command} {source}--out {out} --resume`"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    from .train.loop import Diverged, Stopped

    from .options import mark_given

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    mark_given(args.commands[args.command], argv[argv.index(args.command) + 1:], args)  # the options written
    debug = args.debug or os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")
    try:
        return args.func(args)
    except Stopped as stop:
        source = f"{args.source} " if args.command == "prune" else ""
        print(f"dsee {args.command}: stopped after step {stop.step}; the checkpoint is in {stop.run / 'checkpoint'}: "
              f"continue with `dsee {args.command} {source}--out {stop.run} --resume`", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"dsee {args.command}: interrupted", file=sys.stderr)
        return 130
    except Diverged as err:
        _traceback(debug)
        print(f"dsee {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - every failure ends in one line (module doc)
        message, code = failure_message(err, args)
        _traceback(debug)
        print(f"dsee {args.command}: error: {_one_line(message)}", file=sys.stderr)
        return code


def _traceback(debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exc()
