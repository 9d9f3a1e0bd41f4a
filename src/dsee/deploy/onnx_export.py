"""ONNX export of any model dsee makes: unpruned, masked, structurally pruned; encoders and decoders.

    export_onnx(model, DIR, tokenizer=...)   DIR/model.onnx, config.json, tokenizer files, dsee_onnx.json

The graph comes from PyTorch's own exporter (``torch.onnx.export(dynamo=True)``: ``torch.export``
traces the model, onnxscript translates the ATen operators and optimizes the graph). Per-layer head
and FFN sizes are just the shapes of the traced weights, so a pruned model whose layers differ (which
no transformers config describes) exports like any other. Adapters still attached are merged into a
copy first (W ← M ⊙ (W0 + ΔW), the weights ``dsee export`` writes); the caller's model is untouched.

Graph signature: int64 ``input_ids``, ``attention_mask`` and, for models with token types
(``type_vocab_size`` > 1, e.g. BERT), ``token_type_ids``, each (batch, sequence) with both axes
dynamic; one output, ``logits`` (classifiers: (batch, labels); causal LMs: (batch, sequence, vocab))
or ``last_hidden_state`` for a bare encoder. Decoders are exported for scoring, one forward pass
without a KV cache: for generation use the stock checkpoint (``save_pretrained`` of a uniformly
pruned decoder), which ``transformers`` generates from with its cache.

Every export is checked: ONNX Runtime's outputs on two batches of shapes other than the traced one
(one padded, one not) must match PyTorch's within ``atol`` · max(1, |output|max); the largest
difference is recorded in ``dsee_onnx.json`` with the inputs, outputs, axes, task, labels, opset
and per-layer sizes.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import atomic_directory
from . import ONNX_FILE, ONNX_MANIFEST, quiet, require  # noqa: F401 (the file names re-exported)
from .fusion import fuse_for_ort
from .quantize import check_kind, compare_outputs, ffn_down_projections, quantize_int8
from .runtime import OnnxRuntimeModel

FORMAT = "dsee-onnx-1"
AXES = ("batch", "sequence")
# one file below this size; above it the weights go to model.onnx.data (protobuf's 2 GB limit)
SINGLE_FILE_BYTES = 1_500_000_000
CHECK_TEXTS = (
    "a gripping, funny film",
    "the plot never takes off, and the actors seem to know it from the first scene to the last",
    "fine",
)

_TASKS = (  # transformers' auto-class mapping -> the pipeline task of such a model
    ("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "text-classification"),
    ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "text-generation"),
    ("MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", "token-classification"),
    ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", "fill-mask"),
    ("MODEL_MAPPING_NAMES", "feature-extraction"),
)


def task_of(model: nn.Module) -> str | None:
    """The ``transformers.pipeline`` task of ``model``'s class (None if transformers does not map it)."""
    from transformers.models.auto import modeling_auto

    name = type(model).__name__
    for mapping, task in _TASKS:
        for value in getattr(modeling_auto, mapping).values():
            if name == value or (isinstance(value, (tuple, list)) and name in value):
                return task
    return None


def input_names(model: nn.Module) -> list[str]:
    """The graph's inputs: input_ids, attention_mask, and token_type_ids where the model has token types."""
    params = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in params and (getattr(model.config, "type_vocab_size", 0) or 0) > 1:
        names.append("token_type_ids")
    return names


class _Graph(nn.Module):
    """``model`` as a function of positional int64 tensors returning one tensor (what the exporter traces)."""

    def __init__(self, model: nn.Module, names: list[str], output: str) -> None:
        super().__init__()
        self.model, self.names, self.output = model, names, output
        self.no_cache = "use_cache" in inspect.signature(model.forward).parameters

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if self.no_cache:
            kwargs["use_cache"] = False  # one forward pass: no key/value cache in or out
        return getattr(self.model(**kwargs), self.output)


