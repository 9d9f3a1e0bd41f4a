from __future__ import annotations

import json

import pytest

from dsee import DSEEConfig


def test_defaults_match_the_issue():
    c = DSEEConfig()
    assert (c.rank, c.alpha, c.dropout, c.num_sparse, c.sparse_method) == (16, 32, 0.0, 64, "grebsmo")
    assert (c.targets, c.modules_to_save, c.init, c.seed) == (None, None, "zero", 0)
    assert c.scaling == 2.0


def test_json_round_trip(tmp_path):
    c = DSEEConfig(rank=4, alpha=8, dropout=0.1, num_sparse=0, sparse_method="magnitude",
                   targets=["query", "value"], modules_to_save=["classifier"], init="upstream", seed=3)
    assert DSEEConfig.from_json(c.to_json()) == c
    c.save(tmp_path)
    assert DSEEConfig.load(tmp_path) == c
    assert json.loads((tmp_path / "dsee_config.json").read_text())["targets"] == ["query", "value"]


def test_single_string_target_becomes_tuple():
    assert DSEEConfig(targets="query").targets == ("query",)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"rank": -1}, "rank"),
        ({"rank": 1.5}, "rank"),
        ({"rank": 0, "num_sparse": 0}, "rank"),
        ({"num_sparse": -3}, "num_sparse"),
        ({"alpha": 0}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"sparse_method": "svd"}, "sparse_method"),
        ({"init": "gaussian"}, "init"),
        ({"targets": []}, "targets"),
        ({"targets": [""]}, "targets"),
    ],
)
def test_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"DSEEConfig.{field}"):
        DSEEConfig(**kwargs)


def test_unknown_key_rejected():
    with pytest.raises(ValueError, match=r"unknown DSEEConfig key\(s\) \['lora_rank'\]"):
        DSEEConfig.from_dict({"lora_rank": 8})


def test_frozen():
    with pytest.raises(Exception):
        DSEEConfig().rank = 3  # type: ignore[misc]
