"""`dsee eval DIR` on what `dsee export` wrote: the run's task and data, the run's metrics.

Oracles: for an ONNX export (fp32 or int8), an evaluation written here from scratch (the dev file read
with the csv module, the export's tokenizer, a bare onnxruntime.InferenceSession, scikit-learn's
metrics) must give exactly the same numbers; for an fp32 export (ONNX or PyTorch), the run's own
`dsee eval RUN` (evaluate_run) must give the same metrics, as no dev example of these runs has its
two logits within 1e-4 of each other (checked).
"""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("accelerate")

from conftest import shared_data_dir  # noqa: E402
from dsee.cli import main  # noqa: E402
from dsee.train.export_eval import evaluate_export  # noqa: E402
from dsee.train.loop import evaluate_run, train  # noqa: E402
from dsee.train.run import RunConfig, load_run_config  # noqa: E402


def eval_json(capsys, directory, *extra) -> dict:
    """`dsee eval DIR --json`: the JSON block it prints last."""
    capsys.readouterr()
    assert main(["eval", str(directory), "--json", *extra]) == 0
    out = capsys.readouterr().out
    return json.loads(out[out.index("\n{") + 1:])


def direct_onnx_evaluation(directory, run) -> dict[str, float]:
    """The export scored without dsee: csv + tokenizer + onnxruntime + scikit-learn, batch by batch."""
    import onnxruntime as ort
    from scipy.special import log_softmax
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import AutoTokenizer

    config = load_run_config(run)
    label_list = json.loads((directory / "labels.json").read_text())["label_list"]
    with open(config.validation_file, newline="") as f:
        rows = list(csv.DictReader(f))
    texts = [r[config.text_columns[0]] for r in rows]
    gold = np.array([label_list.index(r[config.label_column]) for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(directory)
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    logits, losses = [], []
    for start in range(0, len(texts), config.eval_batch_size):
        stop = start + config.eval_batch_size
        encoded = tokenizer(texts[start:stop], padding=True, truncation=True, max_length=config.max_length,
                            return_tensors="np")
        out = session.run(None, {n: encoded[n].astype(np.int64) for n in names})[0]
        logits.append(out)
        losses.append(-log_softmax(out.astype(np.float64), axis=-1)[np.arange(len(out)), gold[start:stop]].mean())
    predicted = np.concatenate(logits).argmax(-1)
    return {"accuracy": accuracy_score(gold, predicted), "f1_macro": f1_score(gold, predicted, average="macro"),
            "loss": float(np.mean(losses))}


@pytest.fixture(scope="module")
def pruned_run(source_run, tmp_path_factory):
    """The source run with half the heads and a quarter of the FFN neurons of each layer removed."""
    run = tmp_path_factory.mktemp("pruned") / "heads"
    assert main(["prune", str(source_run), "--out", str(run), "--heads", "0.5", "--ffn", "0.25",
                 "--retune-epochs", "0", "--no-progress"]) == 0
    return run


@pytest.mark.parametrize("which", ["unpruned", "pruned", "pruned, FFN down-projections fp32"])
def test_an_int8_exports_score_equals_a_direct_onnx_runtime_evaluation(which, source_run, pruned_run, tmp_path,
                                                                        capsys):
    run = source_run if which == "unpruned" else pruned_run
    out = tmp_path / "int8"
    keep = ["--fp32-ffn-down"] if "fp32" in which else []
    assert main(["export", str(run), "--out", str(out), "--format", "onnx", "--quantize", "int8", *keep]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "dsee_export.json").read_text())
    kept = record["quantization"]["kept_fp32"]
    layers = json.loads((out / "config.json").read_text())["num_hidden_layers"]
    assert kept == (layers if keep else 0)  # one down-projection per layer
    mode = f"per channel, {kept} FFN down-projections in fp32" if keep else "per channel"
    assert f"int8 ({mode}): largest output difference from fp32" in printed
    assert "checked on 1 batch of 64 validation examples of the run's data" in printed
    assert record["quantization"]["kind"] == "int8" and record["fusion"]["ops"]["MultiHeadAttention"] == 2
    assert record["quantization"]["vs_fp32"]["rows"] == 64  # measured on the run's dev batch
    got = eval_json(capsys, out)["validation"]
    want = direct_onnx_evaluation(out, run)
    assert got["accuracy"] == want["accuracy"] and got["f1_macro"] == want["f1_macro"]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)


