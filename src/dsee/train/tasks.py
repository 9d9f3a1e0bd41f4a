"""The GLUE tasks: where their files are, which columns hold text and labels, how they are scored.

Each task is described by one :class:`GlueTask` in :data:`GLUE_TASKS`. The file layout is the
original GLUE distribution (``download_glue_data.py``)::

    <data_dir>/CoLA/train.tsv   <data_dir>/CoLA/dev.tsv            (no header)
    <data_dir>/SST-2/train.tsv  ...
    <data_dir>/MNLI/train.tsv   <data_dir>/MNLI/dev_matched.tsv   <data_dir>/MNLI/dev_mismatched.tsv

Split names follow the Hugging Face ``nyu-mll/glue`` dataset (``train``, ``validation``, and for
MNLI ``validation_matched`` / ``validation_mismatched``) so that the same names work for local
files and the Hub. Label indices are in the canonical GLUE / Hugging Face order, so that label
``i`` means the same thing whichever source the data came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "GLUE_TASKS",
    "GlueTask",
    "get_task",
    "resolve_split",
]


@dataclass(frozen=True)
class GlueTask:
    """Static description of one GLUE task.

    Attributes:
        name: short lower-case name (``"rte"``), also the ``nyu-mll/glue`` config name.
        folder: directory of the task in the GLUE distribution (``"RTE"``).
        files: split name -> file name without extension (``{"validation": "dev"}``);
            ``.tsv`` and ``.tsv.gz`` are both accepted on disk.
        text_columns: one or two columns holding the text(s); header names, or 0-based field
            positions when ``has_header`` is false (CoLA).
        label_column: the column holding the gold label.
        label_values: for classification, the label strings as written in the files, in the
            canonical order (``label_values[i]`` becomes class ``i``); ``None`` for regression.
        label_names: human-readable class names in the same order (the Hugging Face
            ``ClassLabel`` names); ``None`` for regression.
        metrics: names of the metrics reported by :func:`dsee.train.metrics.compute_metrics`.
        main_metric: the metric used for model selection (higher is better).
        selection_split: the evaluation split that ``main_metric`` is taken on.
        has_header: whether the first line of each file is a header.
        num_fields: expected number of fields per line for header-less files.
        hub_text_columns: the text column names in the ``nyu-mll/glue`` Hub dataset.
    """

    name: str
    folder: str
    files: Mapping[str, str]
    text_columns: tuple[str | int, ...]
    label_column: str | int
    label_values: tuple[str, ...] | None
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    main_metric: str
    hub_text_columns: tuple[str, ...]
    selection_split: str = "validation"
    has_header: bool = True
    num_fields: int | None = None
    splits: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        # Freeze the mapping so the shared table cannot be edited by accident.
        object.__setattr__(self, "files", MappingProxyType(dict(self.files)))
        object.__setattr__(self, "splits", tuple(self.files))

    @property
    def is_regression(self) -> bool:
        """True for STS-B, the only GLUE regression task."""
        return self.label_values is None

    @property
    def task_type(self) -> str:
        """``"regression"`` or ``"classification"``."""
        return "regression" if self.is_regression else "classification"

    @property
    def num_labels(self) -> int:
        """Number of model outputs: the number of classes, or 1 for regression."""
        return 1 if self.label_values is None else len(self.label_values)


_TRAIN_DEV = {"train": "train", "validation": "dev"}
_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

GLUE_TASKS: Mapping[str, GlueTask] = MappingProxyType(
    {
        t.name: t
        for t in (
            GlueTask(
                name="cola",
                folder="CoLA",
                files=_TRAIN_DEV,
                # CoLA has no header: source, label, original mark, sentence.
                text_columns=(3,),
                label_column=1,
                has_header=False,
                num_fields=4,
                label_values=_BINARY,
                label_names=("unacceptable", "acceptable"),
                metrics=("matthews_correlation",),
                main_metric="matthews_correlation",
                hub_text_columns=("sentence",),
            ),
            GlueTask(
                name="sst2",
                folder="SST-2",
                files=_TRAIN_DEV,
                text_columns=("sentence",),
                label_column="label",
                label_values=_BINARY,
                label_names=("negative", "positive"),
                metrics=("accuracy",),
                main_metric="accuracy",
                hub_text_columns=("sentence",),
            ),
            GlueTask(
                name="mrpc",
                folder="MRPC",
                files=_TRAIN_DEV,
                text_columns=("#1 String", "#2 String"),
                label_column="Quality",
                label_values=_BINARY,
                label_names=("not_equivalent", "equivalent"),
                metrics=("accuracy", "f1"),
                main_metric="f1",
                hub_text_columns=("sentence1", "sentence2"),
            ),
            GlueTask(
                name="stsb",
                folder="STS-B",
                files=_TRAIN_DEV,
                text_columns=("sentence1", "sentence2"),
                label_column="score",
                label_values=None,
                label_names=None,
                metrics=("pearson", "spearman", "combined"),
                # Mean of Pearson and Spearman: the two correlations GLUE reports.
                main_metric="combined",
                hub_text_columns=("sentence1", "sentence2"),
            ),
            GlueTask(
                name="qqp",
                folder="QQP",
                files=_TRAIN_DEV,
                text_columns=("question1", "question2"),
                label_column="is_duplicate",
                label_values=_BINARY,
                label_names=("not_duplicate", "duplicate"),
                metrics=("accuracy", "f1"),
                main_metric="f1",
                hub_text_columns=("question1", "question2"),
            ),
            GlueTask(
                name="mnli",
                folder="MNLI",
                files={
                    "train": "train",
                    "validation_matched": "dev_matched",
                    "validation_mismatched": "dev_mismatched",
                },
                text_columns=("sentence1", "sentence2"),
                label_column="gold_label",
                label_values=("entailment", "neutral", "contradiction"),
                label_names=("entailment", "neutral", "contradiction"),
                metrics=("accuracy",),
                main_metric="accuracy",
                selection_split="validation_matched",
                hub_text_columns=("premise", "hypothesis"),
            ),
            GlueTask(
                name="qnli",
                folder="QNLI",
                files=_TRAIN_DEV,
                text_columns=("question", "sentence"),
                label_column="label",
                label_values=_NLI2,
                label_names=_NLI2,
                metrics=("accuracy",),
                main_metric="accuracy",
                hub_text_columns=("question", "sentence"),
            ),
            GlueTask(
                name="rte",
                folder="RTE",
                files=_TRAIN_DEV,
                text_columns=("sentence1", "sentence2"),
                label_column="label",
                label_values=_NLI2,
                label_names=_NLI2,
                metrics=("accuracy",),
                main_metric="accuracy",
                hub_text_columns=("sentence1", "sentence2"),
            ),
            GlueTask(
                name="wnli",
                folder="WNLI",
                files=_TRAIN_DEV,
                text_columns=("sentence1", "sentence2"),
                label_column="label",
                label_values=_BINARY,
                label_names=("not_entailment", "entailment"),
                metrics=("accuracy",),
                main_metric="accuracy",
                hub_text_columns=("sentence1", "sentence2"),
            ),
        )
    }
)

# Common spellings people use for the task names ("sst-2", "sts-b", "mnli-m"...).
_TASK_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "mnli-mm": "mnli"}


def get_task(name: str) -> GlueTask:
    """Return the :class:`GlueTask` called ``name`` (case-insensitive, ``"SST-2"`` works too).

    Raises:
        ValueError: for an unknown name; the message lists the known tasks.
    """
    key = name.strip().lower()
    key = _TASK_ALIASES.get(key, key)
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; known tasks: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]


def resolve_split(task: GlueTask, split: str) -> str:
    """Map a split name to one of ``task.splits``.

    ``"dev"`` is accepted for ``"validation"``; for MNLI ``"validation"`` / ``"dev"`` mean the
    matched split and ``"dev_matched"`` / ``"dev_mismatched"`` (the file names) work too.

    Raises:
        ValueError: for a split the task does not have; the message lists the valid ones.
    """
    key = split.strip().lower()
    if key in task.splits:
        return key
    for name, stem in task.files.items():
        if key == stem:  # the file name itself: "dev", "dev_matched"
            return name
    if key in ("dev", "validation", "eval") and task.selection_split in task.splits:
        return task.selection_split
    raise ValueError(
        f"GLUE task {task.name!r} has no split {split!r}; valid splits: {', '.join(task.splits)}"
    )
