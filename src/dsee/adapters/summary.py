"""A human-readable parameter report of an adapted model."""

from __future__ import annotations

from torch import nn

from .inject import count_parameters, dsee_layers
from .layer import linear_shape


def parameter_report(model: nn.Module) -> str:
    """One line per adapted matrix, then trainable / total parameters and the adapter's size."""
    state = model.dsee_state
    rows = [("module", "slice", "d_out × d_in", "r", "N", "trainable")]
    for name, layer in dsee_layers(model):
        _, d_in = linear_shape(layer.base_layer)
        for slice_name, delta, _ in layer.deltas():
            n = delta.lora_A.numel() + delta.lora_B.numel() + delta.sparse_values.numel()
            rows.append((name, slice_name or "-", f"{delta.out_features} × {d_in}", str(delta.rank), str(delta.num_sparse), f"{n:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows]
    count = count_parameters(model)
    cfg = state.config
    lines += [
        "",
        f"adapted matrices : {len(state.targets_matched)} (r={cfg.rank}, alpha={cfg.alpha}, {cfg.sparse_budget}, "
        f"support={cfg.sparse_method})",
        f"trained in full  : {', '.join(state.modules_to_save) or '-'}",
        f"trainable        : {count.trainable:,} of {count.total:,} parameters ({100 * count.trainable_share:.3f}%)",
        f"adapter file     : {count.adapter_bytes:,} bytes of tensors",
    ]
    return "\n".join(lines)
