"""Per-architecture facts, one ``ModelSpec`` per model type, and the one lookup for them.

A spec says what DSEE adapts by default (paper §3.1: W_q and W_v of every self-attention layer, as
LoRA does), how a fused q|k|v projection is laid out, where the heads and FFN neurons of each block
live (paper §3.2: structured sparsity removes them), and which config fields hold the head, hidden
and FFN sizes:

    block i ─ attention: q, k, v (or one fused qkv) ─► heads of head_dim rows each ─► o (columns)
            └ FFN: ffn_in (rows = neurons; Llama: gate and up) ─► act ─► ffn_out (columns)

Adding an architecture is one ``register(ModelSpec(...))`` plus its entry in the registry test.
Transformers 5 has no ``prune_heads``: the block layout is what lets ``dsee.sparsity.structure``
slice the matrices itself. Targets are matched against module names as an exact name, a dotted
suffix or a regular expression (the rules of PEFT), among ``nn.Linear`` and ``Conv1D`` modules only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

try:  # GPT-2's Conv1D: y = x·W + b with W stored (in × out), i.e. loralib's fan_in_fan_out
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers is a dependency
    Conv1D = ()  # type: ignore[assignment]

# heads trained in full by default for sequence classification (PEFT's choice as well)
HEAD_NAMES = ("classifier", "score")
# the linear maps of a transformer that adapters and pruning work on
LINEAR_TYPES = (nn.Linear, Conv1D)


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(d_out, d_in) of an ``nn.Linear``, a ``Conv1D``, or a wrapper of one that keeps it as ``base_layer``
    (``DSEELinear``)."""
    module = getattr(module, "base_layer", module)
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if isinstance(module, Conv1D):
        return module.nf, module.weight.shape[0]
    raise TypeError(f"not a linear layer: {type(module).__name__}")


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight as (d_out, d_in), a view for ``Conv1D`` (whose storage is in × out)."""
    return module.weight.T if isinstance(module, Conv1D) else module.weight


@dataclass(frozen=True)
class FusedLayout:
    """A projection computing q, k and v in one matrix of 3·d output rows.

    kind "blocks": rows [q | k | v], each d contiguous rows (GPT-2's ``c_attn``).
    kind "per_head": rows [q_h, k_h, v_h] per head h, each head_dim rows (DeBERTa-v1's ``in_proj``).
    """

    module: str  # dotted suffix of the fused module's name (relative to the block)
    kind: str
    slices: tuple[str, ...] = ("q", "v")  # the slices adapted by default

    def rows(self, slice_name: str, out_features: int, num_heads: int) -> torch.Tensor:
        """Output rows of ``slice_name`` ("q", "k" or "v"), ascending, as a LongTensor."""
        part = "qkv".index(slice_name)
        if out_features % 3:
            raise ValueError(f"fused projection with {out_features} output rows is not 3 equal parts")
        width = out_features // 3
        if self.kind == "blocks":
            return torch.arange(part * width, (part + 1) * width)
        head_dim = width // num_heads
        heads = torch.arange(num_heads).unsqueeze(1) * 3 * head_dim  # (H, 1)
        return (heads + part * head_dim + torch.arange(head_dim)).flatten()  # (H·head_dim,)

    def head_rows(self, kept: torch.Tensor, out_features: int, num_heads: int) -> torch.Tensor:
        """The q, k and v rows of the heads ``kept`` (ascending LongTensor), in the matrix's order."""
        head_dim = out_features // 3 // num_heads
        within = (kept.unsqueeze(1) * head_dim + torch.arange(head_dim)).flatten()  # positions inside a slice
        return torch.cat([self.rows(s, out_features, num_heads)[within] for s in "qkv"]).sort().values


@dataclass(frozen=True)
class BlockLayout:
    """Module names inside one transformer block, relative to the block."""

    layers: str  # the block list, relative to model.base_model: "encoder.layer", "h", "layers"
    attention: str  # the module holding the head-count attributes
    q: str = ""
    k: str = ""
    v: str = ""
    qkv: str = ""  # a fused q|k|v projection (laid out as the spec's ``fused``); then q, k, v are ""
    o: str = ""
    ffn_in: tuple[str, ...] = ()  # each has one output row per neuron
    ffn_out: str = ""  # one input column per neuron
    # extra projections with one row per head, like q (DeBERTa-v2's relative-position projections)
    head_rows_extra: tuple[str, ...] = field(default=())
    relative_bias_heads: bool = False  # MPNet: a (B, heads, L, L) bias shared by all blocks is passed in


@dataclass(frozen=True)
class ConfigKeys:
    """Where a model config keeps its sizes (the first field present wins)."""

    heads: tuple[str, ...] = ("num_attention_heads", "n_head", "num_heads")
    kv_heads: tuple[str, ...] = ("num_key_value_heads",)
    hidden: tuple[str, ...] = ("hidden_size", "n_embd", "d_model")
    ffn: tuple[str, ...] = ("intermediate_size", "n_inner", "ffn_dim")
    ffn_multiple: int = 4  # FFN size = ffn_multiple · hidden when the field is None (GPT-2's n_inner)
    # the field that sets the rows per head apart from hidden / heads (Llama's head_dim); None: the model
    # derives it from the head count, so a model with fewer heads has no stock config (``sparsity.stock``)
    head_size: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """Everything dsee needs to know about one model type."""

    model_type: str
    targets: tuple[str, ...] = ()  # default adapter targets (dotted suffixes)
    fused: FusedLayout | None = None  # a default target adapted slice by slice
    heads: tuple[str, ...] = HEAD_NAMES  # top-level modules a classifier adds: trained in full
    block: BlockLayout | None = None  # None: no structured pruning or FLOPs for this type
    keys: ConfigKeys = field(default_factory=ConfigKeys)

    @property
    def has_default_targets(self) -> bool:
        return bool(self.targets) or self.fused is not None


MODEL_SPECS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add (or replace) the spec of ``spec.model_type``."""
    MODEL_SPECS[spec.model_type] = spec
    return spec


_BERT_BLOCK = BlockLayout(
    layers="encoder.layer", attention="attention.self", q="attention.self.query", k="attention.self.key",
    v="attention.self.value", o="attention.output.dense", ffn_in=("intermediate.dense",), ffn_out="output.dense",
)
_LLAMA_BLOCK = BlockLayout(
    layers="layers", attention="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
    o="self_attn.o_proj", ffn_in=("mlp.gate_proj", "mlp.up_proj"), ffn_out="mlp.down_proj",
)
_BERT_QV = ("attention.self.query", "attention.self.value")
_HEAD_DIM = ConfigKeys(head_size="head_dim")
_QV_PROJ = ("q_proj", "v_proj")

for _type in ("bert", "roberta", "xlm-roberta", "electra"):
    register(ModelSpec(_type, targets=_BERT_QV, block=_BERT_BLOCK))
register(ModelSpec("mpnet", targets=("attn.q", "attn.v"), block=BlockLayout(
    layers="encoder.layer", attention="attention.attn", q="attention.attn.q", k="attention.attn.k",
    v="attention.attn.v", o="attention.attn.o", ffn_in=("intermediate.dense",), ffn_out="output.dense",
    relative_bias_heads=True,
)))
register(ModelSpec("distilbert", targets=("attention.q_lin", "attention.v_lin")))
# DeBERTa's ContextPooler belongs to the classification head: new, so trained like it
register(ModelSpec("deberta", fused=FusedLayout("attention.self.in_proj", "per_head"), heads=("pooler", "classifier")))
register(ModelSpec("deberta-v2", targets=("attention.self.query_proj", "attention.self.value_proj"),
                   heads=("pooler", "classifier"), block=BlockLayout(
    layers="encoder.layer", attention="attention.self", q="attention.self.query_proj",
    k="attention.self.key_proj", v="attention.self.value_proj", o="attention.output.dense",
    ffn_in=("intermediate.dense",), ffn_out="output.dense",
    head_rows_extra=("attention.self.pos_key_proj", "attention.self.pos_query_proj"),
)))
register(ModelSpec("gpt2", fused=FusedLayout("attn.c_attn", "blocks"), block=BlockLayout(
    layers="h", attention="attn", qkv="attn.c_attn", o="attn.c_proj", ffn_in=("mlp.c_fc",), ffn_out="mlp.c_proj",
)))
for _type in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"):
    register(ModelSpec(_type, targets=_QV_PROJ, block=_LLAMA_BLOCK, keys=_HEAD_DIM))
register(ModelSpec("opt", targets=_QV_PROJ))
register(ModelSpec("phi3"))  # a fused qkv_proj of its own layout: give explicit targets


def model_spec(model_or_type: nn.Module | str | None) -> ModelSpec | None:
    """The spec of a model (by its ``config.model_type``), a config, or a model type; None if unknown."""
    if model_or_type is None or isinstance(model_or_type, str):
        model_type = model_or_type
    else:
        config = getattr(model_or_type, "config", model_or_type)
        model_type = getattr(config, "model_type", None)
    return MODEL_SPECS.get(model_type or "")


def model_class_name(model: nn.Module) -> str:
    """The class name of ``model`` as built: FSDP2's ``fully_shard`` swaps in a subclass "FSDP<name>"."""
    cls = type(model)
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch < 2.6
        return cls.__name__
    return next(c for c in cls.__mro__ if not issubclass(c, FSDPModule)).__name__


def name_matches(name: str, target: str) -> bool:
    """PEFT's rule: exact name, dotted suffix, or a regular expression matching the whole name."""
    if name == target or name.endswith("." + target):
        return True
    try:
        return re.fullmatch(target, name) is not None
    except re.error:
        return False


# --- sizes from a config ------------------------------------------------------------------------


def _keys(config) -> ConfigKeys:
    spec = model_spec(getattr(config, "model_type", None))
    return spec.keys if spec is not None else ConfigKeys()


def config_int(config, keys: tuple[str, ...], what: str) -> int | None:
    """The first integer among ``keys`` of ``config``; None if the fields exist but are None."""
    present = False
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        present = present or hasattr(config, key)
    if present:
        return None
    raise ValueError(f"cannot find the {what} in the {type(config).__name__} (none of {', '.join(keys)})")


def num_attention_heads(config) -> int:
    """Query heads per layer, as the config says (the original model, before any head removal)."""
    value = config_int(config, _keys(config).heads, "number of attention heads")
    if value is None:
        raise ValueError(f"the {type(config).__name__} does not set the number of attention heads")
    return value


def num_key_value_heads(config) -> int:
    """Key/value heads per layer (grouped-query attention); the query heads when the config has none."""
    keys = _keys(config).kv_heads
    value = config_int(config, keys, "key/value heads") if any(hasattr(config, k) for k in keys) else None
    return value or num_attention_heads(config)


def hidden_size(config) -> int:
    value = config_int(config, _keys(config).hidden, "hidden size")
    if value is None:
        raise ValueError(f"the {type(config).__name__} does not set the hidden size")
    return value


def head_dim(config) -> int:
    """Rows per head: the config's head-size field if set (Llama-family ``head_dim``), else hidden size / heads."""
    value = getattr(config, _keys(config).head_size or "head_dim", None)
    return value if isinstance(value, int) and value > 0 else hidden_size(config) // num_attention_heads(config)


def ffn_size(config) -> int:
    """FFN neurons per layer of the original model (GPT-2's None n_inner: 4 · hidden)."""
    keys = _keys(config)
    value = config_int(config, keys.ffn, "FFN size")
    return value if value is not None else keys.ffn_multiple * hidden_size(config)


# --- the blocks of a model ----------------------------------------------------------------------


@dataclass
class Block:
    """One transformer block of a model, resolved: modules and head geometry."""

    index: int
    name: str  # full module name of the block, e.g. "bert.encoder.layer.3"
    module: nn.Module
    spec: BlockLayout
    fused: FusedLayout | None  # the layout of ``spec.qkv``, if the block has one
    num_heads: int  # query heads now in this block
    num_kv_heads: int  # key/value heads (== num_heads without grouped-query attention)
    head_dim: int

    def get(self, relative: str) -> nn.Module:
        return self.module.get_submodule(relative)

    def has(self, relative: str) -> bool:
        try:
            self.module.get_submodule(relative)
            return True
        except AttributeError:
            return False

    def full_name(self, relative: str) -> str:
        return f"{self.name}.{relative}"

    @property
    def attention(self) -> nn.Module:
        return self.get(self.spec.attention)

    @property
    def ffn_size(self) -> int:
        return linear_shape(self.get(self.spec.ffn_in[0]))[0]

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.num_heads // self.num_kv_heads


def block_spec(model: nn.Module) -> BlockLayout:
    """The block layout of ``model``'s type; a clear error for a type without one."""
    spec = model_spec(model)
    if spec is None or spec.block is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        known = sorted(t for t, s in MODEL_SPECS.items() if s.block is not None)
        raise ValueError(f"structured pruning and FLOPs counting know the block layout of {', '.join(known)}; "
                         f"not of model type {model_type!r}")
    return spec.block


def blocks(model: nn.Module) -> list[Block]:
    """Every transformer block of ``model`` with its current head geometry.

    Head counts are read from the modules themselves (not the config), so a block whose heads
    were removed reports what it has now.
    """
    layout = block_spec(model)
    fused = model_spec(model).fused if layout.qkv else None
    layer_list = model.base_model.get_submodule(layout.layers)
    prefix = next(n for n, m in model.named_modules() if m is layer_list)
    dim = head_dim(model.config)
    result = []
    for i, block in enumerate(layer_list):
        kept = getattr(block.get_submodule(layout.attention), "dsee_kept_heads", None)
        if layout.qkv:
            heads = kv = linear_shape(block.get_submodule(layout.qkv))[0] // 3 // dim
        else:
            heads = linear_shape(block.get_submodule(layout.q))[0] // dim
            kv = linear_shape(block.get_submodule(layout.k))[0] // dim
        if kept is not None and len(kept) != heads:  # pragma: no cover - a consistency guard
            raise RuntimeError(f"block {i}: {len(kept)} heads recorded as kept but {heads} present")
        result.append(Block(i, f"{prefix}.{i}", block, layout, fused, heads, kv, dim))
    return result
