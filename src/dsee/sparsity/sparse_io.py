"""Compact safetensors files for pruned weights: a bit per element plus the non-zero values.

A matrix with fraction ``s`` of exact zeros costs ``numel/8 + (1 - s)·numel·itemsize`` bytes packed
instead of ``numel·itemsize`` dense (float32 at 50 % sparsity: ≈ 0.53×). A packed tensor ``name``
is stored as two entries, ``name::mask`` (uint8, ``ceil(numel/8)``, little bit order, row-major) and
``name::values`` (1-D, original dtype); the metadata key ``dsee_compact`` records its shape and dtype.

Reconstruction is bitwise exact except for one documented case: ``-0.0`` compares equal to zero, so
it is dropped by the mask and comes back as ``+0.0``. NaN and ±inf are non-zero and round-trip with
their exact bit patterns. Files without the ``dsee_compact`` key are ordinary safetensors files and
load unchanged, so :func:`load_compact` reads any safetensors file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..files import atomic_file

FORMAT = "dsee-compact-1"
_INDEX_KEY = "dsee_compact"  # JSON {name: {"format": "bitmask", "shape": [...], "dtype": "float32"}}
_RESERVED = ("format", _INDEX_KEY)  # metadata keys this module owns


def pack(tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """Bitmask form of ``tensor`` (any shape, ``numel`` elements, ``nnz`` of them non-zero).

    Returns ``{"mask": uint8 (ceil(numel/8),), "values": tensor.dtype (nnz,)}``, both on CPU.
    Bit ``i`` of the mask (little bit order) says whether element ``i`` in row-major order is
    non-zero. ``-0.0 == 0`` so negative zeros are not kept; NaN/inf are (``NaN != 0``).
    """
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    keep = flat != 0
    bits = np.packbits(keep.numpy(), bitorder="little")
    return {"mask": torch.from_numpy(bits), "values": flat[keep]}


def unpack(parts: dict[str, torch.Tensor], shape: tuple[int, ...] | list[int] | torch.Size,
           dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`pack`: ``parts`` = {"mask": uint8 (ceil(numel/8),), "values": (nnz,)}.

    Returns a CPU tensor of ``shape`` and ``dtype``; zeros (including former ``-0.0``) are ``+0.0``.
    Raises ``ValueError`` if the two parts do not describe a tensor of that shape and dtype.
    """
    if "mask" not in parts or "values" not in parts:
        raise ValueError(f"need both 'mask' and 'values', got {sorted(parts)}")
    mask, values = parts["mask"].cpu(), parts["values"].cpu()
    numel = math.prod(shape)
    if mask.dtype != torch.uint8 or mask.dim() != 1 or mask.numel() != (numel + 7) // 8:
        raise ValueError(f"mask must be uint8 of {(numel + 7) // 8} bytes for shape {list(shape)}, "
                         f"got {mask.dtype} of shape {list(mask.shape)}")
    if values.dtype != dtype or values.dim() != 1:
        raise ValueError(f"values must be 1-D {dtype}, got {values.dtype} of shape {list(values.shape)}")
    bits = np.unpackbits(mask.numpy(), bitorder="little")
    # Padding bits past numel must be clear, else the file was not written by pack().
    if bits[numel:].any():
        raise ValueError("mask has bits set past the end of the tensor")
    keep = torch.from_numpy(bits[:numel].astype(bool))
    if int(keep.sum()) != values.numel():
        raise ValueError(f"mask has {int(keep.sum())} set bits but there are {values.numel()} values")
    out = torch.zeros(numel, dtype=dtype)
    out[keep] = values  # an element copy: bit patterns (NaN payloads included) are preserved
    return out.reshape(tuple(shape))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def save_compact(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                 metadata: dict[str, str] | None = None, min_sparsity: float = 0.3) -> dict:
    """Write ``tensors`` to one safetensors file at ``path``, packing the sparse matrices.

    A tensor is packed when it has >= 2 dims, a zero fraction >= ``min_sparsity`` and its packed
    form is smaller than its dense form; all others are stored dense under their own name. The
    write is atomic (temporary file in the same directory, then ``os.replace``). Tensors sharing
    storage (tied weights) are saved as independent copies. Returns
    ``{"bytes_on_disk": int, "dense_bytes": sum(numel * element_size), "packed": [names]}``.
    """
    metadata = dict(metadata or {})
    for key in _RESERVED:
        if key in metadata:  # it would be overwritten and could not come back: refuse instead
            raise ValueError(f"save_compact: metadata key {key!r} is reserved")
    for name, t in tensors.items():
        if "::" in name:  # '::' separates a packed tensor's name from its parts
            raise ValueError(f"save_compact: tensor name {name!r} contains '::'")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"save_compact: {name!r} is a {type(t).__name__}, not a torch.Tensor")
    entries: dict[str, torch.Tensor] = {}
    index: dict[str, dict] = {}
    storages: set[int] = set()
    dense_bytes = 0
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        dense_bytes += t.numel() * t.element_size()
        if t.dim() >= 2 and t.numel() > 0:
            zeros = int((t == 0).sum())  # NaN != 0, so NaNs count as non-zero, as in pack()
            packed_bytes = (t.numel() + 7) // 8 + (t.numel() - zeros) * t.element_size()
            if zeros / t.numel() >= min_sparsity and packed_bytes < t.numel() * t.element_size():
                parts = pack(t)
                entries[f"{name}::mask"], entries[f"{name}::values"] = parts["mask"], parts["values"]
                index[name] = {"format": "bitmask", "shape": list(t.shape), "dtype": _dtype_name(t.dtype)}
                continue
        ptr = t.untyped_storage().data_ptr()
        if ptr in storages and t.numel() > 0:  # safetensors refuses shared storage
            t = t.clone()
        storages.add(ptr)
        entries[name] = t
    metadata.update({"format": FORMAT, _INDEX_KEY: json.dumps(index)})

    path = Path(path)
    with atomic_file(path) as tmp:
        save_file(entries, str(tmp), metadata=metadata)
    return {"bytes_on_disk": os.path.getsize(path), "dense_bytes": dense_bytes, "packed": list(index)}


