"""The latest training state of a run (``RUN/checkpoint/``), so that an interrupted run resumes exactly.

    checkpoint/
      tensors.safetensors   trainable tensors ("model.<name>"), the adapters' support Ω
                            ("buffer.<name>"), optimizer state ("optimizer.<i>.<key>"), and for a
                            pruned run the masks of the pruned weights ("mask.<module>")
      state.json            optimizer hyper-parameters, schedule, ``Progress``

Nothing in it is a pickle: safetensors and JSON cannot run code when read, whoever wrote the file.
The directory is replaced whole (``dsee.files.atomic_directory``, fsynced, recoverable after a
crash at any point of the swap). A sharded run (``--fsdp``) writes the same file: its tensors are
gathered whole onto the main process first (``gather_checkpoint``, which every process calls), so
a checkpoint resumes with any number of processes, sharded or not. Random states are not saved: the training loop reseeds the
global generator before every micro-batch from (seed, step, micro-batch), so dropout after a
resume is what it would have been (``loop.seed_step``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..files import atomic_directory, existing_directory

CHECKPOINT = "checkpoint"  # the directory in RUN
TENSORS = "tensors.safetensors"
STATE = "state.json"
FORMAT = "dsee-checkpoint-2"
LEGACY = "checkpoint.pt"  # the pickle of dsee 0.1: never unpickled


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
    teacher_seconds: float = 0.0  # of train_seconds, in the teacher's forward (``dsee prune --distill``)
    teacher_forwards: int = 0  # the teacher's forward passes in this process (one per micro-batch)
    # the training loss logged at an evaluation averages this epoch's micro-batches so far: kept here, so that
    # a resumed run logs what the uninterrupted one did
    running_loss: float = 0.0
    running_count: int = 0
    first_loss: float | None = None  # the run's first micro-batch loss: what a diverging loss is compared with
    checkpoint_step: int | None = None  # the step of the last checkpoint written
    best_class_counts: list[int] | None = None  # the kept model's dev predictions per class (classification)
    warnings: list[str] = field(default_factory=list)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: names the file and what is wrong."""


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _support_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Ω of every adapter: saved so that a resumed run never has to choose it again (or read data for it)."""
    return {n: b for n, b in model.named_buffers() if n.endswith("sparse_indices")}


def _optimizer_payload(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``optimizer.state_dict()`` -> (its tensors as "optimizer.<i>.<key>", the JSON rest)."""
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


@dataclass
class Gathered:
    """What a checkpoint holds besides the schedule and the progress, whole and on CPU."""

    tensors: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # the JSON part of the optimizer state


def gather_checkpoint(model: nn.Module, optimizer, masks: dict[str, torch.Tensor] | None = None,
                      main: bool = True) -> Gathered | None:
    """The checkpoint's tensors, whole, on the main process (None elsewhere).

    For a sharded model (``--fsdp``) the trained tensors and the optimizer state are all-gathered,
    so every process must call this; unsharded, only the main process needs to. ``masks``: the
    prune masks of a pruned run (gradual pruning changes them as it goes; restoring re-applies them).
    """
    from .sharding import full_optimizer_state, full_tensors, reshard

    reshard(model)  # the trained shards, not a unit left gathered by a forward pass
    trained = full_tensors({n: p for n, p in model.named_parameters() if p.requires_grad}, main)
    optimizer_state = full_optimizer_state(optimizer, main)
    if not main:
        return None
    tensors = {f"model.{n}": t.contiguous() for n, t in trained.items()}
    tensors.update({f"mask.{n}": m.contiguous().cpu() for n, m in (masks or {}).items()})
    tensors.update({f"buffer.{n}": b.detach().contiguous().cpu() for n, b in _support_buffers(model).items()})
    optimizer_tensors, optimizer_json = _optimizer_payload(optimizer_state)
    tensors.update(optimizer_tensors)
    return Gathered(tensors, optimizer_json)


def write_checkpoint(run: Path, gathered: Gathered, scheduler, progress: Progress) -> None:
    """Write ``RUN/checkpoint/`` (replacing the previous one whole): the main process only."""
    progress_dict = asdict(progress)
    progress_dict["best_score"] = None if progress.best_score == -math.inf else progress.best_score
    state = {"format": FORMAT, "optimizer": gathered.optimizer, "scheduler": scheduler.state_dict(),
             "progress": progress_dict}
    with atomic_directory(run / CHECKPOINT) as tmp:
        save_file(gathered.tensors, str(tmp / TENSORS), metadata={"format": FORMAT})
        (tmp / STATE).write_text(json.dumps(state, indent=1, sort_keys=True, allow_nan=False) + "\n")


