"""The pruning recipe (paper §3.2): a trained run → a sparse model → adapters re-tuned → a new run.

    dsee prune RUN --out RUN2 --sparsity 0.5 [--scope --score]          unstructured
    dsee prune RUN --out RUN2 --heads 0.25 --ffn 0.25 [--head-score]    structured
    dsee prune RUN --out RUN2 --heads 0.34 --ffn 0.25 --uniform         structured, a stock checkpoint

RUN2 is a run directory like any other (``run.py``): its ``run_config.json`` holds the source
run's settings plus ``prune`` (``PruneSettings``), its ``model/`` the kept (best dev) pruned model
with its adapters unmerged (``export.save_pretrained``), its ``metrics.json`` the re-tuned dev
score, the achieved sparsity, the heads and neurons left and the FLOPs. The pruning decision is a
function of the source run, the settings and the seed only, so ``--resume`` rebuilds it exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapters.config import dataclass_from_dict
from ..arch import blocks
from ..files import existing_directory
from ..registry import Registry
from ..sparsity.importance import HEAD_SCORES, NEURON_SCORES, head_group_sizes, removal_plan
from .settings import PruneSettings  # noqa: F401 (re-exported)
from ..sparsity.unstructured import apply_masks_, current_masks, sparsity_report, unstructured_masks
from ..sparsity.stock import check_describable, stock_config
from ..sparsity.structure import remove_heads_, remove_neurons_, structure_plan


def check_source(source: str | Path):
    """The source run's config; a clear error if it is missing, unfinished, full fine-tuning or pruned."""
    from .run import ADAPTER_DIR, load_run_config

    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such run directory")
    config = load_run_config(source)
    if config.prune is not None:
        raise ValueError(f"{source} is itself a pruned run (of {config.prune['source']}); prune its source "
                         "run instead, with the combined settings")
    if config.method == "full":
        raise ValueError(f"{source} is a full fine-tuning run: pruning re-tunes DSEE adapters, so it needs a "
                         "dsee or lora run")
    if existing_directory(source / ADAPTER_DIR) is None:
        raise FileNotFoundError(f"{source}: no kept adapter yet ({ADAPTER_DIR}/); let the run finish first")
    return config


def importance_batches(data, tokenizer, config, count: int) -> list[dict[str, torch.Tensor]]:
    """The first ``count`` training batches of a seeded order: what the importance scores see."""
    from .support import calibration_batches

    return calibration_batches(data, tokenizer, config, count, cycle=False)


def _unit_scores(registry: Registry, name: str, model: nn.Module, batches, cache: dict) -> list[torch.Tensor]:
    entry = registry.get(name)
    if entry.needs_data and batches is None:
        raise ValueError(f"{registry.what} {name!r} needs training batches")
    return entry.fn(model, batches, cache)


def prune_model_(model: nn.Module, settings: PruneSettings, batches=None, calibration=None) -> dict[str, Any]:
    """Apply ``settings`` to a trained DSEE model in place; returns what was removed.

    Structured removal first (heads, then FFN neurons, both scored on the model before any
    removal), then one-shot unstructured masks on what is left (a gradual schedule prunes during
    re-tuning instead: ``GradualPruner``). ``batches`` feed importance scores, ``calibration`` a
    calibration score (wanda).
    """
    removed: dict[str, Any] = {}
    if settings.uniform:  # before any scoring: an architecture that cannot be stock fails at once
        check_describable(model, heads=bool(settings.heads), ffn=bool(settings.ffn))
    if settings.structured:
        cache: dict = {}
        head_scores = _unit_scores(HEAD_SCORES, settings.head_score, model, batches, cache) if settings.heads else None
        neuron_scores = _unit_scores(NEURON_SCORES, settings.ffn_score, model, batches, cache) if settings.ffn else None
        if settings.heads:
            plan = removal_plan(head_scores, settings.heads, per_layer=settings.per_layer,
                                group_sizes=head_group_sizes(model), what="heads", uniform=settings.uniform)
            remove_heads_(model, plan)
        if settings.ffn:
            plan = removal_plan(neuron_scores, settings.ffn, per_layer=settings.per_layer, what="FFN neurons",
                                uniform=settings.uniform)
            remove_neurons_(model, plan)
        removed = structure_plan(model)
        if settings.uniform:
            stock_config(model)  # raises, saying why, if the result is not what a stock config describes
    if settings.unstructured and settings.schedule == "oneshot":
        masks = unstructured_masks(model, settings.sparsity, score=settings.score, scope=settings.scope,
                                   adapted_sparsity=settings.adapted_sparsity, pattern=settings.pattern,
                                   batches=calibration)
        apply_masks_(model, masks)
    return removed


class GradualPruner:
    """Gradual magnitude pruning during re-tuning (Zhu & Gupta 2017), for any score:

        s_t = s_f · (1 − (1 − t/T)³),   T = gradual_fraction · the re-tuning steps

    The masks are recomputed with the chosen score every ``prune_every`` steps and at T (entries
    pruned earlier stay pruned), then frozen. Until T the model is not yet at its sparsity, so the
    training loop keeps no checkpoint as the best before it (``selectable``).
    """

    def __init__(self, settings: PruneSettings, total_steps: int, calibration=None) -> None:
        self.settings = settings
        self.ramp = max(1, round(settings.gradual_fraction * total_steps))
        self.calibration = calibration

    def sparsity_at(self, step: int) -> float:
        t = min(step, self.ramp) / self.ramp
        return self.settings.sparsity * (1 - (1 - t) ** 3)

    def selectable(self, step: int) -> bool:
        return step >= self.ramp

    def after_step(self, model: nn.Module, step: int) -> bool:
        """Update the masks if ``step`` is a pruning step; True if it was."""
        if step > self.ramp or (step % self.settings.prune_every and step != self.ramp):
            return False
        s = self.settings
        masks = unstructured_masks(model, self.sparsity_at(step), score=s.score, scope=s.scope,
                                   adapted_sparsity=s.adapted_sparsity, batches=self.calibration,
                                   current=current_masks(model))
        apply_masks_(model, masks)
        return True


def pruning_summary(model: nn.Module, settings: PruneSettings) -> dict[str, Any]:
    """For metrics.json: heads and neurons left per layer, achieved sparsity."""
    summary: dict[str, Any] = {"settings": settings.to_dict(), "structure": structure_plan(model)}
    summary["heads_per_layer"] = [b.num_heads for b in blocks(model)]
    summary["ffn_per_layer"] = [b.ffn_size for b in blocks(model)]
    report = sparsity_report(model, settings.pattern)
    summary["sparsity"] = report["overall"]
    summary["sparsity_per_matrix"] = report["per_matrix"]
    if "pattern" in report:
        summary["pattern"] = report["pattern"]
    return summary
