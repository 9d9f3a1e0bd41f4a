"""From a RunConfig to data, tokenizer and model: shared by ``dsee train`` and ``dsee eval``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..adapters.support import support_method
from ..adapters.inject import add_dsee
from ..adapters.io import load_adapter
from ..files import existing_directory, read_directory
from ..models import load_sequence_classifier, resolve_model
from .data import Collator, TextDataset, check_max_length, encode, load_glue, load_table
from .metrics import main_metric
from .run import ADAPTER_DIR, MODEL_DIR, RunConfig, RunLabels, load_run_config
from .tasks import get_task


@dataclass
class TaskData:
    """The splits of one run: train, and the evaluation splits by name (the first selects)."""

    train: TextDataset | None
    evals: dict[str, TextDataset]
    task_type: str  # classification | regression
    label_list: list[str] | None
    metric_kind: str  # GLUE task name, or "classification" / "regression" for user data
    truncated_sources: int = 0  # generation: sources cut to fit, over every split encoded so far

    @property
    def num_labels(self) -> int:
        return 1 if self.task_type == "regression" else len(self.label_list or [])

    @property
    def labels(self) -> RunLabels:
        return RunLabels(self.task_type, self.label_list)

    @property
    def main_metric(self) -> str:
        # generation selects by dev loss on the target tokens; "neg_loss" keeps "higher is better"
        return "neg_loss" if self.task_type == "generation" else main_metric(self.metric_kind)

    def encode(self, split, tokenizer, config: RunConfig) -> list[dict]:
        """Token ids of one split (``self.train`` or one of ``self.evals``), ready for ``collator``."""
        if self.task_type == "generation":
            from .textgen import encode_causal

            encoded = encode_causal(split, tokenizer, config.max_length, config.max_source_tokens)
            self.truncated_sources += encoded.truncated
            return encoded.examples
        return encode(split, tokenizer, config.max_length)

    def collator(self, tokenizer):
        if self.task_type == "generation":
            from .textgen import CausalCollator

            return CausalCollator(tokenizer.pad_token_id)
        return Collator(tokenizer, self.task_type)

    @property
    def selection_split(self) -> str:
        return next(iter(self.evals))

    def check_max_length(self, tokenizer, config: RunConfig) -> None:
        """Refuse a ``max_length`` the tokenizer cannot truncate these examples to (before anything is written)."""
        if self.task_type == "generation":
            from .textgen import check_causal_length

            check_causal_length(tokenizer, config.max_length)
            return
        split = self.train if self.train is not None else next(iter(self.evals.values()))
        check_max_length(tokenizer, config.max_length, pair=split.is_pair)


def load_task_data(config: RunConfig, with_train: bool = True) -> TaskData:
    """Read the run's data. Evaluation splits come first-selecting: MNLI matched, then mismatched."""
    if config.is_generation:
        return load_generation_data(config, with_train)
    if config.task is not None:
        task = get_task(config.task)
        splits = [task.selection_split] + [s for s in task.splits if s not in ("train", task.selection_split)]
        evals = {s: load_glue(task, config.data_dir, s, config.max_eval_samples, config.seed) for s in splits}
        train = load_glue(task, config.data_dir, "train", config.max_train_samples, config.seed) if with_train else None
        first = next(iter(evals.values()))
        label_list = None if task.is_regression else [str(x) for x in (first.label_list or task.label_names or [])]
        return TaskData(train, evals, task.task_type, label_list, task.name)
    columns = list(config.text_columns or [])
    train = load_table(config.train_file, columns, config.label_column, config.task_type,
                       max_samples=config.max_train_samples, seed=config.seed)
    dev = load_table(config.validation_file, columns, config.label_column, train.task_type,
                     label_list=train.label_list, max_samples=config.max_eval_samples, seed=config.seed)
    label_list = None if train.task_type == "regression" else [str(x) for x in train.label_list]
    return TaskData(train if with_train else None, {"validation": dev}, train.task_type, label_list, train.task_type)


def load_generation_data(config: RunConfig, with_train: bool = True) -> TaskData:
    """E2E or the user's source/target files; the dev set limited to its first max_eval_samples sources."""
    from .textgen import load_e2e, load_pairs

    if config.task == "e2e":
        if config.data_dir is None:
            raise ValueError("--task e2e needs --data-dir: the folder holding e2e/ (trainset.csv.gz, devset.csv)")
        train = load_e2e(config.data_dir, "train") if with_train else None
        dev = load_e2e(config.data_dir, "validation")
    else:
        train = load_pairs(config.train_file, config.source_column, config.target_column) if with_train else None
        dev = load_pairs(config.validation_file, config.source_column, config.target_column)
    if train is not None:
        train = train.subsample(config.max_train_samples, config.seed)
    return TaskData(train, {"validation": dev.first_items(config.max_eval_samples)}, "generation", None, "generation")


