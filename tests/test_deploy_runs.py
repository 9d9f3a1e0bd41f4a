"""Deploying a classification run: `dsee export --format onnx`, `dsee bench --backend`, and stock exports that
`transformers.pipeline` loads, with the run's label names, in a process that never imports dsee."""

from __future__ import annotations

import json
import sys

import pytest
import torch

pytest.importorskip("accelerate")

from conftest import run_without_dsee  # noqa: E402
from dsee.cli import main  # noqa: E402
from dsee.train.loop import train  # noqa: E402
from dsee.train.pipeline import load_task_data, load_tokenizer, load_trained_model  # noqa: E402
from dsee.train.run import RunConfig, load_run_config  # noqa: E402

TEXTS = ["the film was very good great fine", "a dull bad plot , the ending was awful", "music"]

PIPELINE = """
import json, sys
from transformers import pipeline
pipe = pipeline("text-classification", model=sys.argv[1], top_k=None)
print(json.dumps(pipe(json.loads(sys.argv[2]))))
"""


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, tiny_model_dir, csv_data):
    run = tmp_path_factory.mktemp("runs") / "dsee"
    train(RunConfig(out=str(run), model=tiny_model_dir, train_file=csv_data[0], validation_file=csv_data[1],
                    text_columns=["text"], label_column="label", max_length=32, epochs=2, batch_size=16,
                    lr=3e-2, adapter={"rank": 4, "num_sparse": 8}, seed=1), show_progress=False)
    return run


def run_model_and_inputs(run, texts=TEXTS):
    """The run's kept model as dsee evaluates it (adapters unmerged) and the tokenized texts."""
    config = load_run_config(run)
    tokenizer = load_tokenizer(config.model)
    model = load_trained_model(run, config, load_task_data(config, with_train=False), tokenizer)
    return model, dict(tokenizer(texts, padding=True, return_tensors="pt"))


def assert_pipeline_matches_run(run, export_dir):
    """transformers.pipeline on the export, in a process without dsee: the run's labels, the run's probabilities."""
    model, inputs = run_model_and_inputs(run)
    with torch.no_grad():
        probs = model(**inputs).logits.softmax(-1)
    names = json.loads((run / "labels.json").read_text())["label_list"]
    results = run_without_dsee(PIPELINE, str(export_dir), json.dumps(TEXTS))
    for row, expected in zip(results, probs):
        got = {r["label"]: r["score"] for r in row}
        assert set(got) == set(names) == {"neg", "pos"}
        for index, name in enumerate(names):
            assert got[name] == pytest.approx(expected[index].item(), abs=1e-5)


def test_an_unpruned_run_exports_to_a_pipeline(source_run, tmp_path):
    out = tmp_path / "export"
    assert main(["export", str(source_run), "--out", str(out)]) == 0
    assert json.loads((out / "dsee_export.json").read_text())["stock"]
    assert_pipeline_matches_run(source_run, out)


def test_an_unstructured_run_exports_to_a_pipeline(source_run, tmp_path):
    pruned = tmp_path / "sparse"
    assert main(["prune", str(source_run), "--out", str(pruned), "--sparsity", "0.5", "--retune-epochs", "0",
                 "--no-progress"]) == 0
    out = tmp_path / "export"
    assert main(["export", str(pruned), "--out", str(out)]) == 0
    assert_pipeline_matches_run(pruned, out)


