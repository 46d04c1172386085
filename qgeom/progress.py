"""Progress of long work, readable on a terminal and in a log: the one helper every command uses.

:func:`progress` wraps an iterable (or counts ``update`` calls) and reports on **stderr**:

* stderr is a terminal (or a notebook's output): a tqdm bar (redrawn in place with carriage
  returns; a widget in Jupyter);
* stderr is a file or a pipe (``qgeom run … 2>log``, a job's log): plain lines, never a carriage
  return — ``DESC: i/N UNIT (p %), t s`` at most once every ``interval`` seconds, and one final
  ``DESC: N/N UNIT, done in t s`` line — so a log shows where the work stands and what it took;
* ``enabled=False`` (``--quiet``): nothing.

:meth:`Progress.step` names the part of the work that starts (beside the bar; a plain line at
once in a log); :func:`stage` prints one such line without a count.
Both read ``sys.stderr`` when called, so a test runner's captured stderr is honoured.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm.auto import tqdm

#: Seconds between two plain lines of one progress (the last line is always written).
INTERVAL = 10.0


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: stderr) is an interactive terminal, or a Jupyter kernel's
    output (where tqdm draws a widget)."""
    stream = sys.stderr if stream is None else stream
    if "ipykernel" in sys.modules and type(stream).__module__.startswith("ipykernel"):
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or foreign stream
        return False


def stage(desc: str, enabled: bool = True) -> None:
    """One line on stderr naming a step of work about to start (``--quiet``: nothing)."""
    if enabled:
        print(f"{desc} …", file=sys.stderr, flush=True)


class Progress:
    """Counts steps of work towards ``total`` and reports them (see the module docstring).

    Iterate over it (when made with an iterable) or call :meth:`update`; :meth:`close` (or the
    end of the iteration, or of a ``with`` block) writes the final line."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", enabled: bool = True, leave: bool = True, interval: float = INTERVAL) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.enabled, self.interval, self.n = enabled, interval, 0
        self.stream = sys.stderr
        self.bar = None
        if enabled and is_terminal(self.stream):
            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True, file=self.stream)
        self.start = self.last = time.perf_counter()
        self.postfix: dict[str, Any] = {}
        self.closed = False

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this Progress counts update() calls: make it with an iterable to iterate over it")
        try:
            for item in self.iterable:
                yield item
                self.update()
        except BaseException:
            self.close(done=False)
            raise
        self.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind, *exc) -> None:
        self.close(done=kind is None)

    def _count(self) -> str:
        n = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        post = "".join(f", {k} {v}" for k, v in self.postfix.items())
        return f"{self.desc}: {n} {self.unit}{post}"

    def update(self, n: int = 1) -> None:
        """``n`` more steps done."""
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.perf_counter() - self.last >= self.interval:
            self.last = time.perf_counter()
            share = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
            print(f"{self._count()}{share}, {self.last - self.start:.1f} s", file=self.stream, flush=True)

    def step(self, name: str) -> None:
        """A named part of the work starts (``Lanczos``, ``Gram matrix``): shown beside the bar,
        or written at once as a plain line (one line per part in a log)."""
        if self.bar is not None:
            self.bar.set_postfix_str(name, refresh=True)
        elif self.enabled:
            n = f"{self.n}/{self.total}" if self.total else f"{self.n}"
            print(f"{self.desc}: {name} ({n} {self.unit} so far, {time.perf_counter() - self.start:.1f} s) …",
                  file=self.stream, flush=True)

    def write(self, msg: str) -> None:
        """A line about the work (``baselines_2bit: 0.3 s``): above the bar, or as a plain line."""
        if self.bar is not None:
            self.bar.write(msg, file=self.stream)
        elif self.enabled:
            print(msg, file=self.stream, flush=True)

    def set_postfix(self, **values: Any) -> None:
        """Values shown beside the count (a loss): on the bar, and in the next plain line."""
        self.postfix = values
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=False)

    def close(self, done: bool = True) -> None:
        """Finish: close the bar, or write the final plain line (once): ``done in t s``, or
        ``stopped after t s`` when the work ended by an exception (``done=False``)."""
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            end = "done in" if done else "stopped after"
            print(f"{self._count()}, {end} {time.perf_counter() - self.start:.1f} s", file=self.stream, flush=True)


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, leave: bool = True, interval: float = INTERVAL) -> Progress:
    """A :class:`Progress` over ``iterable`` (or of ``total`` steps counted by ``update``)."""
    return Progress(iterable, total=total, desc=desc, unit=unit, enabled=enabled, leave=leave, interval=interval)


__all__ = ["INTERVAL", "Progress", "is_terminal", "progress", "stage"]
