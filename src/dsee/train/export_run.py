"""``dsee export RUN --out DIR [--format transformers|onnx]``: a run's kept model as a self-contained directory.

The adapters are merged (W ← M ⊙ (W0 + ΔW) where a prune mask exists, so the requested zeros are
in the exported weights) unless ``merge=False``; the tokenizer and the label mapping are copied, and
``dsee_export.json`` records the source run, its dev metrics and the file sizes.

``transformers`` (default): ``save_pretrained``, a stock checkpoint whenever a stock config
describes the model (unpruned, unstructured, uniformly pruned decoders), dsee's format otherwise.
``onnx``: ``deploy.onnx_export.export_onnx``, for every model, checked against ONNX Runtime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..deploy.onnx_export import ONNX_MANIFEST
from ..sparsity.export import MANIFEST, save_pretrained
from ..files import atomic_write_text
from ..adapters.inject import dsee_layers, merge_dsee
from .pipeline import load_run
from .run import LABELS, METRICS, check_out_apart


EXPORT_RECORD = "dsee_export.json"
FORMATS = ("transformers", "onnx")


def export_run(run: str | Path, out: str | Path, *, compact: bool = False, overwrite: bool = False,
               merge: bool = True, format: str = "transformers") -> dict[str, Any]:  # noqa: A002
    run, out = Path(run), Path(out)
    if format not in FORMATS:
        raise ValueError(f"--format {format}: choose one of {', '.join(FORMATS)}")
    if format == "onnx" and (compact or not merge):
        raise ValueError("--format onnx writes the merged model as one dense graph: --compact and --no-merge "
                         "do not apply")
    if format == "onnx":  # before anything is loaded: a missing package fails at once
        from ..deploy import require

        for module in ("onnx", "onnxscript", "onnxruntime"):
            require(module)
    check_out_apart(run, out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty: use --overwrite to replace it")
        if not any((out / name).is_file() for name in (EXPORT_RECORD, MANIFEST, ONNX_MANIFEST)):
            raise ValueError(f"{out} is not an exported model directory: --overwrite only replaces those, "
                             "choose another --out")
    config, model, tokenizer = load_run(run)
    if merge and dsee_layers(model):
        merge_dsee(model)
    extra = {}
    if (run / LABELS).is_file():
        extra[LABELS] = (run / LABELS).read_text()
    metrics = json.loads((run / METRICS).read_text()) if (run / METRICS).is_file() else {}
    if format == "onnx":
        from ..deploy.onnx_export import export_onnx

        manifest = export_onnx(model, out, tokenizer=tokenizer, extra_files=extra)
        info = {"format": "onnx", "weights_file": manifest["file"], "stock": False,
                "bytes_on_disk": sum((out / name).stat().st_size for name in manifest["files"]
                                     if name.startswith(manifest["file"])),
                "check": manifest["check"], "task": manifest["task"]}
    else:
        info = {"format": "transformers",
                **save_pretrained(model, out, compact=compact, tokenizer=tokenizer, extra_files=extra)}
    record = {"source_run": str(run), "merged": merge, "dev": metrics.get("dev"), "score": metrics.get("score"),
              "flops": (metrics.get("flops") or {}).get("total"), **info}
    atomic_write_text(out / EXPORT_RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return info
