"""Training curves: a CSV beside each stage's artifact, and TensorBoard / W&B when asked for.

A GPU-day run must be watchable while it runs: :class:`CurveLog` appends a row per logged
step (``step, loss, lr`` or ``step, val_top1``) to ``<artifact>.curve.csv`` and flushes it, so
``tail -f`` or pandas sees it at once. A stage that is re-run (after a kill) starts its curve
afresh. ``trackers`` adds ``tensorboard`` (``torch.utils.tensorboard``; needs the
``tensorboard`` package) and/or ``wandb`` (needs ``wandb`` and a login); both are optional
extras (``pip install qgeom[tracking]``), checked before any work by :func:`check_trackers`.
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Sequence
from pathlib import Path

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb"}
COLUMNS = ["step", "loss", "lr", "val_top1"]


def check_trackers(trackers: Sequence[str]) -> None:
    """Refuse unknown trackers and trackers whose package is not installed."""
    for t in trackers:
        if t not in TRACKERS:
            raise ValueError(f"trackers: unknown tracker {t!r}; known: {', '.join(TRACKERS)} (CSV is always written)")
        if importlib.util.find_spec(TRACKERS[t]) is None:
            raise ValueError(f"trackers: {t} is not installed (pip install {TRACKERS[t]}, or qgeom[tracking])")


class CurveLog:
    """Callable sink for :func:`qgeom.train.fit`'s ``log``; use as a context manager."""

    def __init__(self, path: str | Path, trackers: Sequence[str] = (), run: str = "", **meta) -> None:
        check_trackers(trackers)
        self.path, self.trackers, self.run, self.meta = Path(path), tuple(trackers), run, meta
        self._file = self._writer = self._tb = self._wandb = None

    def __enter__(self) -> "CurveLog":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS)
        self._writer.writeheader()
        if "tensorboard" in self.trackers:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.path.parent / "tensorboard" / self.path.stem))
        if "wandb" in self.trackers:
            import wandb

            self._wandb = wandb.init(project="qgeom", name=self.run, config=self.meta, reinit=True)
        return self

    def __call__(self, row: dict) -> None:
        self._writer.writerow({k: row.get(k, "") for k in COLUMNS})
        self._file.flush()
        values = {k: v for k, v in row.items() if k != "step"}
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, row["step"])
        if self._wandb is not None:
            self._wandb.log(values, step=row["step"])

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
