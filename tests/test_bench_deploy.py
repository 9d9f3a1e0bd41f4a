"""benchmarks/bench_deploy.py in its --quick mode: every variant built, exported (as exported, fused, int8),
checked, timed interleaved at two shapes, the ratios computed from the medians, the int8 score cost of a
run measured by `dsee eval` on its exports, one record appended."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_quick_deploy_benchmark_records_every_backend(source_run, tmp_path, capsys):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_deploy", BENCH / "bench_deploy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    results = bench.main(["--quick", "--results", str(tmp_path / "results.jsonl"), "--run", str(source_run),
                          "--work-dir", str(tmp_path / "exports")])
    assert results["shapes"] == ["1x16", "2x16"]
    for shape in results["shapes"]:
        models = results["latency"][shape]
        assert list(models) == ["unpruned", "heads 50% + ffn 50%"]
        reference = models["unpruned"]["median_s"]["torch"]
        for m in models.values():
            for backend in bench.BACKENDS:
                assert m["speedup_vs_unpruned_torch"][backend] == pytest.approx(reference / m["median_s"][backend])
            assert m["fused_over_torch"] == pytest.approx(m["median_s"]["ort fused"] / m["median_s"]["torch"])
        ratios = [m["flops_ratio"] for m in models.values()]
        assert ratios[0] == 1 and ratios == sorted(ratios, reverse=True)
    for info in results["exports"].values():
        assert max(info["onnx_max_abs_diff"].values()) <= 1e-4
        assert info["fusion"]["Attention"] == 2 and info["int8_fusion"]["MultiHeadAttention"] == 2
    cost = results["score_cost"]
    assert cost["int8_minus_fp32"] == pytest.approx(cost["int8_score"] - cost["fp32_score"])
    # the fp32 export scores what the run scored (no logit of this run's dev set within 1e-4 of a tie)
    assert cost["fp32_score"] == cost["run_dev"]["validation"][cost["main_metric"]]
    out = capsys.readouterr().out
    assert "fused / torch" in out and "int8 / fused" in out and " points); int8 vs fp32 on " in out
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["benchmark"] == "deploy_latency"
    # a second call reuses the run's exports
    stamp = (tmp_path / "exports" / "int8" / "model.onnx").stat().st_mtime_ns
    again = bench.score_cost(SimpleNamespace(run=str(source_run), train=False, data_dir=None,
                                             work_dir=str(tmp_path / "exports")))
    assert (tmp_path / "exports" / "int8" / "model.onnx").stat().st_mtime_ns == stamp
    assert again["int8_score"] == cost["int8_score"]


def test_quantize_choice_scores_and_times_every_graph(source_run, tmp_path):
    """benchmarks/quantize_choice.py on a tiny run: every graph scored on the whole dev set, compared with
    fp32 and timed; the shipped order (int8, then fuse) is what export_onnx(quantize="int8") writes."""
    import onnx

    from dsee import export_onnx
    from dsee.train.pipeline import load_run

    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("quantize_choice", BENCH / "quantize_choice.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.main(["--run", str(source_run), "--work-dir", str(tmp_path / "graphs"), "--rounds", "1",
                          "--shapes", "1x8", "--calibration-batches", "2", "--no-record"])
    assert list(results["quality"]) == list(bench.VARIANTS) and results["dev_examples"] == 64
    for name, quality in results["quality"].items():
        assert quality["vs_fp32"]["rows"] == 64 and 0 <= quality["scores"]["accuracy"] <= 1
        assert (quality["vs_fp32"]["max_abs_diff"] <= 1e-4) == name.startswith("fp32"), name
    assert results["calibration_batches"] == 2
    _, model, tokenizer = load_run(source_run)
    export_onnx(model, tmp_path / "shipped", tokenizer=tokenizer, quantize="int8")
    shipped = onnx.load(str(tmp_path / "shipped" / "model.onnx")).graph
    measured = onnx.load(str(tmp_path / "graphs" / "int8-then-fuse" / "model.onnx")).graph
    assert [n.op_type for n in shipped.node] == [n.op_type for n in measured.node]
