"""Adding a support method, a pruning score or a head scorer is one registered function: configs,
the pruning code and the command line pick it up."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_classifier
from dsee import DSEEConfig, add_dsee, unstructured_masks
from dsee.adapters.inject import dsee_layers
from dsee.adapters.support import SUPPORT_METHODS
from dsee.cli import build_parser
from dsee.registry import Registry
from dsee.sparsity.importance import HEAD_SCORES
from dsee.sparsity.unstructured import SCORES


@pytest.fixture()
def first_positions():
    @SUPPORT_METHODS.register("first-positions", description="the N first positions of the matrix")
    def first(w, generator, statistics):
        return -torch.arange(w.numel(), dtype=torch.float32).view(w.shape)  # higher for earlier entries

    yield "first-positions"
    SUPPORT_METHODS.remove("first-positions")


def test_a_registered_support_method_is_usable_everywhere(first_positions):
    model = add_dsee(tiny_classifier("bert"), DSEEConfig(rank=2, num_sparse=5, sparse_method=first_positions))
    for _, layer in dsee_layers(model):
        assert layer.sparse_indices.tolist() == [0, 1, 2, 3, 4]
    adapt = build_parser()._subparsers._group_actions[0].choices["adapt"]
    action = next(a for a in adapt._actions if a.dest == "sparse_method")
    assert first_positions in action.choices


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="choose one of grebsmo, upstream, magnitude, random, gradient"):
        SUPPORT_METHODS.get("svd")
    with pytest.raises(ValueError, match=r"DSEEConfig.sparse_method"):
        DSEEConfig(sparse_method="svd")


def test_a_registered_pruning_score_is_usable():
    @SCORES.register("row-index", description="prune the first rows first")
    def row_index(weight, delta, stats):
        return torch.arange(weight.shape[0], dtype=torch.float32).unsqueeze(1).expand_as(weight).clone()

    try:
        masks = unstructured_masks(tiny_classifier("bert"), 0.25, score="row-index", scope="layer")
        mask = masks["bert.encoder.layer.0.attention.self.query"]
        assert not mask[:12].any() and mask[12:].all()  # 25% of 48 rows × 48: the first 12 rows
    finally:
        SCORES.remove("row-index")


def test_head_scorers_and_their_needs():
    assert set(HEAD_SCORES.names()) >= {"delta", "importance"}
    assert HEAD_SCORES.get("importance").needs_data and not HEAD_SCORES.get("delta").needs_data


def test_registry_basics():
    r = Registry("colour")

    @r.register("red")
    def red():
        """The warm one."""

    assert r.names() == ("red",) and "red" in r and len(r) == 1
    assert r.get("red").description == "The warm one." and r.help() == "red: The warm one."
    with pytest.raises(ValueError, match="unknown colour 'blue'; choose one of red"):
        r.get("blue")
