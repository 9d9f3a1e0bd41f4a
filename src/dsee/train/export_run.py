"""``dsee export RUN --out DIR [--format transformers|onnx] [--quantize int8]``: a run's kept model as a
self-contained directory.

The adapters are merged (W ← M ⊙ (W0 + ΔW) where a prune mask exists, so the requested zeros are
in the exported weights) unless ``merge=False``; the tokenizer and the label mapping are copied, and
``dsee_export.json`` records the source run, its dev metrics, the file sizes and what the run was
scored on (``evaluation``: task, data, maximum length, main metric), so that ``dsee eval DIR``
scores the export on the same data (``export_eval.py``).

``transformers`` (default): ``save_pretrained``, a stock checkpoint whenever a stock config
describes the model (unpruned, unstructured, uniformly pruned decoders), dsee's format otherwise.
``onnx``: ``deploy.onnx_export.export_onnx``, for every model: fused attention (unless
``fuse=False``), optionally int8 weights (``quantize="int8"``); checked against ONNX Runtime on the
built-in sentences and on the first ``check_batches`` dev batches of the run's data, where the
data is on disk (the int8 graph's difference from fp32 is measured on those batches).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..adapters.inject import dsee_layers, merge_dsee
from ..deploy import ONNX_MANIFEST
from ..files import atomic_write_text
from ..sparsity.export import MANIFEST, save_pretrained
from .metrics import main_metric
from .pipeline import load_run, load_task_data
from .run import LABELS, METRICS, RunConfig, RunLabels, check_out_apart

EXPORT_RECORD = "dsee_export.json"
FORMATS = ("transformers", "onnx")
CHECK_BATCHES = 4  # dev batches the ONNX export is checked (and int8 measured) on
# what the run was scored on: enough to read and encode the same evaluation data again
EVALUATION_FIELDS = ("task", "data_dir", "train_file", "validation_file", "text_columns", "label_column", "task_type",
                     "source_column", "target_column", "max_source_tokens", "max_length", "max_eval_samples",
                     "eval_batch_size", "seed")
PATH_FIELDS = ("data_dir", "train_file", "validation_file")


def export_run(run: str | Path, out: str | Path, *, compact: bool = False, overwrite: bool = False,
               merge: bool = True, format: str = "transformers", quantize: str | None = None,  # noqa: A002
               per_channel: bool = True, fp32_ffn_down: bool = False, fuse: bool = True,
               check_batches: int | None = None) -> dict[str, Any]:
    """Export the kept model of ``run`` to ``out`` (module doc); returns what was written.

    ``quantize`` ("int8"), ``per_channel``, ``fp32_ffn_down``, ``fuse`` and ``check_batches`` apply to
    ``format="onnx"`` (``deploy.onnx_export.export_onnx``); ``check_batches`` dev batches (default ``CHECK_BATCHES``; 0: the
    built-in sentences only).
    """
    run, out = Path(run), Path(out)
    _check_options(format, compact, merge, quantize, per_channel, fp32_ffn_down, fuse, check_batches)
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

        data, data_note = dev_batches(config, tokenizer, CHECK_BATCHES if check_batches is None else check_batches)
        manifest = export_onnx(model, out, tokenizer=tokenizer, extra_files=extra, fuse=fuse, quantize=quantize,
                               per_channel=per_channel, fp32_ffn_down=fp32_ffn_down, data=data)
        info = {"format": "onnx", "weights_file": manifest["file"], "stock": False,
                "bytes_on_disk": sum((out / name).stat().st_size for name in manifest["files"]
                                     if name.startswith(manifest["file"])),
                "check": manifest["check"], "task": manifest["task"], "check_data": data_note,
                "fusion": _fusion_summary(manifest["graph"]["fusion"]), "quantization": manifest["quantization"]}
    else:
        info = {"format": "transformers",
                **save_pretrained(model, out, compact=compact, tokenizer=tokenizer, extra_files=extra)}
    record = {"source_run": str(run), "merged": merge, "dev": metrics.get("dev"), "score": metrics.get("score"),
              "flops": (metrics.get("flops") or {}).get("total"), "evaluation": evaluation_record(config, RunLabels.load(run)), **info}
    atomic_write_text(out / EXPORT_RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return info


def _check_options(format: str, compact: bool, merge: bool, quantize: str | None, per_channel: bool,  # noqa: A002
                   fp32_ffn_down: bool, fuse: bool, check_batches: int | None) -> None:
    if format not in FORMATS:
        raise ValueError(f"--format {format}: choose one of {', '.join(FORMATS)}")
    if format == "onnx" and (compact or not merge):
        raise ValueError("--format onnx writes the merged model as one dense graph: --compact and --no-merge "
                         "do not apply")
    if format != "onnx":
        given = [flag for flag, on in (("--quantize", quantize is not None), ("--per-tensor", not per_channel),
                                       ("--fp32-ffn-down", fp32_ffn_down),
                                       ("--no-fuse", not fuse), ("--check-batches", check_batches is not None))
                 if on]
        if given:
            raise ValueError(f"{', '.join(given)} {'apply' if len(given) > 1 else 'applies'} to ONNX exports only: "
                             "add --format onnx")
        return
    from ..deploy.quantize import check_kind

    check_kind(quantize)
    if quantize is None and not per_channel:
        raise ValueError("--per-tensor sets how int8 weights are scaled: it needs --quantize int8")
    if quantize is None and fp32_ffn_down:
        raise ValueError("--fp32-ffn-down keeps some matmuls of an int8 graph in fp32: it needs --quantize int8")
    if check_batches is not None and check_batches < 0:
        raise ValueError(f"--check-batches {check_batches}: must be >= 0")
    from ..deploy import require

    for module in ("onnx", "onnxscript", "onnxruntime"):  # before anything is loaded: a missing package fails at once
        require(module)


def _fusion_summary(fusion: dict[str, Any]) -> dict[str, Any]:
    return {k: fusion[k] for k in ("applied", "ops", "error", "reason") if k in fusion}


def dev_batches(config: RunConfig, tokenizer, count: int) -> tuple[list[dict] | None, str]:
    """The first ``count`` batches of the run's selection split, tokenized as the run evaluates them.

    Returns (None, why) when there is nothing to read: no batches asked for, or the data is not on
    disk (GLUE from the Hub is never fetched for a check; an export must work from the run alone).
    """
    if count == 0:
        return None, "the built-in check sentences (--check-batches 0)"
    files = [p for p in (config.data_dir, config.train_file, config.validation_file) if p is not None]
    if not files or not all(Path(p).exists() for p in files):
        return None, "the built-in check sentences (the run's data is not on disk)"
    data = load_task_data(config, with_train=False)
    split = data.selection_split
    examples = data.encode(data.evals[split], tokenizer, config)[: count * config.eval_batch_size]
    collate = data.collator(tokenizer)
    size = config.eval_batch_size
    batches = [collate(examples[i: i + size]) for i in range(0, len(examples), size)]
    return batches, f"{len(batches)} batch{'es' if len(batches) > 1 else ''} of {len(examples)} {split} examples " \
                    "of the run's data"


def evaluation_record(config: RunConfig, labels: RunLabels) -> dict[str, Any]:
    """What the run was scored on (``EVALUATION_FIELDS``; paths made absolute, so that the export is
    scored from anywhere), its task type and main metric (as ``TaskData.main_metric`` names it)."""
    record = {name: getattr(config, name) for name in EVALUATION_FIELDS}
    for name in PATH_FIELDS:
        if record[name] is not None and Path(record[name]).exists():
            record[name] = str(Path(record[name]).resolve())
    kind = labels.task_type
    record["labels"] = {"task_type": kind, "label_list": labels.label_list}
    record["main_metric"] = "neg_loss" if kind == "generation" else main_metric(config.task or kind)
    return record
