"""Adapter save / load round trips."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from conftest import batch, logits, randomize_adapters, tiny_classifier
from dsee import DSEEConfig, add_dsee, count_parameters, load_adapter, save_adapter
from dsee.adapters.inject import dsee_layers
from dsee.adapters.io import WEIGHTS_NAME

CFG = DSEEConfig(rank=4, alpha=8, num_sparse=16, sparse_method="grebsmo")


def _trained(arch):
    model = add_dsee(tiny_classifier(arch), CFG)
    randomize_adapters(model)
    with torch.no_grad():
        for n in model.dsee_state.modules_to_save:
            for p in model.get_submodule(n).parameters():
                p.add_(0.1)
    return model


def _indices(model):
    return {f"{n}:{s}": d.sparse_indices.clone() for n, layer in dsee_layers(model) for s, d, _ in layer.deltas()}


@pytest.mark.parametrize("onto", ["bare", "adapted"])
def test_round_trip(arch, tmp_path, onto):
    model = _trained(arch)
    inputs = batch()
    expected = logits(model, inputs)
    save_adapter(model, tmp_path)
    fresh = tiny_classifier(arch)  # same base weights (same seed), fresh head
    if onto == "adapted":
        add_dsee(fresh, CFG)
    load_adapter(fresh, tmp_path)
    assert torch.equal(logits(fresh, inputs), expected)
    assert fresh.dsee_state.config == model.dsee_state.config
    assert fresh.dsee_state.targets_matched == model.dsee_state.targets_matched
    got, want = _indices(fresh), _indices(model)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert count_parameters(fresh).trainable == count_parameters(model).trainable


def test_file_size_matches_parameter_count(tmp_path):
    model = _trained("gpt2")
    save_adapter(model, tmp_path)
    raw = (tmp_path / WEIGHTS_NAME).read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    data_bytes = len(raw) - 8 - header_len
    count = count_parameters(model)
    assert data_bytes == count.adapter_bytes
    # float32 trainable parameters + int64 indices (8 bytes each), nothing else
    n_indices = sum(d.num_sparse for _, layer in dsee_layers(model) for _, d, _ in layer.deltas())
    assert count.adapter_bytes == 4 * count.trainable + 8 * n_indices
    header = json.loads(raw[8 : 8 + header_len])
    assert header["__metadata__"]["model_type"] == "gpt2"


def test_loading_skips_support_selection(tmp_path, monkeypatch):
    model = _trained("bert")
    save_adapter(model, tmp_path)
    import dsee.adapters.inject

    def fail(*args, **kwargs):
        raise AssertionError("support selection must not run when loading")

    monkeypatch.setattr(dsee.adapters.inject, "compute_support", fail)
    load_adapter(tiny_classifier("bert"), tmp_path)


def test_save_is_atomic_and_leaves_no_temporaries(tmp_path):
    model = _trained("bert")
    save_adapter(model, tmp_path)
    save_adapter(model, tmp_path)  # overwriting works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_model.safetensors", "dsee_config.json"]


def test_different_base_weights_warn(tmp_path):
    model = _trained("bert")
    save_adapter(model, tmp_path)
    with pytest.warns(UserWarning, match="base weights differ"):
        load_adapter(tiny_classifier("bert", seed=7), tmp_path)
