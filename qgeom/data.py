"""Tasks: offline image-classification tasks that ship with qgeom, and adaptors for real data.

Procedural tasks are generated deterministically from ``(name, seed)`` with vectorised numpy
(10 k 32×32 RGB images in well under a second). They differ in what they ask — shape, stripe
orientation, counting, colour, texture frequency, position, size, mirror symmetry — while all
drawing coloured objects on noisy backgrounds, so they share low-level features the way real
vision tasks do. ``digits`` is a real dataset (scikit-learn's 8×8 handwritten digits, 1 797
images, upsampled to 32×32 with random shifts and colours).

Images are float32 tensors (N, 3, 32, 32), standardised to roughly zero mean, unit scale;
labels are int64 (N,).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

IMG = 32
Generator = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]

#: The 22 real tasks of the paper (arXiv 2604.03420), known to the real-data adaptor.
REAL_TASKS = (
    "Cars", "DTD", "EuroSAT", "GTSRB", "MNIST", "RESISC45", "SUN397", "SVHN", "CIFAR10",
    "CIFAR100", "STL10", "Food101", "Flowers102", "FER2013", "PCAM", "OxfordIIITPet",
    "RenderedSST2", "EMNIST", "FashionMNIST", "KMNIST", "TinyImageNet", "ImageNet",
)  # fmt: skip


@dataclass(frozen=True)
class Split:
    """One split of a task: images ``x`` (N, 3, H, W) float32 and labels ``y`` (N,) int64."""

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Task:
    """A classification task with train / val / test splits."""

    name: str
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split
    description: str = ""
    seed: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# --------------------------------------------------------------------------------------------
# drawing primitives (vectorised over the batch)
# --------------------------------------------------------------------------------------------

_yy, _xx = np.mgrid[0:IMG, 0:IMG].astype(np.float32) + 0.5


def _col(v: np.ndarray) -> np.ndarray:
    return v.reshape(-1, 1, 1).astype(np.float32)


def _colours(rng: np.random.Generator, n: int, lo: float = 0.45) -> np.ndarray:
    """Bright random RGB colours (n, 3)."""
    return rng.uniform(lo, 1.0, size=(n, 3)).astype(np.float32)


def _background(rng: np.random.Generator, n: int) -> np.ndarray:
    """Dark noisy backgrounds (n, 3, H, W)."""
    base = rng.uniform(0.0, 0.3, size=(n, 3, 1, 1)).astype(np.float32)
    return base + rng.normal(0, 0.06, size=(n, 3, IMG, IMG)).astype(np.float32)


def _paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Paint ``colour`` (n, 3) where ``mask`` (n, H, W) is set."""
    m = mask[:, None].astype(np.float32)
    return img * (1 - m) + colour[:, :, None, None] * m


