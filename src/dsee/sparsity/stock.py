"""Stock configs for structurally pruned models: when a plain ``from_pretrained`` can load them.

A config describes one head count, one key/value head count, one head size and one FFN size for
every layer. A pruned model has a stock config when

- every layer kept the same number of query heads, key/value heads and FFN neurons (a uniform
  plan: ``importance.removal_plan(..., uniform=True)``, ``dsee prune --uniform``), and
- if heads were removed, its architecture has a config field for the head size apart from
  hidden size / heads (``arch.ConfigKeys.head_size``: the ``head_dim`` of Llama, Mistral, Qwen2/3,
  Gemma/Gemma2). BERT, RoBERTa, MPNet and GPT-2 derive the head size from the head count, so 9
  heads of 32 rows in a 384-wide model would read back as 9 heads of 42: no stock config describes
  them (ONNX does: ``dsee.deploy.onnx_export``). DeBERTa-v2 reads an ``attention_head_size`` but
  still refuses a hidden size that is not a multiple of the head count. FFN sizes are a field of
  their own everywhere, so FFN-only pruning still gives a stock config.

``stock_config(model)`` returns a copy of ``model.config`` with these fields set to the model's
current sizes. The head size is always written explicitly: with fewer heads, hidden_size // heads
would be wrong (SmolLM2: 6 heads of 64 rows in a 576-wide model, not 6 of 96).
"""

from __future__ import annotations

import copy

from torch import nn

from ..arch import ConfigKeys, blocks, ffn_size, head_dim, model_spec, num_attention_heads, num_key_value_heads

ONNX_HINT = "export it to ONNX (dsee export RUN --format onnx) or load it with dsee.load_pretrained"


def _present(config, keys: tuple[str, ...]) -> str | None:
    """The first of ``keys`` the config has (read or write it under that name)."""
    return next((k for k in keys if hasattr(config, k)), None)


def check_describable(model: nn.Module, *, heads: bool, ffn: bool) -> None:
    """Raise ValueError unless a uniform removal of heads (``heads``) and FFN neurons (``ffn``) from
    ``model`` would leave a model that a stock config of its type describes. Checks the architecture
    only; call it before pruning so that nothing is scored or removed in vain."""
    spec = model_spec(model)
    model_type = getattr(model.config, "model_type", None)
    if spec is None or spec.block is None:
        raise ValueError(f"model type {model_type!r} has no known block layout: it cannot be pruned structurally")
    keys = spec.keys
    if heads and (spec.keys.head_size is None or _present(model.config, keys.heads) is None):
        raise ValueError(f"{model_type} configs derive the head size from hidden_size / {keys.heads[0]}: a model "
                         "with fewer heads has no stock config (FFN neurons alone can be removed uniformly); "
                         f"{ONNX_HINT}")
    if ffn and _present(model.config, keys.ffn) is None:
        raise ValueError(f"{model_type} configs have no FFN-size field ({', '.join(keys.ffn)}): a model with fewer "
                         "FFN neurons has no stock config")


def stock_config(model: nn.Module):
    """A copy of ``model.config`` that describes ``model``'s current shapes (see the module doc).

    Raises ValueError, saying why, when no config of the model's type can: sizes differ between
    layers, or heads were removed from an architecture without a head-size field.
    """
    config = copy.deepcopy(model.config)
    spec = model_spec(model)
    if spec is None or spec.block is None:
        return config  # no structured pruning exists for this type: its shapes are the config's
    all_blocks = blocks(model)
    per_layer = {"heads": [b.num_heads for b in all_blocks], "key/value heads": [b.num_kv_heads for b in all_blocks],
                 "FFN neurons": [b.ffn_size for b in all_blocks]}
    uneven = {what: sizes for what, sizes in per_layer.items() if len(set(sizes)) > 1}
    if uneven:
        shown = "; ".join(f"{what} per layer {sizes}" for what, sizes in uneven.items())
        raise ValueError(f"the layers differ ({shown}): no config describes per-layer sizes; {ONNX_HINT}")
    heads, kv_heads, neurons = (sizes[0] for sizes in per_layer.values())
    keys: ConfigKeys = spec.keys
    if (heads, kv_heads) != (num_attention_heads(config), num_key_value_heads(config)):
        check_describable(model, heads=True, ffn=False)
        size = head_dim(config)  # read before the head count changes: the explicit field or hidden / heads
        setattr(config, _present(config, keys.heads), heads)
        kv_field = _present(config, keys.kv_heads)
        if kv_field is not None:
            setattr(config, kv_field, kv_heads)
        elif kv_heads != heads:  # pragma: no cover - grouped-query attention always has the field
            raise ValueError(f"{config.model_type} configs have no key/value head count")
        setattr(config, keys.head_size, size)
    if neurons != ffn_size(config):
        check_describable(model, heads=False, ffn=True)
        setattr(config, _present(config, keys.ffn), neurons)
    return config


def stock_problem(model: nn.Module) -> str | None:
    """Why ``model`` has no stock config, or None when it has one."""
    try:
        stock_config(model)
    except ValueError as err:
        return str(err)
    return None
