"""Add, merge and remove DSEE adapters on any ``nn.Module``; the trainable-parameter policy.

    add_dsee(model, config)   wrap matched linear layers in DSEELinear, choose Ω from W0, freeze
                              everything but the adapters and ``modules_to_save``   (paper §3.1)
    merge_dsee(model)         W ← W0 + ΔW, unwrap: a plain model with the base model's keys
    remove_dsee(model)        unwrap without merging

Every call is explicit and changes nothing when it raises: all checks run before the first write.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..arch import HEAD_NAMES, model_spec, name_matches, num_attention_heads
from .config import DSEEConfig
from .calibration import LossFn
from .support import compute_support, support_method
from .layer import LINEAR_TYPES, DSEELinear, linear_shape, linear_weight


@dataclass(frozen=True)
class DSEEState:
    """What ``add_dsee`` did to a model, kept on it as ``model.dsee_state``."""

    config: DSEEConfig
    targets_matched: tuple[str, ...]  # module names; "name:q" for a slice of a fused projection
    modules_to_save: tuple[str, ...]


@dataclass(frozen=True)
class _Target:
    name: str
    module: nn.Module
    slices: dict[str, torch.Tensor | None]  # {"": None} for a plain layer


@dataclass(frozen=True)
class ParameterCount:
    trainable: int  # parameters the optimizer updates
    total: int  # every parameter of the model, adapters included, each counted once
    adapter_bytes: int  # bytes of tensor data ``save_adapter`` stores (values, indices, saved modules)

    @property
    def trainable_share(self) -> float:
        return self.trainable / self.total if self.total else 0.0


def is_adapted(model: nn.Module) -> bool:
    return getattr(model, "dsee_state", None) is not None or any(isinstance(m, DSEELinear) for m in model.modules())


def dsee_layers(model: nn.Module) -> list[tuple[str, DSEELinear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, DSEELinear)]


def add_dsee(model: nn.Module, config: DSEEConfig, *, batches: Iterable[dict] | None = None,
             loss_fn: LossFn | None = None, statistics: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """Put ΔW = s·(B·A + S) on the matched layers of ``model`` (in place) and return it.

    Ω (the support of S) is chosen per matrix with ``config.sparse_method``: from its pre-trained
    weight, or for a data-aware method (``"gradient"``) from ``batches`` (dicts the model takes,
    with labels; ``loss_fn(model, batch)`` gives the loss if the model's own ``.loss`` is not it)
    or from precomputed ``statistics`` (``{module name: (d_out, d_in) tensor}``, e.g. squared
    gradients after a warm-up). Everything but the adapters and ``modules_to_save`` is frozen.
    Raises ValueError, changing nothing, when the model is already adapted, nothing matches,
    ``rank`` / the sparse budget do not fit a matched matrix, or the method's data is missing.
    """
    return inject(model, config, select_support=True, batches=batches, loss_fn=loss_fn, statistics=statistics)


def inject(model: nn.Module, config: DSEEConfig, *, select_support: bool, batches: Iterable[dict] | None = None,
           loss_fn: LossFn | None = None, statistics: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """``add_dsee``; with ``select_support=False`` Ω is left as placeholders to be loaded."""
    if not isinstance(config, DSEEConfig):
        raise TypeError(f"config must be a DSEEConfig, got {type(config).__name__}")
    if is_adapted(model):
        raise ValueError("add_dsee: this model already has DSEE adapters; call merge_dsee or remove_dsee first")
    method = support_method(config.sparse_method)
    data_given = batches is not None or statistics is not None
    if select_support and config.has_sparse and method.needs_data and not data_given:
        raise ValueError(f"sparse_method={config.sparse_method!r} chooses Ω from training data: pass "
                         "batches=[...] (dicts the model takes, with labels) or statistics={...}")
    if data_given and not (select_support and method.needs_data):
        raise ValueError(f"batches / statistics are read only by a data-aware sparse_method (gradient), "
                         f"not by {config.sparse_method!r}")
    saved = resolve_modules_to_save(model, config)
    targets = resolve_targets(model, config, exclude=saved)
    check_fits(targets, config)

    supports: dict[tuple[str, str], torch.Tensor] = {}
    if select_support and config.has_sparse:  # the slow part: before any change, so an error here changes nothing
        if method.needs_data and statistics is None:
            from .calibration import squared_gradients

            statistics = squared_gradients(model, [t.name for t in targets], batches, loss_fn)
        for t in targets:
            weight = linear_weight(t.module)
            for slice_name, rows in t.slices.items():
                w = weight if rows is None else weight[rows.to(weight.device)]
                stats = {}
                if method.needs_data:
                    if t.name not in statistics:
                        raise ValueError(f"statistics has no entry for {t.name}")
                    full = statistics[t.name]
                    stats = {method.needs[0]: full if rows is None else full[rows.to(full.device)]}
                supports[t.name, slice_name] = choose_support(config, t.name, slice_name, w, stats)

    for p in model.parameters():
        p.requires_grad_(False)
    for t in targets:
        d_out, d_in = linear_shape(t.module)
        counts = {s: config.sparse_count(d_out if rows is None else len(rows), d_in) for s, rows in t.slices.items()}
        layer = DSEELinear(t.module, t.slices, config.rank, counts, config.scaling, config.dropout)
        for slice_name, delta, _ in layer.deltas():
            seed = module_seed(config.seed, t.name, slice_name)
            generator = torch.Generator(device=delta.lora_A.device).manual_seed(seed)
            delta.reset_parameters(config.init, generator)
            if select_support and (t.name, slice_name) in supports:
                delta.sparse_indices.copy_(supports[t.name, slice_name])
        # W0's zeros become the prune mask: M ⊙ (W0 + ΔW) keeps them (a base on the meta device, loaded
        # tensor by tensor, gets its mask from the weights as they are read: train/streamed.py)
        if config.keep_base_sparsity and not linear_weight(t.module).is_meta:
            layer.prune_mask = base_sparsity_mask(linear_weight(t.module))
        set_submodule(model, t.name, layer)
    for name in saved:
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(True)
    matched = tuple(t.name + (f":{s}" if s else "") for t in targets for s in t.slices)
    model.dsee_state = DSEEState(config, matched, saved)
    return model


def choose_support(config: DSEEConfig, name: str, slice_name: str, weight: torch.Tensor,
                   statistics: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Ω of one adapted matrix (or fused slice) ``name``: (d_out, d_in) ``weight`` -> (N,) flat indices,
    seeded per matrix; among W0's non-zeros under ``keep_base_sparsity``."""
    return compute_support(weight, config.sparse_count(*weight.shape), config.sparse_method,
                           seed=module_seed(config.seed, name, slice_name), statistics=statistics,
                           allowed=(weight != 0) if config.keep_base_sparsity else None)


def base_sparsity_mask(weight: torch.Tensor) -> torch.Tensor | None:
    """The keep-mask of a sparse W0 (True where W0 ≠ 0), or None when W0 has no zeros."""
    zeros = weight == 0
    return ~zeros if zeros.any() else None


def merge_dsee(model: nn.Module) -> nn.Module:
    """Fold ΔW into the base weights and unwrap (in place): a plain model with the base's keys.

    All parameters are trainable again afterwards, as in a freshly loaded model.
    """
    return _unwrap(model, merge=True)


def remove_dsee(model: nn.Module) -> nn.Module:
    """Unwrap the adapters without merging them (in place). ``modules_to_save`` keep their values."""
    return _unwrap(model, merge=False)


def _unwrap(model: nn.Module, merge: bool) -> nn.Module:
    layers = dsee_layers(model)
    if not layers:
        raise ValueError(f"{'merge_dsee' if merge else 'remove_dsee'}: this model has no DSEE adapters")
    for name, layer in layers:
        set_submodule(model, name, layer.merged_base_layer() if merge else layer.base_layer)
    for p in model.parameters():
        p.requires_grad_(True)
    model.dsee_state = None
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors an adapter file holds: A, B, S values and Ω of every update, and the
    parameters of ``modules_to_save``; keys as in ``model.state_dict()``."""
    state = getattr(model, "dsee_state", None)
    if state is None:
        raise ValueError("this model has no DSEE adapters (call add_dsee or load_adapter first)")
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in dsee_layers(model):
        for slice_name, delta, _ in layer.deltas():
            prefix = f"{name}.{layer.delta_name(slice_name)}"
            tensors[f"{prefix}.lora_A"] = delta.lora_A
            tensors[f"{prefix}.lora_B"] = delta.lora_B
            tensors[f"{prefix}.sparse_values"] = delta.sparse_values
            tensors[f"{prefix}.sparse_indices"] = delta.sparse_indices
    for module_name in state.modules_to_save:
        for param_name, p in model.get_submodule(module_name).named_parameters():
            tensors[f"{module_name}.{param_name}"] = p
    return tensors


def count_parameters(model: nn.Module) -> ParameterCount:
    unique = {id(p): p for p in model.parameters()}.values()
    trainable = sum(p.numel() for p in unique if p.requires_grad)
    total = sum(p.numel() for p in unique)
    adapter_bytes = 0
    if getattr(model, "dsee_state", None) is not None:
        adapter_bytes = sum(t.numel() * t.element_size() for t in adapter_state_dict(model).values())
    return ParameterCount(trainable, total, adapter_bytes)


# --- resolving what to adapt ----------------------------------------------------------------


def linear_candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LINEAR_TYPES) and n]


def describe_candidates(model: nn.Module, limit: int = 40) -> str:
    """Distinct linear-layer names with layer numbers folded to '*', e.g. 'encoder.layer.*.attention.self.query'."""
    patterns = list(dict.fromkeys(re.sub(r"\.\d+\.", ".*.", n) for n, _ in linear_candidates(model)))
    more = f" ... and {len(patterns) - limit} more" if len(patterns) > limit else ""
    return ", ".join(patterns[:limit]) + more


def resolve_targets(model: nn.Module, config: DSEEConfig, exclude: tuple[str, ...] = ()) -> list[_Target]:
    model_config = getattr(model, "config", None)
    spec = model_spec(model)
    candidates = [
        (n, m) for n, m in linear_candidates(model) if not any(n == e or n.startswith(e + ".") for e in exclude)
    ]
    targets: list[_Target] = []
    if config.targets is None:
        if spec is None or not spec.has_default_targets:
            model_type = getattr(model_config, "model_type", type(model).__name__)
            raise ValueError(
                f"no default DSEE targets for model type {model_type!r}: pass targets=[...] "
                f"(exact name, dotted suffix or regex); linear layers: {describe_candidates(model)}"
            )
        if spec.fused is not None:
            heads = num_attention_heads(model_config)
            for name, module in candidates:
                if name_matches(name, spec.fused.module):
                    d_out, _ = linear_shape(module)
                    slices = {s: spec.fused.rows(s, d_out, heads) for s in spec.fused.slices}
                    targets.append(_Target(name, module, slices))
        wanted = spec.targets
    else:
        wanted = config.targets
    for name, module in candidates:
        if any(name_matches(name, t) for t in wanted):
            targets.append(_Target(name, module, {"": None}))
    if not targets:
        asked = "the architecture's default targets" if config.targets is None else f"targets={list(config.targets)}"
        raise ValueError(f"no linear layer matches {asked}; linear layers: {describe_candidates(model)}")
    return sorted(targets, key=lambda t: t.name)


def resolve_modules_to_save(model: nn.Module, config: DSEEConfig) -> tuple[str, ...]:
    if config.modules_to_save is None:  # the task head of a classification model; nothing for an LM
        spec = model_spec(model)
        heads = spec.heads if spec is not None else HEAD_NAMES
        return tuple(n for n in heads if isinstance(getattr(model, n, None), nn.Module))
    names = [n for n, _ in model.named_modules() if n]
    found: list[str] = []
    for wanted in config.modules_to_save:
        hits = [n for n in names if name_matches(n, wanted)]
        if not hits:
            raise ValueError(f"modules_to_save: no module matches {wanted!r}")
        found += hits
    # keep only the outermost of nested matches
    found = sorted(set(found))
    return tuple(n for n in found if not any(n.startswith(o + ".") for o in found if o != n))


def check_fits(targets: list[_Target], config: DSEEConfig) -> None:
    for t in targets:
        d_out, d_in = linear_shape(t.module)
        for slice_name, rows in t.slices.items():
            rows_out = d_out if rows is None else len(rows)
            where = t.name + (f" (slice {slice_name})" if slice_name else "")
            if config.rank > min(rows_out, d_in):
                raise ValueError(f"rank={config.rank} exceeds min(d_out, d_in) = {min(rows_out, d_in)} of {where}")
            if config.sparse_count(rows_out, d_in) > rows_out * d_in:
                raise ValueError(
                    f"num_sparse={config.num_sparse} exceeds the {rows_out}×{d_in} = {rows_out * d_in} entries of {where}"
                )


def module_seed(seed: int, name: str, slice_name: str = "") -> int:
    """A per-matrix seed that does not depend on the order of modules or the global RNG."""
    return (zlib.crc32(f"{name}:{slice_name}".encode()) + 1_000_003 * seed) % (2**63)


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)
