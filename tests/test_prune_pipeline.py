"""dsee prune / export / bench / report end to end on a tiny BERT (real tokenizer, synthetic data)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("accelerate")

from dsee.cli import main  # noqa: E402
from dsee.sparsity.export import load_pretrained  # noqa: E402
from dsee.arch import blocks  # noqa: E402
from dsee.train.loop import evaluate_run, train  # noqa: E402
from dsee.train.pipeline import load_task_data, load_tokenizer, load_trained_model  # noqa: E402
from dsee.train.run import RunConfig, load_run_config  # noqa: E402


def _model_and_inputs(run):
    config = load_run_config(run)
    data = load_task_data(config, with_train=False)
    tokenizer = load_tokenizer(config.model)
    model = load_trained_model(run, config, data, tokenizer)
    texts = [t[0] for t in data.evals["validation"].texts[:6]]
    return model, dict(tokenizer(texts, padding=True, return_tensors="pt"))


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


def test_unstructured_prune_retune_export_reload(source_run, tmp_path, capsys):
    run2 = tmp_path / "sparse"
    assert main(["prune", str(source_run), "--out", str(run2), "--sparsity", "0.5", "--scope", "layer",
                 "--retune-epochs", "1", "--no-progress"]) == 0
    metrics = json.loads((run2 / "metrics.json").read_text())
    assert metrics["pruning"]["sparsity"] >= 0.5
    for share in metrics["pruning"]["sparsity_per_matrix"].values():
        assert 0.5 <= share < 0.5 + 2 / 48**2 + 1e-9  # exact count, at most one extra exact zero
    again = evaluate_run(run2)  # `dsee eval` reproduces the kept checkpoint's score
    assert again["validation"]["accuracy"] == pytest.approx(metrics["dev"]["validation"]["accuracy"])

    model, inputs = _model_and_inputs(run2)
    before = _logits(model, inputs)
    out = tmp_path / "export"
    assert main(["export", str(run2), "--out", str(out)]) == 0
    exported = load_pretrained(out)
    torch.testing.assert_close(_logits(exported, inputs), before, rtol=0, atol=1e-5)
    for block in blocks(exported):  # the requested zeros are in the exported weights
        weight = block.get("attention.self.query").weight
        assert float((weight == 0).float().mean()) >= 0.5
    # original shapes, merged: a plain transformers checkpoint
    import transformers as T

    plain = T.AutoModelForSequenceClassification.from_pretrained(out)
    torch.testing.assert_close(_logits(plain.eval(), inputs), before, rtol=0, atol=1e-5)

    compact = tmp_path / "compact"
    assert main(["export", str(run2), "--out", str(compact), "--compact"]) == 0
    info = json.loads((compact / "dsee_export.json").read_text())
    # the pruned block matrices (half zeros) shrink to values + a 1-bit mask: 0.53 of their 4 bytes/entry
    block_bytes = 4 * metrics["parameters"]["block_linear"]
    saved = info["dense_bytes"] - info["bytes_on_disk"]
    assert 0.4 * block_bytes < saved < 0.5 * block_bytes
    torch.testing.assert_close(_logits(load_pretrained(compact), inputs), before, rtol=0, atol=1e-5)


def _export_reproduces(run, out) -> None:
    """``dsee export RUN --out OUT`` reloads (``load_pretrained``) to the run's own logits within 1e-5."""
    model, inputs = _model_and_inputs(run)
    before = _logits(model, inputs)
    assert main(["export", str(run), "--out", str(out)]) == 0
    torch.testing.assert_close(_logits(load_pretrained(out), inputs), before, rtol=0, atol=1e-5)


@pytest.mark.parametrize("head_score", ["delta", "importance"])
def test_structured_prune_retune_export_reload(source_run, tmp_path, head_score):
    run2 = tmp_path / "heads"
    assert main(["prune", str(source_run), "--out", str(run2), "--heads", "0.5", "--ffn", "0.25",
                 "--head-score", head_score, "--ffn-score", "importance", "--importance-batches", "2",
                 "--retune-epochs", "1", "--no-progress"]) == 0
    metrics = json.loads((run2 / "metrics.json").read_text())
    assert metrics["pruning"]["heads_per_layer"] == [2, 2]
    assert metrics["pruning"]["ffn_per_layer"] == [48, 48]
    source_flops = json.loads((source_run / "metrics.json").read_text())["flops"]["total"]
    assert metrics["flops"]["total"] < 0.8 * source_flops
    out = tmp_path / "export"
    _export_reproduces(run2, out)
    assert not json.loads((out / "dsee_export.json").read_text())["stock"]

    report = tmp_path / "report"
    assert main(["report", str(source_run), str(run2), "--out", str(report)]) == 0
    assert (report / "report.png").stat().st_size > 0 and "heads 50%" in (report / "report.md").read_text()
    assert main(["bench", str(out), "--vs", str(out), "--batch-size", "2", "--seq-len", "8", "--rounds", "2"]) == 0


def test_retune_epochs_zero_evaluates_the_pruned_model(source_run, tmp_path):
    run2 = tmp_path / "noretune"
    assert main(["prune", str(source_run), "--out", str(run2), "--sparsity", "0.3", "--retune-epochs", "0",
                 "--no-progress"]) == 0
    metrics = json.loads((run2 / "metrics.json").read_text())
    assert metrics["steps"] == 0 and metrics["score"] is not None


