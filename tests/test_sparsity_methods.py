"""Unstructured sparsity beyond magnitude (paper §3.2, issue: keep the score): Wanda's activation-aware
score against a hand-computed oracle, per-row grouping, N:M patterns, gradual pruning inside a
pruning run, and adapters on an already-sparse model."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import batch, logits, randomize_adapters, tiny_causal_lm, tiny_classifier
from dsee import DSEEConfig, add_dsee, apply_masks_, merge_dsee, sparsity_report, unstructured_masks
from dsee.adapters.calibration import input_norms
from dsee.adapters.inject import dsee_layers
from dsee.adapters.layer import linear_weight
from dsee.sparsity.unstructured import n_of_m_mask, prunable_pieces


def _batches(k=3):
    return [{**batch(seed=i), "labels": torch.tensor([0, 1, 2])} for i in range(k)]


def _hidden_state_norms(model, batches):
    """The oracle: ‖X_j‖₂ of each layer's attention input, from the model's own hidden states."""
    totals = None
    with torch.no_grad():
        for b in batches:
            states = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
            mask = b["attention_mask"].float().unsqueeze(-1)
            sq = [(h.float().square() * mask).sum((0, 1)) for h in states.hidden_states[:-1]]
            totals = sq if totals is None else [t + s for t, s in zip(totals, sq)]
    return [t.sqrt() for t in totals]


def test_input_norms_equal_a_hand_computed_oracle():
    model = tiny_classifier("bert")
    batches = _batches()
    oracle = _hidden_state_norms(model, batches)
    names = [f"bert.encoder.layer.{i}.attention.self.{p}" for i in range(2) for p in ("query", "key", "value")]
    norms = input_norms(model, names, batches)
    for i in range(2):
        for p in ("query", "key", "value"):
            torch.testing.assert_close(norms[f"bert.encoder.layer.{i}.attention.self.{p}"], oracle[i],
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("adapted", [False, True])
def test_wanda_masks_follow_the_score_row_by_row(adapted):
    model = tiny_classifier("bert")
    if adapted:
        add_dsee(model, DSEEConfig(rank=2, num_sparse=16, init="upstream"))
        randomize_adapters(model)
    batches = _batches()
    oracle = _hidden_state_norms(model, batches)
    masks = unstructured_masks(model, 0.5, score="wanda", scope="row", batches=batches)
    name = "bert.encoder.layer.1.attention.self.query"
    module = model.get_submodule(name)
    weight = module.effective_weight() if adapted else linear_weight(module)  # W = W0 + ΔW where adapted
    score = weight.abs() * oracle[1].unsqueeze(0)
    mask = masks[name]
    assert (mask.sum(1) == 24).all()  # round(0.5 · 48) removed in every row
    for row in range(score.shape[0]):
        kept, removed = score[row][mask[row]], score[row][~mask[row]]
        assert kept.min() >= removed.max()


def test_wanda_compares_within_output_rows_unless_told_otherwise():
    """The obvious call (no scope) does what Wanda does: every row, hence every matrix, at the sparsity; a
    global ranking of Wanda scores would prune matrices with large input norms far more than others."""
    from dsee.train.settings import PruneSettings

    model = tiny_classifier("bert")
    batches = _batches()
    default = unstructured_masks(model, 0.5, score="wanda", batches=batches)
    rows = unstructured_masks(model, 0.5, score="wanda", scope="row", batches=batches)
    assert all(torch.equal(default[n], rows[n]) for n in rows)
    for mask in default.values():
        assert ((~mask).sum(1) == mask.shape[1] // 2).all()
    spread = unstructured_masks(model, 0.5, score="wanda", scope="global", batches=batches)  # asked for: honoured
    shares = [float((~m).float().mean()) for m in spread.values()]
    assert max(shares) - min(shares) > 0.05 and not all(torch.equal(spread[n], rows[n]) for n in rows)
    assert PruneSettings(source="run", sparsity=0.5, score="wanda").scope == "row"
    assert PruneSettings(source="run", sparsity=0.5, score="wanda", scope="global").scope == "global"
    assert PruneSettings(source="run", sparsity=0.5).scope == "global"  # magnitude: one ranking, as before


def test_wanda_needs_calibration_data():
    with pytest.raises(ValueError, match="calibration data"):
        unstructured_masks(tiny_classifier("bert"), 0.5, score="wanda")


@pytest.mark.parametrize("score", ["weight", "wanda"])
def test_two_of_four_everywhere_and_through_the_merge(score):
    model = tiny_classifier("bert")
    add_dsee(model, DSEEConfig(rank=2, num_sparse=16, init="upstream"))
    randomize_adapters(model)
    masks = unstructured_masks(model, pattern="2:4", score=score, batches=_batches() if score == "wanda" else None)
    for mask in masks.values():
        groups = mask.reshape(mask.shape[0], -1, 4)
        assert (groups.sum(-1) == 2).all()
    apply_masks_(model, masks)
    report = sparsity_report(model, "2:4")
    assert report["pattern"]["kept"] and report["overall"] >= 0.5
    before = logits(model, batch())
    merge_dsee(model)
    torch.testing.assert_close(logits(model, batch()), before, rtol=1e-5, atol=1e-5)
    assert sparsity_report(model, "2:4")["pattern"]["kept"]  # the exported weights carry the pattern


def test_n_of_m_keeps_the_best_of_each_group_and_refuses_what_does_not_tile():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.0, 0.0, 5.0, 5.0]])
    assert n_of_m_mask(scores, 2, 4).tolist() == [[True, False, True, False, False, False, True, True]]
    assert n_of_m_mask(scores, 1, 8).tolist() == [[False] * 6 + [True, False]]  # ties: the earlier one
    with pytest.raises(ValueError, match="not a multiple of M = 5"):
        n_of_m_mask(scores, 2, 5)
    with pytest.raises(ValueError, match="says otherwise"):
        unstructured_masks(tiny_classifier("bert"), 0.3, pattern="2:4")


def test_masks_only_grow_when_pruned_entries_are_given():
    model = tiny_classifier("bert")
    first = unstructured_masks(model, 0.3, scope="layer")
    apply_masks_(model, first)
    torch.manual_seed(1)
    with torch.no_grad():  # other weights move: a fresh ranking would prune elsewhere
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    second = unstructured_masks(model, 0.6, scope="layer", current=first)
    for name, mask in first.items():
        assert not (second[name] & ~mask).any()  # nothing pruned before comes back
        assert int((~second[name]).sum()) == round(0.6 * mask.numel())


# --- inside a pruning run -----------------------------------------------------------------------

pytest.importorskip("accelerate")


def _prune(source, out, *extra):
    from dsee.cli import main

    return main(["prune", str(source), "--out", str(out), "--retune-epochs", "2", "--no-progress", *extra])


def test_gradual_pruning_reaches_its_target_and_what_is_evaluated_is_exported(source_run, tmp_path):
    from dsee.sparsity.export import load_pretrained
    from dsee.train.pipeline import load_run

    run = tmp_path / "gradual"
    assert _prune(source_run, run, "--sparsity", "0.5", "--scope", "layer", "--schedule", "gradual",
                  "--prune-every", "4", "--score", "wanda", "--calibration-batches", "2") == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["pruning"]["sparsity"] == pytest.approx(0.5, abs=1e-9)  # the target, not beyond it
    log = [json.loads(line) for line in (run / "eval_log.jsonl").read_text().splitlines()]
    ramp = round(0.6 * metrics["steps"])
    assert metrics["best_step"] >= ramp  # no checkpoint before the target sparsity is kept
    assert not any(r["best"] for r in log if r["step"] < ramp)
    _, model, tokenizer = load_run(run)
    inputs = dict(tokenizer(["a good film", "a dull bad plot"], padding=True, return_tensors="pt"))
    assert main_export(run, tmp_path / "export") == 0
    exported = load_pretrained(tmp_path / "export")
    torch.testing.assert_close(exported(**inputs).logits, model(**inputs).logits, rtol=0, atol=1e-5)
    assert sparsity_report(exported)["overall"] == pytest.approx(0.5, abs=1e-3)  # exactly the masks' zeros


def main_export(run, out):
    from dsee.cli import main

    return main(["export", str(run), "--out", str(out)])


def test_gradual_pruning_resumes_exactly(source_run, tmp_path):
    from dsee.train.checkpoint import read_checkpoint
    from dsee.train.loop import Interrupted, train
    from dsee.train.run import load_run_config

    args = ("--sparsity", "0.5", "--schedule", "gradual", "--prune-every", "3")
    full = tmp_path / "full"
    assert _prune(source_run, full, *args) == 0
    config = load_run_config(full)
    cut = tmp_path / "cut"
    config.out = str(cut)
    with pytest.raises(Interrupted):
        train(config, interrupt_after=5, show_progress=False)  # in the middle of the ramp
    train(config, resume=True, show_progress=False)
    (a, _), (b, _) = read_checkpoint(full), read_checkpoint(cut)
    assert a.keys() == b.keys() and any(k.startswith("mask.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_pattern_pruning_run_reports_the_pattern(source_run, tmp_path):
    run = tmp_path / "nm"
    assert _prune(source_run, run, "--pattern", "2:4", "--score", "wanda", "--calibration-batches", "2") == 0
    pattern = json.loads((run / "metrics.json").read_text())["pruning"]["pattern"]
    assert pattern == {"n": 2, "m": 4, "violations": 0, "kept": True}


# --- adapters on an already-sparse model --------------------------------------------------------


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_keep_base_sparsity_keeps_exactly_the_base_zeros(arch):
    model = tiny_classifier(arch) if arch == "bert" else tiny_causal_lm(arch)
    # a model that arrives sparse: 2:4 on every prunable weight, as a pruning tool would leave it
    apply_masks_(model, unstructured_masks(model, pattern="2:4"))
    zeros = {n: linear_weight(model.get_submodule(n)) == 0 for n in {p.module_name for p in prunable_pieces(model)}}
    add_dsee(model, DSEEConfig(rank=2, num_sparse=16, keep_base_sparsity=True, sparse_method="random"))
    randomize_adapters(model)
    for name, layer in dsee_layers(model):
        assert torch.equal(layer.prune_mask, ~zeros[name])
        for _, delta, rows in layer.deltas():  # Ω only where W0 is not zero
            allowed = ~zeros[name] if rows is None else ~zeros[name][rows]
            assert allowed.flatten()[delta.sparse_indices].all()
    inputs = batch()
    before = logits(model, inputs)
    merge_dsee(model)
    for name, zero in zeros.items():
        assert (linear_weight(model.get_submodule(name))[zero] == 0).all()
    torch.testing.assert_close(logits(model, inputs), before, rtol=1e-5, atol=1e-5)


def test_keep_base_sparsity_from_the_command_line(tmp_path, tiny_model_dir, csv_data):
    import transformers as T

    from dsee.cli import main

    sparse_dir = tmp_path / "sparse-model"
    model = T.AutoModel.from_pretrained(tiny_model_dir)
    apply_masks_(model, {n: m for n, m in unstructured_masks(model, 0.5, scope="layer").items()})
    model.save_pretrained(sparse_dir)
    T.AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(sparse_dir)
    run = tmp_path / "run"
    assert main(["train", "--model", str(sparse_dir), "--train-file", csv_data[0], "--validation-file", csv_data[1],
                 "--text-columns", "text", "--label-column", "label", "--max-length", "32", "--epochs", "1",
                 "--keep-base-sparsity", "--out", str(run), "--no-progress"]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "merged")]) == 0
    merged = T.AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    query = merged.bert.encoder.layer[0].attention.self.query.weight
    assert float((query == 0).float().mean()) >= 0.5


def test_bench_skips_two_of_four_kernels_without_cuda(tmp_path, capsys):
    from dsee.evaluation.bench import semi_structured_candidates

    model = tiny_classifier("bert")
    apply_masks_(model, unstructured_masks(model, pattern="2:4"))
    names = semi_structured_candidates(model)
    assert sorted(names) == sorted({p.module_name for p in prunable_pieces(model)})
    assert semi_structured_candidates(tiny_classifier("bert")) == []  # dense: nothing to convert
    if not torch.cuda.is_available():
        from dsee.evaluation.bench import semi_structured_copy

        with pytest.raises(RuntimeError, match="CUDA"):
            semi_structured_copy(model)
