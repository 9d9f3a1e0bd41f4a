"""Loading a checkpoint tensor by tensor: a model built on the meta device, then each process's rows.

    reader = CheckpointReader.of(model_path)           # safetensors headers only
    model = empty_model(model_path, labels, reader)    # meta parameters; buffers and new heads real
    ... adapters, Ω, dtype, fully_shard ...            (train/streamed.py)
    materialise_(model, reader)                        # every meta parameter from the file: its rows only

The recipe torchtune uses for FSDP2 (build on the meta device, shard, then load), with one change:
instead of one process reading the whole state dict and broadcasting it
(``set_model_state_dict(..., broadcast_from_rank0=True)``, where that process holds the whole model),
every process reads only the rows of each tensor it keeps (``safe_open(...).get_slice``, through
``pread`` rather than a memory map, so nothing of the file stays resident), cast to the
parameter's dtype on the way in. No process ever holds a whole copy of the model, in fp32 or at all.
Without sharding the same reads fill whole tensors, one at a time, directly in their final dtype
(``--base-dtype bf16``: never an fp32 copy of the frozen weights).

What transformers' ``from_pretrained`` does besides copying tensors is kept by calling its own
parts: checkpoint keys are matched to parameter names with its renaming rules (the
``base_model_prefix``, legacy names); a checkpoint that needs a conversion (fused or split tensors)
is refused here (``StreamingUnsupported``) and the caller loads it the ordinary way. Parameters the
checkpoint lacks (a new classification head) are created whole and initialised by the model's own
``initialize_weights``, with the random generator in the state ``from_pretrained`` would leave it in,
so they get the values ``from_pretrained`` gives them (tested).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"


class StreamingUnsupported(ValueError):
    """The checkpoint cannot be read tensor by tensor here (no safetensors, or keys needing conversion)."""


def checkpoint_files(model_path: str) -> list[str]:
    """The safetensors files of a checkpoint: a local folder or a Hub id (through transformers' cache)."""
    folder = Path(model_path)
    if folder.is_dir():
        index, single = folder / SAFE_INDEX, folder / SAFE_WEIGHTS
        index = index if index.is_file() else None
        single = single if single.is_file() else None
    else:
        from transformers.utils import cached_file

        def fetch(name):
            return cached_file(model_path, name, _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False)

        index = fetch(SAFE_INDEX)
        single = None if index is not None else fetch(SAFE_WEIGHTS)
    if index is not None:
        index = Path(index)
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if folder.is_dir():
            return [str(index.parent / n) for n in names]
        from transformers.utils import cached_file

        return [cached_file(model_path, n) for n in names]
    if single is not None:
        return [str(single)]
    raise StreamingUnsupported(f"{model_path} has no safetensors weights ({SAFE_WEIGHTS} or {SAFE_INDEX})")


def _open(file: str):
    from safetensors import safe_open

    try:  # read with pread: a memory map would keep every page read resident until closed
        return safe_open(file, framework="pt", device="cpu", backend="pread")
    except TypeError:  # pragma: no cover - safetensors without the pread backend
        return safe_open(file, framework="pt", device="cpu")


class CheckpointReader:
    """Reads single tensors, or rows of them, from a checkpoint's safetensors files.

    ``keys``: checkpoint key -> (file, shape). A file is opened for each read and closed after it,
    so what a process has read is never kept beyond the tensor it asked for.
    """

    def __init__(self, files: Iterable[str]) -> None:
        self.keys: dict[str, tuple[str, tuple[int, ...]]] = {}
        for file in files:
            with _open(file) as handle:
                for key in handle.keys():
                    self.keys[key] = (file, tuple(handle.get_slice(key).get_shape()))

    @classmethod
    def of(cls, model_path: str) -> CheckpointReader:
        return cls(checkpoint_files(model_path))

    def shape(self, key: str) -> tuple[int, ...]:
        return self.keys[key][1]

    def read(self, key: str, rows: tuple[int, int] | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor ``key`` (rows ``start:stop`` of its first dimension), cast to ``dtype`` if given."""
        file, shape = self.keys[key]
        with _open(file) as handle:
            if rows is None or not shape:
                tensor = handle.get_tensor(key)
            else:
                tensor = handle.get_slice(key)[rows[0]:rows[1]]
        return tensor if dtype is None or tensor.dtype == dtype else tensor.to(dtype)


def parameter_sources(model: nn.Module, reader: CheckpointReader) -> dict[str, str]:
    """``{parameter name: checkpoint key}`` for every parameter the checkpoint holds, matched as
    ``from_pretrained`` matches them (transformers' renaming rules: prefix, legacy names).

    Raises ``StreamingUnsupported`` when a key needs one of transformers' weight conversions
    (tensors fused or split on load): only ``from_pretrained`` itself can load that checkpoint.
    """
    state = model.state_dict()
    renamed: dict[str, str] = {}
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
    except ImportError:  # pragma: no cover - transformers 5 releases before the conversion mapping
        get_model_conversion_mapping = None
    if get_model_conversion_mapping is not None:
        mapping = get_model_conversion_mapping(model)
        renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
        converters = [m for m in mapping if isinstance(m, WeightConverter)]
    prefix = getattr(model, "base_model_prefix", "") or ""
    for key in reader.keys:
        if get_model_conversion_mapping is not None:
            name, converter = rename_source_key(key, renamings, converters, prefix or None, state)
            if name not in state and key in state:  # as from_pretrained: keep the key, maybe with the prefix
                name, converter = rename_source_key(key, [], [], prefix or None, state)
            if converter is not None:
                raise StreamingUnsupported(f"checkpoint key {key!r} needs transformers' weight conversion "
                                           f"({converter}); it is loaded whole instead")
        else:  # pragma: no cover
            name = key if key in state else f"{prefix}.{key}" if f"{prefix}.{key}" in state else \
                key.removeprefix(f"{prefix}.")
        if name in state:
            renamed[name] = key
    sources = {}
    for name, param in _parameters_with_aliases(model):
        found = next((renamed[a] for a in name if a in renamed), None)
        if found is not None:
            if reader.shape(found) != tuple(param.shape):
                raise StreamingUnsupported(f"{found} has shape {reader.shape(found)} in the checkpoint, the model's "
                                           f"{name[0]} {tuple(param.shape)}")
            sources[name[0]] = found
    return sources


def _parameters_with_aliases(model: nn.Module) -> list[tuple[list[str], nn.Parameter]]:
    """Every distinct parameter with all its names (tied ones have several), the first as named_parameters gives it."""
    names: dict[int, list[str]] = {}
    params: dict[int, nn.Parameter] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
        params[id(param)] = param
    return [(names[i], params[i]) for i in names]


def empty_model(model_class, config, reader: CheckpointReader) -> nn.Module:
    """``model_class.from_config(config)`` on the meta device, buffers real, with the parameters the
    checkpoint lacks created whole on CPU and initialised as ``from_pretrained`` initialises them.

    Returns the model; ``model.dsee_sources`` maps the parameters to load to their checkpoint keys.
    """
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):  # buffers (rotary frequencies, position ids) computed
        model = model_class.from_config(config, dtype=torch.float32)
    model.tie_weights()  # the meta context registers a new parameter on every assignment: tie again
    sources = parameter_sources(model, reader)
    missing = [(names, p) for names, p in _parameters_with_aliases(model) if names[0] not in sources]
    for names, param in missing:
        _set_parameter(model, names, nn.Parameter(torch.empty(param.shape, dtype=param.dtype),
                                                  requires_grad=param.requires_grad))
    if missing:
        for module in model.modules():  # from_config initialised (on meta) and marked every module
            module.__dict__.pop("_is_hf_initialized", None)
        for name, param in model.named_parameters():
            param._is_hf_initialized = name in sources  # what from_pretrained marks as loaded
        model.initialize_weights()  # only the unmarked ones draw from the generator, in module order
    model.dsee_sources = sources
    return model


@contextmanager
def sources_kept(model: nn.Module):
    """Keep ``model.dsee_sources`` right while modules are wrapped or replaced inside the block (adapters
    added: ``q_proj.weight`` becomes ``q_proj.base_layer.weight``): re-keyed by parameter identity."""
    by_parameter = {id(p): model.dsee_sources[n] for n, p in model.named_parameters(remove_duplicate=False)
                    if n in model.dsee_sources}
    yield model
    model.dsee_sources = {n: by_parameter[id(p)] for n, p in model.named_parameters(remove_duplicate=False)
                          if id(p) in by_parameter}


def _set_parameter(model: nn.Module, names: list[str], param: nn.Parameter) -> None:
    for name in names:  # every alias of a tied parameter gets the same new one
        owner, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(owner) if owner else model, attribute, param)


def local_rows(param: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """(the tensor this process holds of ``param``, the rows of the whole it is, or None: all of it).

    A DTensor sharded on dim 0 (FSDP2's placement) holds a contiguous range of rows.
    """
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        DTensor = ()  # noqa: N806
    if not isinstance(param, DTensor):
        return param.data, None
    from torch.distributed.tensor import Replicate, Shard

    placements = tuple(param.placements)
    local = param._local_tensor
    if all(isinstance(p, Replicate) for p in placements):
        return local, None
    if len(placements) != 1 or not (isinstance(placements[0], Shard) and placements[0].dim == 0):
        raise StreamingUnsupported(f"a parameter sharded as {placements}: only row sharding (FSDP2's) is read here")
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, placements)
    return local, (offset[0], offset[0] + shape[0])


@torch.no_grad()
def materialise_(model: nn.Module, reader: CheckpointReader, device: torch.device | str = "cpu",
                 sources: dict[str, str] | None = None) -> nn.Module:
    """Give every parameter still on the meta device real storage on ``device`` and fill it from the
    checkpoint: this process's rows of a sharded one, the whole of another, in the parameter's dtype.

    ``sources``: parameter name -> checkpoint key (default ``model.dsee_sources``); a meta parameter
    without a source is an error (it would stay uninitialised).
    """
    sources = model.dsee_sources if sources is None else sources
    pending = [(names, p) for names, p in _parameters_with_aliases(model) if p.is_meta]
    unknown = [names[0] for names, _ in pending if not any(n in sources for n in names)]
    if unknown:
        raise StreamingUnsupported(f"no checkpoint tensor for {unknown[:3]}")
    if _is_fsdp(model):  # FSDP2 re-registers its sharded parameters after ``_apply`` (ties kept)
        model._apply(lambda t: torch.empty_like(t, device=device) if t.is_meta else t)
    else:  # one new parameter per distinct one, set under all its names (``_apply`` would untie them)
        for names, param in pending:
            _set_parameter(model, names, nn.Parameter(torch.empty_like(param, device=device),
                                                      requires_grad=param.requires_grad))
    params = dict(model.named_parameters(remove_duplicate=False))
    for names, _ in pending:
        name = next(n for n in names if n in sources)
        local, rows = local_rows(params[names[0]])
        local.copy_(reader.read(sources[name], rows, local.dtype))
    return model


def _is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return False
    return any(isinstance(m, FSDPModule) for m in model.modules())
