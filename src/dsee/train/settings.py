"""The settings of a training run (``RunConfig``) and of a pruning run (``PruneSettings``).

Each field is defined once here, with its default and its help: the ``dsee train`` and ``dsee
prune`` options are generated from these fields (``dsee.options``), and a run directory's
``run_config.json`` is ``RunConfig.to_dict()``. Validation happens on construction, so a bad
setting fails before anything is loaded or written.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Any

from ..adapters.config import DSEEConfig, dataclass_from_dict
from ..options import option
from ..sparsity.importance import HEAD_SCORES, NEURON_SCORES
from ..sparsity.unstructured import SCOPES, SCORES, default_scope, parse_pattern
from .tasks import get_task

METHODS = ("dsee", "lora", "full")
# adapters: the rate the GLUE search chose on 4 of 5 tasks (all-MiniLM-L6-v2, r = 16, α = 32, batch 32);
# 5e-4 left small data at the majority class after 3 epochs
DEFAULT_LR = {"dsee": 1.5e-3, "lora": 1.5e-3, "full": 5e-5}
PRECISIONS = ("auto", "no", "bf16", "fp16")
SELECTIONS = ("best", "last")

BASE_DTYPES = ("fp32", "bf16")

DATA, GENERATION, OPTIMISATION, SUPPORT = ("data", "text generation (decoder models)", "optimisation",
                                           "data-aware support (--sparse-method gradient)")
SCALE = "memory and many processes (torchrun / accelerate launch)"
# how a run is executed rather than what it trains: ``dsee prune`` takes them from its own flags
SCALE_FIELDS = ("fsdp", "gradient_checkpointing", "base_dtype")


@dataclass
class RunConfig:
    """Every setting of a training run (what ``dsee train`` resolves its flags into)."""

    out: str = option(help="the run directory")
    model: str | None = option(None, "Hub id or local path (default: the embedded all-MiniLM-L6-v2)")
    # data: a GLUE task, or the user's own files
    task: str | None = option(None, "GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli) or e2e",
                              group=DATA)
    data_dir: str | None = option(None, "folder with the task folders (default for GLUE: the Hub)", group=DATA)
    train_file: str | None = option(None, "your own data: CSV, TSV or JSON Lines", group=DATA)
    validation_file: str | None = option(None, "the dev set of your own data (selects the kept checkpoint)",
                                         group=DATA)
    text_columns: list[str] | None = option(None, "text column(s) of your files: a or a,b", group=DATA)
    label_column: str | None = option(None, "label column of your files", group=DATA)
    task_type: str | None = option(None, "default: detected from the labels", group=DATA,
                                   choices=("classification", "regression"))
    # text generation (decoder models): the E2E task, or the user's files with these two columns
    source_column: str | None = option(None, "the input text column", group=GENERATION)
    target_column: str | None = option(None, "the output text column (rows with one source: its references)",
                                       group=GENERATION)
    label_smoothing: float = option(0.0, "cross-entropy label smoothing on the target tokens", group=GENERATION)
    max_source_tokens: int | None = option(None, "longer sources are cut (default max-length / 2)", group=GENERATION,
                                           positive=True)
    max_length: int = option(128, "longest tokenised example (longer ones are truncated)", group=DATA, positive=True)
    max_train_samples: int | None = option(None, "a seeded subset of the training data", group=DATA, positive=True)
    max_eval_samples: int | None = option(None, "the first examples of the dev set", group=DATA, positive=True)
    # method
    method: str = option("dsee", "dsee, lora (DSEE with N = 0) or full fine-tuning", choices=METHODS)
    adapter: dict[str, Any] | None = None  # DSEEConfig.to_dict() for dsee and lora (from the adapter options)
    # a data-aware support (sparse_method "gradient"): batches of the statistic, LoRA warm-up steps
    support_batches: int = option(8, "K training batches whose squared gradients w.r.t. W0 rank the positions",
                                  group=SUPPORT, positive=True)
    support_warmup_steps: int = option(0, "W steps of LoRA-only training first; the gradients are then taken at "
                                       "W0 + B·A and the warmed-up LoRA is discarded", group=SUPPORT)
    # optimisation (AdamW, linear schedule)
    lr: float | None = option(None, "learning rate (default 1.5e-3 for dsee and lora, 5e-5 for full)",
                              group=OPTIMISATION, positive=True)
    sparse_lr_ratio: float = option(1.0, "learning rate of the sparse values S as a multiple of --lr (as LoRA+ "
                                    "gives B its own rate); 1: the same rate", group=OPTIMISATION, positive=True)
    epochs: float = option(3.0, "passes over the training data", group=OPTIMISATION)
    batch_size: int = option(32, "examples per batch and process", group=OPTIMISATION, positive=True)
    eval_batch_size: int = option(64, "examples per evaluation batch", group=OPTIMISATION, positive=True)
    grad_accum: int = option(1, "micro-batches per optimizer step", group=OPTIMISATION, positive=True)
    warmup_ratio: float = option(0.0, "share of the steps with a rising learning rate", group=OPTIMISATION)
    weight_decay: float = option(0.0, "AdamW weight decay", group=OPTIMISATION)
    max_grad_norm: float | None = option(1.0, "gradient clipping norm (0: none)", group=OPTIMISATION)
    seed: int = option(42, "seeds the data order, the head and the adapter's A and random support",
                       group=OPTIMISATION)
    eval_steps: int = option(0, "evaluate and checkpoint every K optimizer steps (0: only per epoch)",
                             group=OPTIMISATION)
    select: str = option("best", "the evaluated model a run keeps: best (by the dev metric) or last (no "
                         "selection on the dev set)", group=OPTIMISATION, choices=SELECTIONS)
    eval_per_epoch: bool = option(True, "do not evaluate at the end of every epoch", group=OPTIMISATION,
                                  negative_flag="--no-eval-per-epoch")
    mixed_precision: str = option("auto", "auto: bf16 on a GPU that has it, none on CPU", group=OPTIMISATION,
                                  choices=PRECISIONS)
    # memory and many processes (train/sharding.py, adapters/precision.py)
    fsdp: bool = option(False, "shard the parameters, gradients and optimizer state over the processes (FSDP2: "
                        "each transformer block, then the rest); launch with torchrun; one process: no effect",
                        group=SCALE)
    gradient_checkpointing: bool = option(False, "keep only each block's input and recompute its activations in "
                                          "the backward pass (less memory, about a third more compute)", group=SCALE)
    base_dtype: str = option("fp32", "storage dtype of the frozen weights: bf16 halves them (and the activations "
                             "between blocks); adapters, task head and optimizer stay fp32", group=SCALE,
                             choices=BASE_DTYPES)
    # a pruned run (``dsee prune``): PruneSettings.to_dict(); the model is the source run's, pruned
    prune: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self._check_data()
        self._check_numbers()
        if self.method not in METHODS:
            raise self._bad("method", f"choose one of {', '.join(METHODS)}")
        if self.mixed_precision not in PRECISIONS:
            raise self._bad("mixed_precision", f"choose one of {', '.join(PRECISIONS)}")
        if self.select not in SELECTIONS:
            raise self._bad("select", f"choose one of {', '.join(SELECTIONS)}")
        if self.sparse_lr_ratio != 1.0 and self.method != "dsee":
            raise self._bad("sparse_lr_ratio", f"--method {self.method} trains no sparse values S")
        if self.eval_steps == 0 and not self.eval_per_epoch:
            raise ValueError("no evaluation at all: set --eval-steps K or keep per-epoch evaluation")
        if self.prune is not None:
            self.prune = PruneSettings.from_dict(self.prune).to_dict()
        self._check_scale()
        if self.method == "full":
            self.adapter = None
        else:
            config = DSEEConfig.from_dict(self.adapter or {})
            if self.method == "lora":
                config = dataclasses.replace(config, num_sparse=0, sparse_density=None)
            self.adapter = config.to_dict()

    def _bad(self, name: str, why: str) -> ValueError:
        return ValueError(f"{name}={getattr(self, name)!r}: {why}")

    def _check_data(self) -> None:
        if (self.task is None) == (self.train_file is None):
            raise ValueError("give either a GLUE task (--task) or your own data (--train-file), not both or neither")
        if self.train_file is not None:
            if self.validation_file is None:
                raise ValueError("--train-file needs --validation-file (the dev set used for model selection)")
            if (self.source_column is None) != (self.target_column is None):
                raise ValueError("text generation needs both --source-column and --target-column")
            if self.source_column is None and (not self.text_columns or not self.label_column):
                raise ValueError("--train-file needs --text-columns and --label-column (classification, "
                                 "regression) or --source-column and --target-column (generation)")
        if self.task_type not in (None, "classification", "regression"):
            raise self._bad("task_type", "choose classification or regression")

    def _check_numbers(self) -> None:
        for name in ("lr", "epochs", "label_smoothing", "warmup_ratio", "weight_decay", "max_grad_norm",
                     "sparse_lr_ratio"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not math.isfinite(value)):
                raise self._bad(name, "must be a finite number")
        if self.sparse_lr_ratio <= 0:
            raise self._bad("sparse_lr_ratio", "must be > 0")
        for name in ("batch_size", "eval_batch_size", "grad_accum", "max_length", "support_batches"):
            if getattr(self, name) < 1:
                raise self._bad(name, "must be >= 1")
        for name in ("max_train_samples", "max_eval_samples", "max_source_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise self._bad(name, "must be >= 1")
        if not 0 <= self.label_smoothing < 1:
            raise self._bad("label_smoothing", "must be in [0, 1)")
        if self.epochs < 0 or (self.epochs == 0 and self.prune is None):
            raise self._bad("epochs", "must be > 0 (0 only for a pruned run: evaluate without re-tuning)")
        if self.lr is not None and self.lr <= 0:
            raise self._bad("lr", "must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise self._bad("warmup_ratio", "must be in [0, 1)")
        if self.weight_decay < 0:
            raise self._bad("weight_decay", "must be >= 0")
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            raise self._bad("max_grad_norm", "must be >= 0 (0: no clipping)")
        if self.eval_steps < 0:
            raise self._bad("eval_steps", "must be >= 0")
        if self.support_warmup_steps < 0:
            raise self._bad("support_warmup_steps", "must be >= 0")

    def _check_scale(self) -> None:
        if self.base_dtype not in BASE_DTYPES:
            raise self._bad("base_dtype", f"choose one of {', '.join(BASE_DTYPES)}")
        if self.base_dtype != "fp32" and self.method == "full":
            raise ValueError(f"--base-dtype {self.base_dtype} stores the frozen weights in lower precision; full "
                             "fine-tuning trains every weight and freezes none: use --method dsee or lora")
        if self.fsdp and self.mixed_precision == "fp16":
            raise ValueError("--fsdp with --mixed-precision fp16: fp16 needs a gradient scaler, which the sharded "
                             "loop does not set up; use bf16 or no")
        if self.prune is not None and self.prune.get("distill"):
            if self.fsdp:
                raise ValueError("--fsdp with --distill: the teacher would be a whole, unsharded copy of the model on "
                                 "every process, which is what --fsdp avoids; re-tune without --fsdp (several "
                                 "processes without it distil: each runs the teacher on its own batches)")
            if self.epochs == 0:
                raise ValueError("--distill teaches the re-tuning, and --retune-epochs 0 re-tunes nothing")
            if self.is_generation:
                raise ValueError("--distill distils the outputs of a classifier or a regressor; text generation "
                                 "(decoder) runs are not supported")
        if self.fsdp and self.prune is not None and self.prune.get("schedule") == "gradual":
            raise ValueError("--fsdp with --schedule gradual: gradual pruning ranks the full weights every few "
                             "steps, which --fsdp keeps sharded; prune one-shot, or re-tune without --fsdp")

    @property
    def is_generation(self) -> bool:
        return self.task == "e2e" or self.source_column is not None

    def check_settings_apply(self) -> None:
        """Refuse a setting this run would record but never use (a new run's settings; a saved run loads as it is).

        A GLUE or E2E task brings its own files, columns and task type; the text-generation settings apply to
        generation only, the classification ones not to it.
        """
        unused: list[str] = []
        if self.task is not None:
            task_type = "generation" if self.task == "e2e" else get_task(self.task).task_type
            unused += [f"{_flag(name)} is read with --train-file only: {self.task} brings its own files and columns"
                       for name in ("validation_file", "text_columns", "label_column", "source_column",
                                    "target_column") if getattr(self, name) is not None]
            if self.task_type is not None and self.task_type != task_type:
                unused.append(f"--task-type {self.task_type}: {self.task} is a {task_type} task")
        elif self.data_dir is not None:
            unused.append("--data-dir is where a --task's files are read: your own files are --train-file and "
                          "--validation-file")
        if self.is_generation:
            unused += [f"{_flag(name)} is for classification and regression, not text generation"
                       for name in ("text_columns", "label_column", "task_type")
                       if getattr(self, name) is not None and self.task is None]
        else:
            if self.label_smoothing:
                unused.append("--label-smoothing applies to the target tokens of text generation (--task e2e or "
                              "--source-column/--target-column), not to this classification or regression run")
            if self.max_source_tokens is not None:
                unused.append("--max-source-tokens applies to text generation only")
        if unused:
            raise ValueError("; ".join(unused) + ": drop what does not apply")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    def dsee_config(self) -> DSEEConfig | None:
        return None if self.adapter is None else DSEEConfig.from_dict(self.adapter)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        return dataclass_from_dict(cls, data)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


UNSTRUCTURED = "unstructured (masks on the blocks' linear weights)"
STRUCTURED = "structured (attention heads and FFN neurons, removed physically)"
DISTILLATION = "distillation (the unpruned source run teaches the re-tuned model)"
SCHEDULES = ("oneshot", "gradual")


@dataclass
class PruneSettings:
    """What ``dsee prune`` does to the source run's kept model before re-tuning (paper §3.2)."""

    source: str = option(help="the trained run directory", flag="run")
    sparsity: float | None = option(None, "fraction of zeros in the blocks' linear weights, in [0, 1)",
                                    group=UNSTRUCTURED)
    scope: str | None = option(None, "rank all matrices together (global), each alone (layer) or each output row "
                               "alone (row); default: row for --score wanda (Wanda's grouping), global otherwise",
                               group=UNSTRUCTURED, choices=SCOPES)
    score: str = option("weight", "what ranks the weights", group=UNSTRUCTURED, choices=SCORES.names)
    adapted_sparsity: float | None = option(None, "upstream: the ratio for query/value (ranked by |ΔW|); "
                                            "default --sparsity", group=UNSTRUCTURED)
    pattern: str | None = option(None, "N:M semi-structured sparsity, e.g. 2:4: at most N of every M consecutive "
                                 "input weights kept (instead of --sparsity)", group=UNSTRUCTURED)
    schedule: str = option("oneshot", "oneshot: prune, then re-tune; gradual: the sparsity rises on a cubic "
                           "schedule during re-tuning (Zhu & Gupta 2017)", group=UNSTRUCTURED, choices=SCHEDULES)
    gradual_fraction: float = option(0.6, "gradual: the share of the re-tuning steps over which the sparsity "
                                     "rises to its target (then the masks are frozen)", group=UNSTRUCTURED)
    prune_every: int = option(10, "gradual: recompute the masks every k optimizer steps", group=UNSTRUCTURED,
                              positive=True)
    calibration_batches: int = option(8, "training batches a calibration score reads (wanda)", group=UNSTRUCTURED,
                                      positive=True)
    heads: float | None = option(None, "fraction of attention heads to remove", group=STRUCTURED)
    ffn: float | None = option(None, "fraction of FFN neurons to remove", group=STRUCTURED)
    head_score: str = option("delta", "what ranks the heads", group=STRUCTURED, choices=HEAD_SCORES.names)
    ffn_score: str = option("magnitude", "what ranks the FFN neurons", group=STRUCTURED, choices=NEURON_SCORES.names)
    per_layer: bool = option(True, "one ranking over all layers instead of the same fraction per layer",
                             group=STRUCTURED, negative_flag="--global")
    importance_batches: int = option(8, "training batches for the importance scores", group=STRUCTURED,
                                     positive=True)
    uniform: bool = option(False, "the same number of heads (from every key/value group) and FFN neurons removed "
                           "in every layer, checked to fit a stock config: `dsee export` then writes a checkpoint "
                           "transformers loads (heads: Llama, Mistral, Qwen2/3, Gemma/Gemma2; FFN neurons: "
                           "every architecture)", group=STRUCTURED)
    retune_only: bool = option(False, "remove nothing: re-tune the source run's model as a pruned run would be "
                               "re-tuned (the control that shows what the extra training alone does)")
    # knowledge distillation during re-tuning (train/distill.py; Hinton et al. 2015, CoFi: Xia et al. 2022)
    distill: bool = option(False, "re-tune against the unpruned source run as teacher: its outputs join the loss "
                           "(loss = (1 - w)·task loss + w·distillation loss)", group=DISTILLATION)
    distill_weight: float = option(0.5, "w, the distillation loss's share of the loss, in [0, 1]", group=DISTILLATION)
    distill_temperature: float = option(2.0, "T: classification distils T²·KL(softmax(teacher/T) ‖ softmax(student/T)); "
                                        "regression the squared difference of the outputs", group=DISTILLATION,
                                        positive=True)
    distill_hidden: bool = option(False, "also match every layer's hidden states to the teacher's (mean squared "
                                  "difference over the real tokens, layer i to layer i, as CoFi does)",
                                  group=DISTILLATION)
    distill_hidden_weight: float = option(1.0, "the weight of the hidden-state term, added to the loss",
                                          group=DISTILLATION)

    def __post_init__(self) -> None:
        for name in ("sparsity", "adapted_sparsity", "heads", "ffn"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:  # NaN fails this too
                raise ValueError(f"--{name.replace('_', '-')} {value}: must be in [0, 1)")
        asked = [f"--{name}" for name in ("sparsity", "pattern", "heads", "ffn") if getattr(self, name) is not None]
        if self.retune_only and asked:
            raise ValueError(f"--retune-only removes nothing: it does not go with {', '.join(asked)}")
        if not asked and not self.retune_only:
            raise ValueError("nothing to prune: give --sparsity or --pattern (unstructured) and/or --heads / --ffn "
                             "(structured), or --retune-only (the control: re-tuning alone)")
        self._check_distillation()
        if self.score not in SCORES:
            raise ValueError(f"--score {self.score}: choose one of {', '.join(SCORES)}")
        if self.scope is None:  # recorded resolved, so a resumed or reported run says what it did
            self.scope = default_scope(self.score)
        if self.scope not in SCOPES:
            raise ValueError(f"--scope {self.scope}: choose one of {', '.join(SCOPES)}")
        if self.adapted_sparsity is not None and not SCORES.get(self.score).options.get("own_ratio"):
            raise ValueError("--adapted-sparsity is the upstream recipe's ratio for query/value: use --score upstream")
        self._check_pattern_and_schedule()
        if self.head_score not in HEAD_SCORES:
            raise ValueError(f"--head-score {self.head_score}: choose one of {', '.join(HEAD_SCORES)}")
        if self.ffn_score not in NEURON_SCORES:
            raise ValueError(f"--ffn-score {self.ffn_score}: choose one of {', '.join(NEURON_SCORES)}")
        if self.uniform and not self.structured:
            raise ValueError("--uniform is about removing heads and FFN neurons: give --heads and/or --ffn")
        if self.uniform and not self.per_layer:
            raise ValueError("--uniform removes the same number from every layer: it does not go with --global")
        for name in ("importance_batches", "calibration_batches", "prune_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")

    def _check_distillation(self) -> None:
        # the options that only apply with --distill (all named distill_*), at their defaults
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name.startswith("distill_")}
        if not self.distill:
            changed = [f"--{name.replace('_', '-')}" for name, default in defaults.items()
                       if getattr(self, name) != default]
            if changed:
                raise ValueError(f"{', '.join(changed)} only apply with --distill")
            return
        if not 0 <= self.distill_weight <= 1:  # NaN fails this too
            raise ValueError(f"--distill-weight {self.distill_weight}: must be in [0, 1]")
        if not (math.isfinite(self.distill_temperature) and self.distill_temperature > 0):
            raise ValueError(f"--distill-temperature {self.distill_temperature}: must be > 0")
        if not (math.isfinite(self.distill_hidden_weight) and self.distill_hidden_weight >= 0):
            raise ValueError(f"--distill-hidden-weight {self.distill_hidden_weight}: must be >= 0")
        if self.distill_hidden_weight != defaults["distill_hidden_weight"] and not self.distill_hidden:
            raise ValueError("--distill-hidden-weight only applies with --distill-hidden")

    def _check_pattern_and_schedule(self) -> None:
        if self.pattern is not None:
            n, m = parse_pattern(self.pattern)
            self.pattern = f"{n}:{m}"
            if self.sparsity is not None and abs(self.sparsity - (1 - n / m)) > 1e-9:
                raise ValueError(f"--pattern {self.pattern} removes {1 - n / m:.0%} of the weights; --sparsity "
                                 f"{self.sparsity} says otherwise (give one of them)")
            if SCORES.get(self.score).options.get("own_ratio"):
                raise ValueError(f"--pattern sets one ratio for every matrix: it does not go with --score {self.score}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule {self.schedule}: choose one of {', '.join(SCHEDULES)}")
        if self.schedule == "gradual":
            if not self.sparsity:
                raise ValueError("--schedule gradual raises an unstructured --sparsity during re-tuning: give one "
                                 "(an N:M pattern is applied one-shot)")
            if self.pattern is not None:
                raise ValueError("--schedule gradual with --pattern: an N:M pattern is applied one-shot")
            if not 0 < self.gradual_fraction <= 1:
                raise ValueError(f"--gradual-fraction {self.gradual_fraction}: must be in (0, 1]")

    @property
    def unstructured(self) -> bool:
        return bool(self.sparsity) or self.pattern is not None

    @property
    def structured(self) -> bool:
        return bool(self.heads) or bool(self.ffn)

    @property
    def needs_batches(self) -> bool:
        """True when a chosen head or neuron score reads training batches."""
        return bool(self.heads and HEAD_SCORES.get(self.head_score).needs_data) or bool(
            self.ffn and NEURON_SCORES.get(self.ffn_score).needs_data)

    @property
    def needs_calibration(self) -> bool:
        """True when the unstructured score reads calibration batches (wanda)."""
        return self.unstructured and SCORES.get(self.score).needs_data

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneSettings:
        return dataclass_from_dict(cls, data)
