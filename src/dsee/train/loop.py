"""The training recipe: one loop for DSEE, LoRA (DSEE with N = 0) and full fine-tuning.

    train(config)  =  set_up ─► restore (--resume) ─► run_epoch … ─► finish
                                     each optimizer step may evaluate_and_select and checkpoint

Exact resume: the data order of an epoch is a function of (seed, epoch), and the global random
generator (dropout) is reseeded before every micro-batch from (seed, epoch, micro-batch), so the
state after step k never depends on what happened before it in this process: a run resumed from
any checkpoint continues bitwise as the uninterrupted run would have. Ctrl-C (SIGINT) stops at the
end of the optimizer step under way, writes the checkpoint and raises ``Stopped``; a second Ctrl-C
stops at once (the last periodic checkpoint then stands). One process writes a run at a time
(``lock.RunLock``).

Built on Hugging Face Accelerate, so the same code runs on one CPU, one GPU, or many processes
under ``torchrun`` / ``accelerate launch`` (distributed data parallel). With ``--fsdp`` the model
is sharded over the processes by PyTorch's FSDP2 instead of replicated (``sharding.py``); Accelerate
then only runs the processes, the data and the optimizer wrapper: its own FSDP path does not run on
CPUs, and it wraps any model it prepares on several CPU processes in DDP, which refuses sharded
parameters. ``--gradient-checkpointing`` and ``--base-dtype bf16`` are applied to the model before
sharding. A sharded run, or one with bf16 frozen weights, builds its model tensor by tensor without
ever holding it whole (``streamed.py``); the others load it whole (``pipeline.build_model``,
``pipeline.apply_memory_settings``). AdamW, linear schedule
with warm-up, gradient accumulation and clipping; evaluation every K steps and/or per epoch; the
best dev checkpoint by the task's main metric is kept (``save_best``); the latest state is
checkpointed (``checkpoint.py``) so that an interrupted run resumes where it stopped.

Divergence: a non-finite training loss (checked before its backward pass, agreed by every process)
or dev loss stops the run with ``Diverged``; nothing from that step is kept or checkpointed, so the
last checkpoint stays the last finite state. A loss that grows by an order of magnitude over the
run's first one (``LOSS_GROWTH``) is warned about, in the log and in metrics.json. A classifier
whose kept model predicts one class for the whole dev set is reported as such (``degenerate``).
"""

from __future__ import annotations

import math
import signal
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..adapters.inject import ParameterCount, count_parameters
from ..adapters.io import save_adapter
from ..models import resolve_model
from .checkpoint import (Progress, gather_checkpoint, has_checkpoint, read_checkpoint, restore_model,
                         restore_training, write_checkpoint)
from .launch import is_main_process, launch_environment, world_size
from .lock import RunLock
from .sharding import full_model_state, full_tensors, is_sharded, reshard, shard_model
from .streamed import build_streamed_model, streams
from .evaluation import evaluate, evaluate_run, make_eval_loaders, score_of  # noqa: F401 (evaluate_run re-exported)
from .losses import causal_lm_loss, training_loss  # noqa: F401 (causal_lm_loss re-exported)
from .pipeline import TaskData, apply_memory_settings, build_model, load_task_data, load_tokenizer, model_figures
from .run import (
    ADAPTER_DIR,
    METRICS,
    MODEL_DIR,
    RunConfig,
    append_eval_log,
    atomic_directory,
    create_run_directory,
    resolve_run,
    save_json,
    truncate_eval_log,
)


# a training or dev loss this many times the run's first training loss is warned about (an order of magnitude)
LOSS_GROWTH = 10.0


class Interrupted(Exception):
    """Raised by ``train(..., interrupt_after=K)``: a stand-in for a killed run, used by tests."""


