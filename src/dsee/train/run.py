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

from ..files import atomic_directory, atomic_write_text  # noqa: F401 (atomic_directory re-exported)
from .settings import DEFAULT_LR, METHODS, RunConfig  # noqa: F401 (re-exported)

RUN_CONFIG = "run_config.json"
LABELS = "labels.json"
METRICS = "metrics.json"
EVAL_LOG = "eval_log.jsonl"
CHECKPOINT = "checkpoint.pt"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"


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
