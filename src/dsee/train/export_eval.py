"""Score what ships: ``dsee eval DIR`` on an exported directory, on the run's task and data.

    results = evaluate_export(DIR)       # {split: {metric: value, "loss": ...}}, as evaluate_run gives

DIR is what ``dsee export RUN`` wrote: a PyTorch directory (``save_pretrained``: stock or dsee's
format) or an ONNX one (``model.onnx``, fp32 or int8). Its ``dsee_export.json`` records what the
run was scored on (``evaluation``: task or files, data folder, maximum length, evaluation batch
size, the seed of a dev subset, main metric; ``export_run.evaluation_record``); ``data_dir``
overrides the data folder. The examples are read, tokenized (with the tokenizer saved in DIR),
padded and batched by the run's own code (``load_task_data``, ``TaskData.encode``, ``Collator``),
and scored by the run's metrics (``metrics.compute_metrics`` through ``score_predictions``), so an
export of an unchanged model scores what ``dsee eval RUN`` scores, and a quantized export's score
is measured, not assumed. The loss is the classifier's own, computed from the logits
(``losses.logits_loss``).

Text generation exports are refused: their score needs decoding with a key/value cache, which the
ONNX graph does not have; ``dsee eval RUN`` scores the run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .evaluation import score_predictions
from .export_run import EXPORT_RECORD
from .losses import logits_loss
from .pipeline import TaskData, load_task_data, load_tokenizer
from .run import RunConfig


def read_record(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / EXPORT_RECORD
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{directory}: neither a dsee run (run_config.json) nor an export written by "
                                f"`dsee export` ({EXPORT_RECORD})") from None
    except ValueError as err:
        raise ValueError(f"{path}: not readable JSON ({err})") from None


def export_config(record: dict[str, Any], directory: Path, data_dir: str | None = None,
                  max_eval_samples: int | None = None) -> RunConfig:
    """A RunConfig holding what the run was scored on (the rest: defaults; nothing is trained)."""
    evaluation = record.get("evaluation")
    if not evaluation:
        raise ValueError(f"{directory / EXPORT_RECORD} records no evaluation data (exported by an older dsee): "
                         "export the run again")
    fields = {k: v for k, v in evaluation.items() if k in RunConfig.__dataclass_fields__}
    if data_dir is not None:
        fields["data_dir"] = data_dir
    if max_eval_samples is not None:
        fields["max_eval_samples"] = max_eval_samples
    return RunConfig(out=str(directory), **fields)


def load_exported(directory: Path, record: dict[str, Any]) -> Callable[[dict], torch.Tensor]:
    """batch -> logits for the model in ``directory``: in ONNX Runtime (an ONNX export) or PyTorch."""
    if record.get("format") == "onnx":
        from ..deploy.runtime import OnnxRuntimeModel

        runner = OnnxRuntimeModel(directory)
        return lambda batch: runner(**batch).logits
    from ..sparsity.export import load_pretrained

    model = load_pretrained(directory)

    def forward(batch: dict) -> torch.Tensor:
        with torch.inference_mode():
            return model(**batch).logits

    return forward


def evaluate_export(directory: str | Path, *, data_dir: str | None = None, max_eval_samples: int | None = None,
                    batch_size: int | None = None, split: str = "validation") -> dict[str, dict[str, float]]:
    """The metrics of the exported model in ``directory`` on each evaluation split of its run's data."""
    directory = Path(directory)
    record = read_record(directory)
    if split not in ("validation", "dev"):
        raise ValueError(f"--split {split}: an export is scored on its run's labelled validation data only")
    config = export_config(record, directory, data_dir, max_eval_samples)
    if config.is_generation:
        raise ValueError(f"{directory} is a text-generation export: scoring it needs decoding with a key/value "
                         f"cache; score the run with `dsee eval {record.get('source_run', 'RUN')}`")
    data: TaskData = load_task_data(config, with_train=False)
    tokenizer = load_tokenizer(str(directory))
    forward = load_exported(directory, record)
    collate = data.collator(tokenizer)
    size = batch_size or config.eval_batch_size
    results = {}
    for name, split_data in data.evals.items():
        loader = DataLoader(data.encode(split_data, tokenizer, config), batch_size=size, collate_fn=collate)
        logits, labels, losses = [], [], []
        for batch in loader:
            gold = batch.pop("labels")
            out = forward(batch).float().cpu()
            logits.append(out)
            labels.append(gold)
            losses.append(logits_loss(out, gold, data.task_type).item())
        results[name] = score_predictions(torch.cat(logits), torch.cat(labels), losses, data.metric_kind)
    return results


def describe_export(directory: str | Path) -> str:
    """One line: what the export holds (runtime, precision) and what it is scored on."""
    record = read_record(directory)
    evaluation = record.get("evaluation") or {}
    quantization = record.get("quantization")
    if record.get("format") != "onnx":
        runtime = "PyTorch"
    elif quantization:
        runtime = f"ONNX Runtime, {quantization['kind']} ({'per channel' if quantization['per_channel'] else 'per tensor'})"
    else:
        runtime = "ONNX Runtime, fp32"
    data = evaluation.get("task") or evaluation.get("validation_file")
    return f"{directory}: export of {record.get('source_run')} ({runtime}) on {data}, main metric " \
           f"{evaluation.get('main_metric')}"
