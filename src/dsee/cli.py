"""The ``dsee`` command line: parse arguments, call the library. Nothing else lives here."""

from __future__ import annotations

import argparse
import sys
import time

from .adapters.config import INIT_MODES, SPARSE_METHODS


def add_adapter_arguments(parser: argparse.ArgumentParser) -> None:
    """The DSEE knobs shared by every command that builds an adapter."""
    group = parser.add_argument_group("DSEE adapter (paper §3.1)")
    group.add_argument("--rank", type=int, default=16, help="r, rank of B·A (default 16)")
    group.add_argument("--alpha", type=float, default=32, help="scale s = alpha / r (default 32)")
    group.add_argument("--dropout", type=float, default=0.0, help="dropout on the adapter input")
    group.add_argument("--num-sparse", type=int, default=None,
                       help="N, sparse entries per matrix (default 64 unless --sparse-density is given)")
    group.add_argument("--sparse-density", type=float, default=None,
                       help="the sparse budget as a share of each adapted matrix, e.g. 0.01 (instead of --num-sparse)")
    group.add_argument("--sparse-method", choices=SPARSE_METHODS, default="grebsmo", help="how Ω is chosen")
    group.add_argument("--targets", default=None, help="comma-separated module names/suffixes/regexes (default: q and v)")
    group.add_argument("--modules-to-save", default=None,
                       help="comma-separated modules trained in full (default: the task head, e.g. classifier)")
    group.add_argument("--init", choices=INIT_MODES, default="zero", help="start of B and S (default zero)")
    group.add_argument("--seed", type=int, default=0)


def names_list(text: str | None) -> list[str] | None:
    """'a, b,c' -> ['a', 'b', 'c']; None or '' -> None (the default)."""
    names = [t.strip() for t in text.split(",") if t.strip()] if text else []
    return names or None


def config_from_args(args: argparse.Namespace):
    from .adapters.config import DSEEConfig

    targets = names_list(args.targets)
    return DSEEConfig(
        rank=args.rank,
        alpha=args.alpha,
        dropout=args.dropout,
        num_sparse=args.num_sparse,
        sparse_density=args.sparse_density,
        sparse_method=args.sparse_method,
        targets=targets,
        modules_to_save=names_list(args.modules_to_save),
        init=args.init,
        seed=args.seed,
    )


