"""Data-aware supports inside a training run: ``--sparse-method gradient`` (RoSA's recipe, paper §3.1's Ω).

    Ω = top-N of Σ_k (∂L_k/∂W0)² over K training batches             (--support-batches K)

optionally after W steps of LoRA-only training (``--support-warmup-steps W``), in which case the
gradients are taken at W0 + B·A of the warmed-up LoRA. The warmed-up A, B (and task head) are
then **discarded**: the run starts from the usual initialisation with the chosen Ω, so it trains
for exactly as many steps as every other method, and the warm-up only decides where S goes (its
cost is reported as support selection time). RoSA's library keeps the warmed-up LoRA and
continues; its paper's scripts generate the masks in one run and train in a second one, as here.

Batches: a seeded order of the training set, independent of the epoch order; the warm-up takes
the first W batches, the statistic the next K (cycling over the data if it is small), so every
process of a distributed run chooses the same Ω.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..adapters.calibration import squared_gradients
from ..adapters.config import DSEEConfig
from ..adapters.inject import add_dsee, dsee_layers, remove_dsee
from .launch import is_main_process
from .losses import training_loss


def calibration_batches(data, tokenizer, config, count: int, offset: int = 0, cycle: bool = True) -> list[dict]:
    """Batches ``offset`` .. ``offset + count`` of a seeded order of the training examples.

    With ``cycle`` the order repeats when the data has fewer examples; without, fewer batches come back.
    """
    n = len(data.train)
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(n, generator=generator)
    start, stop = offset * config.batch_size, (offset + count) * config.batch_size
    if cycle and stop > n:
        order = order.repeat(stop // n + 1)
    chosen_ids = order[start:stop].tolist()
    examples = data.encode(data.train, tokenizer, config)
    collate = data.collator(tokenizer)
    chosen = [examples[i] for i in chosen_ids]
    return [collate(chosen[i : i + config.batch_size]) for i in range(0, len(chosen), config.batch_size)]


def support_progress(batches: list[dict], desc: str):
    """A bar over the support's extra passes (minutes on an LLM): shown when the run shows its bars
    (``train(show_progress=False)`` switches transformers' bars off with its own), on the main process."""
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled() and is_main_process()
    return tqdm(batches, desc=desc, unit="batch", disable=not shown, leave=False, dynamic_ncols=True)


def add_dsee_from_data(model: nn.Module, dsee_config: DSEEConfig, data, tokenizer, config) -> nn.Module:
    """``add_dsee`` for a data-aware support: the statistic from the run's training batches."""
    loss_fn = lambda m, b: training_loss(m, b, data, config)  # noqa: E731
    warmup = config.support_warmup_steps
    if warmup == 0:
        batches = calibration_batches(data, tokenizer, config, config.support_batches)
        return add_dsee(model, dsee_config, batches=support_progress(batches, "support: gradients"), loss_fn=loss_fn)
    statistics = warmed_up_statistics(model, dsee_config, data, tokenizer, config, loss_fn)
    return add_dsee(model, dsee_config, statistics=statistics)


def warmed_up_statistics(model: nn.Module, dsee_config: DSEEConfig, data, tokenizer, config, loss_fn) -> dict:
    """Squared gradients w.r.t. W0 at W0 + B·A after ``support_warmup_steps`` of LoRA-only AdamW.

    The model comes back as it was: adapters removed, every trainable tensor (the task head) restored.
    """
    lora = dataclasses.replace(dsee_config, num_sparse=0, sparse_density=None)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    add_dsee(model, lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    model.train()
    for batch in support_progress(calibration_batches(data, tokenizer, config, config.support_warmup_steps),
                           "support: LoRA warm-up"):
        loss = loss_fn(model, batch)
        loss.backward()
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    names = [name for name, _ in dsee_layers(model)]
    batches = calibration_batches(data, tokenizer, config, config.support_batches, offset=config.support_warmup_steps)
    statistics = squared_gradients(model, names, support_progress(batches, "support: gradients"), loss_fn)
    remove_dsee(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(before[name])
    return statistics
