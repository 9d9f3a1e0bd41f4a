"""The run's model read tensor by tensor: ``--fsdp`` over several processes, and ``--base-dtype bf16``.

    build_streamed_model(config, data, ...)
      1. the base model on the meta device; a new task head whole and initialised   (loading.empty_model)
      2. adapters added (real, fp32, Ω still to choose)                              (adapters.inject)
      3. one pass over the checkpoint, each process reading whole the matrices it owns (j mod k):
         Ω of a data-free method, the keep-base-sparsity mask, the non-zeros; then exchanged
      4. --resume: the checkpoint's trained tensors; --base-dtype: the frozen dtype (still meta)
      5. fully_shard (each block, then the root); every process reads its rows of every tensor
      6. a data-aware Ω (--sparse-method gradient) from the sharded model itself

No process holds the whole model at any point, in any dtype: the meta model has no storage, a
matrix read in step 3 is one matrix, and step 5 reads each process's rows in the frozen dtype
(bf16 under ``--base-dtype bf16``: never an fp32 copy). Without sharding (one process, bf16) the same
steps fill whole tensors, one tensor at a time.

Where Ω is computed (it needs the whole W0 of its matrix): a data-free support (grebsmo,
magnitude, random, upstream) in step 3, by the process that owns the matrix, from the fp32 values
in the checkpoint, exactly as the whole-model path computes it; the owner then broadcasts it. A
data-aware one (gradient) in step 6: the statistic Σ (∂L/∂W0)² is accumulated by every process for
its own rows only (FSDP reduce-scatters each gradient into shards; every process runs the same
calibration batches, so each shard is that of the one-process gradient), each process proposes the
N best entries of its rows, and the N best of all proposals are Ω: the N best of the whole matrix,
ties to the lower index, as ``compute_support`` chooses them, without anyone holding the matrix.

The fingerprint of the base weights (saved with the adapter) is hashed by the main process from the
same fp32 values, one matrix at a time. A pruned run (``dsee prune``) still loads its source run's
model whole: its masks rank whole matrices (and, with ``--scope global``, all of them together).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..adapters.calibration import squared_gradients
from ..adapters.inject import base_sparsity_mask, choose_support, count_parameters, dsee_layers, inject, is_adapted
from ..adapters.io import fingerprints_of
from ..adapters.layer import DSEELinear, linear_shape, linear_weight
from ..adapters.precision import lower_frozen_precision_
from ..adapters.support import support_method, top_n_indices
from ..arch import block_spec
from ..models import default_padding
from ..sparsity.flops import block_linears, nonzero_entries
from .checkpoint import restore_model
from .loading import CheckpointReader, empty_model, local_rows, materialise_, sources_kept
from .losses import training_loss
from .pipeline import (BASE_DTYPES, check_vocabulary, classifier_settings, enable_gradient_checkpointing,
                       init_regression_head, model_figures, tokenizer_padding)
from .sharding import is_sharded, reshard, return_freed_buffers, shard_model
from .support import calibration_batches, support_progress


def streams(config, world_size: int) -> bool:
    """Whether ``dsee train`` builds the model tensor by tensor: sharded over several processes, or
    with bf16 frozen weights; never for a pruned run (its source model is read whole)."""
    return config.prune is None and ((config.fsdp and world_size > 1) or config.base_dtype != "fp32")


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclasses.dataclass
class Streamed:
    """What ``build_streamed_model`` returns besides the model."""

    model: nn.Module
    count: Any  # ParameterCount of the whole model, adapters included
    facts: dict[str, Any]  # as ``loop.facts_before_sharding``: fingerprint, masks, figures


def base_model_on_meta(model_path: str, labels, reader: CheckpointReader, tokenizer=None) -> nn.Module:
    """``pipeline.base_model`` on the meta device (loading.empty_model): same class, config and padding id."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    if labels.task_type == "generation":
        model = empty_model(AutoModelForCausalLM, AutoConfig.from_pretrained(model_path), reader)
    else:
        config = AutoConfig.from_pretrained(model_path, num_labels=labels.num_labels, **classifier_settings(labels))
        model = default_padding(empty_model(AutoModelForSequenceClassification, config, reader))
    if tokenizer is not None:
        check_vocabulary(model, tokenizer, model_path)  # the embedding's shape alone: works on the meta device
    return tokenizer_padding(model, tokenizer)


