"""Wall time per stage of a run: exclusive (a stage that calls another is paused meanwhile).

``StageTimer`` accumulates seconds and counts per stage name; stages nest (computing a QAT
checkpoint may first compute the fine-tuned one it starts from), and each second is charged to
the innermost running stage only, so the table's seconds add up to the wall time spent in stages.
Only *computed* artifacts are timed (a stage skipped because its artifact exists costs its load).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class StageTimer:
    """Exclusive wall-clock seconds and call counts per stage name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self._stack: list[list] = []  # [name, start of the current uninterrupted slice]

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        now = time.perf_counter()
        if self._stack:  # pause the enclosing stage
            outer = self._stack[-1]
            self.seconds[outer[0]] = self.seconds.get(outer[0], 0.0) + now - outer[1]
        self._stack.append([name, now])
        try:
            yield
        finally:
            end = time.perf_counter()
            _, start = self._stack.pop()
            self.seconds[name] = self.seconds.get(name, 0.0) + end - start
            self.counts[name] = self.counts.get(name, 0) + 1
            if self._stack:  # resume the enclosing stage
                self._stack[-1][1] = end

    def state(self) -> dict:
        """Seconds and counts (picklable: a worker process returns it to the parent)."""
        return {"seconds": dict(self.seconds), "counts": dict(self.counts)}

    def merge(self, state: dict) -> None:
        """Add another timer's :meth:`state` (a worker's) to this one."""
        for k, v in state["seconds"].items():
            self.seconds[k] = self.seconds.get(k, 0.0) + v
        for k, v in state["counts"].items():
            self.counts[k] = self.counts.get(k, 0) + v

    def table(self) -> list[dict]:
        """One record per stage, in first-seen order: stage, n (calls), seconds, per_call."""
        return [dict(stage=k, n=self.counts.get(k, 0), seconds=round(s, 2),
                     per_call=round(s / max(self.counts.get(k, 1), 1), 2)) for k, s in self.seconds.items()]
