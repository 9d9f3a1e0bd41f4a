"""``dsee export RUN --out DIR``: a run's kept model as a self-contained directory.

The adapters are merged (W ← M ⊙ (W0 + ΔW) where a prune mask exists, so the requested zeros are
in the exported weights) unless ``merge=False``; the tokenizer and the label mapping are copied, and
``dsee_export.json`` records the source run, its dev metrics and the file sizes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..sparsity.export import MANIFEST, save_pretrained
from ..files import atomic_write_text
from ..adapters.inject import dsee_layers, merge_dsee
from .pipeline import load_run
from .run import LABELS, METRICS, check_out_apart


EXPORT_RECORD = "dsee_export.json"


def export_run(run: str | Path, out: str | Path, *, compact: bool = False, overwrite: bool = False,
               merge: bool = True) -> dict[str, Any]:
    run, out = Path(run), Path(out)
    check_out_apart(run, out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty: use --overwrite to replace it")
        if not any((out / name).is_file() for name in (EXPORT_RECORD, MANIFEST)):
            raise ValueError(f"{out} is not an exported model directory: --overwrite only replaces those, "
                             "choose another --out")
    config, model, tokenizer = load_run(run)
    if merge and dsee_layers(model):
        merge_dsee(model)
    extra = {}
    if (run / LABELS).is_file():
        extra[LABELS] = (run / LABELS).read_text()
    metrics = json.loads((run / METRICS).read_text()) if (run / METRICS).is_file() else {}
    info = save_pretrained(model, out, compact=compact, tokenizer=tokenizer, extra_files=extra)
    record = {"source_run": str(run), "merged": merge, "dev": metrics.get("dev"), "score": metrics.get("score"),
              "flops": (metrics.get("flops") or {}).get("total"), **info}
    atomic_write_text(out / EXPORT_RECORD, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return info
