"""The ``qgeom`` command line: one command per pipeline stage, ``--help`` on each.

Checkpoints are safetensors files whose metadata records how to rebuild the model
(``preset``, ``num_classes``, ``task``) and where they came from (``stage``, inputs, config),
so every command after ``pretrain`` needs only file names.

Options shared by several commands come from one vocabulary (:mod:`qgeom.commands.options`).
Nothing here imports torch at module level: ``qgeom --help`` and every ``--help`` answer
without it (each command imports what it computes with).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from qgeom.commands import check_finite_option, check_writable, clean_errors
from qgeom.commands import curvature, figures, invariance, jobs, run
from qgeom.commands import options as O
from qgeom.commands.inputs import build_model, load_data, read_checkpoint, task_spec
from qgeom.commands.output import Output

app = typer.Typer(help="qgeom: quantization vectors of Vision Transformers — transfer, curvature, symmetries.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
BITS_HELP = "weight bit width, 2–8 (per-row symmetric RTN, the paper's quantizer)"


def _load(path: Path) -> tuple[dict, dict]:
    from qgeom.io import load_params

    return load_params(path)


def _save(path: Path, params: dict, meta: dict, out: Output, **extra) -> None:
    from qgeom.params import numel
    from qgeom.io import save_params

    meta = {k: v for k, v in meta.items() if k not in ("content_hash", "qgeom_version")}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    save_params(path, params, meta)
    out.info(f"wrote [bold]{path}[/] ({numel(params):,} values)")


def _pct(acc: float) -> str:
    """Accuracies in one unit everywhere: Top-1 in percent, one decimal."""
    return f"{100 * acc:.1f}"


def _task(spec: str, seed: int, model=None, data_root: str | None = None, **sizes: int):
    """The task a specification (or a checkpoint's metadata) names, as it was made: an offline
    task (``sizes``: n_train/n_val/n_test when recorded), a streamed one through ``model``'s
    transform, or the pretext mixture ``pretext:a+b`` of θ_0. Kept a function so tests can
    shrink the data."""
    from qgeom.data import pretext_task

    if spec.startswith("pretext:"):
        return pretext_task(spec.split(":", 1)[1].split("+"), seed=seed, **sizes)
    return load_data(spec, seed, model, data_root, **sizes)


def _data(meta: dict) -> tuple[int, dict]:
    """(data seed, split sizes) recorded in a checkpoint's metadata (defaults: 0, the task's)."""
    return int(meta.get("data_seed", "0")), json.loads(meta.get("data_sizes", "{}"))


def _model_checkpoint(path: Path, meta: dict) -> None:
    """Refuse a quantization vector where a model checkpoint is expected."""
    if meta.get("stage") == "quantization_vector":
        raise ValueError(f"{path} is a quantization vector (stage quantization_vector), not a model checkpoint: "
                         f"patch it into a receiver first (qgeom patch)")


def _arch_meta(net, arch: str, meta: dict) -> dict:
    """Metadata that rebuilds ``net``: architecture, overrides, classes."""
    overrides = json.loads(meta.get("model_overrides", "{}")) if arch == meta.get("preset") else {}
    return dict(preset=arch, model_overrides=overrides, num_classes=int(net.num_classes))


@app.command()
@clean_errors
def pretrain(
    out: Path = O.out_file("where to write θ_0 (.safetensors)"),
    preset: Optional[str] = O.model("architecture: a preset (micro, the default, tiny, small, base, large) or "
                                    "timm:NAME"),
    tasks: str = typer.Option("shape,stripes,count,hue,texture,position,size,mirror",
                              help="comma-separated tasks of the pretext mixture (joint label space)"),
    steps: int = typer.Option(500, min=1, help="optimizer steps"),
    lr: float = typer.Option(2e-3, help="peak learning rate"),
    batch_size: int = typer.Option(128, min=1),
    n_per_task: int = typer.Option(3000, min=1, help="training images per task in the mixture"),
    seed: int = O.seed("seed of the weights, the images and the data order"),
    model_overrides: str = typer.Option("{}", help='timm keyword overrides as JSON, e.g. \'{"depth": 2}\'; '
                                                   "recorded in every later checkpoint's metadata"),
    device: str = O.device(), threads: int = O.threads(), quiet: bool = O.quiet(),
) -> None:
    """Pretrain θ_0 on a pretext mixture of the offline tasks."""
    check_writable(out)
    check_finite_option(lr, "--lr", positive=True)
    O.apply_runtime(device, threads)
    log = Output(quiet=quiet)
    preset = preset or "micro"
    from qgeom.data import pretext_task
    from qgeom.models import create_model
    from qgeom.train import TrainConfig, accuracy, pretrain as run

    try:
        overrides = json.loads(model_overrides)
    except json.JSONDecodeError as e:
        raise typer.BadParameter(f"not JSON: {e}", param_hint="--model-overrides") from e
    if not isinstance(overrides, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--model-overrides")
    names = [t for t in tasks.split(",") if t]
    task = pretext_task(names, seed=seed, n_per_task=n_per_task)
    model = create_model(preset, task.num_classes, seed=seed, **overrides)
    cfg = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, warmup_steps=max(1, steps // 15), seed=seed)
    theta0 = run(model, task, cfg, progress=not quiet)
    log.result(f"pretext validation Top-1: {_pct(accuracy(model, theta0, task.val))} %")
    _save(out, theta0, {}, log, preset=preset, num_classes=task.num_classes, task=task.name, stage="pretrain",
          config=cfg.to_dict(), model_overrides=overrides, data_seed=seed, data_sizes={"n_per_task": n_per_task})


@app.command()
@clean_errors
def finetune(
    pretrained: Path = typer.Option(..., help="θ_0 checkpoint: qgeom's, or a timm-format file with --model"),
    task: Optional[str] = O.data("task to fine-tune on (required: θ_0 records only its pretext mixture): an "
                                 "offline name (qgeom tasks), imagefolder:NAME=DIR, or a real dataset name under "
                                 "--data-root"),
    out: Path = O.out_file("where to write θ_t (.safetensors)"),
    model: Optional[str] = O.model(),
    data_root: Optional[str] = O.data_root(),
    steps: int = typer.Option(150, min=1),
    lr: float = typer.Option(1e-3),
    batch_size: int = typer.Option(128, min=1),
    seed: int = O.seed("seed of the head initialisation and the data order"),
    data_seed: Optional[int] = O.data_seed("seed of the task's generated images (default 0: θ_0 records "
                                           "only its pretext mixture's)"),
    device: str = O.device(), threads: int = O.threads(), quiet: bool = O.quiet(),
) -> None:
    """Fine-tune θ_0 on one task with a fresh head: θ_t."""
    check_writable(out)
    check_finite_option(lr, "--lr", positive=True)
    O.apply_runtime(device, threads)
    log = Output(quiet=quiet)
    data_seed = 0 if data_seed is None else data_seed
    if not task:
        raise typer.BadParameter("name the task to fine-tune on (θ_0 records only its pretext mixture)",
                                 param_hint="--data")
    from qgeom.train import TrainConfig, accuracy, finetune as run

    theta0, meta = read_checkpoint(pretrained)
    arch = model or meta.get("preset")
    template = build_model(pretrained, theta0, meta, model, num_classes=1)
    t = _task(task, data_seed, template, data_root)
    net = build_model(pretrained, theta0, meta, model, t.num_classes)
    cfg = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, warmup_steps=max(1, steps // 10), seed=seed)
    theta = run(net, theta0, t, cfg, progress=not quiet)
    log.result(f"{t.name} test Top-1: {_pct(accuracy(net, theta, t.test))} %")
    _save(out, theta, {k: v for k, v in meta.items() if k not in ("preset", "model_overrides")}, log,
          **_arch_meta(net, arch, meta), task=task, stage="finetune", parent=str(pretrained), config=cfg.to_dict(),
          data_seed=data_seed, data_root=data_root or "", data_sizes={})  # θ_0's pretext sizes do not apply


@app.command()
@clean_errors
def qat(
    finetuned: Path = typer.Option(..., help="θ_t checkpoint"),
    out: Path = O.out_file("where to write θ_t,QAT (.safetensors)"),
    bits: Optional[str] = O.bits(BITS_HELP + "; one width (default: the checkpoint's, else 2)"),
    model: Optional[str] = O.model(),
    data: Optional[str] = O.data(),
    data_root: Optional[str] = O.data_root(),
    steps: int = typer.Option(100, min=1),
    lr: float = typer.Option(5e-4),
    batch_size: int = typer.Option(128, min=1),
    seed: int = O.seed("seed of the data order"),
    device: str = O.device(), threads: int = O.threads(), quiet: bool = O.quiet(),
) -> None:
    """Quantization-aware training (STE) from θ_t on its own task: θ_t,QAT."""
    check_writable(out)
    check_finite_option(lr, "--lr", positive=True)
    O.apply_runtime(device, threads)
    log = Output(quiet=quiet)
    from qgeom.quant import QuantSpec
    from qgeom.train import TrainConfig, accuracy, qat as run

    theta, meta = read_checkpoint(finetuned)
    _model_checkpoint(finetuned, meta)
    bits = O.one_bit_width(bits, O.recorded_bits(meta) or 2, command="qat")
    spec = QuantSpec(bits)
    net = build_model(finetuned, theta, meta, model)
    data = task_spec(data, meta, finetuned)
    data_seed, sizes = _data(meta)
    t = _task(data, data_seed, net, data_root or meta.get("data_root") or None, **sizes)
    cfg = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, warmup_steps=max(1, steps // 10), seed=seed)
    theta_q = run(net, theta, t, spec, cfg, progress=not quiet)
    log.result(f"{t.name} test Top-1 after {bits}-bit PTQ: {_pct(accuracy(net, theta_q, t.test, spec))} %")
    _save(out, theta_q, meta, log, **_arch_meta(net, model or meta.get("preset"), meta), task=data, stage="qat",
          parent=str(finetuned), bits=bits, config=cfg.to_dict())


@app.command()
@clean_errors
def extract(
    qat_checkpoint: Path = typer.Option(..., "--qat", help="θ_t,QAT checkpoint"),
    finetuned: Path = typer.Option(..., help="θ_t checkpoint"),
    out: Path = O.out_file("where to write ρ_t (.safetensors)"),
    scope: Optional[str] = O.scope("backbone (the paper's, the default), quantized, or all"),
    threads: int = O.threads(), quiet: bool = O.quiet(),
) -> None:
    """Extract the quantization vector ρ_t = θ_t,QAT − θ_t on a scope."""
    check_writable(out)
    O.apply_runtime("auto", threads)
    from qgeom import params as P

    log = Output(quiet=quiet)
    scope = scope or "backbone"
    q, meta = _load(qat_checkpoint)
    theta, _ = _load(finetuned)
    rho = P.quantization_vector(q, theta, scope)
    log.result(f"‖ρ‖ = {P.norm(rho):.4g} over {len(rho)} tensors")
    _save(out, rho, meta, log, stage="quantization_vector", scope=scope, parent=str(qat_checkpoint))


MODEL_STAGES = ("pretrain", "finetune", "qat", "patch", "ptq")


@app.command()
@clean_errors
def patch(
    receiver: Path = typer.Option(..., help="receiver θ_R checkpoint"),
    vector: Path = typer.Option(..., help="vector ρ_D (.safetensors, e.g. from qgeom extract)"),
    out: Path = O.out_file("where to write θ_R + λ ρ_D (.safetensors)"),
    lam: float = typer.Option(1.0, "--lam", help="scale λ"),
    scope: Optional[str] = O.scope("patch only this scope of the vector (backbone or quantized); "
                                   "default: the scope its metadata declares"),
    allow_partial: bool = typer.Option(False, "--allow-partial",
                                       help="accept a vector that lacks tensors of its scope (they stay θ_R's)"),
    threads: int = O.threads(), quiet: bool = O.quiet(),
) -> None:
    """Patch a receiver: θ_R(λ) = θ_R + λ ρ_D (the receiver keeps its head).

    The vector must cover exactly the scope it declares (metadata ``scope``, or ``--scope``),
    never the head; a model checkpoint passed as the vector is refused."""
    check_writable(out)
    check_finite_option(lam, "--lam")
    O.apply_runtime("auto", threads)
    from qgeom import params as P

    log = Output(quiet=quiet)
    if scope is not None:
        if scope == "all":
            raise typer.BadParameter("the head is never patched: use backbone or quantized", param_hint="--scope")
    theta, meta = _load(receiver)
    _model_checkpoint(receiver, meta)
    rho, rmeta = _load(vector)
    if rmeta.get("stage") in MODEL_STAGES:
        raise ValueError(f"{vector} is a model checkpoint (stage {rmeta['stage']}), not a vector: "
                         f"make ρ with qgeom extract --qat ... --finetuned ...")
    declared = rmeta.get("scope")
    if scope is None and declared in ("backbone", "quantized"):
        scope = declared
    try:
        patched = P.patch(theta, rho, lam, scope=scope, allow_partial=allow_partial)
    except P.IncompatibleParamsError as e:
        raise P.IncompatibleParamsError(f"{vector} → {receiver}: {e}") from None
    _save(out, patched, meta, log, stage="patch", parent=str(receiver), vector=str(vector), lam=lam,
          vector_scope=scope or "", partial=allow_partial)


@app.command()
@clean_errors
def ptq(
    weights: Path = typer.Option(..., help="checkpoint to quantize"),
    out: Path = O.out_file("where to write Q_b(θ) (.safetensors)"),
    bits: Optional[str] = O.bits(BITS_HELP + "; one width (default: the checkpoint's, else 2)"),
    granularity: str = typer.Option("row", help="row (default), tensor or group"),
    threads: int = O.threads(), quiet: bool = O.quiet(), format: str = O.format(),
) -> None:
    """Post-training quantization of every Linear weight but the head; prints per-layer errors."""
    check_writable(out)
    O.apply_runtime("auto", threads)
    from qgeom.quant import QuantSpec, ptq as run, quantization_error

    log = Output(format, quiet)
    theta, meta = _load(weights)
    bits = O.one_bit_width(bits, O.recorded_bits(meta) or 2, command="ptq")
    spec = QuantSpec(bits, granularity=granularity)
    table = Table("tensor", "rel. error", "levels/row")
    for row in quantization_error(theta, spec):
        table.add_row(row["name"], f"{row['rel_error']:.3f}", f"{row['levels_used']:.1f}")
    log.table("quantization_error", table)
    _save(out, run(theta, spec), meta, log, stage="ptq", parent=str(weights), bits=bits, granularity=granularity)
    log.close()


@app.command()
@clean_errors
def evaluate(
    weights: list[Path] = typer.Argument(..., help="checkpoints to evaluate"),
    bits: Optional[str] = O.bits("also evaluate after PTQ at these bit widths, comma-separated, each 2–8 "
                                 "(default: FP only)"),
    split: str = typer.Option("test", help="train, val or test"),
    model: Optional[str] = O.model(),
    data: Optional[str] = O.data(),
    data_root: Optional[str] = O.data_root(),
    device: str = O.device(), threads: int = O.threads(), quiet: bool = O.quiet(), format: str = O.format(),
) -> None:
    """Top-1 (%) of checkpoints on their own task (or --data), FP and after PTQ."""
    if split not in ("train", "val", "test"):
        raise typer.BadParameter(f"split must be train, val or test, got {split!r}", param_hint="--split")
    O.apply_runtime(device, threads)
    from qgeom.quant import QuantSpec
    from qgeom.train import accuracy

    log = Output(format, quiet)
    bits = list(bits or [])
    table = Table("checkpoint", "task", "FP", *[f"PTQ {b}b" for b in bits], caption=f"Top-1 % on {split}")
    for path in weights:
        theta, meta = read_checkpoint(path)
        _model_checkpoint(path, meta)
        net = build_model(path, theta, meta, model)
        data_seed, sizes = _data(meta)
        t = _task(task_spec(data, meta, path), data_seed, net, data_root or meta.get("data_root") or None, **sizes)
        if t.num_classes != net.num_classes:
            raise ValueError(f"{path} has a {net.num_classes}-class head but task {t.name} has {t.num_classes} classes")
        split_data = getattr(t, split)
        accs = [accuracy(net, theta, split_data)] + [accuracy(net, theta, split_data, QuantSpec(b)) for b in bits]
        table.add_row(str(path), t.name, *[_pct(a) for a in accs])
    log.table("accuracy", table)
    log.close()


@app.command("align-demo")
@clean_errors
def align_demo(
    run_dir: Path = typer.Argument(..., help="a transfer run directory (e.g. runs/demo)"),
    donor: str = typer.Option("shape", "--donor-task", help="donor task (its ρ is transferred)"),
    receiver: str = typer.Option("count", "--receiver-task", help="receiver task (hidden behind the permutation)"),
    bits: Optional[str] = O.bits(BITS_HELP + "; one width of the run (default 2)"),
    seed: int = O.seed("run seed (and seed of the hidden permutation)"),
    lam: float = typer.Option(1.0, "--lam", help="scale λ"),
    device: str = O.device(), threads: int = O.threads(), quiet: bool = O.quiet(), format: str = O.format(),
) -> None:
    """Transfer ρ_D into a receiver hidden behind a random head/MLP/residual permutation,
    with and without weight-matching alignment (FP and post-PTQ Top-1 on the receiver's test split).

    Read-only: it uses the run's checkpoints and never trains or writes into the run; a stage the
    run lacks (e.g. another bit width) is an error that says how to make it."""
    from qgeom.symmetry.weight_matching import alignment_demo
    from qgeom.data import batches
    from qgeom.figures.artifacts import RunArtifacts
    from qgeom.quant import QuantSpec

    check_finite_option(lam, "--lam")
    bits = O.one_bit_width(bits, 2, command="align-demo")
    O.apply_runtime(device, threads)
    log = Output(format, quiet)
    art = RunArtifacts(run_dir)
    art.require(seed=seed, bits=bits, tasks=(donor, receiver))
    theta_r = art.finetuned(seed, receiver)
    out = alignment_demo(art.model(theta_r), art.finetuned(seed, donor), art.qat(seed, bits, donor), theta_r,
                         list(batches(art.task(receiver).test, 500)), spec=QuantSpec(bits), lam=lam, seed=seed)
    table = Table("variant", "FP Top-1", f"PTQ {bits}b Top-1", "PTQ loss")
    for r in out["table"].itertuples():
        table.add_row(r.variant, f"{100 * r.fp_acc:.1f}", f"{100 * r.ptq_acc:.1f}", f"{r.ptq_loss:.3f}")
    log.table("alignment", table)
    log.result(f"permutation recovered exactly: {out['recovered']}; "
               f"‖aligned − g(same-basis patch)‖ / ‖·‖ = {out['identity_error']:.2e}")
    log.close()


@app.command()
@clean_errors
def tasks(format: str = O.format()) -> None:
    """List the offline tasks and the known real tasks."""
    from qgeom.data import REAL_TASKS, TASKS

    log = Output(format)
    table = Table("task", "classes", "what it asks")
    for name, spec in TASKS.items():
        table.add_row(name, str(len(spec.classes)), spec.description)
    log.table("offline", table)
    log.result("real tasks (ImageFolder on disk): " + ", ".join(REAL_TASKS))
    log.close()


# Commands defined in their own modules (one concept per module), registered here.
for _module in (curvature, invariance, run, figures, jobs):
    _module.register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