def load_tokenizer(model_path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 and Llama tokenizers have none
    return tokenizer


def check_vocabulary(model: nn.Module, tokenizer, model_path: str) -> None:
    """Refuse a model whose input embedding has fewer rows than its tokenizer has tokens: the ids it would be
    given beyond its table index nothing (an IndexError in the middle of training)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embeddings, "num_embeddings", None)
    if rows is not None and rows < len(tokenizer):
        raise ValueError(f"{model_path}: the model's vocabulary has {rows:,} rows but its tokenizer has {len(tokenizer):,} "
                         "tokens: they do not belong together; give a model and tokenizer from the same checkpoint")


def base_model(model_path: str, labels: RunLabels | TaskData, tokenizer=None) -> nn.Module:
    """The model for this task before any method is applied: a classifier for its labels, or a causal LM.

    ``labels``: the task type and label list (a run's ``labels.json``, or its ``TaskData``). With
    ``tokenizer``, the model's padding id is the tokenizer's: decoder classifiers (GPT-2, Llama)
    read the score at the last non-padding token.
    """
    if labels.task_type == "generation":
        from ..models import load_causal_lm

        model = load_causal_lm(model_path)
    else:
        model = load_sequence_classifier(model_path, num_labels=labels.num_labels, **classifier_settings(labels))
    if tokenizer is not None:
        check_vocabulary(model, tokenizer, model_path)
    return tokenizer_padding(model, tokenizer)


def classifier_settings(labels: RunLabels | TaskData) -> dict:
    """The config fields a classifier for ``labels`` is built with (besides ``num_labels``)."""
    settings = {"problem_type": "regression"} if labels.task_type == "regression" else {}
    if labels.label_list:
        settings["id2label"] = dict(enumerate(labels.label_list))
        settings["label2id"] = {label: i for i, label in enumerate(labels.label_list)}
    return settings


def tokenizer_padding(model: nn.Module, tokenizer) -> nn.Module:
    """The model's padding id is the tokenizer's (decoder classifiers read the score at the last non-padding token)."""
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def output_layer(model: nn.Module, num_labels: int) -> nn.Linear | None:
    """The layer that produces the logits: the last ``nn.Linear`` with ``num_labels`` outputs.

    ``classifier`` (BERT, DeBERTa), ``classifier.out_proj`` (RoBERTa, MPNet), ``score`` (GPT-2,
    Llama); None if the model has no such layer.
    """
    found = None
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.out_features == num_labels:
            found = module
    return found


def init_regression_head(model: nn.Module, train_labels: list[float]) -> bool:
    """Start a regression head at the mean training target: its output bias ← mean(labels).

    Why: a new head predicts ≈ 0 while GLUE STS-B targets average ≈ 2.7. With AdamW each
    parameter moves about one learning rate per step, so at adapter learning rates the bias needs
    thousands of steps to reach the mean, and until then the squared error is dominated by that
    offset rather than by the ranking of pairs (measured on all-MiniLM-L6-v2, LoRA r=16, 94 steps:
    dev Pearson/Spearman 0.04 with the default head, 0.59 with this one). Returns False, changing
    nothing, when the output layer has no bias (GPT-2's and Llama's ``score``).
    """
    layer = output_layer(model, 1)
    if layer is None or layer.bias is None or not train_labels:
        return False
    with torch.no_grad():
        layer.bias.fill_(sum(train_labels) / len(train_labels))
    return True


def build_model(config: RunConfig, data: TaskData, model_path: str | None = None, tokenizer=None) -> nn.Module:
    """The base classifier with the run's method applied (adapters added, or all trainable).

    A regression head starts at the mean training target (``init_regression_head``). A pruned
    run (``config.prune``) starts from its source run's kept model, pruned (``pruning.py``).
    """
    if config.prune is not None:
        return build_pruned_model(config, data, tokenizer)
    model = base_model(model_path or resolve_model(config.model), data, tokenizer)
    if data.task_type == "regression" and data.train is not None:
        init_regression_head(model, data.train.labels)
    dsee_config = config.dsee_config()
    if dsee_config is not None and dsee_config.has_sparse and support_method(dsee_config.sparse_method).needs_data:
        from .support import add_dsee_from_data

        add_dsee_from_data(model, dsee_config, data, tokenizer, config)
    elif dsee_config is not None:
        add_dsee(model, dsee_config)
    return model


BASE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def enable_gradient_checkpointing(model: nn.Module) -> nn.Module:
    """transformers' activation checkpointing of every block: each block keeps only its input and runs
    again in the backward pass (``torch.utils.checkpoint``, non-reentrant, which replays the random
    state, so dropout masks in the recomputation are those of the forward pass)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"--gradient-checkpointing: transformers' {type(model).__name__} does not support it")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the older name is deprecated
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # pragma: no cover - older transformers 5 releases
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


def apply_memory_settings(model: nn.Module, config: RunConfig) -> nn.Module:
    """``--base-dtype`` and ``--gradient-checkpointing`` on a built model (before ``--fsdp`` shards it)."""
    if config.base_dtype != "fp32":
        from ..adapters.precision import lower_frozen_precision_

        lower_frozen_precision_(model, BASE_DTYPES[config.base_dtype])
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def build_pruned_model(config: RunConfig, data: TaskData, tokenizer=None) -> nn.Module:
    """The source run's kept model with ``config.prune`` applied; adapters and head trainable."""
    from .pruning import PruneSettings, check_source, importance_batches, prune_model_

    settings = PruneSettings.from_dict(config.prune)
    source_config = check_source(settings.source)
    if source_config.task != config.task or source_config.train_file != config.train_file:
        raise ValueError(f"{settings.source} was trained on {source_config.task or source_config.train_file}, "
                         f"not on {config.task or config.train_file}")
    model = load_trained_model(settings.source, source_config, data, tokenizer)
    batches = importance_batches(data, tokenizer, config, settings.importance_batches) \
        if settings.needs_batches else None
    prune_model_(model, settings, batches, calibration_batches_of(settings, data, tokenizer, config))
    return model.train()


def calibration_batches_of(settings, data: TaskData, tokenizer, config: RunConfig) -> list[dict] | None:
    """What a calibration score (wanda) reads: the first ``calibration_batches`` of a seeded order."""
    if not settings.needs_calibration:
        return None
    from .support import calibration_batches

    return calibration_batches(data, tokenizer, config, settings.calibration_batches, cycle=False)


def load_trained_model(run: str | Path, config: RunConfig | None = None, labels: RunLabels | TaskData | None = None,
                       tokenizer=None) -> nn.Module:
    """The kept (best dev) model of a finished or interrupted run, from its directory alone.

    ``config`` (run_config.json), ``labels`` (labels.json) and ``tokenizer`` are read from the run
    when not given.
    """
    run = Path(run)
    config = config or load_run_config(run)
    name = MODEL_DIR if config.prune is not None or config.method == "full" else ADAPTER_DIR
    if existing_directory(run / name) is None:
        raise FileNotFoundError(f"{run}: no kept checkpoint yet ({name}/)")
    # read_directory: a whole directory, even if a crash or a live writer is mid-swap (files.read_directory)
    if config.prune is not None:
        from ..sparsity.export import load_pretrained

        return _as_trained(_read_kept(run / name, load_pretrained), config)
    labels = labels if labels is not None else RunLabels.load(run)
    if tokenizer is None:
        tokenizer = load_tokenizer(resolve_model(config.model))
    if config.method == "full":
        return _read_kept(run / name, lambda saved: base_model(str(saved), labels, tokenizer)).eval()
    model = base_model(resolve_model(config.model), labels, tokenizer)
    return _as_trained(_read_kept(run / name, lambda saved: load_adapter(model, saved)), config).eval()


def _read_kept(path: Path, read):
    found = read_directory(path, read)
    if found is None:
        raise FileNotFoundError(f"{path.parent}: no kept checkpoint ({path.name}/)")
    return found


def _as_trained(model: nn.Module, config: RunConfig) -> nn.Module:
    """The kept model with the frozen weights in the dtype it was trained with (``--base-dtype``), so
    that re-evaluating it gives the scores the run recorded."""
    if config.base_dtype != "fp32":
        from ..adapters.precision import lower_frozen_precision_

        lower_frozen_precision_(model, BASE_DTYPES[config.base_dtype])
    return model


def load_run(run: str | Path) -> tuple[RunConfig, nn.Module, object]:
    """(config, kept model, tokenizer) of a run, from its directory alone."""
    config = load_run_config(run)
    tokenizer = load_tokenizer(resolve_model(config.model))
    return config, load_trained_model(run, config, tokenizer=tokenizer), tokenizer


def model_figures(model: nn.Module, config: RunConfig, nonzero: int | None = None) -> dict[str, Any]:
    """FLOPs of one forward pass at ``max_length`` tokens, parameters, non-zeros; the pruning summary.
    ``nonzero``: the non-zeros of the blocks' linear weights when they were counted elsewhere."""
    from ..arch import block_spec
    from ..sparsity.flops import forward_flops, parameter_counts

    figures: dict[str, Any] = {}
    try:
        block_spec(model)
    except ValueError:  # a model type without a block layout: no FLOPs, the run still completes
        return figures
    figures["flops"] = forward_flops(model, seq_len=config.max_length, nonzero=nonzero).to_dict()
    figures["parameters"] = parameter_counts(model, nonzero)
    if config.prune is not None:
        from .pruning import PruneSettings, pruning_summary

        figures["pruning"] = pruning_summary(model, PruneSettings.from_dict(config.prune))
    return figures
