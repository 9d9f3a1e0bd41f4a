"""A training run: its resolved configuration and its directory.

    RUN/
      run_config.json     everything needed to repeat or re-evaluate the run (RunConfig)
      labels.json         task type and label list (class index -> label as in the data)
      adapter/            the best dev checkpoint's adapter (dsee, lora), or
      model/              the best dev checkpoint's full model (full fine-tuning)
      eval_log.jsonl      one line per evaluation: step, epoch, split, metrics, train loss
      metrics.json        final dev metrics of the kept checkpoint, parameters, wall time
      checkpoint.pt       the latest training state, for --resume

Every file is written to a temporary name and renamed, so an interrupted run never leaves a
half-written file behind; a directory (adapter/, model/) is swapped in whole.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..adapters.config import DSEEConfig, dataclass_from_dict
from ..adapters.io import atomic_directory, atomic_write_text  # noqa: F401 (atomic_directory re-exported)

METHODS = ("dsee", "lora", "full")
DEFAULT_LR = {"dsee": 5e-4, "lora": 5e-4, "full": 5e-5}

RUN_CONFIG = "run_config.json"
LABELS = "labels.json"
METRICS = "metrics.json"
EVAL_LOG = "eval_log.jsonl"
CHECKPOINT = "checkpoint.pt"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"


@dataclass
class RunConfig:
    """Every setting of a training run (what ``dsee train`` resolves its flags into)."""

    out: str
    model: str | None = None  # Hub id or local path; None: the embedded all-MiniLM-L6-v2
    # data: a GLUE task, or the user's own files
    task: str | None = None
    data_dir: str | None = None  # GLUE folder; None with a task: the Hugging Face Hub
    train_file: str | None = None
    validation_file: str | None = None
    text_columns: list[str] | None = None
    label_column: str | None = None
    task_type: str | None = None  # classification | regression; None: detected from the labels
    # text generation (decoder models): the E2E task, or the user's files with these two columns
    source_column: str | None = None
    target_column: str | None = None
    label_smoothing: float = 0.0  # generation: cross-entropy label smoothing on the target tokens
    max_source_tokens: int | None = None  # generation: longer sources are cut (default max_length // 2)
    max_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    # method
    method: str = "dsee"
    adapter: dict[str, Any] | None = None  # DSEEConfig.to_dict() for dsee and lora
    # a data-aware support (sparse_method "gradient"): batches of the statistic, LoRA warm-up steps
    support_batches: int = 8
    support_warmup_steps: int = 0
    # optimisation (AdamW, linear schedule)
    lr: float | None = None  # None: DEFAULT_LR[method]
    epochs: float = 3.0
    batch_size: int = 32
    eval_batch_size: int = 64
    grad_accum: int = 1
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    seed: int = 42
    eval_steps: int = 0  # evaluate (and checkpoint) every K optimizer steps; 0: never mid-epoch
    eval_per_epoch: bool = True
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
    # a pruned run (``dsee prune``): PruneSettings.to_dict(); the model is the source run's, pruned
    prune: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{name}={getattr(self, name)!r}: {why}")

        if self.method not in METHODS:
            raise bad("method", f"choose one of {', '.join(METHODS)}")
        if (self.task is None) == (self.train_file is None):
            raise ValueError("give either a GLUE task (--task) or your own data (--train-file), not both or neither")
        if self.train_file is not None:
            if self.validation_file is None:
                raise ValueError("--train-file needs --validation-file (the dev set used for model selection)")
            if (self.source_column is None) != (self.target_column is None):
                raise ValueError("text generation needs both --source-column and --target-column")
            if self.source_column is None and (not self.text_columns or not self.label_column):
                raise ValueError("--train-file needs --text-columns and --label-column (classification, "
                                 "regression) or --source-column and --target-column (generation)")
        if not 0 <= self.label_smoothing < 1:
            raise bad("label_smoothing", "must be in [0, 1)")
        if self.task_type not in (None, "classification", "regression"):
            raise bad("task_type", "choose classification or regression")
        for name in ("batch_size", "eval_batch_size", "grad_accum", "max_length"):
            if getattr(self, name) < 1:
                raise bad(name, "must be >= 1")
        if self.epochs < 0 or (self.epochs == 0 and self.prune is None):
            raise bad("epochs", "must be > 0 (0 only for a pruned run: evaluate without re-tuning)")
        if self.lr is not None and self.lr <= 0:
            raise bad("lr", "must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise bad("warmup_ratio", "must be in [0, 1)")
        if self.eval_steps < 0:
            raise bad("eval_steps", "must be >= 0")
        if self.eval_steps == 0 and not self.eval_per_epoch:
            raise ValueError("no evaluation at all: set --eval-steps K or keep per-epoch evaluation")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise bad("mixed_precision", "choose auto, no, bf16 or fp16")
        if self.support_batches < 1:
            raise bad("support_batches", "must be >= 1")
        if self.support_warmup_steps < 0:
            raise bad("support_warmup_steps", "must be >= 0")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise bad(name, "must be >= 1")
        if self.prune is not None:
            from .pruning import PruneSettings

            self.prune = PruneSettings.from_dict(self.prune).to_dict()
        if self.method == "full":
            self.adapter = None
        else:
            config = DSEEConfig.from_dict(self.adapter or {})
            if self.method == "lora":
                config = dataclasses.replace(config, num_sparse=0, sparse_density=None)
            self.adapter = config.to_dict()

    @property
    def is_generation(self) -> bool:
        return self.task == "e2e" or self.source_column is not None

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    def dsee_config(self) -> DSEEConfig | None:
        return None if self.adapter is None else DSEEConfig.from_dict(self.adapter)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        return dataclass_from_dict(cls, data)


@dataclass(frozen=True)
class RunLabels:
    """``labels.json``: what the model's output means: the task type and the label list
    (class index -> label as in the data; None for regression and generation)."""

    task_type: str  # classification | regression | generation
    label_list: list[str] | None

    @property
    def num_labels(self) -> int:
        return 1 if self.task_type == "regression" else len(self.label_list or [])

    def save(self, run: str | Path) -> None:
        save_json(Path(run) / LABELS, {"task_type": self.task_type, "label_list": self.label_list})

    @classmethod
    def load(cls, run: str | Path) -> "RunLabels":
        path = Path(run) / LABELS
        if not path.is_file():
            raise FileNotFoundError(f"{run} is not a dsee run directory (no {LABELS})")
        data = json.loads(path.read_text())
        return cls(data["task_type"], data.get("label_list"))


def save_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_run_config(run: str | Path) -> RunConfig:
    path = Path(run) / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{run} is not a dsee run directory (no {RUN_CONFIG})")
    return RunConfig.from_dict(json.loads(path.read_text()))


def resolve_run(config: RunConfig, resume: bool, overwrite: bool) -> RunConfig:
    """Check RUN before anything is written: the saved config of a run to resume, or ``config``.

    A new run refuses a non-empty directory unless ``overwrite``; ``resume`` takes the saved
    configuration (the flags given this time are not used) and needs a checkpoint.
    """
    run = Path(config.out)
    if resume:
        saved = load_run_config(run)
        if not (run / CHECKPOINT).is_file():
            raise FileNotFoundError(f"{run}: nothing to resume (no {CHECKPOINT})")
        saved.out = config.out
        return saved
    if run.exists() and any(run.iterdir()) and not overwrite:
        raise FileExistsError(f"{run} exists and is not empty: use --resume to continue it or --overwrite")
    return config


def create_run_directory(config: RunConfig, overwrite: bool) -> None:
    """Make RUN (emptied first with ``overwrite``) and write its run_config.json.

    Called after ``resolve_run`` has accepted RUN, so the emptiness check is not repeated here.
    """
    run = Path(config.out)
    if overwrite and run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    save_json(run / RUN_CONFIG, config.to_dict())


def append_eval_log(run: Path, record: dict[str, Any]) -> None:
    with open(run / EVAL_LOG, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_eval_log(run: Path, last_step: int) -> None:
    """On resume, drop evaluations logged after the checkpoint (they will be done again)."""
    path = run / EVAL_LOG
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def read_eval_log(run: str | Path) -> list[dict[str, Any]]:
    path = Path(run) / EVAL_LOG
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []
