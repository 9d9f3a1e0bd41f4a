"""Crash-safe writes: a file or a directory is either the old one or the new one, never half of one.

    atomic_write_text(path, text)          temp file beside, fsync, one rename, fsync the directory
    with atomic_file(path) as tmp: ...     the same for a file written by someone else (safetensors)
    with atomic_directory(path) as tmp: …  a whole directory replaced (adapter/, model/, checkpoint/)
    recover_directory(path)                finish or undo a directory swap a crash interrupted (writers)
    existing_directory(path)               the complete directory a reader reads, changing nothing
    read_directory(path, read)             read(that directory), again if a live writer's swap moved it away

dsee never writes through a symbolic link: the directories a swap uses (``<name>``, ``.<name>.new``,
``.<name>.old``) are refused when they are links (``refuse_link``: dsee makes none, so a link there
was put by someone else, and following it would write or delete outside the run), and temporary
files are created exclusively, never opened through a link planted under their name. A write the
file system refuses (full, read-only, over a file-size limit) is reported as ``CannotWrite``, whose
message names the path and what to do (``cannot_write``).

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

import errno
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

COMPLETE = ".complete"
T = TypeVar("T")

# what to do when the file system refuses a write, by errno
WRITE_FAILURES = {
    errno.ENOSPC: "the device is full: free some space",
    errno.EDQUOT: "the disk quota is used up: free some space",
    errno.EFBIG: "a file-size limit (ulimit -f) or the file system's largest file: raise the limit",
    errno.EROFS: "the file system is read-only: write somewhere else",
    errno.EACCES: "no permission to write there: write somewhere else",
    errno.EPERM: "no permission to write there: write somewhere else",
}


class LinkRefused(ValueError):
    """A path dsee was about to write or replace is a symbolic link it did not make."""


class CannotWrite(OSError):
    """The file system refused a write; the message names the path and what to do."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def refuse_link(path: str | Path) -> None:
    """Raise ``LinkRefused`` if ``path`` is a symbolic link (module doc): it is never followed, moved or deleted."""
    path = Path(path)
    if path.is_symlink():
        raise LinkRefused(f"{path} is a symbolic link (to {os.readlink(path)}); dsee does not write through links "
                          f"it did not make: remove the link (rm {path}) and run the command again")


def cannot_write(err: OSError, path: str | Path | None = None) -> OSError:
    """``err`` as a ``CannotWrite`` naming ``path`` (or the error's own file) and the fix, when it is a write the
    file system refused (``WRITE_FAILURES``); otherwise ``err`` itself."""
    if isinstance(err, CannotWrite) or err.errno not in WRITE_FAILURES:
        return err
    where = path if path is not None else err.filename
    return CannotWrite(err.errno, f"cannot write {where}: {err.strerror or os.strerror(err.errno)} "
                                  f"({WRITE_FAILURES[err.errno]})")


def as_os_error(err: BaseException) -> OSError | None:
    """``err`` as an OSError: itself, or the I/O error a safetensors writer (Rust) reports only in its message
    ("... (os error 27)"); None for anything else."""
    if isinstance(err, OSError):
        return err
    if type(err).__name__ == "SafetensorError":
        found = re.search(r"os error (\d+)", str(err))
        if found:
            code = int(found.group(1))
            return OSError(code, os.strerror(code))
    return None

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


def _create_exclusively(path: Path) -> None:
    """Create ``path`` as a new empty file of this process: whatever had its name (a crashed write's leftover,
    or a link planted under a name one can guess) is removed, never followed."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600))


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it is fsynced and renamed onto
    ``path`` (permissions from the umask). On failure it is removed and ``path`` is untouched.

    The temporary file exists (empty, made by this process) when the block starts, so a writer that opens
    it opens that file, not a link someone put in its place. A link at ``path`` itself is replaced by the
    rename, never written through."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        _create_exclusively(tmp)
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
    """Finish (or undo) a directory swap of ``atomic_directory`` that a crash interrupted.

    Refuses (``LinkRefused``) when ``path`` or one of its swap siblings is a symbolic link."""
    path = Path(path)
    new, old = _sibling(path, "new"), _sibling(path, "old")
    for each in (path, new, old):
        refuse_link(each)
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


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def read_directory(path: str | Path, read: Callable[[Path], T], attempts: int = 20) -> T | None:
    """``read(directory)`` on the complete directory for ``path`` (``existing_directory``); None if there is none.

    A reader racing a live writer can be handed ``.<name>.new`` just before the writer renames it into
    place, or ``<name>`` just before it moves to ``.<name>.old`` and is deleted: its files then vanish in
    the middle of the read. A directory is whole wherever it sits, so when the read fails because the
    directory it started on has moved (it is gone from that path, or another directory is there now), the
    read starts again on the directory that is there now. A failure in a directory that stayed is raised.
    """
    for attempt in range(attempts):
        directory = existing_directory(path)
        if directory is None:
            return None
        identity = _identity(directory)
        try:
            return read(directory)
        except OSError:
            moved = identity is None or _identity(directory) != identity
            if not moved or attempt == attempts - 1:
                raise
            time.sleep(0.001 * (attempt + 1))
    raise AssertionError("unreachable")  # pragma: no cover


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty directory that replaces ``path`` whole when the block succeeds (module doc)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path)  # a previous crash's leftovers first (links refused there)
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
