"""Tasks and data: offline procedural tasks (in memory), real datasets (streamed), one batching API.

* :mod:`qgeom.data.splits`  — :class:`Split` (in memory), :class:`StreamSplit` (from disk),
  :class:`Task`; :func:`batches`, :class:`ShuffledBatches`, :func:`probe_batches`
* :mod:`qgeom.data.offline` — the procedural tasks and the pretext mixture
* :mod:`qgeom.data.real`    — ImageFolder trees and the paper's torchvision datasets
* :mod:`qgeom.data.sources` — task specifications (``shape``, ``imagefolder:NAME=DIR``, ``CIFAR10``)
"""

from qgeom.data.offline import IMG, TASKS, make_task, pretext_task
from qgeom.data.real import (
    REAL_TASKS,
    DatasetNotFoundError,
    UnreadableImageError,
    default_transform,
    from_image_folder,
    from_torchvision,
    model_transform,
)
from qgeom.data.sources import (TaskSpec, check_task, check_task_name, fingerprint, load_task, parse_task, task_name,
                                task_names)
from qgeom.data.splits import AnySplit, ShuffledBatches, Split, StreamSplit, Task, batches, probe_batches, probe_indices

__all__ = [
    "IMG", "TASKS", "REAL_TASKS", "AnySplit", "DatasetNotFoundError", "ShuffledBatches", "Split", "StreamSplit",
    "Task", "TaskSpec", "check_task", "check_task_name", "fingerprint", "UnreadableImageError", "batches",
    "default_transform", "from_image_folder", "from_torchvision", "load_task", "make_task", "model_transform", "parse_task", "pretext_task",
    "probe_batches", "probe_indices", "task_name", "task_names",
]
