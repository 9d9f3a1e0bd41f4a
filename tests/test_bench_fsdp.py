"""The FSDP benchmark's verdict on the issue's targets (the measurement itself runs on request only)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_fsdp.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_fsdp", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(variant, processes, frozen, train_peak):
    return {"variant": variant, "processes": processes, "frozen_mb": frozen, "train_peak_mb": train_peak}


def test_targets_are_judged_on_frozen_bytes_and_the_training_peak():
    judge = _bench().judge
    rows = [_row("fp32", 1, 540.0, 3000.0), _row("fp32", 2, 270.4, 2000.0), _row("gc+bf16", 2, 135.2, 1400.0)]
    assert judge(rows, [1, 2]) == [
        "PASS frozen weights per process with 2 processes: 0.501 of one process's (target ≈ 1/2, at most 0.550)",
        "PASS training peak per process, 2 processes + checkpointing + bf16 frozen weights: 0.467 of one fp32 "
        "process's (target < 0.5)"]
    rows = [_row("fp32", 1, 540.0, 3000.0), _row("fp32", 2, 300.0, 2000.0), _row("gc+bf16", 2, 150.0, 1500.0)]
    assert [line[:4] for line in judge(rows, [1, 2])] == ["MISS", "MISS"]
    assert judge(rows[:1], [1]) == []  # nothing to compare
