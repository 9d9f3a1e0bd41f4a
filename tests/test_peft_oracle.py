"""With num_sparse = 0, DSEE computes exactly what PEFT's LoRA computes with the same A and B."""

from __future__ import annotations

import copy

import pytest
import torch

peft = pytest.importorskip("peft")

from conftest import batch, tiny_classifier  # noqa: E402
from dsee import DSEEConfig, add_dsee  # noqa: E402
from dsee.adapters.inject import dsee_layers  # noqa: E402

CASES = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "llama": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],  # the whole fused matrix, as PEFT adapts it
}


@pytest.mark.parametrize("arch_name", list(CASES))
def test_lora_equivalence(arch_name):
    base = tiny_classifier(arch_name)
    reference = copy.deepcopy(base)
    targets = CASES[arch_name]
    lora = peft.get_peft_model(
        reference,
        peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0,
                        fan_in_fan_out=arch_name == "gpt2"),
    )
    ours = add_dsee(base, DSEEConfig(rank=4, alpha=8, num_sparse=0, targets=targets))
    peft_layers = {n: m for n, m in lora.named_modules() if hasattr(m, "lora_A") and isinstance(m.lora_A, torch.nn.ModuleDict)}
    g = torch.Generator().manual_seed(0)
    matched = 0
    for name, layer in dsee_layers(ours):
        peer = next(m for n, m in peft_layers.items() if n.endswith(name))
        with torch.no_grad():
            peer.lora_B["default"].weight.copy_(torch.randn(peer.lora_B["default"].weight.shape, generator=g))
            layer.lora_A.copy_(peer.lora_A["default"].weight)
            layer.lora_B.copy_(peer.lora_B["default"].weight)
        matched += 1
    assert matched == len(peft_layers) > 0
    inputs = batch()
    with torch.no_grad():
        expected = lora(**inputs).logits
        got = ours(**inputs).logits
    assert not torch.allclose(expected, tiny_classifier(arch_name)(**inputs).logits)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    # and the same trainable parameter count (PEFT also trains the head)
    n_peft = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    n_ours = sum(p.numel() for p in ours.parameters() if p.requires_grad)
    assert n_ours == n_peft
