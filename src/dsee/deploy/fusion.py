"""Fused attention for ONNX Runtime: ORT's transformer kernels on a graph from the dynamo exporter.

    report = fuse_for_ort(SRC.onnx, DST.onnx)    # {"tool", "rules", "ops", ...}

``torch.onnx.export(dynamo=True)`` writes attention as its ATen operators (MatMul, Transpose,
Softmax, ...); ONNX Runtime's own transformer optimizer (``onnxruntime.transformers.optimizer``)
recognises TorchScript-exported BERT graphs and fuses none of these attention blocks. onnxscript's
rewriter carries the fusion rules for dynamo graphs (``onnxscript.rewriter.ort_fusions.
optimize_for_ort``): scaled dot-product attention → ``MultiHeadAttention`` → ``Attention`` (one
packed Q|K|V projection), residual + LayerNorm → ``SkipLayerNormalization``, bias + GELU →
``BiasGelu``, RMSNorm and rotary embeddings for decoders. Each fused node reads its sizes from its
own weights, so a per-layer pruned model (every layer its own head count) fuses like any other.

One rule of ours runs first. MPNet adds its relative position bias and the padding mask to the
attention scores in two steps, ``softmax((s + bias) + mask)``, and onnxscript's attention pattern
takes one additive mask: ``softmax(s + (bias + mask))`` is the same sum (the mask is 0 or the
lowest float; bias + mask is the mask where it is the lowest float, and bias where it is 0), and
with it MPNet's attention fuses too, the bias passed to ORT's kernel as its ``attention_bias``
input.

What fused is counted twice: by rule (onnxscript's own counts) and by operator in the result
(``ops``: ORT's fused operators), with the number of attention blocks in the model beside it in
the export manifest.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

from . import quiet, require

TOOL = "onnxscript.rewriter.ort_fusions.optimize_for_ort"
# ONNX Runtime's fused (contrib) operators a transformer graph can end with
FUSED_OPS = ("Attention", "MultiHeadAttention", "GroupQueryAttention", "SkipLayerNormalization",
             "SkipSimplifiedLayerNormalization", "BiasGelu", "FastGelu", "RotaryEmbedding")
ATTENTION_OPS = ("Attention", "MultiHeadAttention", "GroupQueryAttention")
# weights above this size go to a separate file, as the exporter does for large models
EXTERNAL_DATA_BYTES = 1_500_000_000


def bias_then_mask_rule():
    """softmax((scores + bias) + mask) → softmax(scores + (bias + mask)): one additive mask (module doc)."""
    pattern = require("onnxscript.rewriter.pattern")

    class BiasThenMask(pattern.RewriteRuleClassBase):
        def pattern(self, op, scores, bias, mask):
            return op.Softmax(op.Add(op.Add(scores, bias), mask), axis=-1)

        def rewrite(self, op, scores, bias, mask):
            return op.Softmax(op.Add(scores, op.Add(bias, mask)), axis=-1)

    return BiasThenMask.rule()


def op_counts(path: str | Path) -> dict[str, int]:
    """How many nodes of each of ONNX Runtime's fused operators (``FUSED_OPS``) the graph at ``path`` holds."""
    onnx = require("onnx")
    graph = onnx.load(str(path), load_external_data=False).graph
    counts = collections.Counter(node.op_type for node in graph.node)
    return {op: counts[op] for op in FUSED_OPS if counts[op]}


def fuse_for_ort(source: str | Path, target: str | Path) -> dict[str, Any]:
    """Write ``source`` with ORT's fused operators to ``target``; returns what fused (module doc).

    Returns ``{"tool", "rules": {rule: times applied}, "ops": {fused operator: nodes}}``. The
    caller checks the result against PyTorch (``export_onnx`` does, within its tolerance).
    """
    ir = require("onnx_ir")
    pattern = require("onnxscript.rewriter.pattern")
    ort_fusions = require("onnxscript.rewriter.ort_fusions")
    with quiet("onnxscript"):
        model = ir.load(str(source))
        reassociated = pattern.RewriteRuleSet([bias_then_mask_rule()]).apply_to_model(model)
        model, counts = ort_fusions.optimize_for_ort(model)
        weight_bytes = sum(v.const_value.nbytes for v in model.graph.initializers.values()
                           if v.const_value is not None)
        external = Path(target).name + ".data" if weight_bytes > EXTERNAL_DATA_BYTES else None
        ir.save(model, str(target), external_data=external)
    rules = {name: n for name, n in {"bias_then_mask": reassociated, **counts}.items() if n}
    return {"tool": TOOL, "rules": rules, "ops": op_counts(target)}
