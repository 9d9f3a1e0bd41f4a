"""Saving and reloading whole models whose shapes or weights DSEE changed (paper §3.2).

    save_pretrained(model, DIR)   config.json + dsee_model.json + weights, written atomically
    load_pretrained(DIR)          the same model back: structure replayed, adapters and masks in place

``dsee_model.json`` holds what a stock ``from_pretrained`` cannot know: the heads and FFN neurons
removed per layer (``structure.structure_plan``), the DSEE adapters still attached (config, and
the number of sparse entries per matrix, which head removal changes), and which adapted layers
carry a prune mask. ``load_pretrained`` builds the model from config.json, replays that, and loads
the weights strictly, so every key and shape must match.

Weights: ``model.safetensors`` (dense), or with ``compact=True`` ``model.compact.safetensors``,
where mostly-zero matrices are stored as a bitmask plus their non-zero values (``sparse_io``).
A model with no adapters and dense weights whose shapes a stock config describes (its original
shapes, or the same smaller sizes in every layer where the architecture's config can say so:
``stock.stock_config``) is written by transformers' own ``save_pretrained``, with that config, so
a plain ``AutoModel*.from_pretrained(DIR)`` and ``transformers.pipeline`` load it as well; the
manifest then says ``"stock": true`` and records what was removed, for the record only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapters.config import DSEEConfig
from ..adapters.inject import dsee_layers, inject
from ..files import atomic_directory
from ..adapters.layer import linear_shape
from ..arch import model_class_name
from .stock import stock_config, stock_problem
from .structure import apply_structure_, structure_plan

MANIFEST = "dsee_model.json"
DENSE_WEIGHTS = "model.safetensors"
COMPACT_WEIGHTS = "model.compact.safetensors"
FORMAT = "dsee-model-1"


def manifest_of(model: nn.Module) -> dict[str, Any]:
    state = getattr(model, "dsee_state", None)
    adapter = None
    if state is not None:
        adapter = {
            "config": state.config.to_dict(),
            "targets_matched": list(state.targets_matched),
            "modules_to_save": list(state.modules_to_save),
            "num_sparse": {f"{name}.{layer.delta_name(s)}": d.num_sparse
                           for name, layer in dsee_layers(model) for s, d, _ in layer.deltas()},
        }
    return {
        "format": FORMAT,
        "architecture": model_class_name(model),
        "structure": structure_plan(model),
        "adapter": adapter,
        "masked": {name: list(linear_shape(layer)) for name, layer in dsee_layers(model) if layer.prune_mask is not None},
    }


def _is_stock(manifest: dict[str, Any]) -> bool:
    """Did ``save_pretrained`` write this directory with transformers' own files? (Manifests written
    before ``"stock"`` existed: original shapes and no adapters.)"""
    if "stock" in manifest:
        return bool(manifest["stock"])
    structure = manifest["structure"]
    return not structure["heads"] and not structure["neurons"] and manifest["adapter"] is None


def _untied_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The state dict with tensors that share storage (tied embeddings) cloned: safetensors refuses shares."""
    seen: set[int] = set()
    out = {}
    for key, value in (model.state_dict() if state_dict is None else state_dict).items():
        ptr = value.untyped_storage().data_ptr()
        out[key] = value.detach().clone() if ptr in seen else value.detach()
        seen.add(ptr)
    return out


