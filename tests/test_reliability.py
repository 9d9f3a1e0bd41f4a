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


# --- links: dsee never writes through a link it did not make -------------------------------------

def _copy_run(source, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".lock"))
    return target


@pytest.mark.parametrize("command", ["train --resume", "train --overwrite", "prune --out"])
@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_a_lock_file_planted_as_a_link_is_never_written_through(tmp_path, source_run, tiny_model_dir, csv_data,
                                                               capsys, command, link):
    """RUN/.lock as a link to a file elsewhere: the lock once opened it with O_CREAT, truncated the file it
    points to and wrote a PID into it."""
    from dsee.cli import main

    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    run = tmp_path / "run"
    if command == "prune --out":
        run.mkdir()
        argv = ["prune", str(source_run), "--out", str(run), "--sparsity", "0.3", "--retune-epochs", "0",
                "--no-progress"]
    else:
        _copy_run(source_run, run)
        argv = ["train", "--out", str(run), "--resume", "--no-progress"] if command == "train --resume" else [
            "train", "--out", str(run), "--overwrite", "--model", tiny_model_dir, "--train-file", csv_data[0],
            "--validation-file", csv_data[1], "--text-columns", "text", "--label-column", "label", "--epochs", "1",
            "--max-length", "16", "--no-progress"]
    (run / ".lock").symlink_to(victim) if link == "symbolic" else os.link(victim, run / ".lock")
    listing = sorted(p.name for p in run.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert ("is a symbolic link" if link == "symbolic" else "is a hard link to another file") in err, err
    assert "Traceback" not in err
    assert victim.read_text() == "keep me\n"
    assert sorted(p.name for p in run.iterdir()) == listing


def test_a_swap_directory_planted_as_a_link_is_refused(tmp_path, source_run, capsys):
    """An unfinished run whose .checkpoint.new is a link to a directory elsewhere: once an rmtree traceback (and
    a complete-looking one would have been read, then moved into the run)."""
    from dsee.cli import main

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".complete").write_text("")
    (outside / "mine.txt").write_text("keep me\n")
    run = _copy_run(source_run, tmp_path / "run")
    (run / ".checkpoint.new").symlink_to(outside, target_is_directory=True)
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert ".checkpoint.new is a symbolic link" in err and "rm " in err and "Traceback" not in err
    assert sorted(p.name for p in outside.iterdir()) == [".complete", "mine.txt"]
    assert (run / ".checkpoint.new").is_symlink()


