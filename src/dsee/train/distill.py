"""Knowledge distillation while re-tuning a pruned model (``dsee prune --distill``).

The teacher is the source run's kept model, unpruned, with its adapters merged: frozen, in eval
mode, run without gradients on the student's own batch. The re-tuned (pruned) student learns from
the labels and from the teacher's outputs:

    L = (1 − w)·L_task + w·L_logits  [+ β·L_hidden with --distill-hidden]

    L_logits = T²·KL(softmax(z_t / T) ‖ softmax(z_s / T)), mean over the batch    classification
             = mean over the batch and outputs of (z_s − z_t)²                      regression
    L_hidden = mean over the mapped layers (i → j) of the mean over real tokens and features of
               (h_s^i − h_t^j)²

z: logits (B, C); h^i: the hidden states after block i (B, T, d). The logit term is Hinton et al.'s
(2015), T² keeping its gradient's scale independent of T; T = 2 is the temperature of DistilBERT
(Sanh et al. 2019) and of CoFi (Xia et al. 2022), and w = 1/2 is the plain average of the two
losses. The hidden-state term is CoFi's layer distillation: there the student may lose whole
layers and CoFi searches which student layer matches each teacher layer; ``dsee prune`` never
removes a layer or changes the hidden size, so student layer i is matched to teacher layer i and
needs no learned projection. Padding positions are left out of it (their states mean nothing).

Nothing here is random and the teacher keeps no state, so a resumed run is bitwise the
uninterrupted one, and with w = 0 (and no hidden term) the loss is the task loss exactly.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def logit_distillation(student: torch.Tensor, teacher: torch.Tensor, task_type: str, temperature: float) -> torch.Tensor:
    """L_logits (module doc): student and teacher logits (B, C) -> a scalar, computed in fp32."""
    student, teacher = student.float(), teacher.float()
    if task_type == "regression":
        return F.mse_loss(student, teacher)
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher / temperature, dim=-1)
    # KL(p_t ‖ p_s) summed over classes, averaged over the batch
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature**2


def hidden_state_distillation(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                              attention_mask: torch.Tensor | None = None,
                              layer_map: Mapping[int, int] | None = None) -> torch.Tensor:
    """L_hidden (module doc).

    ``student`` / ``teacher``: the models' ``hidden_states`` (embeddings first, then one (B, T, d)
    tensor per block); ``attention_mask`` (B, T): 1 at real tokens (None: all); ``layer_map``:
    student block i → teacher block j, counted from 1 (default: i → i for every block).
    """
    blocks_s, blocks_t = len(student) - 1, len(teacher) - 1
    if layer_map is None:
        if blocks_s != blocks_t:
            raise ValueError(f"the student has {blocks_s} blocks and the teacher {blocks_t}: give a layer map")
        layer_map = {i: i for i in range(1, blocks_s + 1)}
    if not layer_map:
        raise ValueError("an empty layer map matches nothing")
    first = student[1]
    mask = (torch.ones(first.shape[:2], device=first.device) if attention_mask is None
            else attention_mask.to(first.device)).float().unsqueeze(-1)  # (B, T, 1)
    count = mask.sum() * first.shape[-1]  # real tokens × features
    losses = []
    for i, j in layer_map.items():
        difference = student[i].float() - teacher[j].float()  # (B, T, d)
        losses.append((difference.square() * mask).sum() / count)
    return torch.stack(losses).mean()


class Teacher:
    """The frozen teacher of a re-tuning, and the distilled loss of a student on one batch.

    ``model``: the teacher (its parameters are frozen and it is put in eval mode here); ``weight``,
    ``temperature``, ``hidden_weight`` (None: no hidden-state term): the terms of the module doc.
    ``autocast``: the context the student's forward runs in (Accelerate's mixed precision), so
    that both see the same precision. ``seconds`` adds up the time spent in the teacher's forward,
    ``forwards`` counts its forward passes (one per micro-batch: an exact record that it ran).
    """

    def __init__(self, model: nn.Module, weight: float, temperature: float, hidden_weight: float | None = None,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> None:
        self.model = model.requires_grad_(False).eval()
        self.weight, self.temperature, self.hidden_weight = weight, temperature, hidden_weight
        self.autocast = autocast
        self.seconds = 0.0
        self.forwards = 0

    def outputs(self, batch: Mapping[str, torch.Tensor]):
        """The teacher's output on ``batch`` (labels dropped), no gradients, timed."""
        start = time.perf_counter()
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad(), self.autocast():
            out = self.model(**inputs, output_hidden_states=self.hidden_weight is not None)
        self.seconds += time.perf_counter() - start
        self.forwards += 1
        return out

    def pop_usage(self) -> tuple[float, int]:
        """The teacher's seconds and forward passes since the last call (the loop adds them to the run's progress)."""
        usage = (self.seconds, self.forwards)
        self.seconds, self.forwards = 0.0, 0
        return usage

    def loss(self, student: nn.Module, batch: Mapping[str, torch.Tensor], task_type: str) -> torch.Tensor:
        """The student's loss on ``batch`` (with labels): the task loss mixed with the distillation terms."""
        hidden = self.hidden_weight is not None
        out = student(**batch, output_hidden_states=hidden) if hidden else student(**batch)
        taught = self.outputs(batch)
        loss = (1 - self.weight) * out.loss + self.weight * logit_distillation(
            out.logits, taught.logits, task_type, self.temperature)
        if hidden:
            loss = loss + self.hidden_weight * hidden_state_distillation(
                out.hidden_states, taught.hidden_states, batch.get("attention_mask"))
        return loss


def load_teacher(settings, data, tokenizer=None, device: torch.device | str | None = None,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> Teacher:
    """The ``Teacher`` of a pruned run's ``PruneSettings`` (``distill`` set): its source run's kept
    model, adapters merged (the function the source run evaluated, and one matmul per layer)."""
    from ..adapters.inject import is_adapted, merge_dsee
    from .pipeline import load_trained_model

    model = load_trained_model(settings.source, labels=data, tokenizer=tokenizer)
    if is_adapted(model):
        model = merge_dsee(model)
    if device is not None:
        model = model.to(device)
    hidden = settings.distill_hidden_weight if settings.distill_hidden else None
    return Teacher(model, settings.distill_weight, settings.distill_temperature, hidden, autocast)
