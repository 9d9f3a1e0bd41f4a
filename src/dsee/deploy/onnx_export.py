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

import contextlib
import copy
import inspect
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import atomic_directory
from . import ONNX_FILE, ONNX_MANIFEST, require  # noqa: F401 (the file names re-exported)
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


@contextlib.contextmanager
def _quiet():
    """The exporter's notices (torchvision absent, axis names shared, deprecations) are not the user's business."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _parameter_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _plain_copy(model: nn.Module) -> nn.Module:
    """``model`` itself when it has no adapters; otherwise a copy with them merged (masks kept)."""
    from ..adapters.inject import dsee_layers, merge_dsee

    if not dsee_layers(model):
        return model
    return merge_dsee(copy.deepcopy(model))


def export_onnx(model: nn.Module, directory: str | Path, *, tokenizer=None, extra_files: dict[str, str] | None = None,
                opset: int | None = None, atol: float = 1e-4, check: bool = True) -> dict[str, Any]:
    """Write ``model`` as ONNX to ``directory`` (replaced whole, atomically); returns the manifest.

    ``tokenizer`` is saved beside the graph and tokenizes the check's inputs; ``extra_files``
    (name -> text) are written too (``dsee export`` adds labels.json). ``check=False`` skips the
    ONNX Runtime comparison (then onnxruntime need not be installed). Raises RuntimeError when
    ONNX Runtime's outputs differ from PyTorch's by more than the tolerance.
    """
    require("onnx")
    require("onnxscript")
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
        with atomic_directory(directory) as tmp, _quiet(), torch.no_grad():
            program = torch.onnx.export(
                graph, tuple(example[n] for n in names), None, input_names=names, output_names=[output],
                dynamic_shapes=dynamic, opset_version=opset, dynamo=True, optimize=True, verbose=False)
            program.save(str(tmp / ONNX_FILE), external_data=_parameter_bytes(source) > SINGLE_FILE_BYTES)
            max_diff = _check(source, graph, tmp / ONNX_FILE, check_batches(source, names, tokenizer), atol) \
                if check else None
            problem = stock_problem(source)
            (stock_config(source) if problem is None else source.config).save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)
            manifest = _manifest(source, program, names, output, max_diff, atol, problem, blocks)
            manifest["files"] = sorted([p.name for p in tmp.iterdir() if p.name != ".complete"] + [ONNX_MANIFEST])
            (tmp / ONNX_MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    finally:
        source.train(was_training)
    return manifest


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
