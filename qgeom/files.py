"""Output locations, checked before any work (this module imports neither torch nor numpy, so the
command line can call it while ``--help`` stays light)."""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def check_writable(path: str | os.PathLike, *, directory: bool = False) -> Path:
    """Raise ``OSError`` naming ``path`` unless an output can be written there.

    ``directory``: ``path`` is (or will be) a directory; else a file. The first existing
    ancestor must be a directory where a file can be created — tried, with a probe file removed at
    once, since permissions alone do not tell (root may write anywhere the mode bits say, but not
    into /proc or a read-only mount) — and an existing ``path`` of the wrong kind is an error.
    Commands call this before any work, so an unwritable output fails in milliseconds instead of
    after training.
    """
    path = Path(path)
    if path.exists():
        if directory and not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(path))
        if not directory and path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "Is a directory (expected a file)", str(path))
        target = path if directory else path.parent
    else:
        target = path.parent
        while not target.exists() and target != target.parent:
            target = target.parent
    if not target.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(target))
    if not os.access(target, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "Permission denied", str(target))
    try:
        fd, probe = tempfile.mkstemp(dir=target, prefix=".qgeom-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PermissionError(e.errno or errno.EACCES, f"Cannot create files here ({e.strerror or e})",
                              str(target)) from None
    return path


def check_not_input(out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None]) -> None:
    """Refuse an output path that is one of the command's inputs (``{option: path}``): the command
    would overwrite what it reads."""
    for option, path in inputs.items():
        if path is None or not Path(path).exists() or not Path(out).exists():
            continue
        if os.path.samefile(out, path):
            raise ValueError(f"--out {out} is the command's input ({option} {path}): it would be overwritten; "
                             "write the result elsewhere")


class LockedError(ValueError):
    """Another process holds the lock: it is writing the same run directory now."""


@contextmanager
def hold_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing) for the block: one writer
    per run directory. A second process is refused at once (:class:`LockedError`, naming ``what``
    and the holder). The lock is the kernel's (``flock``), so a killed holder releases it."""
    import fcntl  # lazy: POSIX only, and only where a run is written

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise LockedError(f"{what} is being written by another qgeom process ({holder}); wait for it to finish, "
                          f"or use another directory") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(fd)
