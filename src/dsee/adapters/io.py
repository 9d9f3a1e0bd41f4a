"""Adapter files: ``dsee_config.json`` + ``adapter_model.safetensors``, written atomically.

The safetensors file holds, per adapted matrix, ``lora_A``, ``lora_B``, ``sparse_values`` and
``sparse_indices`` (Ω, int64), plus the parameters of ``modules_to_save``: O(r·(d_in + d_out) + N)
per matrix, never a dense S. Its metadata records the base model's type and the shapes of the
adapted matrices, so loading onto another base model fails with a clear message.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..files import atomic_directory, atomic_file, atomic_write_text  # noqa: F401 (re-exported)
from .config import CONFIG_NAME, DSEEConfig
from .inject import adapter_state_dict, dsee_layers, inject, is_adapted, remove_dsee
from .layer import linear_weight

WEIGHTS_NAME = "adapter_model.safetensors"


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    with atomic_file(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


# the dtypes frozen weights are stored in: an adapter is fingerprinted in each, so that loading it onto the
# same base weights stored in another of them (fp32-trained, loaded into a bf16 model) is recognised
FINGERPRINT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def base_fingerprint(model: nn.Module, dtype: torch.dtype = torch.float32) -> str:
    """A hash of the frozen weights the adapters sit on (Ω was chosen from them), cast to ``dtype``."""
    return fingerprints_of(adapted_weights(model), {"fp": dtype})["fp"]


def adapted_weights(model: nn.Module):
    """``(adapted module name, W0 as (d_out, d_in))`` in the model's order."""
    return ((name, linear_weight(layer.base_layer)) for name, layer in dsee_layers(model))


def fingerprints_of(weights, dtypes: dict[str, torch.dtype] = FINGERPRINT_DTYPES) -> dict[str, str]:
    """``{name: base_fingerprint in dtype}`` of ``(adapted module name, W0 as (d_out, d_in))`` pairs in the
    model's order, in one pass: the weights may come one at a time (a model read tensor by tensor)."""
    digests = {name: hashlib.sha256() for name in dtypes}
    for module_name, weight in weights:
        for name, dtype in dtypes.items():
            digests[name].update(module_name.encode())
            digests[name].update(weight.detach().to(dtype).float().cpu().contiguous().numpy().tobytes())
    return {name: digest.hexdigest()[:16] for name, digest in digests.items()}


def base_fingerprints(model: nn.Module) -> dict[str, str]:
    """``base_fingerprint`` in every dtype of ``FINGERPRINT_DTYPES``, and ``dtype``: the one the weights are in."""
    layers = dsee_layers(model)
    dtype = str(linear_weight(layers[0][1].base_layer).dtype).removeprefix("torch.") if layers else "float32"
    return {"dtype": dtype, **fingerprints_of(adapted_weights(model))}


def _same_base(metadata: dict[str, str], model: nn.Module) -> tuple[bool, str, str]:
    """Whether ``model``'s frozen weights are those the adapter was saved with, up to the dtype they are stored in;
    with the two fingerprints compared (for the message).

    A dtype-only difference is no difference: the weights are compared in the less precise of the two dtypes
    (an fp32-trained adapter on the bf16 copy of its base model compares bf16 with bf16).
    """
    saved = metadata.get("base_fingerprint")
    here = base_fingerprints(model)
    if not saved or saved == here["float32"]:
        return True, saved or "", here["float32"]
    try:
        coarse = json.loads(metadata.get("base_fingerprints", "{}"))
    except ValueError:
        coarse = {}
    for dtype in {coarse.get("dtype"), here["dtype"]} & (set(FINGERPRINT_DTYPES) - {"float32"}):
        if coarse.get(dtype) == here[dtype]:
            return True, coarse[dtype], here[dtype]
    return False, saved, here["float32"]


