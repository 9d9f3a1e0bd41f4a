"""Where the attention heads and FFN neurons of a transformer block live, per model type.

Structured pruning (paper §3.2) removes whole heads and FFN neurons; unstructured pruning and the
FLOPs count need the same map of each block:

    block i ─ attention: q, k, v (or one fused qkv) ─► heads of head_dim rows each ─► o (columns)
            └ FFN: ffn_in (rows = neurons; Llama: gate and up) ─► act ─► ffn_out (columns)

Transformers 5 has no ``prune_heads``: this table is what lets ``dsee.sparsity.structure`` slice the
matrices itself. Names are relative to the block; ``layers`` is the path of the block list
relative to the model's ``base_model``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn


@dataclass(frozen=True)
class BlockSpec:
    """Module names inside one block, for one model type."""

    layers: str  # the block list, relative to model.base_model: "encoder.layer", "h", "layers"
    attention: str  # the module holding the head-count attributes
    q: str = ""
    k: str = ""
    v: str = ""
    qkv: str = ""  # a fused q|k|v projection in blocks (GPT-2's c_attn); then q, k, v are ""
    o: str = ""
    ffn_in: tuple[str, ...] = ()  # each has one output row per neuron
    ffn_out: str = ""  # one input column per neuron
    # extra projections with one row per head, like q (DeBERTa-v2's relative-position projections)
    head_rows_extra: tuple[str, ...] = field(default=())
    relative_bias_heads: bool = False  # MPNet: a (B, heads, L, L) bias shared by all blocks is passed in


_BERT = BlockSpec(
    layers="encoder.layer", attention="attention.self", q="attention.self.query", k="attention.self.key",
    v="attention.self.value", o="attention.output.dense", ffn_in=("intermediate.dense",), ffn_out="output.dense",
)
_LLAMA = BlockSpec(
    layers="layers", attention="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
    o="self_attn.o_proj", ffn_in=("mlp.gate_proj", "mlp.up_proj"), ffn_out="mlp.down_proj",
)
BLOCK_SPECS: dict[str, BlockSpec] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "electra": _BERT,
    "mpnet": BlockSpec(
        layers="encoder.layer", attention="attention.attn", q="attention.attn.q", k="attention.attn.k",
        v="attention.attn.v", o="attention.attn.o", ffn_in=("intermediate.dense",), ffn_out="output.dense",
        relative_bias_heads=True,
    ),
    "deberta-v2": BlockSpec(
        layers="encoder.layer", attention="attention.self", q="attention.self.query_proj",
        k="attention.self.key_proj", v="attention.self.value_proj", o="attention.output.dense",
        ffn_in=("intermediate.dense",), ffn_out="output.dense",
        head_rows_extra=("attention.self.pos_key_proj", "attention.self.pos_query_proj"),
    ),
    "gpt2": BlockSpec(layers="h", attention="attn", qkv="attn.c_attn", o="attn.c_proj", ffn_in=("mlp.c_fc",),
                      ffn_out="mlp.c_proj"),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
}


@dataclass
class Block:
    """One transformer block of a model, resolved: modules and head geometry."""

    index: int
    name: str  # full module name of the block, e.g. "bert.encoder.layer.3"
    module: nn.Module
    spec: BlockSpec
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
        from .adapters.layer import linear_shape

        return linear_shape(self.get(self.spec.ffn_in[0]))[0]

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.num_heads // self.num_kv_heads


def block_spec(model: nn.Module) -> BlockSpec:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    spec = BLOCK_SPECS.get(model_type or "")
    if spec is None:
        raise ValueError(
            f"structured pruning and FLOPs counting know the block layout of {', '.join(sorted(BLOCK_SPECS))}; "
            f"not of model type {model_type!r}"
        )
    return spec


def blocks(model: nn.Module) -> list[Block]:
    """Every transformer block of ``model`` with its current head geometry.

    Head counts are read from the modules themselves (not the config), so a block whose heads
    were removed reports what it has now.
    """
    from .adapters.layer import linear_shape

    spec = block_spec(model)
    config = model.config
    base = model.base_model
    layer_list = base.get_submodule(spec.layers)
    prefix = next(n for n, m in model.named_modules() if m is layer_list)
    heads0 = _config_int(config, "num_attention_heads", "n_head")
    hidden = _config_int(config, "hidden_size", "n_embd")
    head_dim = getattr(config, "head_dim", None) or hidden // heads0
    result = []
    for i, block in enumerate(layer_list):
        kept = getattr(block.get_submodule(spec.attention), "dsee_kept_heads", None)
        if spec.qkv:
            width = linear_shape(block.get_submodule(spec.qkv))[0] // 3
            heads = kv = width // head_dim
        else:
            heads = linear_shape(block.get_submodule(spec.q))[0] // head_dim
            kv = linear_shape(block.get_submodule(spec.k))[0] // head_dim
        if kept is not None and len(kept) != heads:  # pragma: no cover - a consistency guard
            raise RuntimeError(f"block {i}: {len(kept)} heads recorded as kept but {heads} present")
        result.append(Block(i, f"{prefix}.{i}", block, spec, heads, kv, head_dim))
    return result


def _config_int(config, *keys: str) -> int:
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"{type(config).__name__} has none of {keys}")
