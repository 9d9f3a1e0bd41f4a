"""The ``dsee`` command line: parse arguments, call the library. Nothing else lives here."""

from __future__ import annotations

import argparse
import sys
import time

from .config import INIT_MODES, SPARSE_METHODS


def add_adapter_arguments(parser: argparse.ArgumentParser) -> None:
    """The DSEE knobs shared by every command that builds an adapter."""
    group = parser.add_argument_group("DSEE adapter (paper §3.1)")
    group.add_argument("--rank", type=int, default=16, help="r, rank of B·A (default 16)")
    group.add_argument("--alpha", type=float, default=32, help="scale s = alpha / r (default 32)")
    group.add_argument("--dropout", type=float, default=0.0, help="dropout on the adapter input")
    group.add_argument("--num-sparse", type=int, default=64, help="N, sparse entries per matrix (default 64)")
    group.add_argument("--sparse-method", choices=SPARSE_METHODS, default="grebsmo", help="how Ω is chosen")
    group.add_argument("--targets", default=None, help="comma-separated module names/suffixes/regexes (default: q and v)")
    group.add_argument("--init", choices=INIT_MODES, default="zero", help="start of B and S (default zero)")
    group.add_argument("--seed", type=int, default=0)


def config_from_args(args: argparse.Namespace):
    from .config import DSEEConfig

    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None
    return DSEEConfig(
        rank=args.rank,
        alpha=args.alpha,
        dropout=args.dropout,
        num_sparse=args.num_sparse,
        sparse_method=args.sparse_method,
        targets=targets,
        init=args.init,
        seed=args.seed,
    )


def cmd_adapt(args: argparse.Namespace) -> int:
    """Put DSEE adapters on a model and print the parameter report (optionally save the adapter)."""
    from .inject import add_dsee
    from .io import save_adapter
    from .models import load_sequence_classifier, resolve_model
    from .summary import parameter_report

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsee", description="DSEE: sparse + low-rank efficient tuning of transformers")
    sub = parser.add_subparsers(dest="command", required=True)
    adapt = sub.add_parser("adapt", help="add DSEE adapters to a model and print the parameter report")
    adapt.add_argument("--model", default=None, help="Hub id or local path (default: the embedded all-MiniLM-L6-v2)")
    adapt.add_argument("--num-labels", type=int, default=2, help="size of the classification head")
    adapt.add_argument("--out", default=None, help="save the (untrained) adapter to this directory")
    add_adapter_arguments(adapt)
    adapt.set_defaults(func=cmd_adapt)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"dsee {args.command}: error: {err}", file=sys.stderr)
        return 2
