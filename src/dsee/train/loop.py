"""The training loop: one loop for DSEE, LoRA (DSEE with N = 0) and full fine-tuning.

Built on Hugging Face Accelerate, so the same code runs on one CPU, one GPU, or many processes
under ``torchrun`` / ``accelerate launch`` (distributed data parallel). AdamW, linear schedule
with warm-up, gradient accumulation and clipping; evaluation every K steps and/or per epoch; the
best dev checkpoint by the task's main metric is kept; the latest state is checkpointed so that
an interrupted run resumes (``--resume``) where it stopped.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..adapters.inject import count_parameters
from ..adapters.io import save_adapter
from ..models import resolve_model
from .losses import causal_lm_loss, training_loss  # noqa: F401 (causal_lm_loss re-exported)
from .metrics import compute_metrics
from .pipeline import TaskData, build_model, load_task_data, load_tokenizer, load_trained_model
from .run import (
    ADAPTER_DIR,
    CHECKPOINT,
    LABELS,
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


class Interrupted(Exception):
    """Raised by ``train(..., interrupt_after=K)``: a stand-in for a killed run, used by tests."""


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


def make_accelerator(config: RunConfig):
    from accelerate import Accelerator

    precision = config.mixed_precision
    if precision == "auto":  # mixed precision where the hardware has it
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # Under torchrun on a machine without GPUs, Accelerate runs distributed (gloo) only when told
    # it is on CPU: what `accelerate launch --cpu` would say.
    cpu_only = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    # Accelerate keeps one mixed-precision setting per process and refuses another; a second
    # train() in the same process (a notebook, a script looping over settings) may ask for one.
    # Reset only that part: the distributed state (PartialState) stays as it is.
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState._shared_state.get("_mixed_precision") != precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(gradient_accumulation_steps=config.grad_accum, mixed_precision=precision, cpu=cpu_only)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of one epoch: a function of (seed, epoch) only, so a resumed
    run and every process see the same order."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def make_eval_loaders(data: TaskData, tokenizer, config: RunConfig, batch_size: int, accelerator) -> dict:
    """One loader per evaluation split, sharded over processes (gathered back in ``evaluate``)."""
    collate = data.collator(tokenizer)
    return {
        name: accelerator.prepare_data_loader(
            DataLoader(data.encode(ds, tokenizer, config), batch_size=batch_size, collate_fn=collate)
        )
        for name, ds in data.evals.items()
    }


def evaluate_generation_loss(model: nn.Module, loader, accelerator) -> dict[str, float]:
    """Dev loss per target token (no smoothing), its perplexity, and ``neg_loss`` for selection."""
    model.eval()
    total, count = torch.zeros(()), torch.zeros(())
    with torch.no_grad():
        for batch in loader:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            loss = causal_lm_loss(model(**inputs).logits, batch["labels"], reduction="sum")
            tokens = (batch["labels"][:, 1:] != -100).sum()
            total += accelerator.reduce(loss.detach().float().reshape(()), "sum").cpu()
            count += accelerator.reduce(tokens.float().reshape(()), "sum").cpu()
    mean = float(total / count.clamp(min=1))
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "neg_loss": -mean}


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def evaluate(model: nn.Module, loader, accelerator, metric_kind: str) -> dict[str, float]:
    """Dev metrics of ``model`` on ``loader`` (gathered over processes, duplicates dropped)."""
    if metric_kind == "generation":
        return evaluate_generation_loss(model, loader, accelerator)
    model.eval()
    predictions, labels, losses = [], [], []
    with torch.no_grad():
        for batch in loader:
            out = model(**batch)
            logits, gold = accelerator.gather_for_metrics((out.logits.float(), batch["labels"]))
            predictions.append(logits.cpu())
            labels.append(gold.cpu())
            losses.append(accelerator.gather_for_metrics(out.loss.detach().float().reshape(1)).mean().item())
    preds = torch.cat(predictions)
    if preds.shape[-1] == 1:
        preds = preds.squeeze(-1)
    metrics = compute_metrics(metric_kind, preds.numpy(), torch.cat(labels).numpy())
    metrics["loss"] = float(np.mean(losses))
    return metrics


def score_of(metrics: dict[str, float], name: str) -> float:
    value = metrics.get(name, float("nan"))
    return -math.inf if value is None or math.isnan(value) else value


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def train(config: RunConfig, resume: bool = False, overwrite: bool = False, interrupt_after: int | None = None,
          show_progress: bool = True, return_model: bool = False):
    """Run (or resume) a training run; returns the final metrics (also in RUN/metrics.json), and
    with ``return_model`` also this process's model as it ended training (not the kept one)."""
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    accelerator = make_accelerator(config)
    main = accelerator.is_main_process
    if main or resume:  # read-only checks; nothing is written until data and model have loaded
        config = resolve_run(config, resume, overwrite)
    run = Path(config.out)
    set_seed(config.seed)
    wall_start = time.perf_counter()

    model_path = resolve_model(config.model)
    data = load_task_data(config)  # bad data fails here, before the run directory exists
    tokenizer = load_tokenizer(model_path)
    model = build_model(config, data, model_path, tokenizer)
    count = count_parameters(model)
    if main:
        if not resume:
            create_run_directory(config, overwrite)
        save_json(run / LABELS, {"task_type": data.task_type, "label_list": data.label_list})
    accelerator.wait_for_everyone()

    collate = data.collator(tokenizer)
    train_examples = data.encode(data.train, tokenizer, config)
    eval_loaders = make_eval_loaders(data, tokenizer, config, config.eval_batch_size, accelerator)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    per_process = math.ceil(len(train_examples) / (config.batch_size * accelerator.num_processes))
    steps_per_epoch = math.ceil(per_process / config.grad_accum)
    # 0 only for a pruned run evaluated without re-tuning
    total_steps = 0 if config.epochs == 0 else max(1, math.ceil(steps_per_epoch * config.epochs))
    # the scheduler is stepped once per optimizer step on every process, so it is not prepared
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)

    progress = Progress()
    if resume and (run / CHECKPOINT).is_file():
        ckpt = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=False)
        with torch.no_grad():
            params = dict(unwrapped.named_parameters())
            for name, value in ckpt["trainable"].items():
                params[name].copy_(value)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        progress = Progress(**ckpt["progress"])
        _set_rng_state(ckpt["rng"])
        if main:
            truncate_eval_log(run, progress.step)

    def save_checkpoint() -> None:
        if not main:
            return
        state = {
            "trainable": trainable_state(unwrapped),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "progress": progress.__dict__.copy(),
            "rng": _rng_state(),
        }
        tmp = run / f".{CHECKPOINT}.tmp"
        torch.save(state, tmp)
        tmp.replace(run / CHECKPOINT)

    def save_best() -> None:
        if not main:
            return
        if config.prune is not None:  # shapes and masks differ from the base model: the whole model
            from ..sparsity.export import save_pretrained

            save_pretrained(unwrapped, run / MODEL_DIR)
        elif config.method == "full":
            with atomic_directory(run / MODEL_DIR) as tmp:
                unwrapped.save_pretrained(tmp)
        else:
            with atomic_directory(run / ADAPTER_DIR) as tmp:
                save_adapter(unwrapped, tmp)

    def run_evaluation(epoch_float: float, train_loss: float | None) -> None:
        results = {name: evaluate(model, loader, accelerator, data.metric_kind) for name, loader in eval_loaders.items()}
        model.train()
        selection = results[data.selection_split]
        progress.last_eval_step = progress.step
        improved = score_of(selection, data.main_metric) > progress.best_score
        if improved:
            progress.best_score = score_of(selection, data.main_metric)
            progress.best_step = progress.step
            progress.best_metrics = results
            save_best()
        if main:
            append_eval_log(run, {"step": progress.step, "epoch": round(epoch_float, 4), "train_loss": train_loss,
                                  "dev": results, "best": improved})
            summary = ", ".join(f"{k}={v:.4f}" for k, v in selection.items())
            tqdm.write(f"step {progress.step} epoch {epoch_float:.2f}: {data.selection_split} {summary}"
                       + ("  (best)" if improved else ""))
        save_checkpoint()

    num_epochs = math.ceil(config.epochs)
    bar = tqdm(total=total_steps, initial=progress.step, disable=not (main and show_progress), desc="train",
               unit="step", dynamic_ncols=True, mininterval=1.0)
    model.train()
    running_loss, running_count = 0.0, 0
    try:
        while progress.epoch < num_epochs and progress.step < total_steps:
            order = epoch_order(len(train_examples), config.seed, progress.epoch)
            skip = progress.batches_in_epoch * config.batch_size * accelerator.num_processes
            epoch_data = [train_examples[i] for i in order[skip:]]
            loader = accelerator.prepare_data_loader(
                DataLoader(epoch_data, batch_size=config.batch_size, collate_fn=collate, shuffle=False)
            )
            tick = time.perf_counter()
            for batch in loader:
                with accelerator.accumulate(model):
                    loss = training_loss(model, batch, data, config)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm:
                        accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad()
                progress.batches_in_epoch += 1
                progress.examples_seen += len(batch["labels"]) * accelerator.num_processes
                running_loss += loss.item()
                running_count += 1
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                progress.step += 1
                now = time.perf_counter()
                progress.train_seconds += now - tick
                tick = now
                bar.update(1)
                bar.set_postfix(loss=f"{running_loss / running_count:.4f}",
                                ex_s=f"{progress.examples_seen / max(progress.train_seconds, 1e-9):.1f}")
                epoch_float = progress.epoch + progress.batches_in_epoch / max(per_process, 1)
                if config.eval_steps and progress.step % config.eval_steps == 0:
                    run_evaluation(epoch_float, running_loss / running_count)
                    tick = time.perf_counter()
                elif interrupt_after is not None and progress.step >= interrupt_after:
                    save_checkpoint()
                if interrupt_after is not None and progress.step >= interrupt_after:
                    raise Interrupted(f"stopped after step {progress.step}")
                if progress.step >= total_steps:
                    break
            # the epoch's data is used up, or the planned number of steps is reached
            progress.epoch += 1
            progress.batches_in_epoch = 0
            if (config.eval_per_epoch or progress.step >= total_steps) and progress.last_eval_step != progress.step:
                run_evaluation(float(progress.epoch), running_loss / max(running_count, 1))
            running_loss, running_count = 0.0, 0
    except KeyboardInterrupt:
        save_checkpoint()  # the last completed optimizer step; --resume continues from it
        bar.close()
        raise
    bar.close()
    if total_steps == 0 and progress.last_eval_step != 0:
        run_evaluation(0.0, None)

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
        "trainable_parameters": count.trainable,
        "total_parameters": count.total,
        "trainable_share": count.trainable_share,
        "adapter_bytes": count.adapter_bytes,
        "train_examples": len(train_examples),
        "train_seconds": round(progress.train_seconds, 2),
        "train_examples_per_second": round(progress.examples_seen / max(progress.train_seconds, 1e-9), 2),
        "wall_seconds": round(time.perf_counter() - wall_start, 2),
        "world_size": accelerator.num_processes,
    }
    if data.task_type == "generation":
        metrics["truncated_sources"] = data.truncated_sources  # train and dev rows whose source was cut
    metrics.update(model_figures(unwrapped, config))
    if main:
        save_json(run / METRICS, metrics)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return (metrics, unwrapped) if return_model else metrics


