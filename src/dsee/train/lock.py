"""One writer per run directory: an exclusive lock held while ``dsee train`` / ``prune`` runs.

    with RunLock(run):          # RUN/.lock, created if needed; a second holder fails at once
        ...

On POSIX the lock is ``fcntl.flock`` on ``RUN/.lock``: the kernel releases it when the process
ends, however it ends (kill -9 included), so a lock is never stale. Elsewhere the file is created
exclusively (``O_EXCL``) and holds the owner's PID; a file whose PID no longer runs is taken over.
The file itself stays (removing it could let two processes lock two different files).

The lock file is opened without following a link (``O_NOFOLLOW``) and must be a plain file with one
name: a link or a hard link planted as ``RUN/.lock`` would otherwise have the lock truncate and write
a file outside the run. Any write the file system refuses (read-only, full...) is a message.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..files import cannot_write, refuse_link

LOCK = ".lock"

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class RunBusyError(RuntimeError):
    """Another process is writing this run directory."""


def _pid_alive(pid: int) -> bool:  # pragma: no cover - the non-POSIX path
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock on a run directory (module doc). ``created``: whether this lock made RUN."""

    def __init__(self, run: str | Path) -> None:
        self.run = Path(run)
        self.path = self.run / LOCK
        self.fd: int | None = None
        self.created = False  # this lock made RUN
        self.created_file = False  # this lock made RUN/.lock

    def _holder(self) -> str:
        try:
            text = self.path.read_text().strip()
        except OSError:
            return "another process"
        return f"process {text}" if text else "another process"

    def acquire(self) -> "RunLock":
        if self.run.exists() and not self.run.is_dir():
            raise NotADirectoryError(f"{self.run} is a file, not a run directory")
        refuse_link(self.path)
        self.created = not self.run.exists()
        self.created_file = not self.path.exists()
        try:
            self.run.mkdir(parents=True, exist_ok=True)
            if fcntl is not None:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
                self._check_plain_file()
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(self.fd)
                    self.fd = None
                    raise RunBusyError(f"{self.run} is in use by {self._holder()} (a dsee train or prune "
                                       "writing it): wait for it to end, or choose another --out") from None
                os.ftruncate(self.fd, 0)
                os.write(self.fd, f"{os.getpid()}\n".encode())
            else:  # pragma: no cover - Windows
                self._acquire_exclusive()
        except PermissionError as err:
            self._close()
            raise PermissionError(f"cannot write to {self.run}: {err.strerror or err}") from None
        except OSError as err:  # read-only file system, disk full, a link where the lock goes (ELOOP)...
            self._close()
            if err.errno == getattr(os, "ELOOP", None):
                refuse_link(self.path)  # raced in between: still named as a link
            raise cannot_write(err, self.run) from None
        return self

    def _check_plain_file(self) -> None:
        """The open lock file must be a regular file with no other name (a hard link would write elsewhere)."""
        info = os.fstat(self.fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            self._close()
            kind = "a hard link to another file" if stat.S_ISREG(info.st_mode) else "not a regular file"
            raise ValueError(f"{self.path} is {kind}; dsee does not write through files it did not make: remove it "
                             f"(rm {self.path}) and run the command again")

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _acquire_exclusive(self) -> None:  # pragma: no cover - Windows
        while True:
            try:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
                os.write(self.fd, f"{os.getpid()}\n".encode())
                return
            except FileExistsError:
                text = self._holder()
                pid = int(text.split()[-1]) if text.split()[-1].isdigit() else None
                if pid is not None and _pid_alive(pid):
                    raise RunBusyError(f"{self.run} is in use by {text}: wait for it to end, or choose another "
                                       "--out") from None
                self.path.unlink(missing_ok=True)  # stale: its owner is gone

    def release(self) -> None:
        if self.fd is None:
            return
        if fcntl is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None
        if fcntl is None:  # pragma: no cover - Windows: the file is the lock
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