def _shape_mask(kind: np.ndarray, cx, cy, r) -> np.ndarray:
    """Masks (n, H, W) of disks (0), squares (1), triangles (2) and crosses (3)."""
    dx, dy = _xx[None] - _col(cx), _yy[None] - _col(cy)
    r = _col(r)
    disk = dx**2 + dy**2 <= r**2
    square = (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
    tri = (dy <= 0.8 * r) & (dy >= -r + 2 * np.abs(dx))
    w = 0.35 * r
    cross = ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | ((np.abs(dy) <= w) & (np.abs(dx) <= r))
    k = kind.reshape(-1, 1, 1)
    return np.where(k == 0, disk, np.where(k == 1, square, np.where(k == 2, tri, cross)))


def _finish(img: np.ndarray) -> np.ndarray:
    return ((np.clip(img, 0, 1) - 0.4) / 0.3).astype(np.float32)


# --------------------------------------------------------------------------------------------
# task generators: (rng, n) -> (images (n, 3, 32, 32), labels (n,))
# --------------------------------------------------------------------------------------------


def _shape(rng, n):
    y = rng.integers(0, 4, n)
    r = rng.uniform(5, 9, n)
    cx, cy = rng.uniform(r + 1, IMG - r - 1), rng.uniform(r + 1, IMG - r - 1)
    img = _paint(_background(rng, n), _shape_mask(y, cx, cy, r), _colours(rng, n))
    return _finish(img), y


def _stripes(rng, n):
    y = rng.integers(0, 4, n)
    ang = y * np.pi / 4 + rng.normal(0, 0.08, n)
    freq = rng.uniform(0.25, 0.45, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    proj = _xx[None] * _col(np.cos(ang)) + _yy[None] * _col(np.sin(ang))
    wave = (np.sin(proj * _col(freq) + _col(phase)) > 0)
    img = _paint(_background(rng, n), wave, _colours(rng, n))
    return _finish(img), y


def _count(rng, n):
    y = rng.integers(0, 5, n)  # 1..5 blobs
    img = _background(rng, n)
    cells = np.argsort(rng.random((n, 9)), axis=1)  # 5 distinct cells of a 3×3 grid
    colour = _colours(rng, n)
    for slot in range(5):
        c = cells[:, slot]
        cx = (c % 3) * 10.67 + 5.33 + rng.uniform(-1.5, 1.5, n)
        cy = (c // 3) * 10.67 + 5.33 + rng.uniform(-1.5, 1.5, n)
        m = _shape_mask(np.zeros(n, int), cx, cy, rng.uniform(2.2, 3.4, n)) & (slot <= y)[:, None, None]
        img = _paint(img, m, colour)
    return _finish(img), y


_HUES = np.array([[1, 0.15, 0.15], [1, 0.85, 0.1], [0.15, 0.9, 0.2], [0.1, 0.9, 0.95], [0.2, 0.3, 1], [0.95, 0.2, 0.95]], np.float32)


def _hue(rng, n):
    y = rng.integers(0, 6, n)
    colour = np.clip(_HUES[y] * rng.uniform(0.7, 1.0, (n, 1)) + rng.normal(0, 0.06, (n, 3)), 0, 1).astype(np.float32)
    r = rng.uniform(5, 9, n)
    cx, cy = rng.uniform(r + 1, IMG - r - 1), rng.uniform(r + 1, IMG - r - 1)
    img = _paint(_background(rng, n), _shape_mask(rng.integers(0, 4, n), cx, cy, r), colour)
    return _finish(img), y


def _texture(rng, n):
    y = rng.integers(0, 4, n)
    freq = np.array([0.2, 0.45, 0.8, 1.4])[y] * rng.uniform(0.9, 1.1, n)
    ang = rng.uniform(0, np.pi, n)
    proj = _xx[None] * _col(np.cos(ang)) + _yy[None] * _col(np.sin(ang))
    wave = 0.5 + 0.5 * np.sin(proj * _col(freq) + _col(rng.uniform(0, 6.3, n)))
    colour = _colours(rng, n)
    img = _background(rng, n) * 0.5 + colour[:, :, None, None] * wave[:, None] * 0.8
    return _finish(img), y


def _position(rng, n):
    y = rng.integers(0, 4, n)  # quadrant: TL, TR, BL, BR
    r = rng.uniform(3, 6, n)
    cx = np.where(y % 2 == 0, rng.uniform(r + 1, 16 - 1), rng.uniform(16 + 1, IMG - r - 1))
    cy = np.where(y // 2 == 0, rng.uniform(r + 1, 16 - 1), rng.uniform(16 + 1, IMG - r - 1))
    img = _paint(_background(rng, n), _shape_mask(rng.integers(0, 4, n), cx, cy, r), _colours(rng, n))
    return _finish(img), y


def _size(rng, n):
    y = rng.integers(0, 3, n)
    r = np.array([3.0, 6.0, 10.0])[y] * rng.uniform(0.85, 1.15, n)
    cx, cy = rng.uniform(r + 0.5, IMG - r - 0.5), rng.uniform(r + 0.5, IMG - r - 0.5)
    img = _paint(_background(rng, n), _shape_mask(rng.integers(0, 4, n), cx, cy, r), _colours(rng, n))
    return _finish(img), y


def _mirror(rng, n):
    """Is the random 8×8 block pattern left-right symmetric (1) or not (0)?"""
    y = rng.integers(0, 2, n)
    left = rng.random((n, 8, 4)) < 0.5
    right = np.where(y[:, None, None] == 1, left[:, :, ::-1], rng.random((n, 8, 4)) < 0.5)
    grid = np.concatenate([left, right], axis=2).repeat(4, axis=1).repeat(4, axis=2)
    img = _paint(_background(rng, n), grid, _colours(rng, n))
    return _finish(img), y


_DIGITS: tuple[np.ndarray, np.ndarray] | None = None


def _digits(rng, n):
    global _DIGITS
    if _DIGITS is None:
        from sklearn.datasets import load_digits

        d = load_digits()
        _DIGITS = (d.images.astype(np.float32) / 16.0, d.target.astype(np.int64))
    images, targets = _DIGITS
    idx = rng.integers(0, len(targets), n)
    big = images[idx].repeat(3, axis=1).repeat(3, axis=2)  # 24×24
    canvas = np.zeros((n, IMG, IMG), np.float32)
    ox, oy = rng.integers(0, 9, n), rng.integers(0, 9, n)
    for dy in range(9):  # vectorised placement at random offsets
        for dx in range(9):
            sel = (oy == dy) & (ox == dx)
            canvas[sel, dy : dy + 24, dx : dx + 24] = big[sel]
    img = _background(rng, n) * (1 - canvas[:, None]) + _colours(rng, n)[:, :, None, None] * canvas[:, None]
    return _finish(img), targets[idx]


@dataclass(frozen=True)
class TaskSpec:
    """A registered procedural task."""

    generate: Generator
    classes: tuple[str, ...]
    description: str


TASKS: dict[str, TaskSpec] = {
    "shape": TaskSpec(_shape, ("disk", "square", "triangle", "cross"), "which shape is drawn"),
    "stripes": TaskSpec(_stripes, ("vertical", "diagonal /", "horizontal", "diagonal \\"), "orientation of a stripe pattern"),
    "count": TaskSpec(_count, ("1", "2", "3", "4", "5"), "how many blobs"),
    "hue": TaskSpec(_hue, ("red", "yellow", "green", "cyan", "blue", "magenta"), "colour of the object"),
    "texture": TaskSpec(_texture, ("coarse", "medium", "fine", "very fine"), "spatial frequency of a grating"),
    "position": TaskSpec(_position, ("top-left", "top-right", "bottom-left", "bottom-right"), "quadrant of the object"),
    "size": TaskSpec(_size, ("small", "medium", "large"), "size of the object"),
    "mirror": TaskSpec(_mirror, ("asymmetric", "symmetric"), "is the block pattern left-right symmetric"),
    "digits": TaskSpec(_digits, tuple(str(i) for i in range(10)), "scikit-learn handwritten digits (real data)"),
}


def _rng(name: str, seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(name.encode()), seed, zlib.crc32(split.encode())])


def _generate(name: str, rng: np.random.Generator, n: int) -> Split:
    x, y = TASKS[name].generate(rng, n)
    return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)))