def _read_index(path: str | os.PathLike, metadata: dict[str, str]) -> dict[str, dict] | None:
    """The parsed ``dsee_compact`` index, or None for an ordinary safetensors file."""
    if _INDEX_KEY not in metadata:
        return None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown compact format {metadata.get('format')!r} (expected {FORMAT!r})")
    try:
        index = json.loads(metadata[_INDEX_KEY])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: metadata {_INDEX_KEY!r} is not valid JSON: {e}") from None
    if not isinstance(index, dict):
        raise ValueError(f"{path}: metadata {_INDEX_KEY!r} is not a JSON object")  # noqa: TRY004 (bad file)
    return index


def is_compact(path: str | os.PathLike) -> bool:
    """True if ``path`` is a safetensors file written by :func:`save_compact`."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    return metadata.get("format") == FORMAT and _INDEX_KEY in metadata


def load_compact(path: str | os.PathLike, device: str | torch.device = "cpu"
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a file written by :func:`save_compact` (or any safetensors file).

    Returns ``(tensors, metadata)``: tensors under their original names, shapes and dtypes on
    ``device``, and the caller's metadata without this module's keys. Raises ``ValueError`` naming
    the file and tensor if a packed tensor is inconsistent or incomplete.
    """
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        raw = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    index = _read_index(path, metadata)
    if index is None:
        return {k: v.to(device) for k, v in raw.items()}, metadata
    out: dict[str, torch.Tensor] = {}
    for name, info in index.items():
        where = f"{path}: tensor {name!r}"
        fmt = info.get("format") if isinstance(info, dict) else info
        if fmt != "bitmask":
            raise ValueError(f"{where}: unknown format {fmt!r}")
        dtype, shape = getattr(torch, str(info.get("dtype")), None), info.get("shape")
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"{where}: unknown dtype {info.get('dtype')!r}")  # noqa: TRY004 (bad file)
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"{where}: bad shape {shape!r}")
        for part in ("mask", "values"):
            if f"{name}::{part}" not in raw:
                raise ValueError(f"{where}: entry '{name}::{part}' is missing")
        if name in raw:
            raise ValueError(f"{where}: stored both dense and packed")
        try:
            parts = {p: raw.pop(f"{name}::{p}") for p in ("mask", "values")}
            out[name] = unpack(parts, shape, dtype).to(device)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    for key, t in raw.items():
        if "::" in key:  # a part whose tensor is not in the index, e.g. '::mask' without '::values'
            raise ValueError(f"{path}: tensor {key.split('::')[0]!r}: entry {key!r} is not in the index")
        out[key] = t.to(device)
    return out, {k: v for k, v in metadata.items() if k not in _RESERVED}
