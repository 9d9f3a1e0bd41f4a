"""Bad input gets a clear error that names what is wrong, and changes nothing."""

from __future__ import annotations

import pytest
import torch

from conftest import batch, logits, tiny_classifier
from dsee import DSEEConfig, add_dsee, compute_support, load_adapter, save_adapter
from dsee.adapters.inject import dsee_layers


def _unchanged(model, inputs, before):
    assert not dsee_layers(model)
    assert getattr(model, "dsee_state", None) is None
    assert all(p.requires_grad for p in model.parameters())
    assert torch.equal(logits(model, inputs), before)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_sparse": 48 * 48 + 1}, "num_sparse=2305 exceeds"),
        ({"rank": 49}, "rank=49 exceeds min"),
        ({"targets": ["no_such_layer"]}, "no linear layer matches"),
    ],
)
def test_bad_fit_raises_and_changes_nothing(kwargs, message):
    model = tiny_classifier("bert")
    inputs = batch()
    before = logits(model, inputs)
    with pytest.raises(ValueError, match=message):
        add_dsee(model, DSEEConfig(**kwargs))
    _unchanged(model, inputs, before)


def test_no_match_lists_candidates():
    with pytest.raises(ValueError) as err:
        add_dsee(tiny_classifier("bert"), DSEEConfig(targets=["qkv"]))
    assert "bert.encoder.layer.*.attention.self.query" in str(err.value)
    assert "bert.encoder.layer.*.intermediate.dense" in str(err.value)


def test_gqa_rank_checked_against_narrow_value():
    # v_proj of the tiny Llama is 24 × 48: rank 30 fits q (48 × 48) but not v
    with pytest.raises(ValueError, match=r"rank=30 exceeds min\(d_out, d_in\) = 24 of model.layers.0.self_attn.v_proj"):
        add_dsee(tiny_classifier("llama"), DSEEConfig(rank=30))


def test_fused_slice_named_in_error():
    with pytest.raises(ValueError, match=r"slice q"):
        add_dsee(tiny_classifier("gpt2"), DSEEConfig(num_sparse=48 * 48 + 1))


def test_second_add_raises():
    model = add_dsee(tiny_classifier("bert"), DSEEConfig(rank=2, num_sparse=4))
    with pytest.raises(ValueError, match="already has DSEE adapters"):
        add_dsee(model, DSEEConfig(rank=2, num_sparse=4))


def test_unknown_sparse_method():
    with pytest.raises(ValueError, match="sparse_method"):
        DSEEConfig(sparse_method="svd")
    with pytest.raises(ValueError, match="unknown sparse_method"):
        compute_support(torch.randn(4, 4), 2, method="svd")


def test_unknown_model_type_without_targets():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="no default DSEE targets.*pass targets"):
        add_dsee(model, DSEEConfig(rank=1, num_sparse=1))
    add_dsee(model, DSEEConfig(rank=1, num_sparse=1, targets=["0"]))  # explicit targets work anywhere


def _other_model_adapter(tmp_path):
    """An adapter saved for a BERT of hidden size 32 (the test model has 48)."""
    import transformers as T

    config = T.BertConfig(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, num_labels=3)
    small = T.BertForSequenceClassification(config).eval()
    save_adapter(add_dsee(small, DSEEConfig(rank=2, num_sparse=4)), tmp_path / "a")
    return tmp_path / "a"


def test_adapter_of_other_shapes_raises_and_changes_nothing(tmp_path):
    path = _other_model_adapter(tmp_path)
    model = tiny_classifier("bert")
    inputs = batch()
    before = logits(model, inputs)
    with pytest.raises(ValueError, match=r"does not fit this model.*saved \(2, 32\), model \(2, 48\)"):
        load_adapter(model, path)
    _unchanged(model, inputs, before)


def test_adapter_with_other_config_raises(tmp_path):
    model = add_dsee(tiny_classifier("bert"), DSEEConfig(rank=2, num_sparse=4))
    save_adapter(model, tmp_path)
    other = add_dsee(tiny_classifier("bert"), DSEEConfig(rank=3, num_sparse=4))
    state = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="differs from the model's"):
        load_adapter(other, tmp_path)
    assert all(torch.equal(state[k], v) for k, v in other.state_dict().items())


def test_missing_adapter_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a DSEE adapter directory"):
        load_adapter(tiny_classifier("bert"), tmp_path)


def test_merge_or_remove_without_adapters():
    from dsee import merge_dsee, remove_dsee

    with pytest.raises(ValueError, match="no DSEE adapters"):
        merge_dsee(tiny_classifier("bert"))
    with pytest.raises(ValueError, match="no DSEE adapters"):
        remove_dsee(tiny_classifier("bert"))


def test_a_refused_adapter_leaves_every_requires_grad_flag_as_it_was(tmp_path):
    """The docstring's promise, "model unchanged", includes which parameters train: a model with frozen
    embeddings once came back from a refused load with them trainable."""
    path = _other_model_adapter(tmp_path)
    model = tiny_classifier("bert")
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    with pytest.raises(ValueError, match="does not fit this model"):
        load_adapter(model, path)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert not all(flags.values())  # the test means something: some were frozen


def test_a_dtype_only_difference_of_the_base_weights_does_not_warn(tmp_path):
    """An adapter trained on the fp32 base loads quietly into the same base in bf16 (and the reverse); another
    base still warns, in either dtype."""
    import warnings

    trained = add_dsee(tiny_classifier("bert"), DSEEConfig(rank=2, num_sparse=4))
    save_adapter(trained, tmp_path / "fp32")
    save_adapter(add_dsee(tiny_classifier("bert").to(torch.bfloat16), DSEEConfig(rank=2, num_sparse=4)),
                 tmp_path / "bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_adapter(tiny_classifier("bert").to(torch.bfloat16), tmp_path / "fp32")
        load_adapter(tiny_classifier("bert"), tmp_path / "bf16")
        load_adapter(tiny_classifier("bert"), tmp_path / "fp32")
    for other in (tiny_classifier("bert", seed=1), tiny_classifier("bert", seed=1).to(torch.bfloat16)):
        with pytest.warns(UserWarning, match="base weights differ"):
            load_adapter(other, tmp_path / "fp32")
