"""save_pretrained / load_pretrained on models built from config objects; latency bookkeeping."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import batch, logits, randomize_adapters, tiny_classifier, tiny_causal_lm
from dsee import DSEEConfig, add_dsee, load_pretrained, remove_heads_, remove_neurons_, save_pretrained
from dsee.evaluation.bench import time_models
from dsee.sparsity.unstructured import apply_masks_, unstructured_masks


def test_a_plain_transformers_directory_loads(tmp_path):
    model = tiny_classifier("roberta")
    model.save_pretrained(tmp_path / "plain")  # no dsee_model.json
    torch.testing.assert_close(logits(load_pretrained(tmp_path / "plain"), batch()), logits(model, batch()))


@pytest.mark.parametrize("arch", ["bert", "mpnet", "gpt2", "llama"])
def test_unmerged_adapters_masks_and_removed_heads_round_trip(tmp_path, arch):
    model = tiny_classifier(arch)
    add_dsee(model, DSEEConfig(rank=2, num_sparse=16))
    randomize_adapters(model)
    remove_heads_(model, {0: [0, 2]} if arch == "llama" else {1: [3]})
    remove_neurons_(model, {0: [1, 2, 3]})
    apply_masks_(model, unstructured_masks(model, 0.4, scope="layer"))
    info = save_pretrained(model, tmp_path / "m", compact=True)
    assert not info["stock"] and info["weights_file"] == "model.compact.safetensors"
    manifest = json.loads((tmp_path / "m" / "dsee_model.json").read_text())
    assert manifest["structure"]["neurons"] == {"0": [1, 2, 3]}
    again = load_pretrained(tmp_path / "m")
    assert set(again.state_dict()) == set(model.state_dict())
    torch.testing.assert_close(logits(again, batch()), logits(model, batch()), rtol=0, atol=0)


def test_a_tied_decoder_saves_and_reloads(tmp_path):
    model = tiny_causal_lm("gpt2")
    remove_heads_(model, {0: [1]})
    save_pretrained(model, tmp_path / "m")
    again = load_pretrained(tmp_path / "m")
    torch.testing.assert_close(logits(again, batch()), logits(model, batch()), rtol=0, atol=0)


def test_unknown_manifest_format_is_refused(tmp_path):
    model = tiny_classifier("bert")
    remove_heads_(model, {0: [0]})
    save_pretrained(model, tmp_path / "m")
    path = tmp_path / "m" / "dsee_model.json"
    path.write_text(path.read_text().replace("dsee-model-1", "dsee-model-9"))
    with pytest.raises(ValueError, match="unknown format"):
        load_pretrained(tmp_path / "m")


def test_time_models_reports_ratios_to_the_first():
    models = {"a": tiny_classifier("bert"), "b": tiny_classifier("bert", seed=1)}
    timings = time_models(models, batch_size=2, seq_len=8, rounds=3, passes=1)
    assert [t.name for t in timings] == ["a", "b"]
    assert timings[0].ratio_to_first == 1.0
    assert timings[1].ratio_to_first == pytest.approx(timings[1].median_s / timings[0].median_s)
    assert all(t.q1_s <= t.median_s <= t.q3_s and t.examples_per_s == pytest.approx(2 / t.median_s) for t in timings)
