"""Support selection: planted outliers, exactly N distinct indices, determinism, errors."""

from __future__ import annotations

import pytest
import torch

from dsee import compute_support
from dsee.adapters.support import METHODS, grebsmo


def planted(seed=0, m=768, n=768, r=32, num_outliers=64):
    """Rank-32 matrix with 48 rows scaled up 8× (its largest entries beat the outliers),
    plus 64 planted outliers of size 4..6 and Gaussian noise of std 0.05."""
    g = torch.Generator().manual_seed(seed)
    low_rank = torch.randn(m, r, generator=g) @ torch.randn(r, n, generator=g) / r**0.5
    low_rank[torch.randperm(m, generator=g)[:48]] *= 8.0
    where = torch.randperm(m * n, generator=g)[:num_outliers]
    outliers = torch.zeros(m * n)
    outliers[where] = (4 + 2 * torch.rand(num_outliers, generator=g)) * torch.sign(torch.randn(num_outliers, generator=g))
    weight = low_rank + outliers.view(m, n) + 0.05 * torch.randn(m, n, generator=g)
    assert low_rank.abs().max() > outliers.abs().max()
    return weight, set(where.tolist())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grebsmo_recovers_planted_outliers(seed):
    weight, truth = planted(seed)
    found = set(compute_support(weight, 64, "grebsmo", seed=seed).tolist())
    assert len(found & truth) / 64 >= 0.95
    by_magnitude = set(compute_support(weight, 64, "magnitude").tolist())
    assert len(by_magnitude & truth) / 64 <= 0.1


def test_grebsmo_low_rank_part_is_close():
    weight, _ = planted(0)
    low_rank = grebsmo(weight, rank=96)
    assert torch.linalg.matrix_rank(low_rank).item() <= 96
    residual = weight - low_rank
    assert residual.norm() / weight.norm() < 0.05


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "weight",
    [
        torch.ones(20, 30),  # all ties
        torch.zeros(20, 30),  # nothing survives any threshold
        torch.diag(torch.arange(1.0, 6.0)).repeat(2, 3)[:, :17],  # few non-zeros, many ties
        torch.randn(7, 5),
    ],
    ids=["ones", "zeros", "few-nonzero", "random"],
)
@pytest.mark.parametrize("n", [0, 1, 13, 35])
def test_exactly_n_distinct_indices(method, weight, n):
    n = min(n, weight.numel())
    idx = compute_support(weight, n, method)
    assert idx.dtype == torch.int64 and idx.shape == (n,)
    assert idx.unique().numel() == n
    assert bool((idx >= 0).all()) and bool((idx < weight.numel()).all())
    assert torch.equal(idx, idx.sort().values)


@pytest.mark.parametrize("method", METHODS)
def test_deterministic(method):
    w = torch.randn(64, 48)
    assert torch.equal(compute_support(w, 20, method, seed=3), compute_support(w, 20, method, seed=3))


def test_random_seed_matters():
    w = torch.randn(64, 48)
    assert not torch.equal(compute_support(w, 20, "random", seed=0), compute_support(w, 20, "random", seed=1))


def test_full_matrix_and_weight_untouched():
    w = torch.randn(6, 4)
    copy = w.clone()
    assert torch.equal(compute_support(w, 24, "grebsmo"), torch.arange(24))
    assert torch.equal(w, copy)


@pytest.mark.parametrize(
    "args, message",
    [
        ((torch.randn(4, 4), 17), r"num_sparse=17 must be an integer in \[0, 16\]"),
        ((torch.randn(4, 4), -1), "num_sparse=-1"),
        ((torch.randn(4), 2), "2-D weight"),
        ((torch.tensor([[1.0, float("nan")]]), 1), "NaN"),
    ],
)
def test_errors(args, message):
    with pytest.raises(ValueError, match=message):
        compute_support(*args)


def test_half_precision_input():
    w = torch.randn(32, 32).to(torch.bfloat16)
    assert compute_support(w, 8, "grebsmo").shape == (8,)


@pytest.mark.slow
def test_grebsmo_recovers_planted_outliers_at_4096():
    """A Llama-3-8B-sized matrix with the structure of ``planted`` scaled up (rank 170, one outlier per
    9,216 entries: 1,820): GreBsmo from one sketch still finds them among exactly as many positions."""
    weight, truth = planted(0, m=4096, n=4096, r=170, num_outliers=1820)
    found = set(compute_support(weight, 1820, "grebsmo", seed=0).tolist())
    assert len(found & truth) / 1820 >= 0.95