def build_streamed_model(config, data, model_path: str, tokenizer, saved=None, mixed_precision: str = "no",
                         run=None) -> Streamed:
    """The run's model, adapted, in its frozen dtype, sharded over the processes (module doc, steps 1-6).

    ``saved``: the run's checkpoint ``(tensors, state)`` when resuming (its Ω is kept, not chosen again).
    """
    rank, world = _world()
    if config.fsdp and world > 1:
        return_freed_buffers()  # before anything is allocated: memory the heap kept is not given back later
    reader = CheckpointReader.of(model_path)
    model = base_model_on_meta(model_path, data, reader, tokenizer)
    if data.task_type == "regression" and data.train is not None:
        init_regression_head(model, data.train.labels)
    dsee_config = config.dsee_config()
    if dsee_config is not None:
        with sources_kept(model):
            inject(model, dsee_config, select_support=False)
    data_free = dsee_config is not None and dsee_config.has_sparse and saved is None and \
        not support_method(dsee_config.sparse_method).needs_data
    nonzero = stream_owned_matrices(model, reader, dsee_config, data_free, count_nonzero=config.fsdp)
    facts: dict[str, Any] = {}
    if is_adapted(model):
        facts["fingerprint"] = streamed_fingerprints(model, reader) if rank == 0 else None
    if config.fsdp:
        facts["masks"] = None  # a pruned run is never streamed
        facts["figures"] = model_figures(model, config, nonzero=nonzero)
    count = count_parameters(model)
    if saved is not None:
        restore_model(run, model, saved[0], skip_meta=True)
    if config.base_dtype != "fp32":
        lower_frozen_precision_(model, BASE_DTYPES[config.base_dtype])
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    trained_on_meta = [n for n, p in model.named_parameters() if p.requires_grad and p.is_meta]
    if config.fsdp:
        shard_model(model, mixed_precision)
    materialise_(model, reader, _device_of(model))
    if saved is not None and trained_on_meta:  # full fine-tuning resumed: every weight is a trained tensor
        copy_rows_(model, {n: saved[0][f"model.{n}"] for n in trained_on_meta})
    if dsee_config is not None and dsee_config.has_sparse and saved is None and not data_free:
        data_aware_supports_(model, dsee_config, data, tokenizer, config)
    return Streamed(model, count, facts)


def _device_of(model: nn.Module) -> torch.device:
    """Where a sharded model's shards live (FSDP2 put its real ones there), else the CPU."""
    for p in model.parameters():
        if not p.is_meta:
            local, _ = local_rows(p)
            return local.device
    return torch.device("cpu")


# --- step 3: the matrices each process owns -----------------------------------------------------


@contextmanager
def whole_weight(module: nn.Module, weight: torch.Tensor):
    """``module`` (a linear layer or a DSEELinear) with ``weight`` (storage layout) as its frozen weight for a moment."""
    base = module.base_layer if isinstance(module, DSEELinear) else module
    before = base._parameters["weight"]
    base._parameters["weight"] = nn.Parameter(weight, requires_grad=False)
    try:
        yield module
    finally:
        base._parameters["weight"] = before


def stream_owned_matrices(model: nn.Module, reader: CheckpointReader, dsee_config, data_free: bool,
                          count_nonzero: bool) -> int | None:
    """Read every block linear layer (and adapted layer) owned by this process, whole, in fp32: set its Ω
    (a data-free support), its keep-base-sparsity mask and count its non-zeros; then exchange Ω and masks.

    Returns the non-zeros of the blocks' linear weights summed over the processes (``count_nonzero``), else None.
    """
    rank, world = _world()
    sources = model.dsee_sources
    adapted = dict(dsee_layers(model))
    try:
        block_spec(model)
        in_blocks = dict(block_linears(model)) if count_nonzero else {}
    except ValueError:  # no block layout: no FLOPs either (``loop.model_figures``)
        in_blocks = {}
    names = sorted(set(in_blocks) | set(adapted))
    masks = dsee_config is not None and dsee_config.keep_base_sparsity
    nonzero = 0
    for index, name in enumerate(names):
        if index % world != rank or not (name in in_blocks or data_free or masks):
            continue
        module = in_blocks[name] if name in in_blocks else adapted[name]
        key = sources[f"{name}.base_layer.weight" if isinstance(module, DSEELinear) else f"{name}.weight"]
        with whole_weight(module, reader.read(key, dtype=torch.float32)) as whole:
            if name in adapted:
                set_supports_and_mask_(name, whole, dsee_config, data_free, masks)
            if name in in_blocks:
                nonzero += nonzero_entries(whole)
    for index, name in enumerate(names):  # every process takes part, matrix by matrix, from its owner
        if name in adapted:
            _broadcast_layer(adapted[name], index % world, data_free, masks)
    if world > 1 and in_blocks:
        nonzero = _sum_over_processes(nonzero)
    return nonzero if in_blocks else None


