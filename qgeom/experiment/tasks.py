"""The tasks of a run: names, specifications, and the data each stage reads.

A run's ``cfg.tasks`` are task specifications (:mod:`qgeom.data.sources`): offline names,
``imagefolder:NAME=DIR``, or the paper's datasets under ``cfg.data_root``. Artifacts are filed
under each task's *name* (:func:`qgeom.data.task_names` refuses two specifications with one name).
"""

from __future__ import annotations

import torch

from qgeom.data import Task, load_task, model_transform, parse_task, task_names
from qgeom.experiment.config import RunConfig
from qgeom.models import create_model


def task_specs(cfg: RunConfig) -> dict[str, str]:
    """Task name → specification, in the config's order (names are what artifacts are filed under)."""
    return task_names(cfg.tasks)


def load_run_task(cfg: RunConfig, name: str, template: torch.nn.Module | None = None, **sizes: int) -> Task:
    """Task ``name`` of a run as the run reads it: offline tasks generated with data seed 0,
    streamed tasks through the transform timm derives for the run's model (``template``)."""
    spec = task_specs(cfg)[name]
    transform = None
    if parse_task(spec).streamed:
        template = template if template is not None else create_model(cfg.preset, 2, **cfg.model_overrides)
        transform = model_transform(template)
    size = dict(n_train=cfg.n_train, n_val=cfg.n_val, n_test=cfg.n_test) | sizes
    return load_task(spec, 0, cfg.data_root or None, transform=transform, num_workers=cfg.num_workers,
                     download=cfg.data_download, **size)