def _random_batch(model: nn.Module, names: list[str], size: int, length: int, seed: int, pad: bool):
    vocab = int(getattr(model.config, "vocab_size", 1000))
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(5, vocab - 1), vocab, (size, length), generator=g)
    mask = torch.ones_like(ids)
    if pad and size > 1:
        pad_id = getattr(model.config, "pad_token_id", None)
        ids[0, length // 2:] = pad_id if isinstance(pad_id, int) else 0
        mask[0, length // 2:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in names:
        batch["token_type_ids"] = torch.zeros_like(ids)
        batch["token_type_ids"][:, length // 3:] = 1
    return batch


def check_batches(model: nn.Module, names: list[str], tokenizer=None) -> list[dict[str, torch.Tensor]]:
    """Two batches whose shapes differ from the traced example's: one padded (3 rows), one not (1 row).

    Tokenized ``CHECK_TEXTS`` (as sentence pairs where the graph takes token types) when a tokenizer
    that can pad is given, random token ids otherwise.
    """
    if tokenizer is None or getattr(tokenizer, "pad_token_id", None) is None:
        return [_random_batch(model, names, 3, 11, 1, pad=True), _random_batch(model, names, 1, 5, 2, pad=False)]
    pairs = "token_type_ids" in names
    first = tokenizer(list(CHECK_TEXTS), list(CHECK_TEXTS[::-1]) if pairs else None, padding=True,
                      return_tensors="pt")
    second = tokenizer([CHECK_TEXTS[1]], return_tensors="pt")
    return [{k: v for k, v in b.items() if k in names} for b in (first, second)]


def _parameter_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _plain_copy(model: nn.Module) -> nn.Module:
    """``model`` itself when it has no adapters; otherwise a copy with them merged (masks kept)."""
    from ..adapters.inject import dsee_layers, merge_dsee

    if not dsee_layers(model):
        return model
    return merge_dsee(copy.deepcopy(model))


def export_onnx(model: nn.Module, directory: str | Path, *, tokenizer=None, extra_files: dict[str, str] | None = None,
                opset: int | None = None, atol: float = 1e-4, check: bool = True, fuse: bool = True,
                quantize: str | None = None, per_channel: bool = True, fp32_ffn_down: bool = False,
                data: list[dict] | None = None) -> dict[str, Any]:
    """Write ``model`` as ONNX to ``directory`` (replaced whole, atomically); returns the manifest.

    Args:
        model: any model dsee makes (adapters still attached are merged into a copy).
        directory: the export directory: ``model.onnx``, ``config.json``, the tokenizer, ``dsee_onnx.json``.
        tokenizer: saved beside the graph; it tokenizes the check's sentences.
        extra_files: name -> text, written too (``dsee export`` adds labels.json).
        opset: the ONNX opset (default: the exporter's).
        atol: the fp32 graph must match PyTorch within ``atol`` · max(1, |output|max), else RuntimeError.
        check: False skips every ONNX Runtime run (the comparison with PyTorch and the int8
            measurement); then onnxruntime need not be installed for an fp32 export.
        fuse: rewrite the graph with ONNX Runtime's fused operators (``fusion.fuse_for_ort``:
            Attention / MultiHeadAttention, SkipLayerNormalization, BiasGelu, ...); the counts go to
            the manifest's ``graph.fusion``. A fused graph that ONNX Runtime cannot load or that
            fails the check is replaced by the unfused one, with a warning and the reason recorded.
        quantize: None (fp32) or "int8": dynamic int8 weights (``quantize.quantize_int8``; the unfused
            graph is quantized, then fused). The fp32 graph is checked against PyTorch first; the int8
            graph is then compared with it and the largest difference (and, for classifiers, the share
            of rows with the same predicted class) recorded under ``quantization.vs_fp32``.
        per_channel: int8 weights with one scale per output channel (default) or one per matrix.
        fp32_ffn_down: int8 with the FFN down-projections left in fp32 (``quantize.ffn_down_projections``):
            closer to the fp32 model, slower (``quantize``'s doc has the measured trade-off).
        data: real tokenized batches (dicts of int64 (batch, sequence) tensors, e.g. dev batches):
            the fp32 graph is checked on them too, and the int8 graph is measured on them (without
            them: the built-in check sentences, or random token ids without a tokenizer).

    Raises RuntimeError when the fp32 graph differs from PyTorch beyond the tolerance, or the int8
    graph gives NaN or inf.
    """
    check_kind(quantize)
    if fp32_ffn_down and quantize is None:
        raise ValueError("fp32_ffn_down=True keeps some matmuls of an int8 graph in fp32: it needs quantize='int8'")
    require("onnx")
    require("onnxscript")
    if quantize is not None:
        require("onnxruntime")
    from ..arch import blocks
    from ..sparsity.stock import stock_problem, stock_config

    source = _plain_copy(model)
    was_training = source.training
    source.eval()
    try:
        names = input_names(source)
        device = next(source.parameters()).device
        example = {k: v.to(device) for k, v in _random_batch(source, names, 2, 16, 0, pad=True).items()}
        with torch.no_grad():
            first = source(**example)
        output = "logits" if getattr(first, "logits", None) is not None else "last_hidden_state"
        graph = _Graph(source, names, output).eval()
        batch, sequence = (torch.export.Dim(a) for a in AXES)
        dynamic = {n: {0: batch, 1: sequence} for n in names}
        external = _parameter_bytes(source) > SINGLE_FILE_BYTES
        real = [_graph_inputs(b, names) for b in (data or [])]
        batches = check_batches(source, names, tokenizer) + real
        checker = (lambda path: _check(source, graph, path, batches, atol)) if check else None
        with atomic_directory(directory) as tmp, quiet("torch.onnx"), torch.no_grad(), \
                tempfile.TemporaryDirectory(prefix="dsee-onnx-") as scratch:
            stages = Stages(Path(scratch))
            program = torch.onnx.export(
                graph, tuple(example[n] for n in names), None, input_names=names, output_names=[output],
                dynamic_shapes=dynamic, opset_version=opset, dynamo=True, optimize=True, verbose=False)
            program.save(str(stages.file("plain")), external_data=external)
            fp32, max_diff, fusion = _fp32_graph(stages, checker, fuse)
            quantization = None
            final = fp32
            if quantize is not None:
                final, quantization = _int8_graph(stages, per_channel=per_channel, fp32_ffn_down=fp32_ffn_down,
                                                  fuse=fuse, external=external)
                if check:
                    inputs = f"{len(real)} batches of the given data" if real else \
                        "the check batches (" + ("sentences)" if tokenizer is not None else "random token ids)")
                    quantization["vs_fp32"] = _vs_fp32(fp32, final, real or batches,
                                                       classes=_is_classifier(source, output), inputs=inputs)
            stages.move(final, tmp / ONNX_FILE)
            problem = stock_problem(source)
            (stock_config(source) if problem is None else source.config).save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)
            manifest = _manifest(source, program, names, output, max_diff, atol, problem, blocks)
            manifest["graph"] = {"exporter": "torch.onnx.export(dynamo=True)",
                                 "precision": "fp32" if quantization is None else quantization["kind"],
                                 "fusion": fusion if quantization is None else quantization.pop("fusion")}
            manifest["quantization"] = quantization
            if quantization is not None:  # what it was quantized from and compared with
                quantization["fp32_graph"] = {"fusion": fusion}
                if check:
                    manifest["check"]["graph"] = "the fp32 graph, before quantization"
            manifest["files"] = sorted([p.name for p in tmp.iterdir() if p.name != ".complete"] + [ONNX_MANIFEST])
            (tmp / ONNX_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    finally:
        source.train(was_training)
    for what, record in (("fp32", fusion), ("int8", manifest["graph"]["fusion"] if quantization else {})):
        if "error" in record:  # outside quiet(), which silences the exporter's warnings
            warnings.warn(f"the fused {what} ONNX graph was not usable ({record['error']}); the export holds the "
                          "unfused graph", stacklevel=2)
    return manifest


class Stages:
    """The graph's versions on its way to the export, one folder each under ``scratch``, every one named
    ``model.onnx`` so that a weights file beside it (``model.onnx.data``, large models) keeps its name."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch

    def file(self, stage: str) -> Path:
        (self.scratch / stage).mkdir(exist_ok=True)
        return self.scratch / stage / ONNX_FILE

    @staticmethod
    def move(file: Path, target: Path) -> None:
        for part in file.parent.iterdir():
            shutil.move(str(part), str(target.parent / part.name))


def _fp32_graph(stages: Stages, checker, fuse: bool) -> tuple[Path, float | None, dict[str, Any]]:
    """The fp32 graph to ship (fused where that works) and its largest difference from PyTorch."""
    plain = stages.file("plain")
    if not fuse:
        return plain, checker(plain) if checker else None, {"applied": False, "reason": "fuse=False"}
    fused = stages.file("fused")
    try:
        report = fuse_for_ort(plain, fused)
        if checker is not None:
            _load(fused)
    except Exception as err:  # noqa: BLE001 - the rewriter failed, or ORT refuses its graph: ship the unfused one
        return plain, checker(plain) if checker else None, {"applied": False, "error": _reason(err)}
    try:
        return fused, checker(fused) if checker else None, {"applied": True, **report}
    except RuntimeError as err:  # the fused graph computes something else: ship the unfused one (checked too)
        return plain, checker(plain), {"applied": False, "error": _reason(err)}


def _reason(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err)[:300]}"


def _graph_inputs(batch: dict, names: list[str]) -> dict[str, torch.Tensor]:
    """``batch`` restricted to the graph's inputs; token_type_ids zeros when the graph takes them and the
    batch has none (as ``OnnxRuntimeModel`` feeds them)."""
    out = {n: batch[n] for n in names if n in batch}
    missing = [n for n in names if n not in out and n != "token_type_ids"]
    if missing or "input_ids" not in out:
        raise ValueError(f"a batch of data has no {missing or ['input_ids']} (it has {sorted(batch)})")
    if "token_type_ids" in names and "token_type_ids" not in out:
        out["token_type_ids"] = torch.zeros_like(out["input_ids"])
    return out


def _int8_graph(stages: Stages, *, per_channel: bool, fp32_ffn_down: bool, fuse: bool,
                external: bool) -> tuple[Path, dict[str, Any]]:
    """The int8 graph: the unfused fp32 graph quantized, then fused (why this order: ``quantize``'s doc)."""
    quantized, plain = stages.file("int8"), stages.file("plain")
    keep = tuple(ffn_down_projections(plain)) if fp32_ffn_down else ()
    if fp32_ffn_down and not keep:
        raise ValueError("fp32_ffn_down=True: the graph has no FFN down-projection (a MatMul fed by GELU or ReLU; "
                         "gated FFNs such as SwiGLU are not matched)")
    info = quantize_int8(plain, quantized, per_channel=per_channel, external_data=external, keep_fp32=keep)
    if not fuse:
        return quantized, {**info, "fusion": {"applied": False, "reason": "fuse=False"}}
    fused = stages.file("int8-fused")
    try:
        report = fuse_for_ort(quantized, fused)
        _load(fused)
        return fused, {**info, "fusion": {"applied": True, "order": "quantized, then fused", **report}}
    except Exception as err:  # noqa: BLE001 - as for fp32: ship the unfused int8 graph
        return quantized, {**info, "fusion": {"applied": False, "error": _reason(err)}}


def _load(file: Path) -> OnnxRuntimeModel:
    return OnnxRuntimeModel(file)


def _is_classifier(model: nn.Module, output: str) -> bool:
    return output == "logits" and task_of(model) == "text-classification" and \
        getattr(model.config, "problem_type", None) != "regression" and getattr(model.config, "num_labels", 0) > 1


def _vs_fp32(fp32: Path, int8: Path, batches: list[dict], *, classes: bool, inputs: str) -> dict[str, Any]:
    """The int8 graph against the fp32 one on ``batches`` (``quantize.compare_outputs``); NaN or inf fails."""
    result = compare_outputs(_load(fp32), _load(int8), batches, classes=classes)
    if not math.isfinite(result["max_abs_diff"]):
        raise RuntimeError(f"the int8 graph gives non-finite outputs where the fp32 graph does not ({result})")
    return {**result, "inputs": inputs}


def _check(model: nn.Module, graph: nn.Module, file: Path, batches: list[dict], atol: float) -> float:
    """Largest |ONNX Runtime − PyTorch| over ``batches``; RuntimeError beyond atol · max(1, |output|max)."""
    runner = OnnxRuntimeModel(file)
    device = next(model.parameters()).device
    worst = 0.0
    for batch in batches:
        with torch.no_grad():
            expected = graph(*(batch[n].to(device) for n in runner.input_names)).float().cpu()
        got = getattr(runner(**batch), graph.output)
        diff = (got - expected).abs().max().item()
        bound = atol * max(1.0, expected.abs().max().item())
        if not diff <= bound:  # NaN fails too
            raise RuntimeError(f"the exported graph differs from the PyTorch model by {diff:.3g} (allowed {bound:.3g}) "
                               f"on a batch of shape {tuple(batch['input_ids'].shape)}")
        worst = max(worst, diff)
    return worst


def _manifest(model, program, names, output, max_diff, atol, problem, blocks) -> dict[str, Any]:
    import importlib.metadata as md

    config = model.config
    try:
        all_blocks = blocks(model)
        sizes = {"heads_per_layer": [b.num_heads for b in all_blocks], "ffn_per_layer": [b.ffn_size for b in all_blocks]}
    except ValueError:  # a model type without a block layout (nothing can have been pruned structurally)
        sizes = {}
    opset = next((o.version for o in program.model_proto.opset_import if o.domain in ("", "ai.onnx")), None)
    id2label = getattr(config, "id2label", None) if output == "logits" and task_of(model) == "text-classification" \
        else None
    versions = {}
    for dist in ("torch", "transformers", "onnx", "onnxscript", "onnxruntime"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    return {
        "format": FORMAT,
        "file": ONNX_FILE,
        "architecture": type(model).__name__,
        "model_type": getattr(config, "model_type", None),
        "task": task_of(model),
        "inputs": {n: {"dtype": "int64", "shape": list(AXES)} for n in names},
        "outputs": {output: {"dtype": "float32"}},
        "opset": opset,
        "id2label": {str(k): v for k, v in id2label.items()} if id2label else None,
        "problem_type": getattr(config, "problem_type", None),
        "config_describes_shapes": problem is None,  # config.json gives every layer's sizes, or see below
        **sizes,
        "kv_cache": False,
        "check": None if max_diff is None else {"max_abs_diff": max_diff, "atol": atol, "runtime": "onnxruntime"},
        "versions": versions,
    }
