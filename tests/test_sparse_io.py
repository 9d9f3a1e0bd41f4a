"""Compact (bitmask) safetensors storage: exact round trips, sizes, plain files, atomicity, corruption."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dsee.sparsity import sparse_io
from dsee.sparsity.sparse_io import is_compact, load_compact, pack, save_compact, unpack

# Integer views of the same width, to compare bit patterns (torch.equal says NaN != NaN, -0.0 == 0.0).
BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
        torch.int64: torch.int64}


def sparse(shape: tuple[int, ...], sparsity: float, dtype: torch.dtype = torch.float32,
           seed: int = 0) -> torch.Tensor:
    """A tensor with exactly round(sparsity * numel) zeros and no accidental zeros elsewhere."""
    g = torch.Generator().manual_seed(seed)
    numel = int(np.prod(shape))
    if dtype.is_floating_point:
        x = torch.randn(numel, generator=g)
        x = (x.abs() + 0.1) * x.sign().where(x != 0, torch.ones(()))  # |x| >= 0.1: nonzero in every dtype
    else:
        sign = 1 - 2 * torch.randint(0, 2, (numel,), generator=g)
        x = torch.randint(1, 1000, (numel,), generator=g) * sign
    x[torch.randperm(numel, generator=g)[: round(sparsity * numel)]] = 0
    return x.to(dtype).reshape(shape)


def assert_bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.view(BITS[a.dtype]), b.view(BITS[b.dtype]))


def roundtrip(tmp_path, tensors, **kw):
    report = save_compact(tensors, tmp_path / "w.safetensors", **kw)
    loaded, meta = load_compact(tmp_path / "w.safetensors")
    return loaded, meta, report


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 1.0])
def test_roundtrip_matrices_bitwise(tmp_path, dtype, sparsity):
    w = sparse((37, 53), sparsity, dtype)  # numel 1961: not a multiple of 8, exercises the padding bits
    loaded, _, report = roundtrip(tmp_path, {"w": w})
    assert torch.equal(loaded["w"], w)
    assert_bitwise_equal(loaded["w"], w)
    assert report["packed"] == ([] if sparsity < 0.3 else ["w"])
    parts = pack(w)
    assert parts["mask"].dtype == torch.uint8 and parts["mask"].shape == ((w.numel() + 7) // 8,)
    assert parts["values"].dtype == dtype and parts["values"].shape == (int((w != 0).sum()),)
    assert_bitwise_equal(unpack(parts, w.shape, dtype), w)


def test_mask_layout_is_little_endian_row_major():
    w = torch.tensor([[1.0, 0.0, 0.0], [2.0, 0.0, 3.0], [0.0, 0.0, 4.0]])
    parts = pack(w)
    # element i -> bit i % 8 of byte i // 8: 1,0,0,1,0,1,0,0 | 1 -> 0b00101001, 0b1
    assert parts["mask"].tolist() == [0b00101001, 0b1]
    assert parts["values"].tolist() == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_nan_inf_roundtrip_and_negative_zero_becomes_positive(tmp_path, dtype):
    w = sparse((16, 24), 0.6, dtype, seed=1)
    w[0, 0], w[1, 1], w[2, 2] = float("nan"), float("inf"), float("-inf")
    payload_nan = {torch.float32: 0x7FC12345, torch.float16: 0x7E01, torch.bfloat16: 0x7FC1}[dtype]
    w.view(BITS[dtype])[3, 3] = payload_nan  # a NaN with a non-default payload keeps its exact bits
    w[4, 4] = -0.0
    loaded, _, report = roundtrip(tmp_path, {"w": w})
    assert report["packed"] == ["w"]
    got = loaded["w"]
    assert got.view(BITS[dtype])[3, 3].item() == payload_nan
    assert torch.isnan(got[0, 0]) and got[1, 1] == float("inf") and got[2, 2] == float("-inf")
    # -0.0 == 0, so it is not kept: documented to come back as +0.0 (all bits clear).
    assert got.view(BITS[dtype])[4, 4].item() == 0
    expected = w.clone()
    expected[4, 4] = 0.0
    assert_bitwise_equal(got, expected)


def test_vectors_int64_and_3d(tmp_path):
    tensors = {
        "bias": sparse((1000,), 0.9),  # 1-D: always dense, however sparse
        "ids": sparse((40, 30), 0.8, torch.int64),
        "ids_dense": sparse((40, 30), 0.0, torch.int64),
        "conv": sparse((8, 6, 5), 0.7),
        "conv16": sparse((3, 4, 5, 2), 0.5, torch.bfloat16),
        "scalar": torch.tensor(0.0),
    }
    loaded, _, report = roundtrip(tmp_path, tensors)
    assert sorted(report["packed"]) == ["conv", "conv16", "ids"]
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        assert torch.equal(loaded[name], t), name
        assert_bitwise_equal(loaded[name], t)
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as f:
        assert {"bias", "ids_dense", "scalar", "ids::mask", "ids::values"} <= set(f.keys())


def test_half_sparse_float32_matrix_size(tmp_path):
    w = sparse((1024, 1024), 0.5)
    path = tmp_path / "w.safetensors"
    report = save_compact({"w": w}, path)
    dense = 1024 * 1024 * 4
    assert report["packed"] == ["w"]
    assert report["dense_bytes"] == dense
    assert report["bytes_on_disk"] == os.path.getsize(path)
    assert 0.5 * dense < report["bytes_on_disk"] < 0.6 * dense  # 0.5 values + 1/32 mask ≈ 0.53


def test_dense_bytes_sums_all_tensors(tmp_path):
    tensors = {"a": sparse((10, 10), 0.9), "b": torch.zeros(7, dtype=torch.float16),
               "c": sparse((3, 3), 0.0, torch.int64)}
    report = save_compact(tensors, tmp_path / "w.safetensors")
    assert report["dense_bytes"] == 400 + 14 + 72


def test_below_min_sparsity_stored_dense(tmp_path):
    w = sparse((64, 64), 0.2)
    path = tmp_path / "w.safetensors"
    report = save_compact({"w": w, "s": sparse((64, 64), 0.5)}, path, min_sparsity=0.3)
    assert report["packed"] == ["s"]
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == {"w", "s::mask", "s::values"}
        assert torch.equal(f.get_tensor("w"), w)
    # A higher threshold keeps even the 50 % matrix dense.
    assert save_compact({"s": sparse((64, 64), 0.5)}, path, min_sparsity=0.6)["packed"] == []


def test_packing_only_when_smaller(tmp_path):
    # uint8 at 10 % zeros: 1/8 (mask) + 0.9 (values) > 1 byte per element, so dense even with min_sparsity=0.
    w = torch.randint(1, 256, (64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    w.view(-1)[: 64 * 64 // 10] = 0
    report = save_compact({"w": w, "f": sparse((64, 64), 0.1)}, tmp_path / "w.safetensors", min_sparsity=0.0)
    assert report["packed"] == ["f"]  # float32 at 10 %: 1/32 + 0.9 < 1 -> worth packing
    loaded, _ = load_compact(tmp_path / "w.safetensors")
    assert torch.equal(loaded["w"], w)


def test_plain_safetensors_file_loads_unchanged(tmp_path):
    tensors = {"a": torch.randn(5, 4), "b::weird": torch.arange(6), "c": torch.zeros(3, 3)}
    path = tmp_path / "plain.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt", "note": "hi"})
    loaded, meta = load_compact(path)
    assert meta == {"format": "pt", "note": "hi"}
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        assert torch.equal(loaded[name], t)
    assert not is_compact(path)
    save_compact({"a": torch.zeros(4, 4)}, tmp_path / "c.safetensors")
    assert is_compact(tmp_path / "c.safetensors")


def test_metadata_comes_back(tmp_path):
    metadata = {"model": "bert", "sparsity": "0.5"}
    _, meta, _ = roundtrip(tmp_path, {"w": sparse((8, 8), 0.5)}, metadata=metadata)
    assert meta == {"model": "bert", "sparsity": "0.5"}
    with safe_open(str(tmp_path / "w.safetensors"), framework="pt") as f:
        raw = f.metadata()
    assert raw["format"] == "dsee-compact-1"
    assert json.loads(raw["dsee_compact"]) == {
        "w": {"format": "bitmask", "shape": [8, 8], "dtype": "float32"}}


def test_bad_names_and_reserved_metadata_raise(tmp_path):
    with pytest.raises(ValueError, match="layer::0"):
        save_compact({"ok": torch.zeros(2), "layer::0": torch.zeros(2)}, tmp_path / "w.safetensors")
    with pytest.raises(TypeError, match="'arr'"):
        save_compact({"arr": np.zeros((2, 2))}, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="dsee_compact"):
        save_compact({"ok": torch.zeros(2)}, tmp_path / "w.safetensors", metadata={"dsee_compact": "{}"})
    assert list(tmp_path.iterdir()) == []


def test_tied_tensors_are_saved(tmp_path):
    emb = torch.randn(10, 4)
    loaded, _, _ = roundtrip(tmp_path, {"emb": emb, "head": emb, "view": emb.view(40)})
    assert torch.equal(loaded["emb"], emb) and torch.equal(loaded["head"], emb)
    assert torch.equal(loaded["view"], emb.view(40))


def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    target = tmp_path / "w.safetensors"
    save_compact({"w": torch.ones(3, 3)}, target)  # an existing good file must survive a failed save
    before = target.read_bytes()

    def failing_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:  # a half-written file, as after a crash mid-write
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save_file)
    monkeypatch.setattr(sparse_io, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_compact({"w": sparse((16, 16), 0.5)}, target)
    with pytest.raises(OSError, match="disk full"):
        save_compact({"w": sparse((16, 16), 0.5)}, tmp_path / "new.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
    assert target.read_bytes() == before


def write_corrupt(tmp_path, entries, index=None, fmt="dsee-compact-1"):
    if index is None:
        index = {"layer.weight": {"format": "bitmask", "shape": [4, 6], "dtype": "float32"}}
    path = tmp_path / "bad.safetensors"
    save_file(entries, str(path), metadata={"format": fmt, "dsee_compact": json.dumps(index)})
    return path


def test_corrupt_values_too_short(tmp_path):
    parts = pack(sparse((4, 6), 0.5))
    short = parts["values"][:-1]
    path = write_corrupt(tmp_path, {"layer.weight::mask": parts["mask"], "layer.weight::values": short})
    with pytest.raises(ValueError, match=r"bad\.safetensors.*layer\.weight.*12 set bits.*11 values"):
        load_compact(path)


def test_corrupt_mask_without_values(tmp_path):
    parts = pack(sparse((4, 6), 0.5))
    path = write_corrupt(tmp_path, {"layer.weight::mask": parts["mask"]})
    with pytest.raises(ValueError, match=r"layer\.weight.*layer\.weight::values' is missing"):
        load_compact(path)
    # The same stray part with no index entry at all is reported too.
    path = write_corrupt(tmp_path, {"other::mask": parts["mask"]}, index={})
    with pytest.raises(ValueError, match=r"'other'"):
        load_compact(path)


def test_corrupt_mask_length_format_and_padding(tmp_path):
    parts = pack(sparse((4, 6), 0.5))
    good = {"layer.weight::mask": parts["mask"], "layer.weight::values": parts["values"]}
    long_mask = torch.cat([parts["mask"], parts["mask"][:1]])
    path = write_corrupt(tmp_path, {**good, "layer.weight::mask": long_mask})
    with pytest.raises(ValueError, match=r"layer\.weight.*3 bytes"):
        load_compact(path)
    csr = {"layer.weight": {"format": "csr", "shape": [4, 6], "dtype": "float32"}}
    path = write_corrupt(tmp_path, good, index=csr)
    with pytest.raises(ValueError, match=r"layer\.weight.*unknown format 'csr'"):
        load_compact(path)
    path = write_corrupt(tmp_path, {**good, "layer.weight": torch.zeros(4, 6)})
    with pytest.raises(ValueError, match=r"layer\.weight.*both dense and packed"):
        load_compact(path)
    path = write_corrupt(tmp_path, good, fmt="dsee-compact-99")
    with pytest.raises(ValueError, match=r"bad\.safetensors.*dsee-compact-99"):
        load_compact(path)
    # Shape 4x5 (20 elements) needs 3 bytes too, but bits 20..23 of the real 4x6 mask may be set.
    odd = pack(torch.ones(4, 6))
    smaller = {"layer.weight": {"format": "bitmask", "shape": [4, 5], "dtype": "float32"}}
    entries = {"layer.weight::mask": odd["mask"], "layer.weight::values": odd["values"][:20]}
    path = write_corrupt(tmp_path, entries, index=smaller)
    with pytest.raises(ValueError, match=r"layer\.weight.*past the end"):
        load_compact(path)
