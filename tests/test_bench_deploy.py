"""benchmarks/bench_deploy.py in its --quick mode: every variant built, exported, checked, timed on both backends,
the table's ratios computed from the medians, one record appended."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_quick_deploy_benchmark_records_both_backends(tmp_path, capsys):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_deploy", BENCH / "bench_deploy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    results = bench.main(["--quick", "--results", str(tmp_path / "results.jsonl")])
    models = results["models"]
    assert list(models) == ["unpruned", "heads 25% + ffn 25%", "heads 25% + ffn 40%", "heads 50% + ffn 50%"]
    ratios = [m["flops_ratio"] for m in models.values()]
    assert ratios[0] == 1 and ratios == sorted(ratios, reverse=True) and ratios[-1] < 0.6
    for m in models.values():
        assert m["onnx_max_abs_diff"] <= 1e-4
        assert m["median_s"]["torch"] > 0 and m["median_s"]["onnxruntime"] > 0
        assert m["speedup"]["onnxruntime"] == pytest.approx(
            models["unpruned"]["median_s"]["onnxruntime"] / m["median_s"]["onnxruntime"])
        assert m["ort_share_of_ideal"] == pytest.approx(m["speedup"]["onnxruntime"] * m["flops_ratio"])
    out = capsys.readouterr().out
    assert "ORT x / ideal" in out and "heads 50% + ffn 50%" in out
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["benchmark"] == "deploy_inference"
