"""Tests of dsee.train.metrics against values worked out by hand from the formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dsee.train.metrics import compute_metrics, main_metric, metric_names
from dsee.train.tasks import GLUE_TASKS, get_task

# A binary confusion matrix with TP=6, TN=3, FP=2, FN=1 (12 examples).
TP, TN, FP, FN = 6, 3, 2, 1
GOLD = [1] * TP + [0] * TN + [0] * FP + [1] * FN
PRED = [1] * TP + [0] * TN + [1] * FP + [0] * FN


def pearson_by_hand(x: list[float], y: list[float]) -> float:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def test_mcc_matches_formula() -> None:
    expected = (TP * TN - FP * FN) / math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))
    result = compute_metrics("cola", PRED, GOLD)
    assert set(result) == {"matthews_correlation"}
    assert result["matthews_correlation"] == pytest.approx(expected)  # 16 / sqrt(1120)
    assert expected == pytest.approx(0.47809144373375745)


def test_f1_and_accuracy_for_mrpc_and_qqp() -> None:
    precision, recall = TP / (TP + FP), TP / (TP + FN)
    f1 = 2 * precision * recall / (precision + recall)
    for task in ("mrpc", "qqp"):
        result = compute_metrics(task, PRED, GOLD)
        assert result == pytest.approx({"accuracy": (TP + TN) / 12, "f1": f1})
    assert f1 == pytest.approx(0.8)


def test_accuracy_tasks_and_logits() -> None:
    logits = np.array([[2.0, -1.0], [0.1, 0.3], [5.0, 4.0], [-1.0, 1.0]])  # argmax 0, 1, 0, 1
    for task in ("sst2", "rte", "qnli", "wnli"):
        assert compute_metrics(task, logits, [0, 1, 1, 1]) == {"accuracy": 0.75}
    mnli_logits = np.eye(3)[[0, 1, 2, 2, 1]]
    assert compute_metrics("mnli", mnli_logits, [0, 1, 2, 0, 0]) == {"accuracy": 0.6}


def test_stsb_pearson_spearman_combined() -> None:
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    y = [2.0, 4.0, 5.0, 4.0, 5.0]
    r = pearson_by_hand(x, y)
    # Spearman = Pearson of ranks; ties get the mean rank: 2 -> 1, 4 -> 2.5, 5 -> 4.5
    rho = pearson_by_hand([1, 2, 3, 4, 5], [1, 2.5, 4.5, 2.5, 4.5])
    result = compute_metrics("stsb", np.array(x)[:, None], y)  # (n, 1) model output
    assert result == pytest.approx({"pearson": r, "spearman": rho, "combined": (r + rho) / 2})
    assert r == pytest.approx(0.7745966692414834)


def test_custom_classification_macro_f1() -> None:
    gold = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    pred = [0, 1, 0, 1, 2, 2, 2, 0, 2]
    # per class (TP, FP, FN), counted from the lists above; F1 = 2TP / (2TP + FP + FN)
    per_class = {0: (2, 1, 1), 1: (1, 1, 1), 2: (3, 1, 1)}
    f1s = [2 * tp / (2 * tp + fp + fn) for tp, fp, fn in per_class.values()]
    result = compute_metrics("classification", pred, gold)
    assert result == pytest.approx({"accuracy": 6 / 9, "f1_macro": sum(f1s) / 3})


def test_custom_regression() -> None:
    pred, gold = [1.0, 2.0, 3.0], [1.5, 2.0, 2.0]
    result = compute_metrics("regression", pred, gold)
    assert result["mse"] == pytest.approx((0.25 + 0 + 1) / 3)
    assert result["pearson"] == pytest.approx(pearson_by_hand(pred, gold))
    assert result["spearman"] == pytest.approx(pearson_by_hand([1, 2, 3], [1, 2.5, 2.5]))


def test_tensor_inputs() -> None:
    torch = pytest.importorskip("torch")
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert compute_metrics("sst2", logits, torch.tensor([1, 1])) == {"accuracy": 0.5}


def test_constant_predictions_give_nan_correlation() -> None:
    result = compute_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    assert math.isnan(result["pearson"]) and math.isnan(result["combined"])
    assert compute_metrics("cola", [1, 1, 1], [0, 1, 1])["matthews_correlation"] == 0.0


def test_main_metric_and_names() -> None:
    expected = {
        "cola": "matthews_correlation",
        "stsb": "combined",
        "mrpc": "f1",
        "qqp": "f1",
        "sst2": "accuracy",
        "mnli": "accuracy",
        "qnli": "accuracy",
        "rte": "accuracy",
        "wnli": "accuracy",
        "classification": "accuracy",
        "regression": "pearson",
    }
    assert {name: main_metric(name) for name in expected} == expected
    assert get_task("mnli").selection_split == "validation_matched"
    assert main_metric("SST-2") == "accuracy"
    for name in [*GLUE_TASKS, "classification", "regression"]:
        assert main_metric(name) in metric_names(name)
        kind = get_task(name).task_type if name in GLUE_TASKS else name
        pred = [0.5, 1.0, 2.0] if kind == "regression" else [0, 1, 1]
        assert set(
            compute_metrics(name, pred, [0.0, 1.0, 1.5] if kind == "regression" else [0, 1, 0])
        ) == set(metric_names(name))


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="unknown task or kind"):
        compute_metrics("squad", [1], [1])
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        compute_metrics("sst2", [1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="non-empty"):
        compute_metrics("sst2", [], [])
    with pytest.raises(ValueError, match="class ids or 2-D logits"):
        compute_metrics("sst2", [0.3, 0.7], [0, 1])
    with pytest.raises(ValueError, match="do not fit"):
        compute_metrics("stsb", np.zeros((2, 2)), [0.0, 1.0])