def make_task(name: str, seed: int = 0, n_train: int = 4000, n_val: int = 500, n_test: int = 1000) -> Task:
    """Generate procedural task ``name`` deterministically from ``seed``.

    The three splits come from independent random streams keyed by (name, seed, split), so
    growing one split never changes another.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known offline tasks: {', '.join(TASKS)}; "
                         f"real tasks (need local files, see from_image_folder): {', '.join(REAL_TASKS)}")
    spec = TASKS[name]
    splits = {s: _generate(name, _rng(name, seed, s), n) for s, n in (("train", n_train), ("val", n_val), ("test", n_test))}
    return Task(name, spec.classes, splits["train"], splits["val"], splits["test"], spec.description, seed)


def pretext_task(names: Sequence[str], seed: int = 0, n_per_task: int = 4000) -> Task:
    """The union of ``names`` with a joint label space (class c of task i → offset_i + c).

    Generated from a seed stream of its own ("pretext"), so its images differ from those of the
    tasks later fine-tuned on.
    """
    xs, ys, classes, off = [], [], [], 0
    for name in names:
        t = make_task(name, seed=seed + 10_000, n_train=n_per_task, n_val=max(n_per_task // 10, 1), n_test=1)
        xs.append(t.train.x), ys.append(t.train.y + off)
        classes += [f"{name}:{c}" for c in t.classes]
        off += t.num_classes
    x, y = torch.cat(xs), torch.cat(ys)
    val = [make_task(n, seed=seed + 10_000, n_train=1, n_val=max(n_per_task // 10, 1), n_test=1).val for n in names]
    offs = np.cumsum([0] + [TASKS[n].classes.__len__() for n in names])[:-1]
    vx = torch.cat([v.x for v in val])
    vy = torch.cat([v.y + int(o) for v, o in zip(val, offs)])
    return Task("pretext:" + "+".join(names), tuple(classes), Split(x, y), Split(vx, vy), Split(vx, vy), "joint label space", seed)


# --------------------------------------------------------------------------------------------
# batching
# --------------------------------------------------------------------------------------------


class ShuffledBatches(Sequence):
    """``steps`` training batches drawn by seeded epoch-wise shuffles of a split (lazy)."""

    def __init__(self, split: Split, batch_size: int, steps: int, seed: int = 0) -> None:
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
        return self.split.x[idx], self.split.y[idx]


def batches(split: Split, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The split in order, in batches of ``batch_size`` (for evaluation)."""
    for i in range(0, len(split), batch_size):
        yield split.x[i : i + batch_size], split.y[i : i + batch_size]


