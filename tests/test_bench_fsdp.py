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


def test_loading_target_is_judged_on_every_bf16_row_with_several_processes():
    """Issue #27: the peak (loading or training) of each sharded bf16 configuration against half the fp32
    checkpoint + 1 GB."""
    judge = _bench().judge
    rows = [dict(_row("bf16", 2, 450.0, 1788.0), loading="streamed", build_peak_mb=935.0),
            dict(_row("gc+bf16", 2, 450.0, 1936.0), loading="streamed", build_peak_mb=939.0),
            dict(_row("bf16", 2, 450.0, 1780.0), loading="whole", build_peak_mb=3152.0),
            dict(_row("bf16", 1, 900.0, 3000.0), loading="streamed", build_peak_mb=1500.0)]
    lines = judge(rows, [1, 2], checkpoint_mb=1800.0)
    assert [line[:4] for line in lines] == ["PASS", "MISS", "MISS"]  # the one-process row is not judged
    assert "1788 MB = 0.99× the fp32 checkpoint (1800 MB; target ≤ 0.5× + 1 GB = 1924 MB); loading alone 935" \
        in lines[0]
    assert "gc+bf16, streamed loading: 1936 MB" in lines[1]  # the training peak counts too
    assert "whole loading: 3152 MB = 1.75×" in lines[2]
    assert judge(rows, [1, 2]) == []  # no checkpoint size (not --synthetic): nothing to judge
