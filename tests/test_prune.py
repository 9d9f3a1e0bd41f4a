"""Unstructured pruning: exact counts, the merged-and-masked form, zeros that survive the merge."""

from __future__ import annotations

import pytest
import torch

from conftest import batch, logits, randomize_adapters, tiny_classifier
from dsee import DSEEConfig, add_dsee, merge_dsee
from dsee.adapters.layer import DSEELinear
from dsee.sparsity.unstructured import apply_masks_, piece_score, prunable_pieces, sparsity_report, unstructured_masks


def _adapted(arch="bert"):
    model = tiny_classifier(arch)
    add_dsee(model, DSEEConfig(rank=2, num_sparse=16))
    randomize_adapters(model)
    return model


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_layer_scope_removes_exactly_the_requested_share_of_every_matrix(arch):
    model = _adapted(arch)
    masks = unstructured_masks(model, 0.3, score="weight+delta", scope="layer")
    apply_masks_(model, masks)
    report = sparsity_report(model)
    for name, mask in masks.items():
        pieces = [p for p in prunable_pieces(model) if p.module_name == name]
        expected = sum(round(0.3 * (mask.numel() // len(pieces))) for _ in pieces)
        assert int((~mask).sum()) == expected, name
        assert report["per_matrix"][name] >= expected / mask.numel()  # exact zeros of M ⊙ (W0 + ΔW)
        assert report["per_matrix"][name] <= (expected + 1) / mask.numel()


def test_global_scope_is_exact_overall_and_ranks_by_the_score():
    model = _adapted()
    masks = unstructured_masks(model, 0.5, score="weight", scope="global")
    total = sum(m.numel() for m in masks.values())
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.5 * total)
    kept, removed = [], []
    for p in prunable_pieces(model):
        s = piece_score(p, "weight")
        kept.append(s[masks[p.module_name]])
        removed.append(s[~masks[p.module_name]])
    assert torch.cat(kept).min() >= torch.cat(removed).max()


def test_upstream_prunes_the_two_groups_at_their_own_ratios():
    model = _adapted()
    masks = unstructured_masks(model, 0.2, score="upstream", scope="global", adapted_sparsity=0.6)
    pieces = prunable_pieces(model)
    for adapted, ratio in ((True, 0.6), (False, 0.2)):  # query/value by |ΔW|, the rest by |W0|, each exactly
        group = [p for p in pieces if (p.delta is not None) == adapted]
        n = sum(masks[p.module_name].numel() for p in group)
        assert sum(int((~masks[p.module_name]).sum()) for p in group) == round(ratio * n)
        scores = [piece_score(p, "upstream", {}) for p in group]
        kept = torch.cat([s[masks[p.module_name]] for p, s in zip(group, scores)])
        removed = torch.cat([s[~masks[p.module_name]] for p, s in zip(group, scores)])
        assert kept.min() >= removed.max()  # ranked together within the group


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_evaluated_model_is_the_exported_model(arch):
    """Masked forward == merged weights; the merge keeps the zeros (the §3 trap)."""
    model = _adapted(arch)
    apply_masks_(model, unstructured_masks(model, 0.5, score="weight", scope="layer"))
    before = logits(model, batch())
    requested = {n: int((~m.prune_mask).sum()) for n, m in model.named_modules() if isinstance(m, DSEELinear)
                 and m.prune_mask is not None}
    merge_dsee(model)
    torch.testing.assert_close(logits(model, batch()), before, rtol=0, atol=1e-6)
    for name, count in requested.items():
        weight = model.get_submodule(name).weight
        assert int((weight == 0).sum()) >= count


def test_retuning_changes_only_adapters_and_keeps_the_zeros():
    model = _adapted()
    apply_masks_(model, unstructured_masks(model, 0.5, score="weight", scope="global"))
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    zeros = {n: m.effective_weight() == 0 for n, m in model.named_modules() if isinstance(m, DSEELinear)}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        model(**batch(), labels=torch.tensor([0, 1, 2])).loss.backward()
        opt.step()
        opt.zero_grad()
    assert all(torch.equal(frozen[n], p) for n, p in model.named_parameters() if n in frozen)
    query = model.bert.encoder.layer[0].attention.self.query
    assert query.lora_B.abs().sum() > 0  # the adapters did train through the mask
    for name, module in model.named_modules():
        if isinstance(module, DSEELinear):
            assert bool((module.effective_weight()[zeros[name]] == 0).all()), name


@pytest.mark.parametrize("kwargs,match", [
    (dict(sparsity=1.0), "must be in"),
    (dict(sparsity=-0.1), "must be in"),
    (dict(sparsity=0.5, score="size"), "choose one of"),
    (dict(sparsity=0.5, scope="block"), "global or layer"),
    (dict(sparsity=0.5, adapted_sparsity=0.2), "upstream"),
])
def test_bad_requests(kwargs, match):
    with pytest.raises(ValueError, match=match):
        unstructured_masks(_adapted(), **kwargs)


def test_delta_score_needs_adapters():
    with pytest.raises(ValueError, match="no pruned matrix has a DSEE update"):
        unstructured_masks(tiny_classifier("bert"), 0.5, score="delta")


def test_masked_form_trains_under_bf16_autocast():
    model = _adapted()
    apply_masks_(model, unstructured_masks(model, 0.5, score="weight", scope="global"))
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch(), labels=torch.tensor([0, 1, 2])).loss
    loss.backward()
    query = model.bert.encoder.layer[0].attention.self.query
    assert query.lora_A.grad is not None and query.sparse_values.grad.dtype == torch.float32
