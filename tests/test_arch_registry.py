"""Every entry of the architecture registry, on a tiny model of that type built from its config.

Adding an architecture is one ``arch.register(ModelSpec(...))`` and one line in ``SMALL`` below.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T

from dsee import DSEEConfig, add_dsee, count_parameters, forward_flops, remove_heads_, remove_neurons_
from dsee.arch import MODEL_SPECS, blocks, ffn_size, head_dim, model_spec, num_attention_heads, num_key_value_heads

_LLAMA_LIKE = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8, max_position_embeddings=64, pad_token_id=0)
_BERT_LIKE = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
# small config fields per model type (the registry's keys)
SMALL = {
    "bert": _BERT_LIKE, "roberta": dict(_BERT_LIKE, pad_token_id=1), "xlm-roberta": dict(_BERT_LIKE, pad_token_id=1),
    "electra": dict(_BERT_LIKE, embedding_size=32), "mpnet": _BERT_LIKE, "deberta": _BERT_LIKE,
    "deberta-v2": _BERT_LIKE,
    "distilbert": dict(vocab_size=97, dim=32, hidden_dim=48, n_layers=2, n_heads=4),
    "gpt2": dict(vocab_size=97, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=0),
    "llama": _LLAMA_LIKE, "mistral": _LLAMA_LIKE, "qwen2": _LLAMA_LIKE, "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE, "gemma2": _LLAMA_LIKE,
    "opt": dict(vocab_size=97, hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4,
                word_embed_proj_dim=32, max_position_embeddings=64, pad_token_id=1),
    "phi3": dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0),
}


def _model(model_type: str):
    torch.manual_seed(0)
    config = T.AutoConfig.for_model(model_type, **SMALL[model_type])
    config.num_labels = 2
    return T.AutoModelForSequenceClassification.from_config(config).eval()


def _inputs():
    ids = torch.randint(2, 97, (2, 7), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_every_entry_has_a_small_config():
    assert set(MODEL_SPECS) == set(SMALL)


@pytest.mark.parametrize("model_type", sorted(MODEL_SPECS))
def test_default_targets(model_type):
    model = _model(model_type)
    spec = model_spec(model)
    assert spec is MODEL_SPECS[model_type]
    if not spec.has_default_targets:
        with pytest.raises(ValueError, match="no default DSEE targets"):
            add_dsee(model, DSEEConfig(rank=2, num_sparse=4))
        return
    add_dsee(model, DSEEConfig(rank=2, num_sparse=4))
    layers = 2
    per_layer = len(spec.fused.slices) if spec.fused is not None else len(spec.targets)
    assert len(model.dsee_state.targets_matched) == layers * per_layer
    assert all(any(h in name for h in spec.heads) for name in model.dsee_state.modules_to_save)
    assert count_parameters(model).trainable > 0
    model(**_inputs())


@pytest.mark.parametrize("model_type", sorted(t for t, s in MODEL_SPECS.items() if s.block is not None))
def test_block_layout(model_type):
    model = _model(model_type)
    config = model.config
    found = blocks(model)
    assert len(found) == 2
    for block in found:
        assert block.num_heads == num_attention_heads(config)
        assert block.num_kv_heads == num_key_value_heads(config)
        assert block.head_dim == head_dim(config)
        assert block.ffn_size == ffn_size(config)
    # one head from each key/value group, one neuron: the model still runs, the counts follow
    group, heads0, kv0, ffn0 = found[0].group_size, found[0].num_heads, found[0].num_kv_heads, found[1].ffn_size
    remove_heads_(model, {0: list(range(0, found[0].num_heads, group))[: found[0].num_kv_heads]}
                  if group > 1 else {0: [1]})
    remove_neurons_(model, {1: [0, 5]})
    after = blocks(model)
    assert after[0].num_heads == heads0 - (kv0 if group > 1 else 1)
    assert after[1].ffn_size == ffn0 - 2
    with torch.no_grad():
        model(**_inputs())
    assert forward_flops(model, seq_len=7).total < forward_flops(_model(model_type), seq_len=7).total
