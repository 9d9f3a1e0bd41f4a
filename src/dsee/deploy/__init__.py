"""Deploying a model dsee made: ONNX export (``onnx_export``) and ONNX Runtime inference (``runtime``).

Stock checkpoints (``transformers`` loads them, pipelines included) are written by
``dsee.sparsity.export.save_pretrained`` whenever a stock config describes the model
(``dsee.sparsity.stock``); ONNX covers every model, per-layer pruned ones included.
The ONNX packages are an optional extra: ``pip install "dsee[onnx]"``.
"""

from __future__ import annotations

import importlib

EXTRA_HINT = 'pip install "dsee[onnx]" (onnx, onnxscript, onnxruntime)'
# the files of an ONNX export (written by ``onnx_export``, read by ``runtime``)
ONNX_FILE = "model.onnx"
ONNX_MANIFEST = "dsee_onnx.json"


class MissingExtra(ModuleNotFoundError):
    """An optional package dsee needs for this request is not installed (the message says how to add it)."""


def require(module: str):
    """Import ``module`` or raise ``MissingExtra`` naming the extra that brings it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        raise MissingExtra(f"{module} is not installed (needed for ONNX export and ONNX Runtime): {EXTRA_HINT}",
                           name=err.name) from None
