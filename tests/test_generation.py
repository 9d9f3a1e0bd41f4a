"""Text generation: E2E data, target-only loss, batched decoding, dsee train/generate/eval on tiny decoders."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("accelerate")

from conftest import shared_data_dir, tiny_config  # noqa: E402
from dsee.cli import main  # noqa: E402
from dsee.train.data import DataError  # noqa: E402
from dsee.train.generate import generate_texts  # noqa: E402
from dsee.train.loop import causal_lm_loss, train  # noqa: E402
from dsee.train.run import RunConfig  # noqa: E402
from dsee.train.textgen import PROMPT_END, CausalCollator, TextPairs, encode_causal, load_e2e, load_pairs  # noqa: E402

DATA = shared_data_dir()
needs_data = pytest.mark.skipif(DATA is None, reason="the shared data (E2E, GPT-2 vocabulary) is not available")


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    if DATA is None:
        pytest.skip("the GPT-2 vocabulary comes from the shared data folder")
    import transformers as T

    tok = T.GPT2Tokenizer(vocab=str(DATA / "gpt2-bpe" / "encoder.json"), merges=str(DATA / "gpt2-bpe" / "vocab.bpe"))
    tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def decoder_dir(request, tmp_path_factory, gpt2_tokenizer):
    import transformers as T

    config = tiny_config(request.param)
    config.vocab_size = len(gpt2_tokenizer)
    config.eos_token_id = config.bos_token_id = config.pad_token_id = gpt2_tokenizer.eos_token_id
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    T.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    gpt2_tokenizer.save_pretrained(path)
    return str(path)


@needs_data
def test_e2e_splits_and_references():
    dev = load_e2e(DATA, "validation")
    assert len(dev) == 4672
    sources, refs = dev.grouped()
    assert len(sources) == 547 and sum(len(r) for r in refs) == 4672
    assert sources[0].startswith("name[")
    assert len(load_e2e(DATA / "e2e", "test").grouped()[0]) == 630
    sub = dev.first_items(5)
    assert sub.grouped()[0] == sources[:5] and len(sub) == sum(len(r) for r in refs[:5])


@pytest.mark.parametrize("content,match", [
    ("", "empty"),
    ("mr,ref\n", "no data lines"),
    ("mr,text\na,b\n", "column 'ref' not found"),
    ("mr,ref\na,b\nc,\n", "line 3: empty target"),
    ("mr,ref\na,b,c\n", "line 2"),
])
def test_bad_pair_files_name_file_and_line(tmp_path, content, match):
    path = tmp_path / "data.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        load_pairs(path, "mr", "ref")


def test_loss_is_on_target_tokens_only_and_matches_the_model(gpt2_tokenizer):
    import transformers as T

    pairs = TextPairs(["name[Aromi], food[Chinese]", "name[Blue Spice]"], ["Aromi serves Chinese food.", "Blue."], "x")
    encoded = encode_causal(pairs, gpt2_tokenizer, max_length=64)
    first = encoded.examples[0]
    prompt = gpt2_tokenizer("name[Aromi], food[Chinese]" + PROMPT_END, add_special_tokens=False)["input_ids"]
    assert first["input_ids"][: len(prompt)] == prompt
    assert first["labels"][: len(prompt)] == [-100] * len(prompt)
    assert first["labels"][len(prompt):] == first["input_ids"][len(prompt):]
    assert first["input_ids"][-1] == gpt2_tokenizer.eos_token_id
    batch = CausalCollator(gpt2_tokenizer.eos_token_id)(encoded.examples)
    config = tiny_config("gpt2")
    config.vocab_size = len(gpt2_tokenizer)
    torch.manual_seed(0)
    model = T.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        ours = causal_lm_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                              batch["labels"])
        theirs = model(**batch).loss  # transformers' own shifted loss, ignoring -100
    torch.testing.assert_close(ours, theirs)


def test_long_sources_are_truncated_with_a_count(gpt2_tokenizer):
    pairs = TextPairs(["word " * 100, "short"], ["a", "b"], "mine.csv")
    with pytest.warns(UserWarning, match="1 of 2 sources"):
        encoded = encode_causal(pairs, gpt2_tokenizer, max_length=32)
    assert encoded.truncated == 1 and all(len(e["input_ids"]) <= 32 for e in encoded.examples)


def test_batched_decoding_equals_one_at_a_time(decoder_dir, gpt2_tokenizer):
    import transformers as T

    model = T.AutoModelForCausalLM.from_pretrained(decoder_dir).eval()
    sources = ["name[Aromi]", "name[The Eagle], eatType[coffee shop], food[French]", "a b"]
    for beams in (1, 3):
        together = generate_texts(model, gpt2_tokenizer, sources, beams=beams, max_new_tokens=6, batch_size=3)
        alone = [generate_texts(model, gpt2_tokenizer, [s], beams=beams, max_new_tokens=6)[0] for s in sources]
        assert together == alone


@needs_data
def test_train_generate_eval_on_e2e(tmp_path, decoder_dir):
    pytest.importorskip("pycocoevalcap")
    run = tmp_path / "run"
    metrics = train(RunConfig(out=str(run), model=decoder_dir, task="e2e", data_dir=str(DATA), max_train_samples=48,
                              max_eval_samples=6, max_length=64, epochs=1, batch_size=16, lr=1e-2,
                              label_smoothing=0.1, adapter={"rank": 2, "num_sparse": 8}), show_progress=False)
    assert metrics["main_metric"] == "neg_loss" and metrics["steps"] == 3
    # sources over max_length / 2 = 32 tokens are cut: counted independently over the train and dev rows used
    from dsee.train.pipeline import load_tokenizer

    tok = load_tokenizer(decoder_dir)
    rows = load_e2e(DATA, "train").subsample(48, 42).sources + load_e2e(DATA, "validation").first_items(6).sources
    assert metrics["truncated_sources"] == sum(len(tok(s)["input_ids"]) > 32 for s in rows) > 0
    assert metrics["dev"]["validation"]["perplexity"] > 1
    # q and v of 2 layers, nothing else: r·(d_in + d_out) + N each; Llama's v is 48 -> 24 (2 key/value heads)
    d_v = 24 if "llama" in decoder_dir else 48
    assert metrics["trainable_parameters"] == 2 * ((2 * (48 + 48) + 8) + (2 * (48 + d_v) + 8))
    assert main(["generate", str(run), "--text", "name[Aromi], food[Chinese]", "--beams", "2",
                 "--max-new-tokens", "5", "--output", str(tmp_path / "out.txt")]) == 0
    assert len((tmp_path / "out.txt").read_text().splitlines()) == 1
    assert main(["eval", str(run), "--max-eval-samples", "4", "--beams", "2", "--max-new-tokens", "8"]) == 0
    scores = json.loads((run / "scores_validation.json").read_text())
    assert scores["items"] == 4 and set(scores["scores"]) == {"bleu", "nist", "meteor", "rouge_l", "cider"}
    assert len((run / "predictions_validation.txt").read_text().splitlines()) == 4


def test_generate_refuses_bad_input(tmp_path, tiny_model_dir, csv_data, capsys):
    run = tmp_path / "cls"
    train(RunConfig(out=str(run), model=tiny_model_dir, train_file=csv_data[0], validation_file=csv_data[1],
                    text_columns=["text"], label_column="label", max_length=16, epochs=1, batch_size=64),
          show_progress=False)
    assert main(["generate", str(run), "--text", "hello"]) == 2
    assert "not a text-generation run" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert main(["generate", str(run), "--input", str(empty)]) == 2
    assert "no non-empty line" in capsys.readouterr().err
    assert main(["generate", str(run)]) == 2
    assert "--input FILE" in capsys.readouterr().err


@needs_data
def test_decoder_runs_prune_structurally_and_export(tmp_path, decoder_dir):
    """Heads (GPT-2's fused c_attn; Llama's grouped-query attention) and FFN neurons of a generation run."""
    from dsee.sparsity.export import load_pretrained
    from dsee.train.pipeline import load_task_data, load_tokenizer, load_trained_model
    from dsee.train.run import load_run_config

    run = tmp_path / "run"
    train(RunConfig(out=str(run), model=decoder_dir, task="e2e", data_dir=str(DATA), max_train_samples=32,
                    max_eval_samples=4, max_length=48, epochs=1, batch_size=16, lr=1e-2,
                    adapter={"rank": 2, "num_sparse": 8}), show_progress=False)
    pruned = tmp_path / "pruned"
    assert main(["prune", str(run), "--out", str(pruned), "--heads", "0.5", "--ffn", "0.5", "--head-score",
                 "importance", "--ffn-score", "importance", "--importance-batches", "1", "--sparsity", "0.3",
                 "--retune-epochs", "1", "--no-progress"]) == 0
    metrics = json.loads((pruned / "metrics.json").read_text())
    assert metrics["pruning"]["heads_per_layer"] == [2, 2]
    assert metrics["pruning"]["sparsity"] == pytest.approx(0.3, abs=1e-4)  # round(0.3·n) of n entries
    config = load_run_config(pruned)
    tokenizer = load_tokenizer(decoder_dir)
    model = load_trained_model(pruned, config, load_task_data(config, with_train=False), tokenizer)
    sources = ["name[Aromi], food[Chinese]", "name[Zizzi]"]
    before = generate_texts(model, tokenizer, sources, beams=2, max_new_tokens=5)  # merges the adapters
    assert main(["export", str(pruned), "--out", str(tmp_path / "export")]) == 0
    after = generate_texts(load_pretrained(tmp_path / "export"), tokenizer, sources, beams=2, max_new_tokens=5)
    assert before == after