def save_adapter(model: nn.Module, directory: str | Path, *, tensors: dict[str, torch.Tensor] | None = None,
                 fingerprint: dict[str, str] | None = None) -> Path:
    """Save the adapter of ``model`` to ``directory`` (created if needed); returns the directory.

    ``tensors``: the adapter's tensors (``adapter_state_dict`` keys) when the model's own are not
    whole (a sharded model's, gathered); ``fingerprint``: the base weights' ``base_fingerprints``
    when the model's weights are not those the adapter goes on (sharded, or stored in bf16).
    """
    state = getattr(model, "dsee_state", None)
    if state is None:
        raise ValueError("save_adapter: this model has no DSEE adapters")
    from ..arch import model_class_name

    directory = Path(directory)
    expected = adapter_state_dict(model)
    if tensors is None:
        tensors = expected
    elif set(tensors) != set(expected):
        raise ValueError(f"save_adapter: tensors= holds other keys than the model's adapter "
                         f"(missing {sorted(set(expected) - set(tensors))[:3]})")
    model_config = getattr(model, "config", None)
    metadata = {
        "format": "dsee-adapter-1",
        "model_type": str(getattr(model_config, "model_type", model_class_name(model))),
        "model_class": model_class_name(model),
        "targets_matched": json.dumps(list(state.targets_matched)),
        "modules_to_save": json.dumps(list(state.modules_to_save)),
    }
    fingerprints = dict(fingerprint or base_fingerprints(model))
    metadata["base_fingerprint"] = fingerprints.pop("float32")
    metadata["base_fingerprints"] = json.dumps(fingerprints, sort_keys=True)
    atomic_save_safetensors(tensors, directory / WEIGHTS_NAME, metadata)
    state.config.save(directory)
    return directory


def read_safetensors(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file; a clear error naming the file when it is unreadable
    (truncated, corrupted, not safetensors) or holds NaN or infinite values."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except FileNotFoundError:
        raise  # gone since the check above (a directory swap): the caller may read the new one
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    bad = sorted(k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all())
    if bad:
        raise ValueError(f"{path}: NaN or infinite values in {', '.join(bad[:5])}" + (" ..." if len(bad) > 5 else ""))
    return metadata, tensors


def _problems(saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    """What keeps the saved adapter tensors from fitting the model's: missing, extra, shapes, bad Ω."""
    problems = [f"missing {k}" for k in sorted(set(expected) - set(saved))]
    problems += [f"unexpected {k}" for k in sorted(set(saved) - set(expected))]
    for key in sorted(set(saved) & set(expected)):
        if saved[key].shape != expected[key].shape:
            problems.append(f"{key}: saved {tuple(saved[key].shape)}, model {tuple(expected[key].shape)}")
        elif key.endswith(".sparse_indices") and saved[key].numel():
            index = saved[key]
            numel = int(expected[key.replace("sparse_indices", "lora_A")].shape[1]) * int(
                expected[key.replace("sparse_indices", "lora_B")].shape[0])
            if int(index.min()) < 0 or int(index.max()) >= numel or index.unique().numel() != index.numel():
                problems.append(f"{key} holds indices outside the matrix or repeated")
    return problems


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Load an adapter saved by ``save_adapter`` into ``model`` (in place) and return it.

    ``model`` may be a bare base model (the adapters are added first, with the saved config and
    the saved Ω: no support selection runs) or a model already given ``add_dsee`` with the same
    config. Raises ValueError, leaving the model as it was, when the file is unreadable or holds
    non-finite values, or belongs to another base model or config (missing keys, other shapes).
    """
    directory = Path(directory)
    config = DSEEConfig.load(directory)
    path = directory / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {directory}")
    metadata, saved = read_safetensors(path)
    added_here = not is_adapted(model)
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}  # as they were, for a refusal
    if added_here:
        inject(model, config, select_support=False)
    elif model.dsee_state.config != config:
        raise ValueError(f"{directory}: the adapter's config {config.to_dict()} differs from the model's "
                         f"{model.dsee_state.config.to_dict()}")
    expected = adapter_state_dict(model)
    problems = _problems(saved, expected)
    if problems:
        if added_here:
            remove_dsee(model)
            for name, p in model.named_parameters():  # remove_dsee leaves everything trainable
                p.requires_grad_(trainable[name])
        shown = "; ".join(problems[:8]) + (f"; ... {len(problems) - 8} more" if len(problems) > 8 else "")
        raise ValueError(f"{path} does not fit this model (saved for model type {metadata.get('model_type', '?')}): "
                         f"{shown}")
    with torch.no_grad():
        for key, tensor in expected.items():
            tensor.copy_(saved[key].to(tensor.dtype))
    same, saved_print, model_print = _same_base(metadata, model)
    if not same:
        warnings.warn(
            f"{directory}: the base weights differ from those the adapter was trained on "
            f"(fingerprint {saved_print} vs {model_print}); outputs will differ",
            stacklevel=2,
        )
    return model


__all__ = ["save_adapter", "load_adapter", "atomic_write_text", "atomic_directory", "WEIGHTS_NAME", "CONFIG_NAME"]