class Diverged(RuntimeError):
    """The training or dev loss became NaN or infinite: the run stops, keeping its last finite checkpoint."""

    def __init__(self, run: Path, step: int, what: str, value: float, lr: float, checkpoint_step: int | None) -> None:
        if checkpoint_step is None:
            where = "no checkpoint was written yet: start again with a lower --lr (--overwrite)"
        else:
            where = (f"the last checkpoint (step {checkpoint_step}) is kept, but the same settings will diverge "
                     "there again: start again with a lower --lr (--overwrite)")
        super().__init__(f"training diverged at step {step}: the {what} is {value} (learning rate {lr:g}); {where}")
        self.run, self.step = run, step


class Stopped(KeyboardInterrupt):
    """Ctrl-C during training: the checkpoint of the last completed step is written (``checkpoint``)."""

    def __init__(self, run: Path, step: int) -> None:
        super().__init__(f"stopped after step {step}")
        self.run, self.step = run, step


def seed_step(seed: int, epoch: int, micro_batch: int) -> None:
    """Reseed the global generator (dropout) from the position in the data alone (module doc)."""
    torch.manual_seed(zlib.crc32(f"{seed}:{epoch}:{micro_batch}".encode()))


def make_accelerator(config: RunConfig, check_precision: bool = False):
    """Accelerate's ``Accelerator`` for ``config``; ``check_precision``: refuse a ``--mixed-precision`` that
    this machine does not run (Accelerate would turn it off and train in fp32, the run recording fp16)."""
    from accelerate import Accelerator

    precision = config.mixed_precision
    if precision == "auto":  # mixed precision where the hardware has it
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # Under torchrun on a machine without GPUs, Accelerate runs distributed (gloo) only when told
    # it is on CPU: what `accelerate launch --cpu` would say.
    cpu_only = not torch.cuda.is_available() and world_size() > 1
    # Accelerate keeps one mixed-precision setting per process and refuses another; a second
    # train() in the same process (a notebook, a script looping over settings) may ask for one.
    # Reset only that part: the distributed state (PartialState) stays as it is.
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState._shared_state.get("_mixed_precision") != precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum, mixed_precision=precision, cpu=cpu_only)
    if check_precision and precision != "no" and not accelerator.native_amp:
        raise ValueError(f"--mixed-precision {precision} does not run on {accelerator.device.type} (Accelerate would "
                         "train in fp32 while the run records it): use --mixed-precision no (or auto)"
                         + (", or bf16" if precision == "fp16" and accelerator.device.type == "cpu" else ""))
    return accelerator


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of one epoch: a function of (seed, epoch) only, so a resumed
    run and every process see the same order."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


