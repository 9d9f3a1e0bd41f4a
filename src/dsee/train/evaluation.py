"""Evaluation during and after training: dev metrics of classification, regression and generation runs.

Every function runs on all processes of a distributed run and gathers the predictions back
(duplicates added by the sampler's padding dropped), so each process returns the same metrics.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .losses import causal_lm_loss
from .metrics import compute_metrics
from .pipeline import TaskData


def make_eval_loaders(data: TaskData, tokenizer, config, batch_size: int, accelerator) -> dict:
    """One loader per evaluation split, sharded over processes (gathered back in ``evaluate``)."""
    collate = data.collator(tokenizer)
    return {
        name: accelerator.prepare_data_loader(
            DataLoader(data.encode(ds, tokenizer, config), batch_size=batch_size, collate_fn=collate)
        )
        for name, ds in data.evals.items()
    }


def evaluate_generation_loss(model: nn.Module, loader, accelerator) -> dict[str, float]:
    """Dev loss per target token (no smoothing), its perplexity, and ``neg_loss`` for selection."""
    model.eval()
    total, count = torch.zeros(()), torch.zeros(())
    with torch.no_grad():
        for batch in loader:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            loss = causal_lm_loss(model(**inputs).logits, batch["labels"], reduction="sum")
            tokens = (batch["labels"][:, 1:] != -100).sum()
            total += accelerator.reduce(loss.detach().float().reshape(()), "sum").cpu()
            count += accelerator.reduce(tokens.float().reshape(()), "sum").cpu()
    mean = float(total / count.clamp(min=1))
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "neg_loss": -mean}


def evaluate(model: nn.Module, loader, accelerator, metric_kind: str, details: dict | None = None) -> dict[str, float]:
    """Dev metrics of ``model`` on ``loader`` (gathered over processes, duplicates dropped).

    Non-finite outputs (a diverged model) give ``{"loss": nan}`` alone: no metric is defined on them.
    ``details``, when given, receives ``class_counts`` for a classifier: how many examples it predicts
    in each class (a model that predicts one class for all has counts with a single non-zero).
    """
    if metric_kind == "generation":
        return evaluate_generation_loss(model, loader, accelerator)
    model.eval()
    predictions, labels, losses = [], [], []
    with torch.no_grad():
        for batch in loader:
            out = model(**batch)
            logits, gold = accelerator.gather_for_metrics((out.logits.float(), batch["labels"]))
            predictions.append(logits.cpu())
            labels.append(gold.cpu())
            losses.append(accelerator.gather_for_metrics(out.loss.detach().float().reshape(1)).mean().item())
    return score_predictions(torch.cat(predictions), torch.cat(labels), losses, metric_kind, details)


def score_predictions(logits: torch.Tensor, labels: torch.Tensor, losses: list[float], metric_kind: str,
                      details: dict | None = None) -> dict:
    """The task's metrics of ``logits`` (n, classes) or (n, 1) against ``labels`` (n,), and ``loss``: the
    mean of the per-batch ``losses`` (what a run logs; ``dsee eval`` of an export computes the same).

    Non-finite logits give ``{"loss": nan}`` alone; ``details`` receives a classifier's ``class_counts``
    (see ``evaluate``)."""
    if not torch.isfinite(logits).all():
        return {"loss": float("nan")}
    if logits.shape[-1] == 1:
        logits = logits.squeeze(-1)
    elif details is not None:  # logits (examples, classes)
        details["class_counts"] = torch.bincount(logits.argmax(-1), minlength=logits.shape[-1]).tolist()
    metrics = compute_metrics(metric_kind, logits.numpy(), labels.numpy())
    metrics["loss"] = float(np.mean(losses))
    return metrics


def score_of(metrics: dict[str, float], name: str) -> float:
    """The selection score of one evaluation (higher is better); -inf when it is missing or NaN."""
    value = metrics.get(name, float("nan"))
    return -math.inf if value is None or math.isnan(value) else value


def evaluate_run(run: str | Path, data_dir: str | None = None, max_eval_samples: int | None = None,
                 batch_size: int | None = None, split: str = "validation") -> dict[str, dict[str, float]]:
    """Recompute the dev metrics of a saved run from its kept checkpoint.

    Classification and regression runs are scored on their evaluation splits (``split``
    "validation"); GLUE test sets carry no labels and a run on your own files has only its
    validation file, so any other split is refused rather than ignored.
    """
    from accelerate import Accelerator

    from ..models import resolve_model
    from .pipeline import load_task_data, load_tokenizer, load_trained_model
    from .run import load_run_config

    if split not in ("validation", "dev"):
        raise ValueError(f"--split {split}: a classification or regression run is scored on its labelled "
                         "validation data only (GLUE test sets have no labels)")
    config = load_run_config(run)
    if data_dir is not None:
        config.data_dir = data_dir
    if max_eval_samples is not None:
        config.max_eval_samples = max_eval_samples
    data: TaskData = load_task_data(config, with_train=False)
    tokenizer = load_tokenizer(resolve_model(config.model))
    model = load_trained_model(run, config, data, tokenizer)
    accelerator = Accelerator()
    model = accelerator.prepare(model)
    loaders = make_eval_loaders(data, tokenizer, config, batch_size or config.eval_batch_size, accelerator)
    return {name: evaluate(model, loader, accelerator, data.metric_kind) for name, loader in loaders.items()}
