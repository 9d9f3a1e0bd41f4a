"""Per-architecture facts: which matrices DSEE adapts by default, and how fused projections are laid out.

Paper and released code adapt W_q and W_v of every self-attention layer (paper §3.1, LoRA's default).
Targets are matched against module names as an exact name, a dotted suffix or a regular expression
(the rules of PEFT), among ``nn.Linear`` and ``Conv1D`` modules only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FusedLayout:
    """A projection computing q, k and v in one matrix of 3·d output rows.

    kind "blocks": rows [q | k | v], each d contiguous rows (GPT-2's ``c_attn``).
    kind "per_head": rows [q_h, k_h, v_h] per head h, each head_dim rows (DeBERTa-v1's ``in_proj``).
    """

    module: str  # dotted suffix of the fused module's name
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


# heads trained in full by default for sequence classification (PEFT's choice as well)
HEAD_NAMES = ("classifier", "score")


@dataclass(frozen=True)
class Architecture:
    targets: tuple[str, ...] = ()
    fused: FusedLayout | None = None
    # top-level modules of a sequence-classification model that the checkpoint does not hold and
    # that are therefore trained (and saved with the adapter) by default
    heads: tuple[str, ...] = HEAD_NAMES


_QV_PROJ = Architecture(targets=("q_proj", "v_proj"))
ARCHITECTURES: dict[str, Architecture] = {
    "bert": Architecture(targets=("attention.self.query", "attention.self.value")),
    "roberta": Architecture(targets=("attention.self.query", "attention.self.value")),
    "xlm-roberta": Architecture(targets=("attention.self.query", "attention.self.value")),
    "electra": Architecture(targets=("attention.self.query", "attention.self.value")),
    "mpnet": Architecture(targets=("attn.q", "attn.v")),
    "distilbert": Architecture(targets=("attention.q_lin", "attention.v_lin")),
    # DeBERTa's ContextPooler belongs to the classification head: new, so trained like it
    "deberta": Architecture(fused=FusedLayout("attention.self.in_proj", "per_head"), heads=("pooler", "classifier")),
    "deberta-v2": Architecture(
        targets=("attention.self.query_proj", "attention.self.value_proj"), heads=("pooler", "classifier")
    ),
    "gpt2": Architecture(fused=FusedLayout("attn.c_attn", "blocks")),
    "llama": _QV_PROJ,
    "mistral": _QV_PROJ,
    "qwen2": _QV_PROJ,
    "qwen3": _QV_PROJ,
    "gemma": _QV_PROJ,
    "gemma2": _QV_PROJ,
    "phi3": Architecture(),  # fused qkv_proj of its own layout: give explicit targets
    "opt": _QV_PROJ,
}

def architecture(model_type: str | None) -> Architecture | None:
    return ARCHITECTURES.get(model_type or "")


def name_matches(name: str, target: str) -> bool:
    """PEFT's rule: exact name, dotted suffix, or a regular expression matching the whole name."""
    if name == target or name.endswith("." + target):
        return True
    try:
        return re.fullmatch(target, name) is not None
    except re.error:
        return False


def num_attention_heads(config) -> int:
    for key in ("num_attention_heads", "n_head", "num_heads"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot find the number of attention heads in the {type(config).__name__}")
