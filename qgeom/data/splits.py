"""Splits, tasks and batching: one interface for images held in memory and images streamed from disk.

A split is either

* :class:`Split` — images ``x`` (N, 3, H, W) float32 and labels ``y`` (N,) int64 in memory: the
  offline procedural tasks (a few MB each), sliced directly; or
* :class:`StreamSplit` — a map-style dataset that decodes and transforms one image at a time, and
  the indices of it that form the split: real datasets (ImageNet, SUN397, ... at 224×224), read
  batch by batch through a :class:`~torch.utils.data.DataLoader`. At most one batch of decoded
  images is in flight per worker (``prefetch_factor=1``) plus the one being consumed; the split
  is never materialised.

Every consumer goes through the same three functions, so it does not care which:
:func:`batches` (in order, for evaluation), :class:`ShuffledBatches` (seeded epoch-wise shuffles,
for training) and :func:`probe_batches` (a fixed, seeded subset held in memory for curvature: it is
re-read by every Hessian-vector product, so decoding it once is the point).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset


@dataclass(frozen=True)
class Split:
    """One split held in memory: images ``x`` (N, 3, H, W) float32 and labels ``y`` (N,) int64."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: Tensor) -> "Split":
        return Split(self.x[idx], self.y[idx])


@dataclass(frozen=True)
class StreamSplit:
    """One split streamed from disk: ``dataset[indices[i]]`` is ``(image (3, H, W) float32, label)``.

    ``num_workers`` loader processes decode in parallel (0: in the calling process); batches are
    pinned for a fast copy when CUDA is present.
    """

    dataset: Dataset
    indices: Tensor = field(compare=False)  # (N,) int64 positions in ``dataset``
    num_workers: int = 0
    source: str = ""

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, idx: Tensor) -> "StreamSplit":
        return StreamSplit(self.dataset, self.indices[idx], self.num_workers, self.source)

    def loader(self, batch_size: int, order: Tensor | None = None) -> DataLoader:
        """A DataLoader over this split (in ``order``, positions within the split, when given)."""
        picks = self.indices if order is None else self.indices[order]
        extra = dict(prefetch_factor=1, persistent_workers=False) if self.num_workers > 0 else {}
        return DataLoader(Subset(self.dataset, picks.tolist()), batch_size=batch_size, shuffle=False,
                          num_workers=self.num_workers, pin_memory=torch.cuda.is_available(), **extra)


AnySplit = Union[Split, StreamSplit]


@dataclass(frozen=True)
class Task:
    """A classification task with train / val / test splits (in memory or streamed)."""

    name: str
    classes: tuple[str, ...]
    train: AnySplit
    val: AnySplit
    test: AnySplit
    description: str = ""
    seed: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def batches(split: AnySplit, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The split in order, in batches of ``batch_size`` (for evaluation): ``(x, y)`` on the CPU."""
    if isinstance(split, Split):
        for i in range(0, len(split), batch_size):
            yield split.x[i : i + batch_size], split.y[i : i + batch_size]
    else:
        for x, y in split.loader(batch_size):
            yield x, torch.as_tensor(y, dtype=torch.int64)


class ShuffledBatches(Sequence):
    """``steps`` training batches drawn by seeded epoch-wise shuffles of a split.

    The order is a function of ``seed`` and ``len(split)`` alone, the same for in-memory and
    streamed splits. Indexing builds one batch (decoding it in this process for a stream);
    iterating a streamed split goes through its DataLoader (workers, pinned memory).
    """

    def __init__(self, split: AnySplit, batch_size: int, steps: int, seed: int = 0) -> None:
        if len(split) == 0:
            raise ValueError("cannot draw training batches from an empty split")
        self.split, self.batch_size, self.steps = split, batch_size, steps
        g = torch.Generator().manual_seed(seed)
        n_epochs = -(-steps * batch_size // len(split)) + 1
        self._order = torch.cat([torch.randperm(len(split), generator=g) for _ in range(n_epochs)])

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if not 0 <= i < self.steps:
            raise IndexError(i)
        idx = self._order[i * self.batch_size : (i + 1) * self.batch_size]
        if isinstance(self.split, Split):
            return self.split.x[idx], self.split.y[idx]
        items = [self.split.dataset[int(j)] for j in self.split.indices[idx]]
        return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items], dtype=torch.int64)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if isinstance(self.split, Split):
            for i in range(self.steps):
                yield self[i]
            return
        order = self._order[: self.steps * self.batch_size]
        for x, y in self.split.loader(self.batch_size, order):
            yield x, torch.as_tensor(y, dtype=torch.int64)


def probe_indices(n_split: int, n: int, seed: int = 0) -> Tensor:
    """The ``min(n, n_split)`` positions of a seeded probe set (a prefix of one seeded permutation)."""
    return torch.randperm(n_split, generator=torch.Generator().manual_seed(seed))[: min(n, n_split)]


def probe_batches(split: AnySplit, n: int, batch_size: int = 64, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """A fixed probe set for curvature: ``n`` examples picked by ``seed``, in batches, in memory.

    Curvature products re-read the probe set every time, so it is decoded once and kept; it is
    capped at the split's size.
    """
    sub = split.subset(probe_indices(len(split), n, seed))
    return list(batches(sub, batch_size))