@dataclass
class Session:
    """Everything one training run holds while it runs."""

    config: RunConfig
    run: Path
    accelerator: Any
    data: TaskData
    model: nn.Module  # as prepared by Accelerate (a DDP wrapper in a distributed run), or sharded (--fsdp)
    unwrapped: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    trainable: list[nn.Parameter]
    train_examples: list[dict]
    collate: Any
    eval_loaders: dict
    per_process: int  # micro-batches per epoch on each process
    total_steps: int
    count: ParameterCount
    wall_start: float
    progress: Progress = field(default_factory=Progress)
    bar: Any = None
    stop_requested: bool = False  # set by the first Ctrl-C
    pruner: Any = None  # a GradualPruner for ``dsee prune --schedule gradual``
    teacher: Any = None  # a distill.Teacher for ``dsee prune --distill``
    before_sharding: dict[str, Any] = field(default_factory=dict)  # ``facts_before_sharding``

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def set_up(config: RunConfig, resume: bool, overwrite: bool) -> Session:
    """Check RUN, load data and model, build optimizer and schedule; on ``resume`` restore the
    checkpoint. Nothing is written before the data and model have loaded, so bad data or a bad
    model leaves no half-made run directory."""
    from accelerate.utils import set_seed
    from transformers import get_linear_schedule_with_warmup

    accelerator = make_accelerator(config, check_precision=not resume)
    if accelerator.distributed_type == "FSDP":  # accelerate launch --use_fsdp, or an fsdp_config
        raise ValueError("Accelerate's own FSDP is configured (--use_fsdp or an fsdp_config in the accelerate "
                         "config); dsee shards the model itself: launch without it and pass --fsdp to dsee")
    if accelerator.is_main_process or resume:  # read-only checks
        config = resolve_run(config, resume, overwrite)
    run = Path(config.out)
    set_seed(config.seed)
    wall_start = time.perf_counter()
    model_path = resolve_model(config.model)
    data = load_task_data(config)
    tokenizer = load_tokenizer(model_path)
    data.check_max_length(tokenizer, config)
    saved = read_checkpoint(run) if resume and has_checkpoint(run) else None
    if streams(config, accelerator.num_processes):  # no process holds the whole model (streamed.py)
        built = build_streamed_model(config, data, model_path, tokenizer, saved, accelerator.mixed_precision, run)
        model, count, before = built.model, built.count, built.facts
    else:
        model = build_model(config, data, model_path, tokenizer)
        count = count_parameters(model)
        if saved is not None:  # whole, before any sharding
            restore_model(run, model, saved[0])
        before = facts_before_sharding(model, config)
        apply_memory_settings(model, config)
        if config.fsdp:
            shard_model(model, accelerator.mixed_precision)
    if accelerator.is_main_process:
        if not resume or saved is None:  # a run stopped before its first checkpoint starts again, as it was set
            if resume:
                tqdm_write(f"{run}: no checkpoint yet: starting the run again from the beginning, with its saved "
                           "settings")
            create_run_directory(config, overwrite or resume)
        data.labels.save(run)
    accelerator.wait_for_everyone()

    train_examples = data.encode(data.train, tokenizer, config)
    eval_loaders = make_eval_loaders(data, tokenizer, config, config.eval_batch_size, accelerator)
    trainable = [p for p in model.parameters() if p.requires_grad]  # after sharding: this process's shards
    optimizer = torch.optim.AdamW(parameter_groups(model, config), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    if is_sharded(model):  # Accelerate would wrap the model in DDP (module doc): the optimizer only
        optimizer = accelerator.prepare_optimizer(optimizer)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    per_process = math.ceil(len(train_examples) / (config.batch_size * accelerator.num_processes))
    steps_per_epoch = math.ceil(per_process / config.grad_accum)
    # 0 only for a pruned run evaluated without re-tuning
    total_steps = 0 if config.epochs == 0 else max(1, math.ceil(steps_per_epoch * config.epochs))
    # the scheduler is stepped once per optimizer step on every process, so it is not prepared
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    s = Session(config, run, accelerator, data, model, accelerator.unwrap_model(model), optimizer, scheduler,
                trainable, train_examples, data.collator(tokenizer), eval_loaders, per_process, total_steps,
                count, wall_start)
    s.before_sharding = before
    s.pruner = gradual_pruner(config, data, tokenizer, total_steps)
    s.teacher = teacher_of(config, data, tokenizer, accelerator)
    if saved is not None:
        restore(s, *saved)
    return s


def parameter_groups(model: nn.Module, config: RunConfig) -> list[dict[str, Any]]:
    """AdamW's parameter groups: every trainable tensor at ``--lr``, except the sparse values S at
    ``--sparse-lr-ratio`` × ``--lr`` when that ratio is not 1 (LoRA+ gives B its own rate the same way;
    the linear schedule scales each group from its own starting rate)."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if config.sparse_lr_ratio == 1.0:
        return [{"params": [p for _, p in trainable]}]
    sparse = [p for name, p in trainable if name.rsplit(".", 1)[-1] == "sparse_values"]
    if not sparse:
        raise ValueError(f"--sparse-lr-ratio {config.sparse_lr_ratio:g}: this model trains no sparse values S "
                         "(num_sparse 0 or no sparse density)")
    sparse_ids = {id(p) for p in sparse}
    return [{"params": [p for _, p in trainable if id(p) not in sparse_ids]},
            {"params": sparse, "lr": config.learning_rate * config.sparse_lr_ratio}]


def facts_before_sharding(model: nn.Module, config: RunConfig) -> dict[str, Any]:
    """What is read from the whole fp32 model once, before ``--base-dtype`` and ``--fsdp`` change it.

    ``fingerprint``: the base weights the adapter goes on (saved with it, so that loading it onto
    the fp32 base model does not warn). With ``--fsdp`` also the prune masks (fixed: gradual
    pruning is refused) and the model figures of metrics.json (structure, parameter counts and
    sparsity do not change while the adapters train; the FLOPs and counts are read from the
    whole weights here rather than gathered at the end).
    """
    from ..adapters.inject import is_adapted
    from ..adapters.io import base_fingerprints

    facts: dict[str, Any] = {}
    if is_adapted(model):
        facts["fingerprint"] = base_fingerprints(model)
    if config.fsdp:
        facts["masks"] = prune_masks(model, config)
        facts["figures"] = model_figures(model, config)
    return facts


def prune_masks(model: nn.Module, config: RunConfig) -> dict[str, torch.Tensor] | None:
    """The masks a pruned run's checkpoint holds (None for a run without unstructured pruning)."""
    if config.prune is None or not (config.prune.get("sparsity") or config.prune.get("pattern")):
        return None
    from ..sparsity.unstructured import current_masks

    return current_masks(model)


def gradual_pruner(config: RunConfig, data: TaskData, tokenizer, total_steps: int):
    """The pruner of a ``--schedule gradual`` pruned run, else None."""
    if config.prune is None:
        return None
    from .pipeline import calibration_batches_of
    from .pruning import GradualPruner, PruneSettings

    settings = PruneSettings.from_dict(config.prune)
    if settings.schedule != "gradual":
        return None
    if total_steps == 0:
        raise ValueError("--schedule gradual prunes during re-tuning: give --retune-epochs > 0")
    return GradualPruner(settings, total_steps, calibration_batches_of(settings, data, tokenizer, config))


def teacher_of(config: RunConfig, data: TaskData, tokenizer, accelerator):
    """The teacher of a ``--distill`` pruned run (its unpruned source, frozen), else None."""
    if config.prune is None or not config.prune.get("distill"):
        return None
    from .distill import load_teacher
    from .pruning import PruneSettings

    return load_teacher(PruneSettings.from_dict(config.prune), data, tokenizer, accelerator.device,
                        accelerator.autocast)


def restore(s: Session, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Continue from ``RUN/checkpoint/``: the optimizer (its shards under ``--fsdp``), schedule and
    position; the trained tensors, Ω and masks were loaded into the whole model before (``set_up``)."""
    s.progress = restore_training(s.optimizer, s.scheduler, tensors, state)
    if s.main:
        truncate_eval_log(s.run, s.progress.step)


def checkpoint(s: Session) -> None:
    """Write ``RUN/checkpoint/``: gathered on every process when sharded, written by the main one.

    Every process waits until it is written: a process that stopped (Ctrl-C, the test hook) and
    exited early could otherwise have the launcher end the main process in the middle of it.
    """
    sharded = is_sharded(s.unwrapped)
    if sharded or s.main:
        masks = s.before_sharding.get("masks") if sharded else prune_masks(s.unwrapped, s.config)
        gathered = gather_checkpoint(s.unwrapped, s.optimizer, masks, s.main)
        s.progress.checkpoint_step = s.progress.step  # saved with it: the step the checkpoint holds
        if s.main:
            write_checkpoint(s.run, gathered, s.scheduler, s.progress)
    if s.accelerator.num_processes > 1:
        s.accelerator.wait_for_everyone()


def save_best(s: Session) -> None:
    """The kept (best dev) checkpoint: the adapter, or the whole model (full fine-tuning, pruned runs).

    A sharded model is gathered first (every process takes part), then the main process writes the
    same files an unsharded run writes.
    """
    sharded = is_sharded(s.unwrapped)
    if not (sharded or s.main):
        return
    if sharded:
        reshard(s.unwrapped)  # the trained shards, not a unit left gathered by the evaluation
    fingerprint = s.before_sharding.get("fingerprint")
    if s.config.prune is not None or s.config.method == "full":
        state = full_model_state(s.unwrapped, s.main) if sharded else None
        if not s.main:
            return
        if s.config.prune is not None:  # shapes and masks differ from the base model: the whole model
            from ..sparsity.export import save_pretrained

            save_pretrained(s.unwrapped, s.run / MODEL_DIR, state_dict=state)
        else:
            with atomic_directory(s.run / MODEL_DIR) as tmp:
                s.unwrapped.save_pretrained(tmp, state_dict=state)
        return
    from ..adapters.inject import adapter_state_dict

    tensors = full_tensors(adapter_state_dict(s.unwrapped), s.main) if sharded else None
    if s.main:
        with atomic_directory(s.run / ADAPTER_DIR) as tmp:
            save_adapter(s.unwrapped, tmp, tensors=tensors, fingerprint=fingerprint)


def tqdm_write(text: str, file=None) -> None:
    """A line on the terminal (stdout, or ``file``) that leaves a progress bar intact."""
    from tqdm.auto import tqdm

    tqdm.write(text, file=file)


def watch_loss_growth(s: Session, losses: dict[str, float | None]) -> None:
    """Warn (once per kind, in the log and in metrics.json) about a loss grown ``LOSS_GROWTH``-fold over the
    run's first training loss: a learning rate far too high, short of a NaN."""
    first = s.progress.first_loss
    if not first or first <= 0:
        return
    for what, value in losses.items():
        if value is None or value <= LOSS_GROWTH * first or any(what in w for w in s.progress.warnings):
            continue
        message = (f"the {what} grew to {value:.4g} at step {s.progress.step}, {value / first:.0f} times the first "
                   f"training loss ({first:.4g}): the run is diverging; try a lower --lr (it is "
                   f"{s.config.learning_rate:g})")
        s.progress.warnings.append(message)
        if s.main:
            tqdm_write(f"warning: {message}", file=sys.stderr)


def evaluate_and_select(s: Session, epoch_float: float, train_loss: float | None) -> None:
    """Evaluate every split, keep the model if the selection split's main metric improved, log, checkpoint."""
    data, progress = s.data, s.progress
    details: dict[str, dict] = {name: {} for name in s.eval_loaders}
    results = {name: evaluate(s.model, loader, s.accelerator, data.metric_kind, details=details[name])
               for name, loader in s.eval_loaders.items()}
    if is_sharded(s.unwrapped):  # FSDP2 keeps the root unit gathered after a forward pass: free it
        reshard(s.unwrapped)
    s.model.train()
    for name, metrics in results.items():  # before anything is kept or checkpointed
        if not math.isfinite(metrics.get("loss", 0.0)):
            raise Diverged(s.run, progress.step, f"{name} loss", metrics["loss"], s.config.learning_rate,
                           progress.checkpoint_step)
    watch_loss_growth(s, {"training loss": train_loss, **{f"{n} loss": m.get("loss") for n, m in results.items()}})
    selection = results[data.selection_split]
    progress.last_eval_step = progress.step
    selectable = s.pruner is None or s.pruner.selectable(progress.step)  # at the target sparsity
    # --select last keeps every evaluated model in turn: the run ends with its last one, no choice on dev
    improved = selectable and (s.config.select == "last" or score_of(selection, data.main_metric) > progress.best_score)
    if improved:
        progress.best_score = score_of(selection, data.main_metric)
        progress.best_step = progress.step
        progress.best_metrics = results
        progress.best_class_counts = details[data.selection_split].get("class_counts")
        save_best(s)
    if s.main:
        append_eval_log(s.run, {"step": progress.step, "epoch": round(epoch_float, 4), "train_loss": train_loss,
                                "dev": results, "best": improved})
        summary = ", ".join(f"{k}={v:.4f}" for k, v in selection.items())
        tqdm_write(f"step {progress.step} epoch {epoch_float:.2f}: {data.selection_split} {summary}"
                   + ("  (best)" if improved else ""))
    checkpoint(s)


def epoch_loader(s: Session) -> DataLoader:
    """This epoch's batches from where the progress stands (a resumed epoch skips what it has seen)."""
    config, progress = s.config, s.progress
    order = epoch_order(len(s.train_examples), config.seed, progress.epoch)
    skip = progress.batches_in_epoch * config.batch_size * s.accelerator.num_processes
    epoch_data = [s.train_examples[i] for i in order[skip:]]
    return s.accelerator.prepare_data_loader(
        DataLoader(epoch_data, batch_size=config.batch_size, collate_fn=s.collate, shuffle=False))


def optimizer_step(s: Session, batch: dict) -> float:
    """Forward, backward and (at the end of an accumulation) clip and step: the micro-batch's loss.

    A non-finite loss raises ``Diverged`` before its backward pass, on every process alike."""
    config = s.config
    with s.accelerator.accumulate(s.model):
        loss = training_loss(s.model, batch, s.data, config, s.teacher)
        check_finite_loss(s, loss)
        s.accelerator.backward(loss)
        if s.accelerator.sync_gradients and config.max_grad_norm:
            s.accelerator.clip_grad_norm_(s.trainable, config.max_grad_norm)
        s.optimizer.step()
        s.optimizer.zero_grad()
    return loss.item()


def check_finite_loss(s: Session, loss: torch.Tensor) -> None:
    """``Diverged`` if this micro-batch's loss is NaN or infinite on any process (all stop at the same point)."""
    bad = torch.logical_not(torch.isfinite(loss.detach())).float().reshape(())
    if s.accelerator.num_processes > 1:
        bad = s.accelerator.reduce(bad.to(s.accelerator.device), "max")
    if bad.item():
        raise Diverged(s.run, s.progress.step + 1, "training loss", loss.item(), s.config.learning_rate,
                       s.progress.checkpoint_step)


def stop_requested(s: Session) -> bool:
    """Whether a Ctrl-C asked to stop, agreed by every process (all stop after the same step)."""
    if s.accelerator.num_processes == 1:
        return s.stop_requested
    flag = torch.tensor(float(s.stop_requested), device=s.accelerator.device)
    return bool(s.accelerator.reduce(flag, "max").item())


def run_epoch(s: Session, interrupt_after: int | None) -> None:
    """One pass over this epoch's remaining batches, or until the planned number of steps."""
    config, progress = s.config, s.progress
    tick = time.perf_counter()
    for batch in epoch_loader(s):
        seed_step(config.seed, progress.epoch, progress.batches_in_epoch)
        loss = optimizer_step(s, batch)
        if progress.first_loss is None:
            progress.first_loss = loss
        progress.batches_in_epoch += 1
        progress.examples_seen += len(batch["labels"]) * s.accelerator.num_processes
        progress.running_loss += loss
        progress.running_count += 1
        if not s.accelerator.sync_gradients:
            continue
        s.scheduler.step()
        progress.step += 1
        if s.pruner is not None:
            s.pruner.after_step(s.unwrapped, progress.step)
        now = time.perf_counter()
        progress.train_seconds += now - tick
        if s.teacher is not None:
            seconds, forwards = s.teacher.pop_usage()
            progress.teacher_seconds += seconds
            progress.teacher_forwards += forwards
        tick = now
        s.bar.update(1)
        s.bar.set_postfix(loss=f"{progress.running_loss / progress.running_count:.4f}",
                          ex_s=f"{progress.examples_seen / max(progress.train_seconds, 1e-9):.1f}")
        epoch_float = progress.epoch + progress.batches_in_epoch / max(s.per_process, 1)
        if config.eval_steps and progress.step % config.eval_steps == 0:
            evaluate_and_select(s, epoch_float, progress.running_loss / progress.running_count)
            tick = time.perf_counter()
        elif interrupt_after is not None and progress.step >= interrupt_after:
            checkpoint(s)
        if interrupt_after is not None and progress.step >= interrupt_after:
            raise Interrupted(f"stopped after step {progress.step}")
        if stop_requested(s):
            if progress.last_eval_step != progress.step:
                checkpoint(s)
            raise Stopped(s.run, progress.step)
        if progress.step >= s.total_steps:
            break
    # the epoch's data is used up, or the planned number of steps is reached
    progress.epoch += 1
    progress.batches_in_epoch = 0
    # the epoch's mean loss; the sums restart before the checkpoint below, as a run resumed from it restarts them
    train_loss = progress.running_loss / max(progress.running_count, 1)
    progress.running_loss, progress.running_count = 0.0, 0
    if (config.eval_per_epoch or progress.step >= s.total_steps) and progress.last_eval_step != progress.step:
        evaluate_and_select(s, float(progress.epoch), train_loss)


def finish(s: Session) -> dict[str, Any]:
    """metrics.json: the kept checkpoint's dev metrics, parameters, time, FLOPs."""
    config, data, progress = s.config, s.data, s.progress
    final = progress.best_metrics or {}
    metrics = {
        "task": config.task or config.train_file,
        "method": config.method,
        "model": config.model or "all-MiniLM-L6-v2",
        "main_metric": data.main_metric,
        "selection_split": data.selection_split,
        "dev": final,
        "score": final.get(data.selection_split, {}).get(data.main_metric),
        "best_step": progress.best_step,
        "steps": progress.step,
        "trainable_parameters": s.count.trainable,
        "total_parameters": s.count.total,
        "trainable_share": s.count.trainable_share,
        "adapter_bytes": s.count.adapter_bytes,
        "train_examples": len(s.train_examples),
        "train_seconds": round(progress.train_seconds, 2),
        "train_examples_per_second": round(progress.examples_seen / max(progress.train_seconds, 1e-9), 2),
        "wall_seconds": round(time.perf_counter() - s.wall_start, 2),
        "world_size": s.accelerator.num_processes,
    }
    if s.teacher is not None:  # what the teacher's forward passes cost (in train_seconds)
        # 4 decimals: a tiny model's teacher costs milliseconds, which 2 decimals would round to 0
        metrics["teacher_seconds"] = round(progress.teacher_seconds, 4)
        metrics["teacher_forwards"] = progress.teacher_forwards
    if data.task_type == "generation":
        metrics["truncated_sources"] = data.truncated_sources  # train and dev rows whose source was cut
    if data.task_type == "classification" and progress.best_class_counts is not None:
        metrics["predicted_classes"] = dict(zip(data.label_list, progress.best_class_counts))
        metrics["degenerate"] = degenerate_report(progress.best_class_counts, data.label_list, data.main_metric,
                                                  diverging=bool(progress.warnings))
    if progress.warnings:
        metrics["warnings"] = list(progress.warnings)
    # a sharded model's figures were read before sharding (``facts_before_sharding``)
    metrics.update(s.before_sharding["figures"] if is_sharded(s.unwrapped) else model_figures(s.unwrapped, config))
    if s.main:
        save_json(s.run / METRICS, metrics)
    s.accelerator.wait_for_everyone()
    s.accelerator.end_training()
    return metrics


def degenerate_report(class_counts: list[int], label_list: list[str], main_metric: str,
                      diverging: bool = False) -> dict[str, Any] | None:
    """None, or what to say when the kept model predicts a single class for the whole dev set: its score is that of
    a constant answer (a Matthews correlation of 0, an accuracy equal to that class's share), not of a classifier."""
    predicted = [i for i, n in enumerate(class_counts) if n]
    if len(predicted) != 1:
        return None
    return {
        "predicted_class": label_list[predicted[0]],
        "dev_examples": int(sum(class_counts)),
        "message": (f"the kept model predicts '{label_list[predicted[0]]}' for every one of the {sum(class_counts):,} "
                    f"dev examples: its {main_metric} is that of a constant answer, not of a classifier"),
        "try": "a lower --lr: the loss grew during the run (see the warnings)" if diverging else DEGENERATE_ADVICE,
    }


# what to try when a classifier ends predicting one class (benchmarks/README.md, "CoLA with the defaults")
DEGENERATE_ADVICE = ("train longer (--epochs) or at a higher --lr; if the base model is a sentence-embedding checkpoint, "
                     "its [CLS] output may carry little of the task: a model pre-trained as a classifier or language "
                     "model, or --method full, learns it sooner")


def train(config: RunConfig, resume: bool = False, overwrite: bool = False, interrupt_after: int | None = None,
          show_progress: bool = True, return_model: bool = False):
    """Run (or resume) a training run; returns the final metrics (also in RUN/metrics.json), and
    with ``return_model`` also this process's model as it ended training (not the kept one)."""
    launch_environment()  # a partial launcher environment (a stray RANK) is refused before anything
    if not resume:
        config.check_settings_apply()
    if not show_progress:  # transformers' own bars (loading weights) too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    resolve_run(config, resume, overwrite)  # read-only checks first: a refused run writes nothing at all
    lock = _lock_run(config.out)
    try:
        s = set_up(config, resume, overwrite)
        with _stop_on_ctrl_c(s):
            metrics = _train(s, interrupt_after, show_progress)
    except BaseException:
        if lock is not None and _only_lock_left(Path(config.out), lock):
            lock.release()  # nothing was written: leave nothing behind
            lock = None
        raise
    finally:
        if lock is not None:
            lock.release()
    return (metrics, s.unwrapped) if return_model else metrics


def _train(s: Session, interrupt_after: int | None, show_progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    s.bar = tqdm(total=s.total_steps, initial=s.progress.step, disable=not (s.main and show_progress), desc="train",
                 unit="step", dynamic_ncols=True, mininterval=1.0)
    s.model.train()
    try:
        while s.progress.epoch < math.ceil(s.config.epochs) and s.progress.step < s.total_steps:
            run_epoch(s, interrupt_after)
    finally:
        s.bar.close()
    if s.total_steps == 0 and s.progress.last_eval_step != 0:
        evaluate_and_select(s, 0.0, None)
    return finish(s)


def _lock_run(out: str) -> RunLock | None:
    """The run directory's lock, taken by the main process before anything else (RUN created if needed)."""
    if not is_main_process():
        return None
    return RunLock(out).acquire()


def _only_lock_left(run: Path, lock: RunLock) -> bool:
    """After a failure before anything was written: remove what the lock itself added; True if it did."""
    from .lock import LOCK

    if not run.is_dir() or any(p.name != LOCK for p in run.iterdir()):
        return False
    if lock.created_file:
        (run / LOCK).unlink(missing_ok=True)
    if lock.created:
        try:
            run.rmdir()
        except OSError:
            pass
    return True


class _stop_on_ctrl_c:
    """While training: the first SIGINT asks the loop to stop after the current step; a second one
    interrupts at once. Only in the main thread (signal handlers cannot be set elsewhere)."""

    def __init__(self, s: Session) -> None:
        self.s, self.previous = s, None

    def _handler(self, signum, frame) -> None:
        if self.s.stop_requested:
            raise KeyboardInterrupt
        self.s.stop_requested = True

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
