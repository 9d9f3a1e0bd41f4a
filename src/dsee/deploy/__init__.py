"""Deploying a model dsee made: ONNX export (``onnx_export``), fused attention (``fusion``), int8
weights (``quantize``) and ONNX Runtime inference (``runtime``).

Stock checkpoints (``transformers`` loads them, pipelines included) are written by
``dsee.sparsity.export.save_pretrained`` whenever a stock config describes the model
(``dsee.sparsity.stock``); ONNX covers every model, per-layer pruned ones included.
The ONNX packages are an optional extra: ``pip install "dsee[onnx]"``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings

# the files of an ONNX export (``onnx_export`` writes them, ``runtime`` reads them)
ONNX_FILE = "model.onnx"
ONNX_MANIFEST = "dsee_onnx.json"
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


@contextlib.contextmanager
def quiet(*loggers: str):
    """The exporter's, rewriter's and quantizer's notices (deprecations, advice, every pattern tried) are
    not the user's business: ``loggers`` (names; "" the root logger) show errors only, warnings are
    ignored. Failures still raise."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)