@torch.no_grad()
def set_supports_and_mask_(name: str, layer: DSEELinear, dsee_config, data_free: bool, masks: bool) -> None:
    """Ω of every slice of ``layer`` from its (whole, real) W0, as ``add_dsee`` chooses it; the base's zeros as M."""
    weight = linear_weight(layer.base_layer)
    for slice_name, delta, rows in layer.deltas():
        if data_free and delta.num_sparse:
            w = weight if rows is None else weight[rows]
            delta.sparse_indices.copy_(choose_support(dsee_config, name, slice_name, w))
    if masks:
        layer.prune_mask = base_sparsity_mask(weight)


def _broadcast_layer(layer: DSEELinear, owner: int, supports: bool, masks: bool) -> None:
    """Ω of every slice of ``layer`` and its mask (or that it has none) as the owner has them."""
    _, world = _world()
    if world == 1:
        return
    if supports:
        for _, delta, _ in layer.deltas():
            if delta.num_sparse:
                delta.sparse_indices.copy_(_broadcast(delta.sparse_indices, owner))
    if masks:
        has_mask = _broadcast(torch.tensor([layer.prune_mask is not None], dtype=torch.uint8), owner)
        if has_mask.item():
            mask = layer.prune_mask if layer.prune_mask is not None else \
                torch.zeros(linear_shape(layer), dtype=torch.bool)
            layer.prune_mask = _broadcast(mask.to(torch.uint8), owner).bool()