def test_uniform_ffn_pruning_of_an_encoder_is_a_stock_checkpoint(source_run, tmp_path, capsys):
    refused = tmp_path / "heads"
    assert main(["prune", str(source_run), "--out", str(refused), "--heads", "0.5", "--uniform",
                 "--retune-epochs", "0", "--no-progress"]) == 2
    assert "derive the head size" in capsys.readouterr().err and not refused.exists()
    pruned = tmp_path / "ffn"
    assert main(["prune", str(source_run), "--out", str(pruned), "--ffn", "0.25", "--uniform", "--retune-epochs", "1",
                 "--no-progress"]) == 0
    out = tmp_path / "export"
    assert main(["export", str(pruned), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["intermediate_size"] == 48 and config["num_attention_heads"] == 4  # 64 - round(0.25 · 64)
    assert_pipeline_matches_run(pruned, out)


def test_structured_run_exports_to_onnx_and_benchmarks_on_both_backends(source_run, tmp_path, capsys):
    from dsee import OnnxRuntimeModel

    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    pruned = tmp_path / "heads"
    assert main(["prune", str(source_run), "--out", str(pruned), "--heads", "0.5", "--ffn", "0.25",
                 "--retune-epochs", "0", "--no-progress"]) == 0
    plain = tmp_path / "plain"
    assert main(["export", str(pruned), "--out", str(plain)]) == 0
    assert "load it with dsee.load_pretrained (" in capsys.readouterr().out  # and says why
    onnx = tmp_path / "onnx"
    assert main(["export", str(pruned), "--out", str(onnx), "--format", "onnx"]) == 0
    assert "ONNX Runtime matches PyTorch" in capsys.readouterr().out
    record = json.loads((onnx / "dsee_export.json").read_text())
    assert record["format"] == "onnx" and record["weights_file"] == "model.onnx" and record["check"]["max_abs_diff"] < 1e-4
    assert (onnx / "labels.json").read_text() == (pruned / "labels.json").read_text()
    model, inputs = run_model_and_inputs(pruned)
    with torch.no_grad():
        expected = model(**inputs).logits
    torch.testing.assert_close(OnnxRuntimeModel(onnx)(**inputs).logits, expected, rtol=0, atol=1e-4)
    manifest = json.loads((onnx / "dsee_onnx.json").read_text())
    assert manifest["heads_per_layer"] == [2, 2] and manifest["id2label"] == {"0": "neg", "1": "pos"}

    assert main(["bench", str(plain), "--vs", str(onnx), "--backend", "onnxruntime", "--batch-size", "2",
                 "--seq-len", "8", "--rounds", "1"]) == 0
    assert main(["bench", str(plain), "--backend", "torch,onnxruntime", "--batch-size", "2", "--seq-len", "8",
                 "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert f"{plain} [torch]" in out and f"{plain} [onnxruntime]" in out and "intra-op" in out


@pytest.mark.parametrize("args,match", [
    (["export", "{run}", "--out", "{out}", "--format", "onnx", "--compact"], "do not apply"),
    (["export", "{run}", "--out", "{out}", "--format", "onnx", "--no-merge"], "do not apply"),
    (["export", "{run}", "--out", "{out}", "--quantize", "int8"], "--quantize applies to ONNX exports only: add --format onnx"),
    (["export", "{run}", "--out", "{out}", "--no-fuse"], "--no-fuse applies to ONNX exports only"),
    (["export", "{run}", "--out", "{out}", "--format", "onnx", "--per-tensor"], "--per-tensor sets how int8 weights"),
    (["export", "{run}", "--out", "{out}", "--format", "onnx", "--fp32-ffn-down"], "--fp32-ffn-down keeps some"),
    (["export", "{run}", "--out", "{out}", "--fp32-ffn-down"], "--fp32-ffn-down applies to ONNX exports only"),
    (["export", "{run}", "--out", "{out}", "--format", "onnx", "--check-batches", "-1"], "--check-batches -1"),
    (["bench", "{run}", "--backend", "tensorflow"], "--backend 'tensorflow'"),
    (["bench", "{out}", "--backend", "torch"], "no such exported model directory"),
])
def test_deploy_user_errors(source_run, tmp_path, capsys, args, match):
    out = tmp_path / "out"
    assert main([a.format(run=source_run, out=out) for a in args]) == 2
    assert match in capsys.readouterr().err and not out.exists()


def test_an_onnx_export_is_not_timed_in_pytorch(source_run, tmp_path, capsys):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    onnx = tmp_path / "onnx"
    assert main(["export", str(source_run), "--out", str(onnx), "--format", "onnx"]) == 0
    assert main(["bench", str(onnx), "--backend", "torch,onnxruntime"]) == 2
    assert "is an ONNX export" in capsys.readouterr().err


def test_a_missing_onnx_package_says_how_to_install_it(source_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ModuleNotFoundError
    out = tmp_path / "onnx"
    assert main(["export", str(source_run), "--out", str(out), "--format", "onnx"]) == 2
    assert 'pip install "dsee[onnx]"' in capsys.readouterr().err and not out.exists()