@pytest.mark.parametrize("args,match", [
    (["--sparsity", "1.0"], "must be in"),
    (["--heads", "0.9"], "would leave none"),
    (["--retune-epochs", "1"], "nothing to prune"),
])
def test_bad_prune_requests_leave_nothing(source_run, tmp_path, capsys, args, match):
    run2 = tmp_path / "bad"
    assert main(["prune", str(source_run), "--out", str(run2), *args, "--no-progress"]) == 2
    assert match in capsys.readouterr().err
    assert not run2.exists()


def test_prune_refuses_missing_and_pruned_sources(source_run, tmp_path, capsys):
    assert main(["prune", str(tmp_path / "nope"), "--out", str(tmp_path / "x"), "--sparsity", "0.5"]) == 2
    assert "no such run directory" in capsys.readouterr().err
    pruned = tmp_path / "p"
    assert main(["prune", str(source_run), "--out", str(pruned), "--sparsity", "0.2", "--retune-epochs", "0",
                 "--no-progress"]) == 0
    listing = sorted(p.name for p in pruned.iterdir())
    assert main(["prune", str(pruned), "--out", str(tmp_path / "y"), "--heads", "0.25"]) == 2
    assert "itself a pruned run" in capsys.readouterr().err
    assert sorted(p.name for p in pruned.iterdir()) == listing and not (tmp_path / "y").exists()


def test_export_refuses_a_non_empty_directory(source_run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(source_run), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_mpnet_run_pruned_by_importance_with_distillation_exports_what_it_evaluated(tmp_path, csv_data):
    """MPNet (attn.q/k/v/o, one relative position bias for every block): train, prune heads and FFN neurons
    by importance, re-tune against the unpruned teacher, export, and reload the same function."""
    from conftest import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "mpnet", "mpnet")
    source = tmp_path / "source"
    train(RunConfig(out=str(source), model=model_dir, train_file=csv_data[0], validation_file=csv_data[1],
                    text_columns=["text"], label_column="label", max_length=32, epochs=1, batch_size=16, lr=3e-2,
                    adapter={"rank": 4, "num_sparse": 8}, seed=1), show_progress=False)
    run2 = tmp_path / "pruned"
    assert main(["prune", str(source), "--out", str(run2), "--heads", "0.5", "--ffn", "0.5", "--head-score",
                 "importance", "--ffn-score", "importance", "--importance-batches", "2", "--distill",
                 "--distill-hidden", "--retune-epochs", "1", "--no-progress"]) == 0
    metrics = json.loads((run2 / "metrics.json").read_text())
    assert metrics["pruning"]["heads_per_layer"] == [2, 2] and metrics["pruning"]["ffn_per_layer"] == [32, 32]
    assert metrics["teacher_forwards"] == metrics["steps"] and metrics["teacher_seconds"] >= 0
    source_flops = json.loads((source / "metrics.json").read_text())["flops"]["total"]
    assert metrics["flops"]["total"] < 0.7 * source_flops
    out = tmp_path / "export"
    _export_reproduces(run2, out)


def _stop_after(monkeypatch, step: int) -> None:
    """A Ctrl-C that lands during optimizer step ``step``: the loop stops after it (checkpoint written)."""
    import dsee.train.loop as loop

    monkeypatch.setattr(loop, "stop_requested", lambda s: s.progress.step >= step)


def _kept_tensors(run):
    from safetensors.torch import load_file

    return {f"{p.name}:{k}": v for p in sorted((run / "model").glob("*.safetensors")) for k, v in load_file(p).items()}


def test_the_printed_prune_resume_command_continues_the_run(source_run, tmp_path, monkeypatch, capsys):
    """After Ctrl-C, `dsee prune` prints how to continue; that command (once refused: "nothing to prune: give
    --sparsity") ends the run as if it had never stopped."""
    import shlex

    settings = ["--sparsity", "0.5", "--score", "wanda", "--retune-epochs", "2", "--no-progress"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(["prune", str(source_run), "--out", str(full), *settings]) == 0
    with monkeypatch.context() as patch:
        _stop_after(patch, 3)
        assert main(["prune", str(source_run), "--out", str(cut), *settings]) == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    command = shlex.split(line.split("continue with `")[1].rstrip("`"))
    assert command == ["dsee", "prune", str(source_run), "--out", str(cut), "--resume"]
    assert main([*command[1:], "--no-progress"]) == 0
    assert json.loads((cut / "metrics.json").read_text())["dev"] == json.loads((full / "metrics.json").read_text())["dev"]
    a, b = _kept_tensors(full), _kept_tensors(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_prune_resume_refuses_settings_that_differ_from_the_runs(source_run, tmp_path, monkeypatch, capsys):
    """Started at 0.5 / wanda / 2 epochs: --resume with 0.7 / weight / 3 once went on silently with the old ones."""
    cut = tmp_path / "cut"
    with monkeypatch.context() as patch:
        _stop_after(patch, 2)
        assert main(["prune", str(source_run), "--out", str(cut), "--sparsity", "0.5", "--score", "wanda",
                     "--retune-epochs", "2", "--no-progress"]) == 130
    capsys.readouterr()
    before = {p.relative_to(cut): p.read_bytes() for p in cut.rglob("*") if p.is_file()}
    assert main(["prune", str(source_run), "--out", str(cut), "--resume", "--sparsity", "0.7", "--score", "weight",
                 "--retune-epochs", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--sparsity 0.7 (saved: 0.5), --score weight (saved: wanda), --retune-epochs 3.0 (saved: 2.0)" in err
    assert "would be ignored" in err and "Traceback" not in err
    assert {p.relative_to(cut): p.read_bytes() for p in cut.rglob("*") if p.is_file()} == before
    assert main(["prune", str(tmp_path / "other"), "--out", str(cut), "--resume"]) == 2  # another source: refused
    assert f"was pruned from {source_run}" in capsys.readouterr().err
