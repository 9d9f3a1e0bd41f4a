"""Evaluation metrics for GLUE tasks and user data.

All maths is delegated to scikit-learn and scipy; this module only picks the metrics for a task
and turns model outputs into predictions. The metric sets:

=================  =============================================  ==========================
task / kind        metrics                                        main (model selection)
=================  =============================================  ==========================
cola               matthews_correlation                           matthews_correlation
sst2, qnli, rte,   accuracy                                       accuracy (MNLI: on the
mnli, wnli                                                        matched validation split)
mrpc, qqp          accuracy, f1 (class 1 positive)                f1
stsb               pearson, spearman, combined (their mean)       combined
"classification"   accuracy, f1_macro                             accuracy
"regression"       pearson, spearman, mse                         pearson
=================  =============================================  ==========================

Every main metric is "higher is better".
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    matthews_corrcoef,
    mean_squared_error,
)

from .tasks import GLUE_TASKS, GlueTask, get_task

__all__ = ["compute_metrics", "main_metric", "metric_names"]

_KINDS = ("classification", "regression")


def _accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    """Fraction of exact matches (``sklearn.metrics.accuracy_score``)."""
    return float(accuracy_score(gold, pred))


def _f1(pred: np.ndarray, gold: np.ndarray) -> float:
    """Binary F1 of class 1 (GLUE's MRPC/QQP convention); 0 when class 1 never occurs."""
    return float(f1_score(gold, pred, pos_label=1, average="binary", zero_division=0.0))


def _f1_macro(pred: np.ndarray, gold: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    return float(f1_score(gold, pred, average="macro", zero_division=0.0))


def _mcc(pred: np.ndarray, gold: np.ndarray) -> float:
    """Matthews correlation coefficient (``sklearn``; 0 when it is undefined)."""
    return float(matthews_corrcoef(gold, pred))


def _correlation(fn: Callable[..., Any], pred: np.ndarray, gold: np.ndarray) -> float:
    # A constant prediction vector (e.g. a collapsed regressor) has no correlation: scipy
    # returns NaN with a warning. NaN is the honest value, and it never wins a
    # "greater than best" comparison, so model selection simply skips it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(fn(pred, gold).statistic)


def _pearson(pred: np.ndarray, gold: np.ndarray) -> float:
    """Pearson's r (``scipy.stats.pearsonr``); NaN for constant inputs."""
    return _correlation(stats.pearsonr, pred, gold)


def _spearman(pred: np.ndarray, gold: np.ndarray) -> float:
    """Spearman's rank correlation (``scipy.stats.spearmanr``); NaN for constant inputs."""
    return _correlation(stats.spearmanr, pred, gold)


def _mse(pred: np.ndarray, gold: np.ndarray) -> float:
    """Mean squared error (``sklearn.metrics.mean_squared_error``); lower is better."""
    return float(mean_squared_error(gold, pred))


_FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": _accuracy,
    "f1": _f1,
    "f1_macro": _f1_macro,
    "matthews_correlation": _mcc,
    "pearson": _pearson,
    "spearman": _spearman,
    "mse": _mse,
}

_CUSTOM_METRICS = {
    "classification": ("accuracy", "f1_macro"),
    "regression": ("pearson", "spearman", "mse"),
}
_CUSTOM_MAIN = {"classification": "accuracy", "regression": "pearson"}


def _resolve(task_or_kind: str | GlueTask) -> tuple[str, tuple[str, ...], str]:
    """Return (task type, metric names, main metric) for a GLUE task or a kind."""
    if isinstance(task_or_kind, GlueTask):
        task = task_or_kind
    elif task_or_kind in _KINDS:
        return task_or_kind, _CUSTOM_METRICS[task_or_kind], _CUSTOM_MAIN[task_or_kind]
    else:
        try:
            task = get_task(task_or_kind)
        except ValueError:
            raise ValueError(
                f"unknown task or kind {task_or_kind!r}; use one of {', '.join(_KINDS)} "
                f"or a GLUE task: {', '.join(GLUE_TASKS)}"
            ) from None
    return task.task_type, task.metrics, task.main_metric


def metric_names(task_or_kind: str | GlueTask) -> tuple[str, ...]:
    """Names of the metrics :func:`compute_metrics` returns for this task or kind."""
    return _resolve(task_or_kind)[1]


def main_metric(task_or_kind: str | GlueTask) -> str:
    """The metric used to select the best checkpoint (always "higher is better").

    GLUE: CoLA ``matthews_correlation``; STS-B ``combined`` (mean of Pearson and Spearman);
    MRPC and QQP ``f1``; the others ``accuracy`` (for MNLI, on ``validation_matched``: see
    ``GlueTask.selection_split``). User data: ``accuracy`` for classification, ``pearson`` for
    regression.
    """
    return _resolve(task_or_kind)[2]


def _predictions(kind: str, predictions: Any, n: int) -> np.ndarray:
    """Turn model outputs into predictions: logits -> class ids, ``(n, 1)`` -> ``(n,)``."""
    pred = np.asarray(predictions)
    if kind == "classification":
        if pred.ndim == 2:  # logits or probabilities, one row per example
            return pred.argmax(axis=-1)
        if pred.ndim == 1:
            if pred.dtype.kind == "f" and not np.all(np.mod(pred, 1) == 0):
                raise ValueError("classification predictions must be class ids or 2-D logits")
            return pred.astype(np.int64)
    else:
        if pred.ndim == 2 and pred.shape[1] == 1:
            return pred[:, 0].astype(np.float64)
        if pred.ndim == 1:
            return pred.astype(np.float64)
    raise ValueError(f"predictions of shape {pred.shape} do not fit {n} labels for {kind}")


def compute_metrics(
    task_or_kind: str | GlueTask, predictions: Any, labels: Any
) -> dict[str, float]:
    """Score predictions against gold labels.

    Args:
        task_or_kind: a GLUE task name (``"cola"``, ``"stsb"``, ...) or ``"classification"`` /
            ``"regression"`` for user data.
        predictions: classification: class ids of shape ``(n,)`` or logits ``(n, classes)``
            (argmax is taken); regression: values of shape ``(n,)`` or ``(n, 1)``. Lists,
            NumPy arrays and CPU tensors work.
        labels: gold labels of shape ``(n,)``.

    Returns:
        ``{metric name: value}`` with the metrics listed in this module's docstring, as Python
        floats. STS-B also gets ``combined``, the mean of ``pearson`` and ``spearman``.
    """
    kind, names, _ = _resolve(task_or_kind)
    gold = np.asarray(labels)
    if gold.ndim != 1 or gold.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {gold.shape}")
    pred = _predictions(kind, predictions, gold.size)
    if pred.shape != gold.shape:
        raise ValueError(f"{pred.shape[0]} predictions for {gold.shape[0]} labels")
    gold = gold.astype(np.float64 if kind == "regression" else np.int64)
    results = {name: _FUNCTIONS[name](pred, gold) for name in names if name in _FUNCTIONS}
    if "combined" in names:
        results["combined"] = float(np.mean([results["pearson"], results["spearman"]]))
    return results
