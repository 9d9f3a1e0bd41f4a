"""A sparse base model before any fine-tuning: ``dsee prune-base MODEL --out DIR``.

    dsee prune-base MODEL --out models/w50 --sparsity 0.5 --score wanda --task e2e --data-dir DATA
    dsee train --model models/w50 --keep-base-sparsity ...     # W0's zeros stay zeros while training
    dsee export RUN --out model                                 # merged: M ⊙ (W0 + ΔW), the base's zeros

``dsee prune`` makes a fine-tuned run sparse and re-tunes its adapters; this makes the pre-trained
model sparse first, the order of the users who prune an LLM with Wanda or SparseGPT and fine-tune it
afterwards (locuslab/wanda#83: LoRA's merge turned 40% sparsity into 32.7%). The masks are those of
``dsee.sparsity.unstructured`` on the blocks' q, k, v, o and FFN weights: Wanda's |W|·‖X_j‖₂ ranked
per output row by default (``--score wanda --scope row``), an N:M pattern (``--pattern 2:4``), or
|W|. Wanda's calibration batches are the first ``--calibration-batches`` of a seeded order of the
task's training data, as ``dsee prune`` takes them, and its statistics are gathered block by block
(``adapters.calibration``). The zeros are written into the weights and the model is saved by
transformers (a stock checkpoint: ``from_pretrained`` loads it), with its tokenizer and
``dsee_prune_base.json`` (the settings and the sparsity of every matrix).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..options import option
from ..sparsity.unstructured import SCOPES, SCORES, apply_masks_, parse_pattern, sparsity_report, unstructured_masks

RECORD = "dsee_prune_base.json"
UNSTRUCTURED = "unstructured (masks on the blocks' linear weights)"


def base_scores() -> list[str]:
    """Scores that need no fine-tuned update (the others rank |ΔW|)."""
    return [name for name in SCORES.names() if not SCORES.get(name).options.get("two_groups")
            and name != "weight+delta"]


@dataclass
class BasePruneSettings:
    """What ``dsee prune-base`` does to a pre-trained model."""

    model: str = option(help="Hub id or local path of the pre-trained model", flag="model")
    sparsity: float | None = option(None, "fraction of zeros in the blocks' linear weights, in [0, 1)",
                                    group=UNSTRUCTURED)
    pattern: str | None = option(None, "N:M semi-structured sparsity, e.g. 2:4 (instead of --sparsity)",
                                 group=UNSTRUCTURED)
    score: str = option("wanda", "what ranks the weights: Wanda's |W|·‖X_j‖ over calibration tokens, or |W|",
                        group=UNSTRUCTURED, choices=base_scores)
    scope: str = option("row", "rank each output row alone (row, Wanda's grouping), each matrix (layer) or all "
                        "together (global)", group=UNSTRUCTURED, choices=SCOPES)
    calibration_batches: int = option(8, "training batches a calibration score (wanda) reads", group=UNSTRUCTURED,
                                      positive=True)

    def __post_init__(self) -> None:
        if (self.sparsity is None) == (self.pattern is None):
            raise ValueError("give --sparsity or --pattern (one of them)")
        if self.sparsity is not None and not 0 < self.sparsity < 1:  # NaN fails this too
            raise ValueError(f"--sparsity {self.sparsity}: must be in (0, 1)")
        if self.pattern is not None:
            n, m = parse_pattern(self.pattern)
            self.pattern = f"{n}:{m}"
        if self.score not in base_scores():
            raise ValueError(f"--score {self.score}: a base model has no fine-tuned update to rank; choose one of "
                             f"{', '.join(base_scores())}")
        if self.scope not in SCOPES:
            raise ValueError(f"--scope {self.scope}: choose one of {', '.join(SCOPES)}")
        if self.calibration_batches < 1:
            raise ValueError("--calibration-batches must be >= 1")

    @property
    def needs_calibration(self) -> bool:
        return SCORES.get(self.score).needs_data

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_out(out: str | Path, overwrite: bool) -> Path:
    """``--out``: new, empty, or (with ``overwrite``) a directory this command wrote before."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty: use --overwrite to replace it")
        if not (out / RECORD).is_file():
            raise ValueError(f"{out} was not written by dsee prune-base: --overwrite only replaces those, "
                             "choose another --out")
    return out


def load_as_saved(model_path: str):
    """The checkpoint as the class it was saved from (``config.architectures``; else ``AutoModel``), in fp32."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(model_path)
    name = (getattr(config, "architectures", None) or [None])[0]
    model_class = getattr(transformers, name, None) if name else None
    return (model_class or transformers.AutoModel).from_pretrained(model_path, dtype=torch.float32)


def prune_base(settings: BasePruneSettings, out: str | Path, data_config=None, overwrite: bool = False
               ) -> dict[str, Any]:
    """Prune ``settings.model`` (module doc) and save it to ``out``; returns the record written beside it.

    ``data_config``: a ``RunConfig`` naming the task data whose training split calibrates a score that
    needs it (its batch size, seed and maximum length apply); None for ``--score weight``.
    """
    from ..sparsity.export import save_pretrained
    from .pipeline import load_task_data, load_tokenizer
    from .support import calibration_batches

    out = check_out(out, overwrite)
    if settings.needs_calibration and data_config is None:
        raise ValueError(f"--score {settings.score} reads calibration batches: name the task data (--task, "
                         "--data-dir, or --train-file with its columns)")
    tokenizer = load_tokenizer(settings.model)
    model = load_as_saved(settings.model).eval()
    batches = None
    if settings.needs_calibration:
        data = load_task_data(data_config)
        batches = calibration_batches(data, tokenizer, data_config, settings.calibration_batches, cycle=False)
    masks = unstructured_masks(model, settings.sparsity, score=settings.score, scope=settings.scope,
                               pattern=settings.pattern, batches=batches)
    apply_masks_(model, masks)
    report = sparsity_report(model, settings.pattern)
    record = {"settings": settings.to_dict(), "calibration": None if batches is None else {
        "task": data_config.task or data_config.train_file, "batches": len(batches), "batch_size": data_config.batch_size,
        "seed": data_config.seed}, "sparsity": report["overall"], "sparsity_per_matrix": report["per_matrix"],
        "pattern": report.get("pattern")}
    info = save_pretrained(model, out, tokenizer=tokenizer,
                           extra_files={RECORD: json.dumps(record, indent=2, sort_keys=True) + "\n"})
    if not info["stock"]:  # pragma: no cover - zeros alone never change what a stock config describes
        raise RuntimeError(f"the pruned model is not a stock checkpoint: {info['stock_problem']}")
    return record
