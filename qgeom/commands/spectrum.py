"""``qgeom spectrum``: top-k eigenvalues (Lanczos), Hutchinson's trace and the SLQ spectral density
of the receiver's curvature M at θ_R, from the command line (the probe set, checkpoints and
options as ``qgeom geometry``: :mod:`qgeom.commands.curvature`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from qgeom.commands import check_finite_option, clean_errors
from qgeom.commands import options as O
from qgeom.commands.curvature import BITS, COMMON, counted, operator_from_cli, write_json_file, write_rows
from qgeom.commands.output import Output
from qgeom.progress import progress


@clean_errors
def spectrum_cmd(
    receiver: Path = typer.Argument(..., help="receiver checkpoint θ_R (qgeom's .safetensors, or timm-format "
                                              "with --model)"),
    task: Optional[str] = O.data(), preset: Optional[str] = O.model(),
    data_root: Optional[str] = O.data_root(),
    metric: str = COMMON["metric"], objective: str = COMMON["objective"], bits: Optional[str] = O.bits(BITS),
    scope: Optional[str] = O.scope("backbone (the paper's, the default), quantized or all"),
    k: int = typer.Option(10, min=1, help="number of top eigenvalues"),
    lanczos_iter: int = typer.Option(100, min=2, help="maximum Lanczos steps for the top-k"),
    tol: Optional[float] = typer.Option(None, help="relative Ritz-residual tolerance (default: by the operator's "
                                                  "dtype, 1e-5 float32, 1e-10 float64)"),
    hutchinson_probes: int = typer.Option(32, min=2, help="Rademacher probes for the trace"),
    slq_probes: int = typer.Option(4, min=1, help="probes for the spectral density"),
    slq_iter: int = typer.Option(40, min=2, help="Lanczos steps per SLQ probe"),
    seed: int = O.seed("seed of the Lanczos start vector and the probes"),
    split: str = COMMON["probe_split"], n_probe: int = O.n_probe(), batch_size: int = O.probe_batch(),
    probe_seed: int = O.probe_seed(), data_seed: Optional[int] = O.data_seed(),
    dtype: str = O.dtype(), out: Optional[Path] = O.out_dir(),
    device: str = O.device(), threads: int = O.threads(), quiet: bool = O.quiet(), format: str = O.format(),
) -> None:
    """Top-k eigenvalues, Hutchinson trace and SLQ spectral density of the receiver's curvature."""
    out = O.table_dir(out)
    if tol is not None:
        check_finite_option(tol, "--tol", positive=True)
    O.apply_runtime(device, threads)
    from qgeom.spectra.density import hutchinson_trace, spectral_density  # lazy: torch-free --help
    from qgeom.spectra.eigsh import eigsh  # lazy: torch-free --help

    log = Output(format, quiet)
    op = operator_from_cli(receiver, task, preset, metric, objective, bits, scope or "backbone", split, n_probe,
                   batch_size, probe_seed, data_seed, dtype, data_root, log)
    products = lanczos_iter + k + hutchinson_probes + slq_probes * slq_iter  # at most (Lanczos may stop early)
    with progress(total=products, desc="spectrum", unit="products", enabled=not quiet) as bar:
        A = counted(op, bar)
        bar.step(f"top-{k} eigenvalues (Lanczos)")
        eig = eigsh(A, k=k, which="LA", max_iter=lanczos_iter, tol=tol, seed=seed, return_vectors=False)
        bar.step(f"trace (Hutchinson, {hutchinson_probes} probes)")
        tr = hutchinson_trace(A, n_probes=hutchinson_probes, seed=seed)
        bar.step(f"spectral density (SLQ, {slq_probes} probes)")
        sd = spectral_density(A, n_probes=slq_probes, n_iter=slq_iter, seed=seed)
    t = Table("rank", "eigenvalue", "residual", title=f"{op!r}")
    for i, (lam, res) in enumerate(zip(eig.eigenvalues, eig.residuals), 1):
        t.add_row(str(i), f"{lam:.6g}", f"{res:.2e}")
    log.expect_tables(2)
    log.table("eigenvalues", t, records=[{"rank": i, "eigenvalue": float(lam), "residual": float(res)}
                                         for i, (lam, res) in enumerate(zip(eig.eigenvalues, eig.residuals), 1)])
    log.result(f"{eig.message} ({eig.n_iter} Lanczos steps); trace ≈ {tr.trace:.6g} ± {tr.stderr:.2g} "
               f"(Hutchinson, {hutchinson_probes} probes); SLQ trace ≈ {sd.trace_estimate[0]:.6g}")
    if format != "table":
        log.table("estimates", "", records=[{
            "converged": bool(eig.converged), "lanczos_steps": int(eig.n_iter), "hutchinson_trace": float(tr.trace),
            "hutchinson_stderr": float(tr.stderr), "hutchinson_probes": hutchinson_probes,
            "slq_trace": float(sd.trace_estimate[0]), "slq_probes": slq_probes, "slq_steps": slq_iter}])
    if out is not None:
        write_rows(out, "spectrum_eigenvalues.csv", [{"rank": i + 1, "eigenvalue": float(lam), "residual": float(r)}
                                                 for i, (lam, r) in enumerate(zip(eig.eigenvalues, eig.residuals))])
        write_rows(out, "spectrum_density.csv", [{"x": float(x), "density": float(d)} for x, d in zip(sd.grid, sd.density)])
        summary = {"info": op.info, "eigen": eig.to_dict(), "trace": tr.to_dict(),
                   "slq": {k_: v for k_, v in sd.to_dict().items() if k_ not in ("grid", "density")}}
        write_json_file(out, "spectrum.json", summary)
        log.info(f"wrote {out}/spectrum_eigenvalues.csv, spectrum_density.csv, spectrum.json")
    log.close()


def register(app: typer.Typer) -> None:
    """Add ``spectrum`` to ``app``."""
    app.command("spectrum")(spectrum_cmd)