def model_figures(model: nn.Module, config: RunConfig) -> dict[str, Any]:
    """FLOPs of one forward pass at ``max_length`` tokens, parameters, non-zeros; the pruning summary."""
    from ..sparsity.flops import forward_flops, parameter_counts
    from ..arch import block_spec

    figures: dict[str, Any] = {}
    try:
        block_spec(model)
    except ValueError:  # a model type without a block layout: no FLOPs, the run still completes
        return figures
    figures["flops"] = forward_flops(model, seq_len=config.max_length).to_dict()
    figures["parameters"] = parameter_counts(model)
    if config.prune is not None:
        from .pruning import PruneSettings, pruning_summary

        figures["pruning"] = pruning_summary(model, PruneSettings.from_dict(config.prune))
    return figures


def evaluate_run(run: str | Path, data_dir: str | None = None, max_eval_samples: int | None = None,
                 batch_size: int | None = None) -> dict[str, dict[str, float]]:
    """Recompute the dev metrics of a saved run from its kept checkpoint."""
    from accelerate import Accelerator

    from .run import load_run_config

    config = load_run_config(run)
    if data_dir is not None:
        config.data_dir = data_dir
    if max_eval_samples is not None:
        config.max_eval_samples = max_eval_samples
    data: TaskData = load_task_data(config, with_train=False)
    tokenizer = load_tokenizer(resolve_model(config.model))
    model = load_trained_model(run, config, data, tokenizer)
    accelerator = Accelerator()
    model = accelerator.prepare(model)
    loaders = make_eval_loaders(data, tokenizer, config, batch_size or config.eval_batch_size, accelerator)
    return {name: evaluate(model, loader, accelerator, data.metric_kind) for name, loader in loaders.items()}