def probe_batches(split: Split, n: int, batch_size: int = 64, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """A fixed probe set for curvature: ``n`` examples picked by ``seed``, in batches."""
    n = min(n, len(split))
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]
    sub = Split(split.x[idx], split.y[idx])
    return list(batches(sub, batch_size))


# --------------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------------


def from_image_folder(root: str | os.PathLike, img_size: int = IMG, name: str | None = None, seed: int = 0,
                      val_fraction: float = 0.1) -> Task:
    """A task from an ImageFolder tree: ``root/{train,val,test}/<class>/<image>``.

    ``val`` may be missing: it is then split off ``train`` (``val_fraction``, seeded). Images
    are resized to ``img_size`` and standardised like the procedural tasks. Nothing is
    downloaded: this is how the paper's real tasks (``REAL_TASKS``) enter qgeom.
    """
    from torchvision import datasets, transforms

    root = Path(root)
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise FileNotFoundError(f"{root} needs train/ and test/ subfolders of class folders")
    tf = transforms.Compose([transforms.Resize((img_size, img_size)), transforms.ToTensor(),
                             transforms.Normalize([0.4] * 3, [0.3] * 3)])

    def load(d: Path) -> tuple[Split, list[str]]:
        ds = datasets.ImageFolder(str(d), transform=tf)
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        return Split(x, torch.tensor(ds.targets, dtype=torch.int64)), ds.classes

    train, classes = load(root / "train")
    test, test_classes = load(root / "test")
    if test_classes != classes:
        raise ValueError(f"train and test classes differ in {root}: {classes} vs {test_classes}")
    if (root / "val").is_dir():
        val, val_classes = load(root / "val")
        if val_classes != classes:  # ImageFolder numbers classes by sorted folder names
            raise ValueError(f"train and val classes differ in {root}: {classes} vs {val_classes}")
    else:
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        k = max(1, int(len(train) * val_fraction))
        val = Split(train.x[perm[:k]], train.y[perm[:k]])
        train = Split(train.x[perm[k:]], train.y[perm[k:]])
    return Task(name or root.name, tuple(classes), train, val, test, f"ImageFolder {root}", seed)


def check_task_name(name: str) -> None:
    """Raise ``ValueError`` unless :func:`load_task` (as a run calls it) can resolve ``name``.

    The one place that says which task names a run accepts; config validation calls it before
    any work. Today: the offline tasks in ``TASKS`` (a real task needs a local root).
    """
    if isinstance(name, str) and name in TASKS:
        return
    if name in REAL_TASKS:
        raise ValueError(f"{name!r} is a real task and needs a local ImageFolder root; qgeom downloads nothing")
    raise ValueError(f"unknown task {name!r}; known offline tasks: {', '.join(TASKS)}")


def load_task(name: str, seed: int = 0, root: str | os.PathLike | None = None, **sizes: int) -> Task:
    """A procedural task by name, or a real task (one of ``REAL_TASKS``) from ``root``."""
    if name in TASKS:
        return make_task(name, seed, **sizes)
    if name in REAL_TASKS:
        if root is None:
            raise ValueError(f"{name} is a real task: pass root= an ImageFolder directory "
                             f"(root/train/<class>/..., root/test/<class>/...); qgeom downloads nothing")
        return from_image_folder(root, name=name, seed=seed)
    return make_task(name, seed)  # raises the error listing the known tasks