def save_pretrained(model: nn.Module, directory: str | Path, *, compact: bool = False, tokenizer=None,
                    extra_files: dict[str, str] | None = None,
                    state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Write ``model`` to ``directory`` (replaced whole, atomically); returns sizes and the format used.

    ``state_dict``: the model's weights when its own are not whole (a sharded model's, gathered).

    Returns ``{"weights_file", "bytes_on_disk", "dense_bytes", "stock", "stock_problem"}``; ``stock``
    is True when a plain transformers ``from_pretrained`` loads the directory, ``stock_problem``
    says why not otherwise.
    """
    manifest = manifest_of(model)
    if manifest["adapter"] is not None:
        problem = "the adapters are not merged (dsee.merge_dsee)"
    elif compact:
        problem = "compact weights are dsee's own format"
    else:
        problem = stock_problem(model)
    manifest["stock"] = stock = problem is None
    with atomic_directory(directory) as tmp:
        if stock:
            model.save_pretrained(tmp, state_dict=state_dict)
            if manifest["structure"]["heads"] or manifest["structure"]["neurons"]:
                # the sizes of the pruned layers, over the config transformers wrote (made after its
                # save, so that the fields it sets there, e.g. architectures, are kept)
                stock_config(model).save_pretrained(tmp)
            weights = tmp / DENSE_WEIGHTS
            dense_bytes = weights.stat().st_size
        else:
            model.config.save_pretrained(tmp)
            tensors = _untied_state_dict(model, state_dict)
            if compact:
                from .sparse_io import save_compact

                weights = tmp / COMPACT_WEIGHTS
                dense_bytes = save_compact(tensors, weights, metadata={"dsee": FORMAT})["dense_bytes"]
            else:
                from safetensors.torch import save_file

                weights = tmp / DENSE_WEIGHTS
                save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(weights),
                          metadata={"format": "pt", "dsee": FORMAT})
                dense_bytes = weights.stat().st_size
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        size = weights.stat().st_size
    return {"weights_file": weights.name, "bytes_on_disk": size, "dense_bytes": dense_bytes, "stock": stock,
            "stock_problem": problem}


def load_pretrained(directory: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """Load a directory written by ``save_pretrained`` (or a stock transformers checkpoint) in eval mode."""
    import transformers

    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        config = transformers.AutoConfig.from_pretrained(directory)
        cls = getattr(transformers, (config.architectures or ["AutoModel"])[0])
        return cls.from_pretrained(directory).to(device).eval()
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as err:
        raise ValueError(f"{manifest_path}: not readable JSON ({err})") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path}: unknown format {manifest.get('format')!r} (expected {FORMAT})")
    cls = getattr(transformers, manifest["architecture"], None)
    if cls is None:
        raise ValueError(f"{manifest_path}: transformers has no class {manifest['architecture']!r}")
    if (directory / DENSE_WEIGHTS).is_file() and _is_stock(manifest):
        return cls.from_pretrained(directory).to(device).eval()
    config = transformers.AutoConfig.from_pretrained(directory)
    model = cls(config)
    apply_structure_(model, manifest["structure"])
    adapter = manifest.get("adapter")
    if adapter is not None:
        inject(model, DSEEConfig.from_dict(adapter["config"]), select_support=False)
        for prefix, count in adapter["num_sparse"].items():
            delta = model.get_submodule(prefix)
            delta.sparse_values = nn.Parameter(torch.zeros(count), requires_grad=delta.sparse_values.requires_grad)
            delta.sparse_indices = torch.zeros(count, dtype=torch.long)
    for name, shape in manifest.get("masked", {}).items():
        model.get_submodule(name).prune_mask = torch.ones(shape, dtype=torch.bool)
    state = _read_weights(directory)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{directory}: the weights do not fit the model described by {MANIFEST}: "
                         f"missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}")
    return model.to(device).eval()


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError

    if (directory / COMPACT_WEIGHTS).is_file():
        from .sparse_io import load_compact

        try:
            return load_compact(directory / COMPACT_WEIGHTS)[0]
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{directory / COMPACT_WEIGHTS}: not a readable safetensors file ({err})") from None
    if (directory / DENSE_WEIGHTS).is_file():
        from ..adapters.io import read_safetensors

        return read_safetensors(directory / DENSE_WEIGHTS)[1]
    raise FileNotFoundError(f"{directory}: no {DENSE_WEIGHTS} or {COMPACT_WEIGHTS}")
