"""int8 weights for ONNX Runtime on the CPU, with ONNX Runtime's own quantization tooling.

    info = quantize_int8(FP32.onnx, INT8.onnx)          # then fusion.fuse_for_ort(INT8.onnx, ...)

Dynamic int8 (``onnxruntime.quantization.quantize_dynamic``): the weights of every MatMul with a
constant weight (the Q, K, V, attention-output and FFN projections, the pooler and the head) and the
embedding tables (Gather) are stored as int8, symmetric, per output channel by default (one scale
per column of the weight); activations are quantized to uint8 at run time, per tensor, from each
batch's own range (``DynamicQuantizeLinear``). The attention products (Q·Kᵀ, softmax·V), softmax,
the layer norms and GELU stay fp32. ONNX Runtime fuses quantize + integer matmul + rescale into
its ``DynamicQuantizeMatMul`` / ``MatMulIntegerToFloat`` kernels when the session starts.

The choices, measured on all-MiniLM-L6-v2 fine-tuned on SST-2 (``benchmarks/quantize_choice.py``):

- **quantize, then fuse** (``export_onnx``'s order). ONNX Runtime's quantizer leaves an
  ``Attention`` node with separate Q, K, V sizes (``qkv_hidden_sizes``, which the fused fp32 graph
  has) in fp32, so fusing first keeps the Q|K|V projection, a fifth of a block's matmul work, in
  fp32. Quantizing the unfused graph first leaves the three projections as int8 matmuls, and the
  rewriter then fuses the attention core into ``MultiHeadAttention``, the residual layer norms
  and bias + GELU as in the fp32 graph.
- **per channel**: as fast as one scale per matrix, and closer to the fp32 model.
- **dynamic, not static**: static int8 (``quantize_static``, QDQ, MinMax ranges from training
  batches) was no faster and further from the fp32 model, so it is not offered.
- **FFN down-projections in fp32** (``keep_fp32=ffn_down_projections(graph)``, ``dsee export
  --fp32-ffn-down``): an option, not the default. On all-mpnet-base-v2 fine-tuned on SST-2, MRPC and
  STS-B (the deploy frontier's seed-3 runs; ``quantize_choice`` records of 2026-12-05) int8 costs
  1.03, 0.97 and 0.04 points and keeping the down-projections fp32 0.23, 0.11 and 0.05, but (timed
  alone, MRPC's run) at 0.52 / 0.55 of fp32's CPU time at 1 × 128 / 32 × 128 instead of 0.29 / 0.33.
  Per tensor and static int8 lose more on every task (static: 14.00 F1 on MRPC).

``compare_outputs`` measures what quantization changed on real inputs: the largest |int8 − fp32|
output difference and, for classifiers, the share of rows whose predicted class is the same.
"""

from __future__ import annotations

import collections
import importlib.metadata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from . import quiet, require

KINDS = ("int8",)  # dynamic int8 (module doc: why not static)
# what the quantizer touches: matmuls with a constant weight, and embedding tables (weight-only)
OP_TYPES = ("MatMul", "Gather")
QUANTIZED_OPS = ("MatMulInteger", "DynamicQuantizeLinear", "DequantizeLinear", "QAttention", "DynamicQuantizeMatMul",
                 "MatMulIntegerToFloat")


def check_kind(kind: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise ValueError(f"quantize={kind!r}: choose one of {', '.join(KINDS)} (or None for fp32)")


def quantize_int8(source: str | Path, target: str | Path, *, per_channel: bool = True,
                  external_data: bool = False, op_types: tuple[str, ...] = OP_TYPES,
                  keep_fp32: tuple[str, ...] = ()) -> dict[str, Any]:
    """Write the dynamic-int8 version of the fp32 graph ``source`` to ``target``; returns what was done.

    ``per_channel``: one weight scale per output channel (default) instead of one per matrix.
    ``external_data``: weights in ``target``.data (graphs over protobuf's 2 GB limit). ``op_types``: the
    operators whose constant weights are quantized. ``keep_fp32``: names of nodes left in fp32 (e.g.
    ``ffn_down_projections(source)``). Returns
    ``{"kind", "tool", "per_channel", "op_types", "kept_fp32", "weight_type", "activations", "quantized_ops",
    "versions"}`` for the export manifest (``kept_fp32``: how many nodes ``keep_fp32`` named;
    ``quantized_ops``: the integer operators in the result).
    """
    onnx = require("onnx")
    quantization = require("onnxruntime.quantization")
    with quiet(""):  # the quantizer logs its advice on the root logger
        quantization.quantize_dynamic(str(source), str(target), per_channel=per_channel,
                                      weight_type=quantization.QuantType.QInt8, op_types_to_quantize=list(op_types),
                                      nodes_to_exclude=list(keep_fp32), use_external_data_format=external_data)
    counts = collections.Counter(n.op_type for n in onnx.load(str(target), load_external_data=False).graph.node)
    return {"kind": "int8", "tool": "onnxruntime.quantization.quantize_dynamic", "per_channel": per_channel,
            "op_types": list(op_types), "kept_fp32": len(keep_fp32), "weight_type": "int8, symmetric",
            "activations": "uint8, per tensor, from each batch's range at run time",
            "quantized_ops": {op: counts[op] for op in QUANTIZED_OPS if counts[op]},
            "versions": {dist: _version(dist) for dist in ("onnxruntime", "onnx")}}


# activations whose output feeds an FFN's down-projection (BERT/MPNet GELU, ReLU, fused variants)
FFN_ACTIVATIONS = ("Gelu", "FastGelu", "BiasGelu", "Relu", "QuickGelu")


def ffn_down_projections(graph: str | Path) -> list[str]:
    """Names of the MatMul nodes of ``graph`` (an fp32 ONNX file) whose input is an activation's output.

    These are the FFN down-projections, (tokens, intermediate) @ (intermediate, hidden): dynamic int8
    quantizes their input, the activation of the widest layer, to uint8 with one scale per batch; on
    the mpnet run of the module doc, keeping them fp32 recovered most of int8's loss. Gated FFNs
    (SwiGLU: a Mul of two branches) are not matched.
    """
    onnx = require("onnx")
    nodes = onnx.load(str(graph), load_external_data=False).graph.node
    produced_by = {out: node.op_type for node in nodes for out in node.output}
    return [node.name for node in nodes
            if node.op_type == "MatMul" and produced_by.get(node.input[0]) in FFN_ACTIVATIONS]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def compare_outputs(reference, candidate, batches: Iterable[dict], *, classes: bool) -> dict[str, Any]:
    """What ``candidate`` (an ``OnnxRuntimeModel``) changes against ``reference`` on ``batches``.

    Returns ``{"max_abs_diff", "rows", "batches"}`` (over the first output, every element) and, with
    ``classes`` (a classifier's logits, (batch, labels)), ``same_class_share``: the share of rows whose
    argmax agrees.
    """
    worst, same, rows, count = 0.0, 0, 0, 0
    for batch in batches:
        want = reference.run(reference.feed(batch))[0]
        got = candidate.run(candidate.feed(batch))[0]
        worst = max(worst, float(np.abs(got.astype(np.float64) - want).max()))
        if classes:
            same += int((got.argmax(-1) == want.argmax(-1)).sum())
        rows += want.shape[0]
        count += 1
    if count == 0:
        raise ValueError("no batches to compare the quantized model on")
    out: dict[str, Any] = {"max_abs_diff": worst, "rows": rows, "batches": count}
    if classes:
        out["same_class_share"] = same / rows
    return out
