"""Crash-safe writes: a file or a directory is either the old one or the new one, never half of one.

    atomic_write_text(path, text)          temp file beside, fsync, one rename, fsync the directory
    with atomic_file(path) as tmp: ...     the same for a file written by someone else (safetensors)
    with atomic_directory(path) as tmp: …  a whole directory replaced (adapter/, model/, checkpoint/)
    recover_directory(path)                finish or undo a directory swap a crash interrupted (writers)
    existing_directory(path)               the complete directory a reader reads, changing nothing

A directory cannot be replaced by one rename while the old one exists, so ``atomic_directory``
builds the new one as ``.<name>.new``, fsyncs it, marks it complete (``.complete``, written last),
then moves the old one to ``.<name>.old`` and the new one into place. A crash between those two
renames leaves no ``<name>`` for a moment; ``recover_directory`` rolls a complete new directory
forward, otherwise brings the old one back. Only writers recover (``atomic_directory`` does, first):
a reader cannot tell a crashed swap from one a live writer in another process is in the middle of,
and repairing that one would delete the writer's unfinished directory under it. A reader calls
``existing_directory``, which changes nothing and names the directory recovery would leave.

Permissions follow the user's umask, as ``open`` does (``tempfile`` would make files 0600).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

COMPLETE = ".complete"

# Tests set this to a function that is called with the name of each step of a directory swap
# ("written", "marked", "old-moved", "new-moved", "cleaned") to simulate a crash at that point.
crash_hook: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if crash_hook is not None:
        crash_hook(name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_directory(path: str | Path) -> None:
    """Make a rename or creation inside ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it is fsynced and renamed onto
    ``path`` (permissions from the umask). On failure it is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half-written."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def _sibling(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}")


def _sync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fsync_file(Path(dirpath) / name)
        fsync_directory(dirpath)


def recover_directory(path: str | Path) -> None:
    """Finish (or undo) a directory swap of ``atomic_directory`` that a crash interrupted."""
    path = Path(path)
    new, old = _sibling(path, "new"), _sibling(path, "old")
    if new.is_dir() and (new / COMPLETE).is_file():
        if path.is_dir():  # crashed before the old one moved: it is now the old one
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(new, path)
        fsync_directory(path.parent)
    elif new.exists():  # an unfinished new directory: it never counted
        shutil.rmtree(new)
    if not path.exists() and old.is_dir():
        os.replace(old, path)
        fsync_directory(path.parent)
    if path.is_dir() and old.exists():
        shutil.rmtree(old, ignore_errors=True)


def existing_directory(path: str | Path) -> Path | None:
    """The complete directory to read for ``path``, or None if there is none; changes nothing (module doc).

    What ``recover_directory`` would leave, without doing it: a new directory marked complete (the
    swap under way, or crashed, after that point), else ``path`` (whole: it only ever arrives by a
    rename of a finished one), else the old one (a crash between the two renames).
    """
    path = Path(path)
    new, old = _sibling(path, "new"), _sibling(path, "old")
    if new.is_dir() and (new / COMPLETE).is_file():
        return new
    if path.is_dir():
        return path
    return old if old.is_dir() else None


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty directory that replaces ``path`` whole when the block succeeds (module doc)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path)  # a previous crash's leftovers first
    new, old = _sibling(path, "new"), _sibling(path, "old")
    new.mkdir(mode=0o777)  # the umask applies, as for any directory the user creates
    try:
        yield new
        _sync_tree(new)
        _step("written")
        (new / COMPLETE).write_text("")
        fsync_file(new / COMPLETE)
        fsync_directory(new)
        _step("marked")
        if path.exists():
            os.replace(path, old)
        _step("old-moved")
        os.replace(new, path)
        fsync_directory(path.parent)
        _step("new-moved")
        (path / COMPLETE).unlink(missing_ok=True)  # in place, the marker has done its work
        shutil.rmtree(old, ignore_errors=True)
        _step("cleaned")
    except BaseException:
        if new.exists() and not (new / COMPLETE).is_file():
            shutil.rmtree(new, ignore_errors=True)
        raise
