"""Ω from data (sparse_method="gradient", RoSA's choice): top-N of Σ_k (∂loss_k/∂W0)² over K batches."""

from __future__ import annotations

import pytest
import torch

from conftest import batch, logits, tiny_causal_lm, tiny_classifier
from dsee import DSEEConfig, add_dsee, load_adapter, save_adapter
from dsee.adapters.calibration import squared_gradients
from dsee.adapters.support import top_n_indices
from dsee.adapters.inject import dsee_layers
from dsee.adapters.layer import linear_weight


def _batches(k=3, labels=3):
    return [{**batch(seed=i), "labels": torch.tensor([i % labels, (i + 1) % labels, (i + 2) % labels])}
            for i in range(k)]


def _oracle(model, names, batches):
    """Plain autograd on the unadapted model, in train mode (the tiny configs have no dropout)."""
    model.train()
    modules = [model.get_submodule(n) for n in names]
    weights = [m.weight for m in modules]  # the parameters (GPT-2's Conv1D stores them d_in × d_out)
    for w in weights:
        w.requires_grad_(True)
    sums = [torch.zeros_like(linear_weight(m)) for m in modules]
    for b in batches:
        grads = torch.autograd.grad(model(**b).loss, weights)
        for s, g, m in zip(sums, grads, modules):
            s += g.square() if linear_weight(m) is m.weight else g.T.square()
    return dict(zip(names, sums))


def test_support_equals_the_top_n_of_summed_squared_gradients():
    batches = _batches()
    reference_model = tiny_classifier("bert")
    model = tiny_classifier("bert")
    add_dsee(model, DSEEConfig(rank=2, num_sparse=37, sparse_method="gradient"), batches=batches)
    names = [n for n, _ in dsee_layers(model)]
    oracle = _oracle(reference_model, names, batches)
    for name, layer in dsee_layers(model):
        assert torch.equal(layer.sparse_indices, top_n_indices(oracle[name], 37))


def test_fused_slices_rank_their_own_rows():
    lm_batches = [{"input_ids": batch(seed=i)["input_ids"], "labels": batch(seed=i)["input_ids"]} for i in range(2)]
    model = tiny_causal_lm("gpt2")
    add_dsee(model, DSEEConfig(rank=2, sparse_density=0.05, sparse_method="gradient"), batches=lm_batches)
    oracle = _oracle(tiny_causal_lm("gpt2"), [n for n, _ in dsee_layers(model)], lm_batches)
    for name, layer in dsee_layers(model):
        for _, delta, rows in layer.deltas():
            assert torch.equal(delta.sparse_indices, top_n_indices(oracle[name][rows], delta.num_sparse))


def test_squared_gradients_leave_the_model_as_they_found_it():
    model = tiny_classifier("bert").train()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    squared_gradients(model, ["bert.encoder.layer.0.attention.self.query"], _batches(1))
    assert model.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_data_is_asked_for_explicitly_and_errors_change_nothing():
    model = tiny_classifier("bert")
    with pytest.raises(ValueError, match="batches"):
        add_dsee(model, DSEEConfig(sparse_method="gradient"))
    with pytest.raises(ValueError, match="data-aware"):
        add_dsee(model, DSEEConfig(sparse_method="magnitude"), batches=_batches(1))
    assert not dsee_layers(model) and getattr(model, "dsee_state", None) is None
    # N = 0 (LoRA) needs no data whatever the method
    add_dsee(model, DSEEConfig(num_sparse=0, sparse_method="gradient"))


def test_saved_support_loads_without_data(tmp_path):
    model = tiny_classifier("bert")
    add_dsee(model, DSEEConfig(rank=2, num_sparse=20, sparse_method="gradient", init="upstream"), batches=_batches(2))
    save_adapter(model, tmp_path)
    fresh = load_adapter(tiny_classifier("bert"), tmp_path)
    for (_, a), (_, b) in zip(dsee_layers(model), dsee_layers(fresh)):
        assert torch.equal(a.sparse_indices, b.sparse_indices)
    assert torch.equal(logits(model.eval(), batch()), logits(fresh, batch()))


def test_training_run_with_a_warmed_up_gradient_support(tmp_path, tiny_model_dir, csv_data):
    """--sparse-method gradient --support-warmup-steps W: the warm-up decides Ω, then is discarded."""
    pytest.importorskip("accelerate")
    from dsee.models import resolve_model
    from dsee.train.pipeline import base_model, load_task_data, load_tokenizer
    from dsee.train.run import RunConfig
    from dsee.train.support import add_dsee_from_data

    config = RunConfig(out=str(tmp_path / "run"), model=tiny_model_dir, train_file=csv_data[0],
                       validation_file=csv_data[1], text_columns=["text"], label_column="label", max_length=32,
                       batch_size=16, lr=1e-2, adapter={"rank": 2, "sparse_density": 0.05,
                                                        "sparse_method": "gradient"},
                       support_batches=2, support_warmup_steps=3, seed=1)
    data = load_task_data(config)
    tokenizer = load_tokenizer(resolve_model(config.model))
    model = base_model(tiny_model_dir, data, tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    add_dsee_from_data(model, config.dsee_config(), data, tokenizer, config)
    for name, layer in dsee_layers(model):  # the warmed-up LoRA is gone: B starts at zero again
        assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.sparse_values) == 0
        assert torch.equal(layer.base_layer.weight, before[name + ".weight"])
    for name in ("classifier.weight", "classifier.bias"):  # the head trained in the warm-up is restored
        assert torch.equal(dict(model.named_parameters())[name], before[name])
    # without the warm-up the support differs (it was taken at W0, not at W0 + B·A)
    plain = base_model(tiny_model_dir, data, tokenizer)
    config.support_warmup_steps = 0
    add_dsee_from_data(plain, config.dsee_config(), data, tokenizer, config)
    assert any(not torch.equal(a.sparse_indices, b.sparse_indices)
               for (_, a), (_, b) in zip(dsee_layers(model), dsee_layers(plain)))


def test_cli_trains_with_a_gradient_support(tmp_path, tiny_model_dir, csv_data, capsys):
    pytest.importorskip("accelerate")
    from dsee.cli import main

    run = tmp_path / "run"
    code = main(["train", "--model", tiny_model_dir, "--train-file", csv_data[0], "--validation-file", csv_data[1],
                 "--text-columns", "text", "--label-column", "label", "--max-length", "32", "--epochs", "1",
                 "--batch-size", "16", "--lr", "1e-2", "--rank", "2", "--sparse-density", "0.05",
                 "--sparse-method", "gradient", "--support-batches", "2", "--out", str(run), "--no-progress"])
    assert code == 0
    saved = DSEEConfig.load(run / "adapter")
    assert (saved.sparse_method, saved.sparse_density, saved.num_sparse) == ("gradient", 0.05, None)
