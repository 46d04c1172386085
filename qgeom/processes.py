"""Worker processes that end with their parent and leave Ctrl-C to it.

This module imports neither torch nor numpy: a spawned worker unpickles :func:`start_worker`
(and so imports this module) before anything else, so it asks to die with its parent within
milliseconds of starting — before the seconds it spends importing torch for its real work. A
parent killed with SIGKILL (the OOM killer, a scheduler) runs no clean-up, so only the kernel can
end its workers then (``prctl(PR_SET_PDEATHSIG)`` on Linux; elsewhere a thread that watches the
parent). The workers ignore SIGINT: a terminal's Ctrl-C reaches the whole process group, and the
parent alone reports it, once, and stops them.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time


def die_with_parent(parent: int) -> None:
    """Make this (child) process end when its parent ``parent`` does, even when the parent is
    killed with SIGKILL: Linux delivers SIGKILL to it (``prctl(PR_SET_PDEATHSIG)``); elsewhere a
    daemon thread checks the parent ten times a second."""
    import ctypes  # lazy: only worker processes call this

    try:
        if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) == 0:  # 1: PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the parent died before the request was made
                os._exit(1)
            return
    except (OSError, AttributeError):  # not Linux: no prctl
        pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="qgeom-parent-watch").start()


def worker_initargs(initializer, initargs: tuple = ()) -> tuple:
    """The ``initargs`` of :func:`start_worker` for a pool whose workers then run
    ``initializer(*initargs)``: pickled here, so a worker unpickles them (importing what they
    need) only after :func:`die_with_parent`."""
    return os.getpid(), pickle.dumps((initializer, initargs))


def start_worker(parent: int, payload: bytes) -> None:
    """A pool worker's initializer: ignore SIGINT, die with the parent, then run the real one."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if hasattr(signal, "pthread_sigmask"):  # spawned with SIGINT blocked (the parent's mask): a pending one is dropped
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    die_with_parent(parent)
    initializer, initargs = pickle.loads(payload)
    if initializer is not None:
        initializer(*initargs)
