"""dsee: Dually Sparsity-Embedded Efficient Tuning (Chen et al., ACL 2023) for transformers.

Each adapted weight gets ΔW = s·(B·A + S): a low-rank B·A and a sparse S with N entries at
positions Ω chosen from the pre-trained weight before training. Read ``layer.py`` for the layer,
``inject.py`` for how it is put on a model, ``decompose.py`` for how Ω is chosen.

``import dsee`` does not import the training stack.
"""

from .config import DSEEConfig
from .decompose import compute_support
from .inject import DSEEState, ParameterCount, add_dsee, count_parameters, merge_dsee, remove_dsee
from .io import load_adapter, save_adapter
from .layer import DSEELinear, SparseLowRankDelta

__version__ = "0.1.0"

__all__ = [
    "DSEEConfig",
    "DSEELinear",
    "DSEEState",
    "ParameterCount",
    "SparseLowRankDelta",
    "add_dsee",
    "compute_support",
    "count_parameters",
    "load_adapter",
    "merge_dsee",
    "remove_dsee",
    "save_adapter",
    "__version__",
]