def _collective_device() -> torch.device:
    """Where collectives take their tensors: the current GPU under NCCL, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _broadcast(tensor: torch.Tensor, owner: int) -> torch.Tensor:
    """``tensor`` as process ``owner`` has it (a new CPU tensor)."""
    moved = tensor.to(_collective_device()).contiguous()
    dist.broadcast(moved, src=owner)
    return moved.cpu()


def streamed_fingerprints(model: nn.Module, reader: CheckpointReader) -> dict[str, str]:
    """``io.base_fingerprints`` of the adapted base weights read from the checkpoint (as float32), one matrix
    at a time."""
    sources = model.dsee_sources

    def weights():
        for name, layer in dsee_layers(model):
            stored = reader.read(sources[f"{name}.base_layer.weight"], dtype=torch.float32)
            with whole_weight(layer, stored):
                yield name, linear_weight(layer.base_layer)

    return {"dtype": "float32", **fingerprints_of(weights())}


@torch.no_grad()
def copy_rows_(model: nn.Module, whole: dict[str, torch.Tensor]) -> None:
    """Each named parameter ← its rows of the whole tensor given (all of it when not sharded)."""
    params = dict(model.named_parameters())
    for name, value in whole.items():
        local, rows = local_rows(params[name])
        local.copy_(value if rows is None else value[rows[0]:rows[1]])


# --- step 6: a data-aware support from the (sharded) model ----------------------------------------


def data_aware_supports_(model: nn.Module, dsee_config, data, tokenizer, config) -> None:
    """Ω of a data-aware method (RoSA's gradient) on the built model, sharded or whole (module doc).

    As ``train/support.py`` does on a whole model: without a warm-up the statistic is the base model's
    gradient (B and S held at 0, so the adapted model computes W0 exactly); with W warm-up steps it is
    taken at W0 + B·A after W steps of AdamW on A, B and the task head (S held at 0: LoRA). Then every
    trained tensor is put back as it was.
    """
    loss_fn = lambda m, b: training_loss(m, b, data, config)  # noqa: E731
    layers = dsee_layers(model)
    trained = [p for p in model.parameters() if p.requires_grad]
    kept = [local_rows(p)[0].clone() for p in trained]
    sparse = [d.sparse_values for _, layer in layers for _, d, _ in layer.deltas()]
    low_rank_b = [d.lora_B for _, layer in layers for _, d, _ in layer.deltas()]
    try:
        with torch.no_grad():
            for p in sparse + (low_rank_b if config.support_warmup_steps == 0 else []):
                local_rows(p)[0].zero_()
        if config.support_warmup_steps:
            warm_up_low_rank_(model, [p for p in trained if not any(p is s for s in sparse)], data, tokenizer,
                              config, loss_fn)
        batches = calibration_batches(data, tokenizer, config, config.support_batches,
                                      offset=config.support_warmup_steps)
        # every process runs the same batches: FSDP's mean of identical gradients leaves each process the
        # rows of the one-process gradient
        statistics = squared_gradients(model, [n for n, _ in layers], support_progress(batches, "support: gradients"),
                                       loss_fn, local=lambda t: local_rows(t)[0])
        for name, layer in layers:
            _choose_from_local_statistic(name, layer, statistics[name], dsee_config)
    finally:
        with torch.no_grad():
            for p, value in zip(trained, kept):
                local_rows(p)[0].copy_(value)
                p.grad = None
        if is_sharded(model):
            reshard(model)


def warm_up_low_rank_(model: nn.Module, params: list[nn.Parameter], data, tokenizer, config, loss_fn) -> None:
    """``support_warmup_steps`` steps of AdamW on ``params`` (A, B, the head), as ``support.warmed_up_statistics``."""
    frozen = [p for p in model.parameters() if p.requires_grad and not any(p is q for q in params)]
    for p in frozen:
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    model.train()
    try:
        for batch in support_progress(calibration_batches(data, tokenizer, config, config.support_warmup_steps),
                               "support: LoRA warm-up"):
            loss_fn(model, batch).backward()
            if config.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    finally:
        for p in frozen:
            p.requires_grad_(True)


@torch.no_grad()
def _choose_from_local_statistic(name: str, layer: DSEELinear, local: torch.Tensor, dsee_config) -> None:
    """Ω of every slice of ``layer`` from this process's rows of the statistic (storage layout)."""
    method = support_method(dsee_config.sparse_method)
    _, rows = local_rows(layer.base_layer.weight)
    start = 0 if rows is None else rows[0]
    transposed = hasattr(layer.base_layer, "nf")  # GPT-2's Conv1D stores (d_in, d_out): its rows are inputs
    block = local.t() if transposed else local  # (d_out rows, d_in columns) of this process, as a block
    d_out, d_in = layer.base_layer.weight.shape[::-1] if transposed else layer.base_layer.weight.shape
    out_rows = torch.arange(d_out) if transposed else torch.arange(start, start + block.shape[0])
    in_cols = torch.arange(start, start + block.shape[1]) if transposed else torch.arange(d_in)
    for slice_name, delta, slice_rows in layer.deltas():
        if not delta.num_sparse:
            continue
        position = torch.full((d_out,), -1, dtype=torch.long)  # fused row -> row of the slice
        position[torch.arange(d_out) if slice_rows is None else slice_rows.cpu()] = torch.arange(delta.out_features)
        mine = position[out_rows] >= 0
        piece, slice_row = block[mine], position[out_rows][mine]  # (rows here, columns here)
        if not torch.isfinite(piece).all():
            raise ValueError(f"sparse_method {dsee_config.sparse_method!r}: the statistic of {name} holds NaN or "
                             "infinite values (a diverged loss on the support batches?)")
        score = method.fn(piece, None, {method.needs[0]: piece})  # elementwise in the statistic
        flat = slice_row.unsqueeze(1) * d_in + in_cols.unsqueeze(0)
        if dsee_config.keep_base_sparsity and layer.prune_mask is not None:
            allowed = (layer.prune_mask if slice_rows is None else layer.prune_mask[slice_rows])
            allowed = allowed.cpu()[slice_row][:, in_cols]
            if delta.num_sparse > _sum_over_processes(int(allowed.sum())):
                raise ValueError(f"{name}: num_sparse={delta.num_sparse} exceeds the non-zeros of its W0")
            score = torch.where(allowed.to(score.device), score, torch.tensor(-float("inf"), device=score.device))
        delta.sparse_indices.copy_(distributed_top_n(score.flatten(), flat.flatten().to(score.device),
                                                     delta.num_sparse))


def _sum_over_processes(value: int) -> int:
    _, world = _world()
    if world == 1:
        return value
    total = torch.tensor([value], dtype=torch.long, device=_collective_device())
    dist.all_reduce(total)
    return int(total)


def distributed_top_n(score: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` global indices of the highest scores over all processes, ascending; ties to the lower index.

    ``score`` (m,) and ``index`` (m,): this process's entries and their global flat indices. Each
    process proposes its own best n (``top_n_indices``' order within its entries), all proposals
    are gathered, and the best n of them are the best n of all entries: what ``top_n_indices``
    gives on the whole matrix.
    """
    order = torch.argsort(index, stable=True)  # the local entries by global index, for the tie rule
    score, index = score[order].float(), index[order]
    keep = top_n_indices(score, min(n, score.numel()))
    proposal_score = torch.full((n,), -float("inf"))
    proposal_index = torch.full((n,), torch.iinfo(torch.long).max, dtype=torch.long)
    proposal_score[: keep.numel()] = score[keep].cpu()
    proposal_index[: keep.numel()] = index[keep].cpu()
    _, world = _world()
    if world > 1:
        device = _collective_device()
        scores = [torch.empty(n, device=device) for _ in range(world)]
        indices = [torch.empty(n, dtype=torch.long, device=device) for _ in range(world)]
        dist.all_gather(scores, proposal_score.to(device))
        dist.all_gather(indices, proposal_index.to(device))
        proposal_score, proposal_index = torch.cat(scores).cpu(), torch.cat(indices).cpu()
    order = torch.argsort(proposal_index, stable=True)
    proposal_score, proposal_index = proposal_score[order], proposal_index[order]
    chosen = proposal_index[top_n_indices(proposal_score, n)]
    return chosen.sort().values