def save_checkpoint(run: Path, model: nn.Module, optimizer, scheduler, progress: Progress,
                    masks: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``RUN/checkpoint/`` for an unsharded model (``gather_checkpoint`` + ``write_checkpoint``)."""
    write_checkpoint(run, gather_checkpoint(model, optimizer, masks), scheduler, progress)


def has_checkpoint(run: Path) -> bool:
    return existing_directory(run / CHECKPOINT) is not None


def refuse_legacy(run: Path) -> None:
    """A clear error when ``run``'s only checkpoint is the pickle of dsee 0.1 (never unpickled)."""
    if not has_checkpoint(run) and (run / LEGACY).is_file():
        raise CheckpointError(f"{run / LEGACY} was written by an older dsee as a pickle, which could run code "
                              "when loaded; it is not read. Start the run again (--overwrite)")


def check_resumable(run: Path) -> None:
    """A clear error unless ``run`` has a checkpoint this version reads."""
    if has_checkpoint(run):
        return
    refuse_legacy(run)
    raise FileNotFoundError(f"{run}: nothing to resume (no {CHECKPOINT}/)")


def read_checkpoint(run: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, state) of ``RUN/checkpoint/``; ``CheckpointError`` naming the file if unreadable."""
    check_resumable(run)
    directory = existing_directory(run / CHECKPOINT)
    try:
        tensors = load_file(str(directory / TENSORS))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{directory / TENSORS}: not a readable safetensors file ({err})") from None
    try:
        state = json.loads((directory / STATE).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{directory / STATE}: not readable JSON ({err})") from None
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{directory / STATE}: unknown format {state.get('format')!r} (expected {FORMAT})")
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{directory / TENSORS}: non-finite values (NaN or inf) in {bad[:5]}")
    return tensors, state


def _load_optimizer(optimizer, tensors: dict[str, torch.Tensor], saved: dict[str, Any]) -> None:
    from .sharding import shard_optimizer_state

    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in saved["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    # a sharded optimizer (--fsdp) takes each process's shard of the whole tensors
    optimizer.load_state_dict(shard_optimizer_state(optimizer, {"state": state, "param_groups": saved["param_groups"]}))


def restore_model(run: Path, model: nn.Module, tensors: dict[str, torch.Tensor], skip_meta: bool = False) -> None:
    """Load a checkpoint's trained tensors, Ω and prune masks into ``model`` (unsharded: before
    ``--fsdp`` shards it). Every check runs before anything is changed. ``skip_meta``: leave the
    parameters still on the meta device (a model read tensor by tensor fills them later)."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    expected = {f"model.{n}" for n, p in params.items() if p.requires_grad}
    found = {k for k in tensors if k.startswith("model.")}
    if expected != found:
        raise CheckpointError(f"{run / CHECKPOINT}: it holds other trainable tensors than this run's model "
                              f"(missing {sorted(expected - found)[:3]}, unexpected {sorted(found - expected)[:3]})")
    for key, value in tensors.items():
        kind, _, name = key.partition(".")
        target = params.get(name) if kind == "model" else buffers.get(name) if kind == "buffer" else None
        if kind in ("model", "buffer") and (target is None or target.shape != value.shape):
            raise CheckpointError(f"{run / CHECKPOINT}: {name} has shape {tuple(value.shape)}, the model "
                                  f"{None if target is None else tuple(target.shape)}")
    with torch.no_grad():
        for key, value in tensors.items():
            kind, _, name = key.partition(".")
            if kind == "model" and not (skip_meta and params[name].is_meta):
                params[name].copy_(value)
            elif kind == "buffer":
                buffers[name].copy_(value)
    masks = {key.partition(".")[2]: value for key, value in tensors.items() if key.startswith("mask.")}
    if masks:
        from ..sparsity.unstructured import apply_masks_

        apply_masks_(model, masks)


def restore_training(optimizer, scheduler, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> Progress:
    """Load a checkpoint's optimizer state (sharded or not) and schedule; return where training stood."""
    _load_optimizer(optimizer, tensors, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    progress = dict(state["progress"])
    if progress.get("best_score") is None:
        progress["best_score"] = -math.inf
    known = {f.name for f in fields(Progress)}
    return Progress(**{k: v for k, v in progress.items() if k in known})


def restore_checkpoint(run: Path, model: nn.Module, optimizer, scheduler) -> Progress:
    """Load ``RUN/checkpoint/`` into ``model`` (unwrapped, unsharded), ``optimizer`` and ``scheduler``;
    return where training stood."""
    tensors, state = read_checkpoint(run)
    restore_model(run, model, tensors)
    return restore_training(optimizer, scheduler, tensors, state)