def test_a_temporary_name_planted_as_a_link_is_not_written_through(tmp_path):
    """The temporary file of an atomic write has a name one can guess (pid): a link put there is replaced."""
    from dsee.files import atomic_write_text

    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    (tmp_path / f".out.json.{os.getpid()}.tmp").symlink_to(victim)
    atomic_write_text(tmp_path / "out.json", "{}")
    assert victim.read_text() == "keep me\n" and (tmp_path / "out.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "precious.txt"]


# --- who is a distributed worker -----------------------------------------------------------------

def test_a_stray_rank_is_refused_not_obeyed(tmp_path, tiny_model_dir, csv_data, monkeypatch, capsys):
    """RANK=1 outside a launcher once skipped the lock and the summary: two such runs wrote one directory."""
    from dsee.cli import main

    monkeypatch.setenv("RANK", "1")
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--model", tiny_model_dir, "--train-file", csv_data[0],
                 "--validation-file", csv_data[1], "--text-columns", "text", "--label-column", "label",
                 "--epochs", "1", "--max-length", "16", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "RANK=1 is set, but WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not" in err
    assert "unset RANK" in err and not run.exists()


def test_a_worker_is_known_by_the_launchers_whole_environment():
    from dsee.train.launch import Launch, LaunchError, is_main_process, launch_environment

    torchrun = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert launch_environment(torchrun) == Launch(rank=1, world_size=2, local_rank=1)
    assert not is_main_process(torchrun) and is_main_process({**torchrun, "RANK": "0", "LOCAL_RANK": "0"})
    assert launch_environment({}) is None and is_main_process({})
    assert launch_environment({"RANK": "0"}) is None  # rank 0 of one process is the one process
    assert launch_environment({**torchrun, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}) is None
    for partial in ({"RANK": "1"}, {k: v for k, v in torchrun.items() if k != "MASTER_PORT"},
                    {**torchrun, "RANK": "2"}, {"RANK": "one"}):
        with pytest.raises(LaunchError):
            launch_environment(partial)


# --- write failures are messages -----------------------------------------------------------------

def test_a_read_only_file_system_is_a_message(tmp_path, source_run, tiny_model_dir, csv_data, monkeypatch, capsys):
    """EROFS from the lock (a read-only mount): once a traceback, the lock catching only PermissionError."""
    import errno

    import dsee.train.lock as lock
    from dsee.cli import main

    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).endswith(".lock") and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(lock.os, "open", read_only)
    run = _copy_run(source_run, tmp_path / "run")
    new = ["train", "--out", str(tmp_path / "new"), "--model", tiny_model_dir, "--train-file", csv_data[0],
           "--validation-file", csv_data[1], "--text-columns", "text", "--label-column", "label", "--no-progress"]
    for argv in (["train", "--out", str(run), "--resume", "--no-progress"], new):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "Read-only file system (the file system is read-only: write somewhere else)" in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_read_only_file_system_after_the_lock_is_a_message(tmp_path, tiny_model_dir, csv_data, monkeypatch, capsys):
    """EROFS on the first file the run writes after taking its lock (run_config.json, through ``atomic_file``):
    one line, exit 2, as at the lock."""
    import errno

    import dsee.files as files
    from dsee.cli import main

    def read_only(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(files, "_create_exclusively", read_only)
    argv = ["train", "--out", str(tmp_path / "new"), "--model", tiny_model_dir, "--train-file", csv_data[0],
            "--validation-file", csv_data[1], "--text-columns", "text", "--label-column", "label", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Read-only file system (the file system is read-only: write somewhere else)" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "new" / "run_config.json").exists()


def _limited(argv: list[str], max_bytes: int) -> subprocess.CompletedProcess:
    """``argv`` (a dsee command) in a child whose files may not grow beyond ``max_bytes`` (``ulimit -f``)."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, resource.RLIM_INFINITY))

    env = {**ENV, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "dsee", *argv], env=env, capture_output=True, text=True,
                          preexec_fn=limit, timeout=600)


@pytest.mark.skipif(sys.platform == "win32", reason="ulimit -f is POSIX")
def test_a_file_size_limit_while_training_is_a_message_then_resume_works(tmp_path, tiny_model_dir, csv_data):
    """ulimit -f: once a traceback (File too large) writing the checkpoint, and then "nothing to resume"."""
    run = tmp_path / "run"
    argv = ["train", "--out", str(run), "--model", tiny_model_dir, "--train-file", csv_data[0], "--validation-file",
            csv_data[1], "--text-columns", "text", "--label-column", "label", "--epochs", "1", "--max-length", "16",
            "--rank", "2", "--num-sparse", "4", "--no-progress"]
    failed = _limited(argv, 8_000)  # run_config.json fits, the checkpoint's tensors do not
    assert failed.returncode == 2, failed.stderr
    line = failed.stderr.strip().splitlines()[-1]
    assert "Traceback" not in failed.stderr and line.startswith("dsee train: error: cannot write ")
    assert "File too large (a file-size limit (ulimit -f)" in line
    assert f"continue with `dsee train --out {run} --resume`" in line
    again = subprocess.run([sys.executable, "-m", "dsee", "train", "--out", str(run), "--resume", "--no-progress"],
                           env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert (run / "metrics.json").is_file()


@pytest.mark.skipif(sys.platform == "win32", reason="ulimit -f is POSIX")
def test_a_file_size_limit_while_exporting_is_a_message_and_keeps_the_old_export(tmp_path, source_run):
    from dsee.cli import main

    out = tmp_path / "export"
    assert main(["export", str(source_run), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    failed = _limited(["export", str(source_run), "--out", str(out), "--overwrite"], 1_000_000)
    assert failed.returncode == 2, failed.stderr
    line = failed.stderr.strip().splitlines()[-1]
    assert "Traceback" not in failed.stderr and "File too large (a file-size limit (ulimit -f)" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# --- a reader racing the writer --------------------------------------------------------------------

def test_a_reader_handed_a_directory_that_is_renamed_under_it_reads_the_new_place(tmp_path, source_run, monkeypatch):
    """load_trained_model during training once failed (1 read in 25,207): handed .adapter.new just before the
    writer renamed it into place. Here the writer's two renames happen between the lookup and the read."""
    import shutil

    import dsee.train.pipeline as pipeline

    run = _copy_run(source_run, tmp_path / "run")
    shutil.copytree(run / "adapter", run / ".adapter.new")  # a swap under way: the new one complete
    (run / ".adapter.new" / ".complete").write_text("")
    real = pipeline.load_adapter
    paths = []

    def racing(model, directory):
        paths.append(Path(directory).name)
        if len(paths) == 1:  # the writer moves on: old aside, new into place, old deleted
            os.replace(run / "adapter", run / ".adapter.old")
            os.replace(run / ".adapter.new", run / "adapter")
            shutil.rmtree(run / ".adapter.old")
        return real(model, directory)

    monkeypatch.setattr(pipeline, "load_adapter", racing)
    model = pipeline.load_trained_model(run)
    assert paths == [".adapter.new", "adapter"]
    assert model.dsee_state is not None