def cmd_adapt(args: argparse.Namespace) -> int:
    """Put DSEE adapters on a model and print the parameter report (optionally save the adapter)."""
    from .adapters.inject import add_dsee
    from .adapters.io import save_adapter
    from .models import load_sequence_classifier, resolve_model
    from .adapters.summary import parameter_report

    config = config_from_args(args)
    path = resolve_model(args.model)
    print(f"model: {path}")
    model = load_sequence_classifier(path, num_labels=args.num_labels)
    start = time.perf_counter()
    add_dsee(model, config)
    seconds = time.perf_counter() - start
    print(parameter_report(model))
    print(f"support selection: {seconds:.2f} s ({config.sparse_method})")
    if args.out:
        save_adapter(model, args.out)
        print(f"adapter saved to {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Fine-tune on a GLUE task or the user's own data; print the dev score and the trainable share."""
    from .train.loop import train
    from .train.run import RunConfig

    adapter = None if args.method == "full" else config_from_args(args).to_dict()
    columns = [c.strip() for c in args.text_columns.split(",")] if args.text_columns else None
    config = RunConfig(
        out=args.out, model=args.model, task=args.task, data_dir=args.data_dir, train_file=args.train_file,
        validation_file=args.validation_file, text_columns=columns, label_column=args.label_column,
        task_type=args.task_type, source_column=args.source_column, target_column=args.target_column,
        label_smoothing=args.label_smoothing, max_source_tokens=args.max_source_tokens, max_length=args.max_length, max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples, method=args.method, adapter=adapter, lr=args.lr,
        support_batches=args.support_batches, support_warmup_steps=args.support_warmup_steps,
        epochs=args.epochs, batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
        grad_accum=args.grad_accum, warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm or None, seed=args.seed, eval_steps=args.eval_steps,
        eval_per_epoch=not args.no_eval_per_epoch, mixed_precision=args.mixed_precision,
    )
    metrics = train(config, resume=args.resume, overwrite=args.overwrite, show_progress=not args.no_progress)
    print(format_train_summary(metrics))
    return 0


def format_train_summary(metrics: dict) -> str:
    dev = metrics["dev"].get(metrics["selection_split"], {})
    shown = ", ".join(f"{k} {v:.4f}" for k, v in dev.items() if k != "loss")
    return (
        f"{metrics['task']} · {metrics['method']} · {metrics['model']}\n"
        f"dev ({metrics['selection_split']}, best step {metrics['best_step']}): {shown}\n"
        f"trainable: {metrics['trainable_parameters']:,} of {metrics['total_parameters']:,} parameters "
        f"({100 * metrics['trainable_share']:.3f}%) · wall time {metrics['wall_seconds']:.0f} s · "
        f"{metrics['train_examples_per_second']:.1f} training examples/s"
    )


def cmd_eval(args: argparse.Namespace) -> int:
    """Re-compute the dev metrics of a saved run from its kept checkpoint (generation: decode and score)."""
    import json
    from pathlib import Path

    from .train.evaluation import evaluate_run
    from .train.run import load_run_config

    if load_run_config(args.run).is_generation:
        from .train.generate import evaluate_generation_run

        result = evaluate_generation_run(args.run, split=args.split, data_dir=args.data_dir,
                                         max_items=args.max_eval_samples, beams=args.beams,
                                         length_penalty=args.length_penalty, no_repeat_ngram=args.no_repeat_ngram,
                                         max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        for name, value in result["scores"].items():
            print(f"{result['split']:12s} {name:8s} " + ("unavailable" if value is None else f"{value:.4f}"))
        print(f"({result['items']} distinct sources, beam {result['beams']}; predictions and scores in {args.run})")
        return 0

    results = evaluate_run(args.run, data_dir=args.data_dir, max_eval_samples=args.max_eval_samples)
    saved_path = Path(args.run) / "metrics.json"
    saved = json.loads(saved_path.read_text())["dev"] if saved_path.is_file() else {}
    for split, metrics in results.items():
        for name, value in metrics.items():
            before = saved.get(split, {}).get(name)
            note = f"   (metrics.json: {before:.4f})" if isinstance(before, float) else ""
            print(f"{split:24s} {name:22s} {value:.4f}{note}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """Prune a trained run (unstructured and/or heads and FFN neurons), re-tune the adapters: a new run."""
    import dataclasses

    from .train.loop import train
    from .train.pruning import PruneSettings, check_source

    settings = PruneSettings(
        source=args.run, sparsity=args.sparsity, scope=args.scope, score=args.score,
        adapted_sparsity=args.adapted_sparsity, heads=args.heads, ffn=args.ffn, head_score=args.head_score,
        ffn_score=args.ffn_score, per_layer=not args.global_ranking, importance_batches=args.importance_batches,
    )
    source = check_source(args.run)
    changes = {"out": args.out, "prune": settings.to_dict(), "epochs": args.retune_epochs}
    if args.lr is not None:
        changes["lr"] = args.lr
    if args.data_dir is not None:
        changes["data_dir"] = args.data_dir
    config = dataclasses.replace(source, **changes)
    metrics = train(config, resume=args.resume, overwrite=args.overwrite, show_progress=not args.no_progress)
    print(format_train_summary(metrics))
    pruning = metrics.get("pruning", {})
    flops = metrics.get("flops", {}).get("total")
    print(f"sparsity {pruning.get('sparsity', 0):.1%} · heads per layer {pruning.get('heads_per_layer')} · "
          f"FFN per layer {pruning.get('ffn_per_layer')}" + (f" · {flops / 1e9:.2f} GFLOPs per sequence" if flops else ""))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a run's kept model, adapters merged (keeping prune masks' zeros), as a self-contained directory."""
    from .train.export_run import export_run

    info = export_run(args.run, args.out, compact=args.compact, overwrite=args.overwrite, merge=not args.no_merge)
    print(f"exported {args.run} to {args.out}: {info['weights_file']}, {info['bytes_on_disk'] / 1e6:.2f} MB on disk "
          f"(dense {info['dense_bytes'] / 1e6:.2f} MB); "
          + ("loads with transformers' from_pretrained" if info["stock"] else "load it with dsee.load_pretrained"))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Latency of exported models side by side."""
    from .evaluation.bench import devices, time_models
    from .sparsity.export import load_pretrained

    models = {args.dir: load_pretrained(args.dir)}
    for other in args.vs or []:
        models[other] = load_pretrained(other)
    for device in devices():
        for t in time_models(models, batch_size=args.batch_size, seq_len=args.seq_len, rounds=args.rounds,
                             device=device):
            print(f"{t.device:5s} {t.name:40s} median {1000 * t.median_s:8.1f} ms (q1 {1000 * t.q1_s:.1f}, "
                  f"q3 {1000 * t.q3_s:.1f}) · {t.examples_per_s:7.1f} ex/s · ×{t.ratio_to_first:.3f} of the first")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .evaluation.report import load_rows, markdown, write_report

    paths = write_report(args.runs, args.out)
    print(markdown(load_rows(args.runs)))
    print(f"wrote {paths['table']} and {paths['plot']}")
    return 0


def add_decoding_arguments(group) -> None:
    group.add_argument("--beams", type=int, default=10, help="beam size (1: greedy)")
    group.add_argument("--length-penalty", type=float, default=0.8)
    group.add_argument("--no-repeat-ngram", type=int, default=4)
    group.add_argument("--max-new-tokens", type=int, default=64)
    group.add_argument("--batch-size", type=int, default=8)


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate with a fine-tuned run: one output line per input line."""
    from pathlib import Path

    from .adapters.io import atomic_write_text
    from .train.generate import generate_texts
    from .train.pipeline import load_run
    from .train.run import load_run_config

    if (args.input is None) == (args.text is None):
        raise ValueError("give --input FILE (one source per line) or --text \"...\"")
    if args.input is not None:
        path = Path(args.input)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such input file")
        sources = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not sources:
            raise ValueError(f"{path}: the input file has no non-empty line")
    else:
        sources = [args.text]
    config = load_run_config(args.run)
    if not config.is_generation:
        raise ValueError(f"{args.run} is not a text-generation run (trained on {config.task or config.train_file})")
    config, model, tokenizer = load_run(args.run)
    outputs = generate_texts(model, tokenizer, sources, beams=args.beams, length_penalty=args.length_penalty,
                             no_repeat_ngram=args.no_repeat_ngram, max_new_tokens=args.max_new_tokens,
                             batch_size=args.batch_size, max_source_tokens=config.max_source_tokens or config.max_length // 2)
    text = "".join(o.replace("\n", " ") + "\n" for o in outputs)
    if args.output:
        atomic_write_text(args.output, text)
        print(f"{len(outputs)} outputs written to {args.output}")
    else:
        print(text, end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsee", description="DSEE: sparse + low-rank efficient tuning of transformers")
    sub = parser.add_subparsers(dest="command", required=True)
    adapt = sub.add_parser("adapt", help="add DSEE adapters to a model and print the parameter report")
    adapt.add_argument("--model", default=None, help="Hub id or local path (default: the embedded all-MiniLM-L6-v2)")
    adapt.add_argument("--num-labels", type=int, default=2, help="size of the classification head")
    adapt.add_argument("--out", default=None, help="save the (untrained) adapter to this directory")
    add_adapter_arguments(adapt)
    adapt.set_defaults(func=cmd_adapt)

    tr = sub.add_parser("train", help="fine-tune with DSEE, LoRA or full fine-tuning and keep the best dev checkpoint")
    tr.add_argument("--out", required=True, help="run directory")
    tr.add_argument("--model", default=None, help="Hub id or local path (default: the embedded all-MiniLM-L6-v2)")
    tr.add_argument("--method", choices=("dsee", "lora", "full"), default="dsee",
                    help="dsee (default), lora (DSEE with N = 0) or full fine-tuning")
    data = tr.add_argument_group("data")
    data.add_argument("--task", default=None,
                      help="GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli; or e2e (generation)")
    data.add_argument("--data-dir", default=None, help="folder with the GLUE task folders (default: the Hub)")
    data.add_argument("--train-file", default=None, help="your own data: CSV, TSV or JSON Lines")
    data.add_argument("--validation-file", default=None)
    data.add_argument("--text-columns", default=None, help="a or a,b")
    data.add_argument("--label-column", default=None)
    data.add_argument("--task-type", choices=("classification", "regression"), default=None,
                      help="default: detected from the labels")
    gen = tr.add_argument_group("text generation (decoder models): --task e2e, or your files with")
    gen.add_argument("--source-column", default=None, help="the input text column")
    gen.add_argument("--target-column", default=None, help="the output text column (rows with one source: references)")
    gen.add_argument("--label-smoothing", type=float, default=0.0)
    gen.add_argument("--max-source-tokens", type=int, default=None, help="longer sources are cut (default max-length/2)")
    data.add_argument("--max-length", type=int, default=128)
    data.add_argument("--max-train-samples", type=int, default=None)
    data.add_argument("--max-eval-samples", type=int, default=None)
    opt = tr.add_argument_group("optimisation")
    opt.add_argument("--lr", type=float, default=None, help="default 5e-4 (dsee, lora), 5e-5 (full)")
    opt.add_argument("--epochs", type=float, default=3.0)
    opt.add_argument("--batch-size", type=int, default=32)
    opt.add_argument("--eval-batch-size", type=int, default=64)
    opt.add_argument("--grad-accum", type=int, default=1)
    opt.add_argument("--warmup-ratio", type=float, default=0.0)
    opt.add_argument("--weight-decay", type=float, default=0.0)
    opt.add_argument("--max-grad-norm", type=float, default=1.0, help="0 disables clipping")
    opt.add_argument("--eval-steps", type=int, default=0, help="evaluate and checkpoint every K steps")
    opt.add_argument("--no-eval-per-epoch", action="store_true")
    opt.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"), default="auto")
    sup = tr.add_argument_group("data-aware support (--sparse-method gradient)")
    sup.add_argument("--support-batches", type=int, default=8,
                     help="K training batches whose squared gradients w.r.t. W0 rank the positions (default 8)")
    sup.add_argument("--support-warmup-steps", type=int, default=0,
                     help="W steps of LoRA-only training first; the gradients are then taken at W0 + B·A "
                          "and the warmed-up LoRA is discarded (default 0)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    tr.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_adapter_arguments(tr)
    tr.set_defaults(func=cmd_train, seed=42)

    ev = sub.add_parser("eval", help="re-compute the dev metrics of a saved run")
    ev.add_argument("run")
    ev.add_argument("--data-dir", default=None, help="override the run's data folder")
    ev.add_argument("--max-eval-samples", type=int, default=None)
    ev.add_argument("--json", action="store_true", help="also print the metrics as JSON")
    dec = ev.add_argument_group("generation runs: decoding")
    dec.add_argument("--split", default="validation", help="validation (default) or test (E2E)")
    add_decoding_arguments(dec)
    ev.set_defaults(func=cmd_eval)

    pr = sub.add_parser("prune", help="make a trained run's model sparse and re-tune its adapters (a new run)")
    pr.add_argument("run", help="a finished dsee or lora run")
    pr.add_argument("--out", required=True, help="the new run directory")
    un = pr.add_argument_group("unstructured (magnitude masks on the blocks' linear weights)")
    un.add_argument("--sparsity", type=float, default=None, help="fraction of zeros, in [0, 1)")
    un.add_argument("--scope", choices=("global", "layer"), default="global")
    un.add_argument("--score", choices=("weight", "delta", "weight+delta", "upstream"), default="weight")
    un.add_argument("--adapted-sparsity", type=float, default=None,
                    help="upstream: the ratio for query/value (ranked by |ΔW|); default --sparsity")
    st = pr.add_argument_group("structured (attention heads and FFN neurons, removed physically)")
    st.add_argument("--heads", type=float, default=None, help="fraction of heads to remove")
    st.add_argument("--ffn", type=float, default=None, help="fraction of FFN neurons to remove")
    st.add_argument("--head-score", choices=("delta", "importance"), default="delta")
    st.add_argument("--ffn-score", choices=("magnitude", "importance"), default="magnitude")
    ranking = st.add_mutually_exclusive_group()
    ranking.add_argument("--per-layer", dest="global_ranking", action="store_false", help="the same fraction per layer (default)")
    ranking.add_argument("--global", dest="global_ranking", action="store_true", help="one ranking over all layers")
    st.add_argument("--importance-batches", type=int, default=8)
    pr.add_argument("--retune-epochs", type=float, default=3.0, help="epochs of adapter re-tuning (0: none)")
    pr.add_argument("--lr", type=float, default=None, help="default: the source run's")
    pr.add_argument("--data-dir", default=None, help="override the source run's data folder")
    pr.add_argument("--resume", action="store_true")
    pr.add_argument("--overwrite", action="store_true")
    pr.add_argument("--no-progress", action="store_true")
    pr.set_defaults(func=cmd_prune, global_ranking=False)

    ex = sub.add_parser("export", help="write a run's model with merged adapters as a self-contained directory")
    ex.add_argument("run")
    ex.add_argument("--out", required=True)
    ex.add_argument("--compact", action="store_true", help="store mostly-zero matrices as bitmask + values")
    ex.add_argument("--no-merge", action="store_true", help="keep the adapters unmerged")
    ex.add_argument("--overwrite", action="store_true")
    ex.set_defaults(func=cmd_export)

    ge = sub.add_parser("generate", help="generate text with a fine-tuned decoder run")
    ge.add_argument("run")
    ge.add_argument("--input", default=None, help="a text file, one source per line")
    ge.add_argument("--text", default=None, help="one source")
    ge.add_argument("--output", default=None, help="write the outputs here (default: print them)")
    add_decoding_arguments(ge)
    ge.set_defaults(func=cmd_generate)

    be = sub.add_parser("bench", help="latency and throughput of exported models, side by side")
    be.add_argument("dir")
    be.add_argument("--vs", action="append", help="another exported directory (repeatable)")
    be.add_argument("--batch-size", type=int, default=32)
    be.add_argument("--seq-len", type=int, default=128)
    be.add_argument("--rounds", type=int, default=7)
    be.set_defaults(func=cmd_bench)

    rp = sub.add_parser("report", help="table and plots of dev score against FLOPs and sparsity across runs")
    rp.add_argument("runs", nargs="+")
    rp.add_argument("--out", default="report")
    rp.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"dsee {args.command}: error: {err}", file=sys.stderr)
        return 2
