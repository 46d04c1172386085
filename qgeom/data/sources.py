"""Task specifications: one string names a task wherever qgeom takes one (configs, ``--data``).

==============================  =============================================================
spec                            task
==============================  =============================================================
``shape``, ``count``, …         an offline procedural task (``qgeom tasks`` lists them), in memory
``imagefolder:NAME=DIR``        an ImageFolder tree at DIR, called NAME (``imagefolder:DIR``:
                                named after the folder), streamed
``CIFAR10``, ``EuroSAT``, …     one of the paper's 22 datasets (:data:`REAL_TASKS`) through its
                                torchvision class under the data root (RESISC45, TinyImageNet:
                                an ImageFolder at ``DATA_ROOT/NAME``), streamed
==============================  =============================================================
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qgeom.data.offline import TASKS, make_task
from qgeom.data.real import (REAL_TASKS, data_paths, default_transform, from_image_folder, from_torchvision,
                             verify_images)
from qgeom.data.splits import Split, Task


@dataclass(frozen=True)
class TaskSpec:
    """A parsed task specification: ``kind`` is offline, imagefolder or torchvision."""

    kind: str
    name: str
    path: str = ""

    @property
    def streamed(self) -> bool:
        return self.kind != "offline"


def parse_task(spec: str) -> TaskSpec:
    """Parse a task specification (see the module table); unknown names list what is known."""
    spec = str(spec).strip()
    if spec.startswith("imagefolder:"):
        rest = spec[len("imagefolder:"):]
        name, sep, path = rest.partition("=")
        if not sep:
            name, path = Path(rest).name, rest
        if not name or not path or "/" in name:
            raise ValueError(f"task {spec!r}: write imagefolder:NAME=DIR (NAME without '/')")
        return TaskSpec("imagefolder", name, path)
    if spec in TASKS:
        return TaskSpec("offline", spec)
    if spec in REAL_TASKS:
        return TaskSpec("torchvision", spec)
    raise ValueError(f"unknown task {spec!r}; known offline tasks: {', '.join(TASKS)}; real tasks (under data_root): "
                     f"{', '.join(REAL_TASKS)}; or imagefolder:NAME=DIR")


def task_names(specs) -> dict[str, str]:
    """Task name → specification, in the given order; two specifications with one name (what
    artifacts are filed under) are a ``ValueError`` naming both."""
    out: dict[str, str] = {}
    for spec in specs:
        name = parse_task(spec).name
        if name in out:
            raise ValueError(f"tasks: two tasks are named {name!r} ({out[name]!r}, {spec!r})")
        out[name] = spec
    return out


def check_task_name(spec: str) -> None:
    """Raise ``ValueError`` unless ``spec`` is a task specification a run accepts (syntax and name;
    whether a real dataset is on disk is checked when the run resolves its tasks, before any work)."""
    if not isinstance(spec, str):
        raise ValueError(f"a task is a string, got {spec!r}")
    parse_task(spec)


def task_name(spec: str) -> str:
    """The name a task's artifacts are filed under (NAME for ``imagefolder:NAME=DIR``)."""
    return parse_task(spec).name


def load_task(spec: str, seed: int = 0, root: str | os.PathLike | None = None, *,
              transform: Callable | None = None, num_workers: int = 0, download: bool = False,
              **sizes: int | None) -> Task:
    """The task a specification names.

    seed: the offline generator's seed, or the seed of carved splits and size caps for real data.
    root: the data root of the torchvision datasets. transform: the image transform of streamed
    tasks (:func:`qgeom.data.real.model_transform` for a model; default: a resize to 32×32).
    sizes: ``n_train``/``n_val``/``n_test`` (offline: how many to generate; real: caps, 0 or
    None for all).
    """
    ts = parse_task(spec)
    if ts.kind == "offline":
        return make_task(ts.name, seed, **{k: v for k, v in sizes.items() if v})
    if ts.kind == "imagefolder":
        return from_image_folder(ts.path, transform, name=ts.name, seed=seed, num_workers=num_workers, **sizes)
    if root is None:
        raise ValueError(f"{ts.name} is a real task: set the data root (config data_root=DIR, or --data-root DIR), "
                         "the folder torchvision reads it from; qgeom downloads nothing unless asked")
    return from_torchvision(ts.name, root, transform or default_transform(), seed=seed, num_workers=num_workers, download=download, **sizes)


def check_task(task: Task, images: bool = False) -> Task:
    """Refuse a task no classifier can be trained or measured on: fewer than 2 classes, an empty
    split; with ``images``, an image file that does not decode (:func:`~qgeom.data.real.verify_images`,
    a cheap pass over every file of a streamed ImageFolder task). Class sets are the same across
    splits by construction (:func:`~qgeom.data.real.from_image_folder` refuses folders that differ)."""
    if task.num_classes < 2:
        raise ValueError(f"task {task.name} has {task.num_classes} class{'es' if task.num_classes != 1 else ''} "
                         f"({', '.join(task.classes) or 'none'}): a classifier needs at least 2 (its Top-1 would "
                         "be 100 % by construction)")
    for split in ("train", "val", "test"):
        if len(getattr(task, split)) == 0:
            raise ValueError(f"task {task.name}: its {split} split is empty")
        if images and not isinstance(getattr(task, split), Split):
            verify_images(getattr(task, split))
    return task


def fingerprint(spec: str, root: str | os.PathLike | None = None) -> str | None:
    """A fingerprint of the files a streamed task reads: SHA-256 of their listing (relative names
    and sizes, sorted); ``None`` for an offline task (generated from code and a seed)."""
    ts = parse_task(spec)
    paths = [] if ts.kind == "offline" else [Path(ts.path)] if ts.kind == "imagefolder" else data_paths(ts.name, root)
    if not paths:
        return None
    h = hashlib.sha256()
    for base in paths:
        h.update(f"{base.name}:{'dir' if base.is_dir() else base.stat().st_size if base.is_file() else '-'}\n".encode())
        for folder, dirs, files in os.walk(base):
            dirs.sort()
            rel = Path(folder).relative_to(base)
            for name in sorted(files):
                h.update(f"{rel / name}:{os.stat(Path(folder) / name).st_size}\n".encode())
    return h.hexdigest()
