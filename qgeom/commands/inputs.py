"""What every command reads: a checkpoint with its architecture, and a task with its data.

One vocabulary for all commands:

* ``--model``: a qgeom preset (micro, tiny, …) or ``timm:NAME``. Default: the checkpoint's
  qgeom metadata (``preset``, ``model_overrides``). A checkpoint may be qgeom's own
  ``.safetensors`` or any timm-format file (``.safetensors``, or ``.pt``/``.pth``/``.bin`` read
  with ``torch.load(weights_only=True)``); its backbone must fit the architecture exactly.
* ``--data``: a task specification (:mod:`qgeom.data.sources`: an offline name,
  ``imagefolder:NAME=DIR``, or one of the paper's datasets under ``--data-root``). Default: the
  checkpoint's ``task`` metadata. Streamed tasks use the transform timm derives for the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from qgeom.commands.output import Output

MODEL_HELP = "architecture: a preset (micro, tiny, small, base, large) or timm:NAME (default: the checkpoint's metadata)"
DATA_HELP = ("task: an offline name (qgeom tasks), imagefolder:NAME=DIR, or a real dataset name under --data-root "
             "(default: the checkpoint's metadata)")
DATA_ROOT_HELP = "folder of the torchvision datasets (for real dataset names)"


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """(parameters, qgeom metadata or {}) of a checkpoint, without executing code; DDP ``module.``
    prefixes and float16/bfloat16 tensors are normalised (:func:`qgeom.models.normalise_state`),
    and a note on stderr says so."""
    from qgeom.io import load_params  # lazy: torch-free --help
    from qgeom.models import load_checkpoint, normalise_state  # lazy: torch-free --help

    notes: list[str] = []
    if Path(path).suffix == ".safetensors":
        params, meta = load_params(path)
        params = normalise_state(params, notes)
    else:
        params, meta = load_checkpoint(path, notes), {}
    say(path, notes)
    return params, meta


def say(path: Path, notes: list[str]) -> None:
    """State on stderr what reading ``path`` changed (one line per note)."""
    for note in notes:
        typer.echo(f"note: {path}: {note}", err=True)


def build_model(path: Path, params: dict, meta: dict, model: str | None, num_classes: int | None = None):
    """The architecture for ``params``: ``model`` or the metadata's; classes from the head (or given).

    The backbone must fit (:func:`qgeom.models.check_fits`); errors name the offending keys."""
    from qgeom.models import check_fits, create_model  # lazy: torch-free --help

    arch = model or meta.get("preset")
    if arch is None:
        raise typer.BadParameter(f"{path} has no model metadata (preset, num_classes): was it written by qgeom? "
                                 "For a timm checkpoint pass --model timm:NAME (or a preset)")
    overrides = json.loads(meta.get("model_overrides", "{}")) if arch == meta.get("preset") else {}
    if num_classes is None:
        if "head.weight" in params:
            num_classes = int(params["head.weight"].shape[0])
        elif "num_classes" in meta:
            num_classes = int(meta["num_classes"])
        else:
            raise typer.BadParameter(f"{path} has no head: fine-tune it for a task first (qgeom finetune)")
    net = create_model(arch, num_classes, **overrides)
    check_fits(params, net, str(path), arch)
    return net


def task_spec(data: str | None, meta: dict, path: Path) -> str:
    spec = data or meta.get("task")
    if not spec:
        raise typer.BadParameter(f"{path} records no task: pass --data (an offline task, imagefolder:NAME=DIR, "
                                 "or a dataset name with --data-root)")
    return spec


def load_data(spec: str, seed: int, model=None, data_root: str | Path | None = None, **sizes):
    """The task ``spec`` names; streamed tasks go through ``model``'s timm transform."""
    from qgeom.data import load_task, model_transform, parse_task  # lazy: torch-free --help

    transform = model_transform(model) if model is not None and parse_task(spec).streamed else None
    return load_task(spec, seed, data_root, transform=transform, **sizes)


def load(path: Path) -> tuple[dict, dict]:
    """(parameters, metadata) of a qgeom safetensors file (half precision upcast and said, as
    :func:`read_checkpoint` does)."""
    from qgeom.io import load_params  # lazy: torch-free --help
    from qgeom.models import normalise_state  # lazy: torch-free --help

    params, meta = load_params(path)
    notes: list[str] = []
    params = normalise_state(params, notes)
    say(path, notes)
    return params, meta


def save(path: Path, params: dict, meta: dict, out: Output, **extra) -> None:
    """Write ``params`` with ``meta`` (less its hash and version) and ``extra`` as metadata."""
    from qgeom.io import save_params  # lazy: torch-free --help
    from qgeom.params import numel  # lazy: torch-free --help

    meta = {k: v for k, v in meta.items() if k not in ("content_hash", "qgeom_version")}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    save_params(path, params, meta)
    out.info(f"wrote [bold]{path}[/] ({numel(params):,} values)")


def pct(acc: float) -> str:
    """Accuracies in one unit everywhere: Top-1 in percent, one decimal."""
    return f"{100 * acc:.1f}"


def task_for(spec: str, seed: int, model=None, data_root: str | None = None, **sizes: int):
    """The task a specification (or a checkpoint's metadata) names, as it was made: an offline
    task (``sizes``: n_train/n_val/n_test when recorded), a streamed one through ``model``'s
    transform, or the pretext mixture ``pretext:a+b`` of θ_0. Commands call it through this module
    (``inputs.task_for``), so tests can shrink the data by replacing it. A task with fewer than 2
    classes or an empty split is refused (:func:`qgeom.data.check_task`)."""
    from qgeom.data import check_task, pretext_task  # lazy: torch-free --help

    if spec.startswith("pretext:"):
        return pretext_task(spec.split(":", 1)[1].split("+"), seed=seed, **sizes)
    return check_task(load_data(spec, seed, model, data_root, **sizes))  # ≥ 2 classes, no empty split


