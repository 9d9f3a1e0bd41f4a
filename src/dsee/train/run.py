"""A training run: its resolved configuration and its directory.

    RUN/
      run_config.json     everything needed to repeat or re-evaluate the run (RunConfig)
      labels.json         task type and label list (class index -> label as in the data)
      adapter/            the best dev checkpoint's adapter (dsee, lora), or
      model/              the best dev checkpoint's full model (full fine-tuning)
      eval_log.jsonl      one line per evaluation: step, epoch, split, metrics, train loss
      metrics.json        final dev metrics of the kept checkpoint, parameters, wall time
      checkpoint/         the latest training state, for --resume (checkpoint.py)

Every file is written to a temporary name and renamed, so an interrupted run never leaves a
half-written file behind; a directory (adapter/, model/) is swapped in whole. dsee makes no links
in a run directory, so a link found there is refused, never written through (``check_no_links``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import atomic_directory, atomic_write_text, refuse_link  # noqa: F401 (atomic_directory re-exported)
from .checkpoint import refuse_legacy
from .lock import LOCK
from .settings import DEFAULT_LR, METHODS, RunConfig  # noqa: F401 (re-exported)

RUN_CONFIG = "run_config.json"
LABELS = "labels.json"
METRICS = "metrics.json"
EVAL_LOG = "eval_log.jsonl"
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


def is_run_directory(path: Path) -> bool:
    """A directory dsee made for a run (it has run_config.json), or an empty one."""
    entries = [p for p in path.iterdir() if p.name != LOCK] if path.is_dir() else []
    return not entries or (path / RUN_CONFIG).is_file()


def check_out_apart(source: str | Path, out: str | Path) -> None:
    """``out`` may not be the source run, inside it, or hold it: a command would destroy its own input."""
    src, dst = Path(source).resolve(), Path(out).resolve()
    if src == dst or src in dst.parents or dst in src.parents:
        raise ValueError(f"--out {out} would overwrite the source run {source} (the same directory, inside it or "
                         "holding it): choose another --out")


def check_no_links(run: Path) -> None:
    """Refuse a run directory holding a symbolic link: dsee makes none, and would write or delete through it."""
    if run.is_dir():
        for entry in sorted(run.iterdir()):
            refuse_link(entry)


def resolve_run(config: RunConfig, resume: bool, overwrite: bool) -> RunConfig:
    """Check RUN before anything is written: the saved config of a run to resume, or ``config``.

    A new run refuses a non-empty directory unless ``overwrite``, and ``overwrite`` only ever
    replaces a dsee run directory; ``resume`` takes the saved configuration. A run stopped before
    its first checkpoint resumes from the start, with its saved settings.
    """
    run = Path(config.out)
    if run.exists() and not run.is_dir():
        raise NotADirectoryError(f"--out {run} is a file, not a run directory")
    if config.prune is not None:
        check_out_apart(config.prune["source"], run)
    if resume:
        saved = load_run_config(run)
        check_no_links(run)
        refuse_legacy(run)  # no checkpoint at all: the run starts again from the beginning (loop.set_up)
        saved.out = config.out
        return saved
    busy = run.is_dir() and any(p.name != LOCK for p in run.iterdir())
    if busy and not overwrite:
        raise FileExistsError(f"{run} exists and is not empty: use --resume to continue it (with its saved settings) "
                              "or --overwrite to start it again")
    if busy and not is_run_directory(run):
        raise ValueError(f"{run} is not a dsee run directory (no {RUN_CONFIG}): --overwrite only replaces runs, "
                         "choose another --out")
    return config


def create_run_directory(config: RunConfig, overwrite: bool) -> None:
    """Make RUN (its old contents removed with ``overwrite``, the lock kept) and write run_config.json.

    Called after ``resolve_run`` has accepted RUN, so its checks are not repeated here.
    """
    run = Path(config.out)
    run.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for entry in run.iterdir():
            if entry.name == LOCK:
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    save_json(run / RUN_CONFIG, config.to_dict())


def append_eval_log(run: Path, record: dict[str, Any]) -> None:
    """One line more in eval_log.jsonl (opened without following a link: module doc)."""
    refuse_link(run / EVAL_LOG)
    fd = os.open(run / EVAL_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    with os.fdopen(fd, "a") as f:
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
