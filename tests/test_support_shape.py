"""benchmarks/support_shape.py: the measures of where Ω sits, checked on supports built by hand."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
spec = importlib.util.spec_from_file_location("support_shape", BENCH / "support_shape.py")
support_shape = importlib.util.module_from_spec(spec)
spec.loader.exec_module(support_shape)


def test_one_whole_column_on_the_largest_input():
    # a 4 x 20 matrix; Ω = column 3 whole (4 entries), the only column whose input norm is 5 (others 1)
    d_out, d_in = 4, 20
    flat = torch.arange(d_out) * d_in + 3
    norms = torch.ones(d_in)
    norms[3] = 5.0
    shape = support_shape.shape_of({"m": (flat, (d_out, d_in))}, {"m": norms})
    assert shape["rows_touched"] == 1.0
    assert shape["columns_touched"] == pytest.approx(1 / 20)
    assert shape["top10_columns"] == 1.0
    assert shape["activation_weight"] == pytest.approx(5.0 / (24.0 / 20))
    assert shape["entries_per_matrix"] == 4


def test_a_diagonal_is_spread_and_blind_to_activations():
    n = 12
    flat = torch.arange(n) * n + torch.arange(n)  # one entry per row and per column
    shape = support_shape.shape_of({"m": (flat, (n, n))}, {"m": torch.ones(n)})
    assert (shape["rows_touched"], shape["columns_touched"]) == (1.0, 1.0)
    assert shape["top10_columns"] == pytest.approx(10 / 12)
    assert shape["activation_weight"] == pytest.approx(1.0)