def data_provenance(meta: dict) -> tuple[int, dict]:
    """(data seed, split sizes) recorded in a checkpoint's metadata (defaults: 0, the task's)."""
    return int(meta.get("data_seed", "0")), json.loads(meta.get("data_sizes", "{}"))


#: Stages whose checkpoint's head was trained for the task its metadata records.
HEAD_STAGES = ("pretrain", "finetune", "qat", "patch", "ptq")


def task_label(spec: str) -> str:
    """The name a task specification stands for (``imagefolder:NAME=DIR`` → NAME; a pretext mixture as it is)."""
    from qgeom.data import parse_task  # lazy: torch-free --help

    if spec.startswith("pretext:"):
        return spec
    try:
        return parse_task(spec).name
    except ValueError:
        return spec


def check_fit(path: Path, meta: dict, head_classes: int, task) -> None:
    """Refuse a checkpoint and a task that do not fit, in one line naming both, before any work:
    a head of another size than the task's classes, or a head trained for another task (the
    task the checkpoint's metadata records, where it records one)."""
    recorded = meta.get("task") or ""
    if recorded and meta.get("stage") in HEAD_STAGES and task_label(recorded) != task.name:
        raise ValueError(f"{path} was trained for task {task_label(recorded)} (its {head_classes}-class head), not "
                         f"for task {task.name}: its numbers on {task.name} would be meaningless; omit --data to "
                         f"use its own task, or fine-tune it for {task.name} first (qgeom finetune)")
    if head_classes != task.num_classes:
        raise ValueError(f"{path} has a {head_classes}-class head but task {task.name} has {task.num_classes} "
                         f"classes: they do not fit; pass the checkpoint's own task with --data, or fine-tune it "
                         f"for {task.name} first (qgeom finetune)")


def check_cover(receiver: dict, vectors: dict[str, dict], scope: str | None, allow_partial: bool) -> list[str]:
    """Refuse a vector that lacks tensors of the scope it is used in (``scope``; None: backbone or
    quantized, whichever its keys are), as ``qgeom patch`` does, naming the vector and the missing
    tensors. With ``allow_partial`` nothing is refused: the returned lines say which vectors are
    partial (every command prints them and records them in its output)."""
    from qgeom.params import IncompatibleParamsError, check_coverage  # lazy: torch-free --help

    notes = []
    for name, v in vectors.items():
        try:
            check_coverage(receiver, v, scope)
        except IncompatibleParamsError as e:
            if not allow_partial:
                raise IncompatibleParamsError(f"{name}: {e}") from None
            notes.append(f"{name} is partial (--allow-partial): {str(e).split(' (a partial vector')[0]}")
    return notes


def refuse_vector(path: Path, meta: dict) -> None:
    """Refuse a quantization vector where a model checkpoint is expected."""
    if meta.get("stage") == "quantization_vector":
        raise ValueError(f"{path} is a quantization vector (stage quantization_vector), not a model checkpoint: "
                         f"patch it into a receiver first (qgeom patch)")


def arch_meta(net, arch: str, meta: dict) -> dict:
    """Metadata that rebuilds ``net``: architecture, overrides, classes."""
    overrides = json.loads(meta.get("model_overrides", "{}")) if arch == meta.get("preset") else {}
    return dict(preset=arch, model_overrides=overrides, num_classes=int(net.num_classes))


def run_probe(receiver: Path) -> dict | None:
    """The probe set a run measured its ``geometry.csv`` on, when ``receiver`` is one of its
    fine-tuned checkpoints (``RUN/seed{s}/finetune/{t}.safetensors``): ``run_dir``, ``split``
    (val), ``n_probe`` (the config's ``probe_size``) and ``probe_seed`` (the seed s); else None."""
    import re

    p = Path(receiver).resolve()
    m = re.fullmatch(r"seed(\d+)", p.parent.parent.name)
    root = p.parents[2] if len(p.parents) > 2 else p.parent
    if p.parent.name != "finetune" or m is None or not (root / "config.json").is_file():
        return None
    try:
        cfg = json.loads((root / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return {"run_dir": root, "split": "val", "n_probe": int(cfg.get("probe_size", 256)), "probe_seed": int(m[1])}


def probe_difference(receiver: Path, split: str, n_probe: int, probe_seed: int, used: int) -> str | None:
    """What the probe options change from the run's own geometry (:func:`run_probe`), as a note
    naming the options that reproduce its ``geometry.csv``; None when they agree (or no run).
    ``used``: the images the probe set holds (fewer than ``n_probe`` when the split has fewer: a
    run asking for more than the split holds used the same images)."""
    run = run_probe(receiver)
    if run is None:
        return None
    asked = {"split": split, "n_probe": n_probe, "probe_seed": probe_seed}
    differ = [k for k in asked if asked[k] != run[k]]
    if "n_probe" in differ and split == run["split"] and used < n_probe and run["n_probe"] >= used:
        differ.remove("n_probe")  # both take the whole split
    if not differ:
        return None
    options = {"split": "--probe-split", "n_probe": "--n-probe", "probe_seed": "--probe-seed"}
    have = ", ".join(f"{options[k]} {asked[k]}" for k in differ)
    want = " ".join(f"{options[k]} {run[k]}" for k in differ)
    return (f"these numbers use {have}; the run {run['run_dir']} measured its geometry.csv with {want} "
            f"(pass those to reproduce it)")
