"""Top-1 of many parameter sets on the same data: one pass over the data per chunk of sets.

The transfer experiment evaluates ~100 patched, quantized receivers on each split. Evaluating
them one by one re-reads (and re-batches, re-moves) the data and pays the per-call overheads
each time; here the data are read once per chunk of sets and every set runs on each batch while
it is in memory. Each set is still one ordinary forward per batch (``functional_call``), so the
logits — and the accuracies — are bit for bit those of :func:`qgeom.train.accuracy` with the
same batch size (a test checks it). Stacking the sets under ``torch.func.vmap`` was measured
slower on 2 CPU cores (2.3 s against 1.6 s for 8 sets × 500 images), so it is not used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from qgeom.models import default_device

Batch = tuple[Tensor, Tensor]


@torch.inference_mode()
def top1_many(model: nn.Module, param_sets: Sequence[Mapping[str, Tensor]],
              batches: Iterable[Batch] | Callable[[], Iterable[Batch]], chunk: int = 16,
              device: torch.device | str | None = None) -> np.ndarray:
    """Top-1 accuracy of each parameter set θ_k on the same labelled data.

    Top1_k = (1/N) Σ_i [argmax_c f(θ_k, x_i)_c = y_i] over every example of ``batches``.

    model: the architecture (eval mode is set; its own weights are never used or changed).
    param_sets: K parameter dicts, used as given (quantize them first for post-PTQ accuracy).
    batches: (x (n, C, H, W), y (n,)) pairs — a list (re-read for each chunk of sets), or a
    callable returning a fresh iterable (a streamed split is re-opened per chunk). A one-shot
    iterator is accepted only when K ≤ ``chunk``. chunk: sets held on the device at once.
    Returns a float array of shape (K,).
    """
    device = torch.device(device) if device is not None else default_device()
    model = model.eval().to(device)
    if not callable(batches) and not isinstance(batches, Sequence) and len(param_sets) > chunk:
        batches = list(batches)  # a one-shot iterator must serve several chunks
    open_data = batches if callable(batches) else (lambda: batches)
    correct = np.zeros(len(param_sets), dtype=np.int64)
    total = 0
    for start in range(0, len(param_sets), chunk):
        sets = [{k: v.to(device) for k, v in p.items()} for p in param_sets[start : start + chunk]]
        n_seen = 0
        for x, y in open_data():
            x, y = x.to(device), y.to(device)
            for j, theta in enumerate(sets):
                correct[start + j] += int((functional_call(model, theta, (x,)).argmax(-1) == y).sum())
            n_seen += int(y.shape[0])
        if start == 0:
            total = n_seen
        elif n_seen != total:
            raise ValueError(f"the data changed between chunks ({total} then {n_seen} examples)")
    if total == 0:
        raise ValueError("no examples to evaluate")
    return correct / total