def _no_ties(run) -> None:
    """No dev example's two logits within 1e-4 (else argmax may differ between backends)."""
    from dsee.train.pipeline import load_task_data, load_tokenizer, load_trained_model

    config = load_run_config(run)
    tokenizer = load_tokenizer(config.model)
    data = load_task_data(config, with_train=False)
    model = load_trained_model(run, config, data, tokenizer)
    texts = [t[0] for t in data.evals["validation"].texts]
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, truncation=True, max_length=config.max_length,
                                   return_tensors="pt")).logits
    assert (logits[:, 0] - logits[:, 1]).abs().min() > 1e-4


def assert_same_scores(got: dict, want: dict) -> None:
    """The same metrics on the same splits; the loss within float rounding (merged vs unmerged weights)."""
    assert got.keys() == want.keys()
    for split, metrics in want.items():
        assert got[split].keys() == metrics.keys()
        for name, value in metrics.items():
            assert got[split][name] == (pytest.approx(value, rel=1e-5) if name == "loss" else value), (split, name)


@pytest.mark.parametrize("fmt", ["onnx", "transformers"])
def test_an_fp32_exports_score_equals_the_runs(fmt, pruned_run, tmp_path, capsys):
    out = tmp_path / fmt
    assert main(["export", str(pruned_run), "--out", str(out), "--format", fmt]) == 0
    _no_ties(pruned_run)
    assert_same_scores(eval_json(capsys, out), evaluate_run(pruned_run))


def test_the_data_folder_is_recorded_absolute_and_can_be_overridden(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """A GLUE run: the export records its data folder as an absolute path (scored from anywhere), and
    --data-dir scores it on another copy of the task, as `dsee eval RUN --data-dir` would."""
    data = shared_data_dir()
    if data is None:
        pytest.skip("the GLUE data (shared data folder) is not available")
    run = tmp_path / "run"
    train(RunConfig(out=str(run), model=tiny_model_dir, task="sst2", data_dir=str(data / "glue"), max_train_samples=64,
                    max_eval_samples=48, max_length=32, epochs=1, batch_size=16, lr=3e-2,
                    adapter={"rank": 4, "num_sparse": 8}), show_progress=False)
    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out)]) == 0
    evaluation = json.loads((out / "dsee_export.json").read_text())["evaluation"]
    assert evaluation["data_dir"] == str((data / "glue").resolve()) and evaluation["main_metric"] == "accuracy"
    _no_ties(run)
    want = evaluate_run(run)
    monkeypatch.chdir(tmp_path)  # a relative data folder of the run would no longer resolve from here
    assert_same_scores(eval_json(capsys, out), want)
    other = tmp_path / "other" / "SST-2"
    other.mkdir(parents=True)
    lines = (data / "glue" / "SST-2" / "dev.tsv").read_text().splitlines()
    (other / "dev.tsv").write_text("\n".join([lines[0], *lines[-60:]]) + "\n")  # another 60 sentences
    shutil.copy(data / "glue" / "SST-2" / "train.tsv.gz", other)
    got = eval_json(capsys, out, "--data-dir", str(other.parent))
    elsewhere = evaluate_run(run, data_dir=str(other.parent))
    assert_same_scores(got, elsewhere)
    assert elsewhere != want


def test_an_export_without_a_record_is_refused(source_run, tmp_path, capsys):
    from dsee import export_onnx
    from dsee.train.pipeline import load_run

    _, model, tokenizer = load_run(source_run)
    export_onnx(model, tmp_path / "bare", tokenizer=tokenizer)  # the Python API: no run, no data recorded
    assert main(["eval", str(tmp_path / "bare")]) == 2
    assert "neither a dsee run (run_config.json) nor an export written by `dsee export`" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing")]) == 2
    assert "neither a dsee run" in capsys.readouterr().err
    out = tmp_path / "export"
    assert main(["export", str(source_run), "--out", str(out)]) == 0
    with pytest.raises(ValueError, match="labelled validation data only"):
        evaluate_export(out, split="test")
