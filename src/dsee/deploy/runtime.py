"""Running an exported ONNX model with ONNX Runtime on the CPU, as a PyTorch model is called.

    model = OnnxRuntimeModel(DIR)               # DIR from export_onnx / dsee export --format onnx
    logits = model(input_ids=..., attention_mask=...).logits        # torch tensors in and out

Session options (``session_options``), chosen for a fair comparison with PyTorch on CPU:
all graph optimizations on (``ORT_ENABLE_ALL``: constant folding, node fusions such as
LayerNorm/GELU/MatMul+Add, layout changes), the operator thread pool sized to PyTorch's own
thread count (``torch.get_num_threads()``, unless given), one inter-op thread and sequential
execution (a transformer's graph is a chain: parallel branches gain nothing and would oversubscribe
the cores the operator threads already use).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from . import ONNX_FILE, ONNX_MANIFEST, require

PROVIDER = "CPUExecutionProvider"


def session_options(threads: int | None = None):
    """``onnxruntime.SessionOptions`` for CPU inference (module doc); ``threads`` default: torch's count."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: ORT warns about every initializer it folds away
    return options


def _session(ort, file: Path, options):
    """An ONNX Runtime session on ``file``; a ValueError naming the file when ONNX Runtime refuses it.

    ONNX Runtime raises its own exception types (``InvalidProtobuf`` for a truncated file, ``Fail``
    for external data it will not read: outside the model's folder, or missing), none of them an
    OSError or ValueError: each becomes one message that says what to do.
    """
    try:
        return ort.InferenceSession(str(file), sess_options=options, providers=[PROVIDER])
    except Exception as err:  # noqa: BLE001 - onnxruntime's exception types are not importable by name
        reason = " ".join(str(err).split())
        raise ValueError(f"{file}: ONNX Runtime cannot load it ({reason[:300]}): the file is truncated or damaged, "
                         "or its weights are in an external data file outside its folder or missing; export the "
                         "model again (dsee export RUN --out DIR --format onnx)") from None


class OnnxRuntimeModel:
    """An ONNX export (a directory written by ``export_onnx``, or a ``.onnx`` file) in an ORT session.

    Called like a transformers model: keyword tensors in (``input_ids``, ``attention_mask`` and,
    where the graph takes it, ``token_type_ids``, zeros when not given), an object with the
    graph's outputs as torch tensors out (``.logits`` or ``.last_hidden_state``). ``config`` is the
    exported ``config.json`` (labels, vocabulary size) when there is one.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        ort = require("onnxruntime")
        path = Path(path)
        file = path / ONNX_FILE if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"{path}: no {ONNX_FILE} (write one with dsee export RUN --format onnx)")
        directory = file.parent
        self.manifest = json.loads((directory / ONNX_MANIFEST).read_text()) \
            if (directory / ONNX_MANIFEST).is_file() else {}
        self.config = None
        if (directory / "config.json").is_file():
            from transformers import AutoConfig

            self.config = AutoConfig.from_pretrained(directory)
        self.threads = threads or torch.get_num_threads()
        self.session = _session(ort, file, session_options(self.threads))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def feed(self, inputs: dict) -> dict[str, np.ndarray]:
        """The session's inputs as int64 numpy arrays (token_type_ids: zeros unless given)."""
        feed = {}
        for name in self.input_names:
            value = inputs.get(name)
            if value is None and name == "token_type_ids" and inputs.get("input_ids") is not None:
                value = np.zeros(tuple(inputs["input_ids"].shape), dtype=np.int64)
            if value is None:
                raise ValueError(f"the ONNX graph needs {name!r}; given: {sorted(k for k, v in inputs.items() if v is not None)}")
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().numpy()
            feed[name] = np.ascontiguousarray(value, dtype=np.int64)
        return feed

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One pass on a prepared ``feed``: the outputs as numpy arrays."""
        return self.session.run(self.output_names, feed)

    def __call__(self, **inputs) -> SimpleNamespace:
        outputs = self.run(self.feed(inputs))
        return SimpleNamespace(**{name: torch.from_numpy(value) for name, value in zip(self.output_names, outputs)})
