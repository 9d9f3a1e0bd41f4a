"""Runs survive crashes and each other: one writer per run, crash-safe swaps, umask permissions."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dsee.files import atomic_directory, existing_directory, recover_directory

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
STEPS = ("written", "marked", "old-moved", "new-moved", "cleaned")


def _write_version(path: Path, version: str, crash_at: str | None) -> int:
    """In a child process: replace ``path`` by a directory holding ``version``, dying (os._exit) at ``crash_at``."""
    code = textwrap.dedent(f"""
        import os
        from pathlib import Path
        import dsee.files as files
        crash_at = {crash_at!r}
        files.crash_hook = lambda step: os._exit(9) if step == crash_at else None
        with files.atomic_directory(Path({str(path)!r})) as tmp:
            for i in range(3):
                (tmp / f"part{{i}}.txt").write_text({version!r} * 1000)
    """)
    return subprocess.run([sys.executable, "-c", code], env=ENV).returncode


@pytest.mark.parametrize("crash_at", STEPS)
def test_a_writer_killed_at_any_step_leaves_a_complete_directory(tmp_path, crash_at):
    target = tmp_path / "adapter"
    assert _write_version(target, "old", None) == 0
    assert _write_version(target, "new", crash_at) == 9
    left = sorted(p.name for p in tmp_path.iterdir())
    expected = "old" if crash_at == "written" else "new"  # once marked complete, the new one wins
    found = existing_directory(target)  # what any reader calls: it reads, never repairs
    assert found is not None and _texts(found) == {expected * 1000}
    assert sorted(p.name for p in tmp_path.iterdir()) == left
    recover_directory(target)  # what the next writer does first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no leftovers
    assert _texts(target) == {expected * 1000}


def _texts(directory: Path) -> set[str]:
    texts = {p.read_text() for p in directory.glob("part*.txt")}
    assert len(list(directory.glob("part*.txt"))) == 3 and len(texts) == 1  # whole, never a mix
    return texts


def test_a_first_write_killed_before_it_completed_leaves_nothing(tmp_path):
    target = tmp_path / "adapter"
    assert _write_version(target, "new", "written") == 9
    assert existing_directory(target) is None
    recover_directory(target)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("step", STEPS)
def test_a_reader_during_a_live_swap_leaves_the_writer_alone(tmp_path, step, monkeypatch):
    """A reader in another process (``dsee train --resume`` checking a run before it takes the lock,
    ``dsee evaluate`` on a run in training) can come at any step of a swap: it must read a whole
    directory and must not touch the writer's unfinished one (once it was deleted under the writer)."""
    import dsee.files as files

    target = tmp_path / "adapter"
    assert _write_version(target, "old", None) == 0
    seen = []

    def read_at(name):
        if name == step:
            found = existing_directory(target)
            seen.append(_texts(found))

    monkeypatch.setattr(files, "crash_hook", read_at)
    with atomic_directory(target) as tmp:
        for i in range(3):
            (tmp / f"part{i}.txt").write_text("new" * 1000)
    assert seen and seen[0] in ({"old" * 1000}, {"new" * 1000})
    assert _texts(target) == {"new" * 1000}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


@pytest.mark.parametrize("crash_at", STEPS)
def test_a_checkpoint_save_killed_at_any_step_still_resumes(tmp_path, crash_at):
    """The training checkpoint is such a directory: after the crash it reads back, old or new."""
    code = textwrap.dedent(f"""
        import os, torch
        from pathlib import Path
        import dsee.files as files
        from dsee.train.checkpoint import Progress, save_checkpoint
        run = Path({str(tmp_path)!r})
        model = torch.nn.Linear(3, 2)
        opt = torch.optim.AdamW(model.parameters())
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        model(torch.ones(1, 3)).sum().backward(); opt.step()
        save_checkpoint(run, model, opt, sched, Progress(step=1))
        files.crash_hook = lambda step: os._exit(9) if step == {crash_at!r} else None
        opt.step()
        save_checkpoint(run, model, opt, sched, Progress(step=2))
    """)
    assert subprocess.run([sys.executable, "-c", code], env=ENV).returncode == 9
    from dsee.train.checkpoint import read_checkpoint

    _, state = read_checkpoint(tmp_path)
    assert state["progress"]["step"] == (1 if crash_at == "written" else 2)


@pytest.fixture()
def long_run_argv(tmp_path, tiny_model_dir, csv_data):
    pytest.importorskip("accelerate")

    def argv(out, *extra):
        return [sys.executable, "-m", "dsee", "train", "--out", str(out), "--model", tiny_model_dir, "--train-file",
                csv_data[0], "--validation-file", csv_data[1], "--text-columns", "text", "--label-column", "label",
                "--max-length", "32", "--epochs", "5000", "--rank", "2", "--num-sparse", "4", "--no-progress", *extra]

    return argv


def test_a_second_writer_is_refused_at_once(tmp_path, long_run_argv):
    run = tmp_path / "run"
    log = tmp_path / "first.log"  # a file, not a pipe: a pipe nobody reads would stall the first writer
    with log.open("w") as out:
        first = subprocess.Popen(long_run_argv(run), env=ENV, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        start = time.time()
        while not (run / "checkpoint").is_dir():  # it holds the lock, and --resume has something to find
            assert first.poll() is None, log.read_text()
            assert time.time() - start < 120
            time.sleep(0.05)
        for argv in (long_run_argv(run, "--overwrite"), [sys.executable, "-m", "dsee", "train", "--out", str(run),
                                                         "--resume"]):
            second = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=120)
            assert second.returncode == 2, second.stderr
            assert f"in use by process {first.pid}" in second.stderr
        assert first.poll() is None, log.read_text()  # the first writer runs on, undisturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the lock died with its owner (kill -9 included): it is free again, never stale
    from dsee.train.lock import RunLock

    RunLock(run).acquire().release()


def test_files_and_directories_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "d") as tmp:
            (tmp / "a.txt").write_text("x")
        from dsee.files import atomic_write_text

        atomic_write_text(tmp_path / "f.json", "{}")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d" / "a.txt").stat().st_mode) == 0o644
