"""The latest training state of a run (``RUN/checkpoint.pt``), so that an interrupted run resumes exactly.

It holds the trainable tensors, the optimizer and schedule states, the position in the data
(``Progress``) and the random-number states; it is written by the main process only, to a
temporary name and renamed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .run import CHECKPOINT


@dataclass
class Progress:
    """Where training stands; saved in the checkpoint."""

    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of this process already consumed in ``epoch``
    step: int = 0  # optimizer steps done
    best_score: float = -math.inf
    best_step: int = -1
    best_metrics: dict[str, Any] | None = None
    last_eval_step: int = -1
    train_seconds: float = 0.0
    examples_seen: int = 0


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(run: Path, model: nn.Module, optimizer, scheduler, progress: Progress) -> None:
    state = {
        "trainable": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": progress.__dict__.copy(),
        "rng": rng_state(),
    }
    tmp = run / f".{CHECKPOINT}.tmp"
    torch.save(state, tmp)
    tmp.replace(run / CHECKPOINT)


def restore_checkpoint(run: Path, model: nn.Module, optimizer, scheduler) -> Progress:
    """Load the state saved by ``save_checkpoint`` into ``model`` (unwrapped), ``optimizer`` and
    ``scheduler``; restore the random states; return where training stood."""
    ckpt = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=False)
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in ckpt["trainable"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
    return Progress(**ckpt["progress"])
