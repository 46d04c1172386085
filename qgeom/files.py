"""Output locations, checked before any work (this module imports neither torch nor numpy, so the
command line can call it while ``--help`` stays light)."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def check_writable(path: str | os.PathLike, *, directory: bool = False) -> Path:
    """Raise ``OSError`` naming ``path`` unless an output can be written there.

    ``directory``: ``path`` is (or will be) a directory; else a file. The first existing
    ancestor must be a writable directory, and an existing ``path`` of the wrong kind is an
    error. Nothing is created: commands call this before any work, so an unwritable output
    fails in milliseconds instead of after training.
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
    return path
