"""dsee: Dually Sparsity-Embedded Efficient Tuning (Chen et al., ACL 2023) for transformers.

Each adapted weight gets ΔW = s·(B·A + S): a low-rank B·A and a sparse S with N entries at
positions Ω chosen before training. Read ``adapters/layer.py`` for the layer (``sparse_ops.py`` for
how S is applied), ``adapters/inject.py`` for how it is put on a model, ``adapters/support.py`` for
how Ω is chosen, ``arch.py`` for what each architecture looks like.

The final model can be made sparse too (paper §3.2): ``sparsity/unstructured.py`` (masks kept through
the merge; magnitude, Wanda, N:M), ``sparsity/structure.py`` (heads and FFN neurons removed
physically), ``sparsity/export.py`` (saving and reloading models whose shapes changed),
``sparsity/stock.py`` (when a stock config describes a pruned model), ``sparsity/flops.py`` (what
it saves). ``deploy/`` exports any of them to ONNX and runs it with ONNX Runtime.

``import dsee`` does not import the training stack (``dsee.train``).
"""

from .adapters.config import DSEEConfig
from .adapters.support import compute_support
from .deploy.onnx_export import export_onnx
from .deploy.runtime import OnnxRuntimeModel
from .sparsity.export import load_pretrained, save_pretrained
from .sparsity.stock import stock_config
from .sparsity.flops import forward_flops, parameter_counts, shares_for_flops
from .adapters.inject import DSEEState, ParameterCount, add_dsee, count_parameters, merge_dsee, remove_dsee
from .adapters.io import load_adapter, save_adapter
from .adapters.layer import DSEELinear, SparseLowRankDelta
from .adapters.precision import lower_frozen_precision_
from .sparsity.unstructured import apply_masks_, sparsity_report, unstructured_masks
from .sparsity.structure import remove_heads_, remove_neurons_, structure_plan

__version__ = "0.1.0"

__all__ = [
    "DSEEConfig",
    "DSEELinear",
    "DSEEState",
    "OnnxRuntimeModel",
    "ParameterCount",
    "SparseLowRankDelta",
    "add_dsee",
    "apply_masks_",
    "compute_support",
    "count_parameters",
    "export_onnx",
    "forward_flops",
    "shares_for_flops",
    "load_adapter",
    "load_pretrained",
    "lower_frozen_precision_",
    "merge_dsee",
    "parameter_counts",
    "remove_dsee",
    "remove_heads_",
    "remove_neurons_",
    "save_adapter",
    "save_pretrained",
    "sparsity_report",
    "stock_config",
    "structure_plan",
    "unstructured_masks",
    "__version__",
]
