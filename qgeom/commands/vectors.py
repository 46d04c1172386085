"""``qgeom extract``, ``patch`` and ``ptq``: weight arithmetic and the paper's quantizer on checkpoint files."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from qgeom.commands import check_finite_option, check_not_input, check_writable, clean_errors, inputs
from qgeom.commands import options as O
from qgeom.commands.output import Output

BITS_HELP = "weight bit width, 2–8 (per-row symmetric RTN, the paper's quantizer)"


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
    check_not_input(out, {"--qat": qat_checkpoint, "--finetuned": finetuned})
    O.apply_runtime("auto", threads)
    from qgeom import params as P  # lazy: torch-free --help

    log = Output(quiet=quiet)
    scope = scope or "backbone"
    q, meta = inputs.load(qat_checkpoint)
    theta, _ = inputs.load(finetuned)
    rho = P.quantization_vector(q, theta, scope)
    log.result(f"‖ρ‖ = {P.norm(rho):.4g} over {len(rho)} tensors")
    inputs.save(out, rho, meta, log, stage="quantization_vector", scope=scope, parent=str(qat_checkpoint))


MODEL_STAGES = ("pretrain", "finetune", "qat", "patch", "ptq")


@clean_errors
def patch(
    receiver: Path = typer.Option(..., help="receiver θ_R checkpoint"),
    vector: Path = typer.Option(..., help="vector ρ_D (.safetensors, e.g. from qgeom extract)"),
    out: Path = O.out_file("where to write θ_R + λ ρ_D (.safetensors)"),
    lam: float = typer.Option(1.0, "--lam", help="scale λ"),
    scope: Optional[str] = O.scope("patch only this scope of the vector (backbone or quantized); "
                                   "default: the scope its metadata declares"),
    allow_partial: bool = O.allow_partial("accept a vector that lacks tensors of its scope (they stay θ_R's)"),
    threads: int = O.threads(), quiet: bool = O.quiet(),
) -> None:
    """Patch a receiver: θ_R(λ) = θ_R + λ ρ_D (the receiver keeps its head).

    The vector must cover exactly the scope it declares (metadata ``scope``, or ``--scope``),
    never the head; a model checkpoint passed as the vector is refused."""
    check_writable(out)
    check_not_input(out, {"--receiver": receiver, "--vector": vector})
    check_finite_option(lam, "--lam")
    O.apply_runtime("auto", threads)
    from qgeom import params as P  # lazy: torch-free --help

    log = Output(quiet=quiet)
    if scope is not None:
        if scope == "all":
            raise typer.BadParameter("the head is never patched: use backbone or quantized", param_hint="--scope")
    theta, meta = inputs.load(receiver)
    inputs.refuse_vector(receiver, meta)
    rho, rmeta = inputs.load(vector)
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
    inputs.save(out, patched, meta, log, stage="patch", parent=str(receiver), vector=str(vector), lam=lam,
          vector_scope=scope or "", partial=allow_partial)


@clean_errors
def ptq(
    weights: Path = typer.Option(..., help="checkpoint to quantize"),
    out: Path = O.out_file("where to write Q_b(θ) (.safetensors)"),
    bits: Optional[str] = O.bits(BITS_HELP + "; one width (default: the checkpoint's, else 2)"),
    granularity: str = typer.Option("row", help="row (default), tensor or group"),
    method: str = typer.Option("rtn", help="rtn (round-to-nearest, no data: the paper's), gptq or awq (calibrated "
                                           "on --calib-size training images of the checkpoint's task, or --data)"),
    calib_size: int = typer.Option(256, min=1, help="calibration images for gptq/awq (first of the train split)"),
    data: Optional[str] = O.data(), data_root: Optional[str] = O.data_root(),
    threads: int = O.threads(), quiet: bool = O.quiet(), format: str = O.format(),
) -> None:
    """Post-training quantization of every Linear weight but the head (RTN, GPTQ or AWQ onto the same
    grid); prints per-layer errors (layer-output errors on the calibration images for gptq/awq)."""
    from qgeom.vocabulary import QUANTIZERS  # lazy: torch-free --help

    if method not in QUANTIZERS:
        raise typer.BadParameter(f"{method!r} is not one of {', '.join(QUANTIZERS)}", param_hint="--method")
    check_writable(out)
    check_not_input(out, {"--weights": weights})
    O.apply_runtime("auto", threads)
    from qgeom.quant import QuantSpec  # lazy: torch-free --help
    from qgeom.quantizers import quantize  # lazy: torch-free --help

    log = Output(format, quiet)
    theta, meta = inputs.load(weights)
    inputs.refuse_vector(weights, meta)  # a vector is a difference of weights: quantizing it means nothing
    bits = O.one_bit_width(bits, O.recorded_bits(meta) or 2, command="ptq")
    spec = QuantSpec(bits, granularity=granularity)
    model, batches = (None, None) if method == "rtn" else _calibration(weights, theta, meta, data, data_root, calib_size)
    result = quantize(method, theta, spec, model=model, batches=batches)
    table = Table("tensor", "error", "rel. error")
    for row in result.layers:
        table.add_row(row["name"], row["error"], f"{row['rel_error']:.3f}")
    log.table("quantization_error", table, records=[{"tensor": r["name"], "method": method, "bits": bits,
                                                     "granularity": granularity, "error": r["error"],
                                                     "rel_error": float(r["rel_error"])} for r in result.layers])
    inputs.save(out, result.params, meta, log, stage="ptq", parent=str(weights), bits=bits, granularity=granularity,
                method=method, **({} if method == "rtn" else {"calib_size": calib_size}))
    log.close()


def _calibration(path: Path, theta: dict, meta: dict, data: Optional[str], data_root: Optional[str], n: int):
    """The model and the first ``n`` training images of the checkpoint's task (or ``--data``)."""
    import torch  # lazy: torch-free --help

    from qgeom.experiment.evaluate import calibration_batches  # lazy: torch-free --help

    net = inputs.build_model(path, theta, meta, None)
    data_seed, sizes = inputs.data_provenance(meta)
    task = inputs.task_for(inputs.task_spec(data, meta, path), data_seed, net,
                           data_root or meta.get("data_root") or None, **sizes)
    inputs.check_fit(path, meta, net.num_classes, task)
    return net, calibration_batches(task.train, n, 256, torch.device("cpu"))


def register(app: typer.Typer) -> None:
    app.command("extract")(extract)
    app.command("patch")(patch)
    app.command("ptq")(ptq)
