"""DSEEConfig: every knob of a DSEE adapter, validated, with a JSON round trip.

ΔW = s·(B·A + S), s = alpha / rank  (paper §3; LoRA's vocabulary).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..options import option

SPARSE_METHODS = ("grebsmo", "upstream", "magnitude", "random", "gradient")
INIT_MODES = ("zero", "upstream")
CONFIG_NAME = "dsee_config.json"
ADAPTER = "DSEE adapter (paper §3.1)"
DEFAULT_NUM_SPARSE = 64  # N when neither num_sparse nor sparse_density is given (the paper's budget is 16-64)


def _as_tuple(value: Any, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    items = tuple(value)
    if not items or not all(isinstance(v, str) and v for v in items):
        raise ValueError(f"DSEEConfig.{name} must be None, a non-empty string or a non-empty list of strings, got {value!r}")
    return items


def _support_methods():
    from .support import SUPPORT_METHODS

    return SUPPORT_METHODS


def dataclass_from_dict(cls: type, data: dict[str, Any]):
    """``cls(**data)``, but an unknown key is an error that names it (not a TypeError)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; known keys: {sorted(known)}")
    return cls(**data)


@dataclass(frozen=True)
class DSEEConfig:
    """Configuration of a DSEE adapter.

    Args:
        rank: r, the rank of the low-rank factor B·A (paper §3.1). 0 means a sparse-only update.
        alpha: the scale is s = alpha / rank (as in LoRA).
        dropout: dropout on the adapter branch's input (not on the frozen path).
        num_sparse: N, the number of trainable entries of S per adapted matrix (paper §3.1).
            With N = 0 DSEE is exactly LoRA. Default 64 when ``sparse_density`` is not given.
        sparse_density: the budget of S as a share of each adapted matrix instead: a
            (d_out × d_in) matrix gets N = round(density · d_out · d_in) entries (a fused slice:
            of its own rows). Give either this or ``num_sparse``, not both.
        sparse_method: how Ω (the support of S) is chosen: from the pre-trained weight W0,
            "grebsmo" (W0 ≈ L + S', top-N |S'|, paper §3.1), "upstream" (the released code's
            decomposition, always exactly N), "magnitude" (top-N |W0|), "random"; from data,
            "gradient" (top-N of the squared gradients of the training loss with respect to W0,
            summed over a few batches, as RoSA does: ``add_dsee(..., batches=...)``).
        targets: which modules to adapt: exact module name, dotted suffix or regular expression.
            None means the architecture's default (query and value).
        modules_to_save: modules trained in full (by the same matching rules). None means the task
            head for sequence-classification models and nothing for causal LMs.
        init: "zero" (B = 0, S = 0: the adapted model equals the base model at step 0) or
            "upstream" (the released code's N(0, 0.02²) start for B and S).
        seed: seeds A's initialisation and the "random" support.
        keep_base_sparsity: the zeros of each adapted W0 become its prune mask M, so the layer
            computes M ⊙ (W0 + ΔW) and ``merge_dsee`` keeps exactly those zeros (paper §3.2's
            merged-and-masked form, for a model that arrives sparse: Wanda, SparseGPT, 2:4, or
            ``dsee prune``). Ω is then chosen among the non-zero positions only.
    """

    rank: int = option(16, "r, the rank of B·A", group=ADAPTER)
    alpha: float = option(32, "the scale is s = alpha / r", group=ADAPTER, positive=True)
    dropout: float = option(0.0, "dropout on the adapter's input (not on the frozen path)", group=ADAPTER)
    num_sparse: int | None = option(None, "N, sparse entries of S per adapted matrix (64 unless --sparse-density "
                                    "is given)", group=ADAPTER)
    sparse_density: float | None = option(None, "the budget of S as a share of each adapted matrix, e.g. 0.01 "
                                          "(instead of --num-sparse)", group=ADAPTER)
    sparse_method: str = option("grebsmo", "how Ω, the support of S, is chosen", group=ADAPTER,
                                choices=lambda: _support_methods().names())
    targets: tuple[str, ...] | None = option(None, "modules to adapt: names, dotted suffixes or regexes, "
                                             "comma-separated (default: the architecture's query and value)",
                                             group=ADAPTER)
    modules_to_save: tuple[str, ...] | None = option(None, "modules trained in full, comma-separated (default: the "
                                                     "task head, e.g. classifier)", group=ADAPTER)
    init: str = option("zero", "start of B and S: zero, or upstream's N(0, 0.02²)", group=ADAPTER, choices=INIT_MODES)
    seed: int = option(0, "seeds A's initialisation and the random support", group=ADAPTER)
    keep_base_sparsity: bool = option(False, "the zeros of each adapted pre-trained weight stay zero through "
                                      "training and merging (a model pruned elsewhere)", group=ADAPTER)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"DSEEConfig.{name}={getattr(self, name)!r}: {why}")

        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 0:
            raise bad("rank", "must be an integer >= 0")
        if self.num_sparse is not None and self.sparse_density is not None:
            raise bad("num_sparse", f"and sparse_density={self.sparse_density!r} are both given: the budget of S "
                      "is either a count per matrix or a density (set num_sparse=None to use a density)")
        if self.num_sparse is None and self.sparse_density is None:
            object.__setattr__(self, "num_sparse", DEFAULT_NUM_SPARSE)
        if self.num_sparse is not None and (
            isinstance(self.num_sparse, bool) or not isinstance(self.num_sparse, int) or self.num_sparse < 0
        ):
            raise bad("num_sparse", "must be an integer >= 0")
        if self.sparse_density is not None and (
            isinstance(self.sparse_density, bool) or not isinstance(self.sparse_density, (int, float))
            or not math.isfinite(self.sparse_density) or not 0 <= self.sparse_density <= 1
        ):
            raise bad("sparse_density", "must be a number in [0, 1]")
        if self.rank == 0 and not (self.num_sparse or self.sparse_density):
            raise bad("rank", "rank and the sparse budget are both 0: the adapter would have nothing to train")
        if not isinstance(self.alpha, (int, float)) or isinstance(self.alpha, bool) or not math.isfinite(self.alpha) \
                or self.alpha <= 0:
            raise bad("alpha", "must be a positive number")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", "must be in [0, 1)")
        if self.sparse_method not in _support_methods():  # the registry: methods added by users validate too
            raise bad("sparse_method", f"unknown method; choose one of {', '.join(_support_methods())}")
        if self.init not in INIT_MODES:
            raise bad("init", f"unknown init; choose one of {', '.join(INIT_MODES)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise bad("seed", "must be an integer")
        if not isinstance(self.keep_base_sparsity, bool):
            raise bad("keep_base_sparsity", "must be true or false")
        object.__setattr__(self, "targets", _as_tuple(self.targets, "targets"))
        object.__setattr__(self, "modules_to_save", _as_tuple(self.modules_to_save, "modules_to_save"))

    def sparse_count(self, d_out: int, d_in: int) -> int:
        """N for one adapted (d_out × d_in) matrix or slice: ``num_sparse``, or round(density · d_out · d_in)."""
        if self.num_sparse is not None:
            return self.num_sparse
        return round(self.sparse_density * d_out * d_in)

    @property
    def sparse_budget(self) -> str:
        """The budget of S in words: "N=64" or "density=1%"."""
        if self.num_sparse is not None:
            return f"N={self.num_sparse}"
        return f"density={100 * self.sparse_density:g}%"

    @property
    def has_sparse(self) -> bool:
        """True when S has any entries (False for LoRA: N = 0 or density 0)."""
        return bool(self.num_sparse or self.sparse_density)

    @property
    def scaling(self) -> float:
        """s = alpha / rank; 1.0 for a sparse-only adapter (rank 0)."""
        return self.alpha / self.rank if self.rank else 1.0

    # --- JSON round trip -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in ("targets", "modules_to_save"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DSEEConfig":
        return dataclass_from_dict(cls, data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DSEEConfig":
        return cls.from_dict(json.loads(text))

    def save(self, directory: str | Path) -> Path:
        from ..files import atomic_write_text

        path = Path(directory) / CONFIG_NAME
        atomic_write_text(path, self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "DSEEConfig":
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}: not a DSEE adapter directory")
        try:
            return cls.from_json(path.read_text())
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: {err}") from err

