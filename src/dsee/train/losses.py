"""The training losses: the model's own (and the same from a classifier's logits alone, for exports), or
next-token cross-entropy on the target tokens of a decoder; with a teacher, the distilled loss
(``distill.py``)."""

from __future__ import annotations

import torch
from torch import nn


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0,
                   reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy on the positions whose label is not -100 (the target tokens).

    logits: (B, T, V), labels: (B, T); position t predicts token t + 1.
    """
    shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])  # (B·(T-1), V)
    shift_labels = labels[:, 1:].reshape(-1)  # (B·(T-1),)
    return nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100,
                                       label_smoothing=label_smoothing, reduction=reduction)


def logits_loss(logits: torch.Tensor, labels: torch.Tensor, task_type: str) -> torch.Tensor:
    """The loss transformers' sequence classifiers compute from their logits: cross-entropy over the
    classes (logits (B, C), labels (B,)), or for regression the squared error of the one output (B, 1)."""
    if task_type == "regression":
        return nn.functional.mse_loss(logits.float().squeeze(-1), labels.float())
    return nn.functional.cross_entropy(logits.float(), labels)


def training_loss(model: nn.Module, batch: dict, data, config, teacher=None) -> torch.Tensor:
    """The model's own loss, or for generation the target-token loss with label smoothing.

    ``data``: the run's ``TaskData`` (its ``task_type``), ``config``: its ``RunConfig``;
    ``teacher``: a ``distill.Teacher`` whose outputs join the loss (``dsee prune --distill``).
    """
    if teacher is not None:
        return teacher.loss(model, batch, data.task_type)
    if data.task_type != "generation":
        return model(**batch).loss
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return causal_lm_loss(model(**inputs).logits, batch["labels"], config.label_smoothing)
