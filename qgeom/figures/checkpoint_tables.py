"""The four tables computed on a run's checkpoints (listed in the package docstring; torch is
imported inside each, so that ``import qgeom.figures`` needs no torch; kept cheap: small probe
sets, small grids).

Losses in nats (mean cross-entropy), Top-1 in percent. :func:`qgeom.figures.cached_table` keeps
them beside their figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd


def quadratic_model_table(run_dir: str | Path, *, receivers: Sequence[str] | None = None, seed: int | None = None,
                          bits: int | None = None, scope: str = "backbone", metric: str = "ggn",
                          lambdas: Sequence[float] = (0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5),
                          probe_size: int = 64) -> pd.DataFrame:
    """Measured L(Q_b(θ_R + λρ_D)) against Proposition 1's quadratic model, per receiver/donor/λ.

    The model is expanded at θ̂_R = θ_R + ρ_R (the receiver's head with its QAT backbone, so that
    the path θ_R + λρ_D stays in the expansion's coordinates) for the STE objective with metric
    M (GGN by default), on ``probe_size`` validation images: with d(λ) = λρ_D − ρ_R,

        quadratic(λ)   = L(θ̂_R) + gᵀd + ½ dᵀMd          (g = ∇L_ste(θ̂_R))
        proposition(λ) = L(θ̂_R) + ½ dᵀMd                (the proposition assumes g = 0)
        measured(λ)    = L(Q_b(θ_R + λρ_D))              (STE forward = PTQ forward)

    Columns: receiver, donor, lam, measured, quadratic, proposition, lam_star (⟨ρ_D,ρ_R⟩_M /
    ⟨ρ_D,ρ_D⟩_M, the proposition's minimiser), g_dot_d (gᵀρ_D), rho_M_rho (ρ_DᵀMρ_D).
    Cost per receiver: one gradient, one product with all the run's vectors, len(lambdas) ×
    tasks forward passes on the probe set. Default receivers: the first two tasks.
    """
    from qgeom.curvature.operator import CurvatureOperator  # lazy: torch only when a table is computed
    from qgeom.params import inner, patch  # lazy: torch only when a table is computed
    from qgeom.quant import QuantSpec  # lazy: torch only when a table is computed

    from qgeom.experiment.artifacts import RunArtifacts  # lazy: torch only when a table is computed

    run = RunArtifacts(run_dir)
    seed, bits = run.defaults(seed, bits)
    names = sorted(run.names)
    receivers = list(receivers) if receivers is not None else names[:2]
    rows = []
    for r in receivers:
        V = {d: run.rho(seed, bits, d, scope) for d in names}
        theta_r = run.finetuned(seed, r)
        point = patch(theta_r, V[r], 1.0)
        model = run.model(theta_r)
        op = CurvatureOperator(model, point, run.probe(r, seed, probe_size), metric=metric, objective="ste",
                               scope=[k for k in model.state_dict() if k in V[r]], spec=QuantSpec(bits))
        L0, g = op.loss(), op.gradient()
        MV = dict(zip(names, op.matmat([V[d] for d in names])))
        rr, gr = inner(V[r], MV[r]), inner(g, V[r])
        for d in names:
            dd, dr, gd = inner(V[d], MV[d]), inner(V[r], MV[d]), inner(g, V[d])
            for lam in lambdas:
                dmd = lam * lam * dd - 2 * lam * dr + rr
                shift = {k: lam * V[d][k] - V[r][k] for k in V[r]}
                rows.append(dict(seed=seed, bits=bits, scope=scope, metric=metric, receiver=r, donor=d, lam=float(lam),
                                 measured=op.loss(shift), quadratic=L0 + lam * gd - gr + 0.5 * dmd,
                                 proposition=L0 + 0.5 * dmd, lam_star=dr / dd if dd > 0 else np.nan,
                                 g_dot_d=gd, rho_M_rho=dd))
    return pd.DataFrame(rows)


def spectrum_table(run_dir: str | Path, *, receiver: str | None = None, seed: int | None = None,
                   bits: int | None = None, scope: str = "backbone", metric: str = "hessian",
                   objective: str = "fp", top_k: int = 6, n_iter: int = 30, n_probes: int = 1,
                   probe_size: int = 32, n_grid: int = 300) -> pd.DataFrame:
    """The receiver's curvature spectrum and where every ρ puts its energy.

    SLQ density (:func:`qgeom.spectra.lanczos.spectral_density`: ``n_probes`` Rademacher probes,
    ``n_iter`` Lanczos steps) and the ``top_k`` largest eigenpairs (:func:`qgeom.spectra.lanczos.eigsh`,
    at most ``n_iter`` steps; residuals recorded) of M at θ_R (``fp``) on ``probe_size``
    validation images. The defaults (≈ 70 products with M) take ~10 s of CPU for the demo's
    micro ViT; one probe gives a coarse density — raise ``n_probes`` for a smoother one. Long
    table with column ``part``:

    * ``density``: eigenvalue (grid), value = φ(eigenvalue);
    * ``eigenpair``: index j, eigenvalue λ_j, value = residual ‖Mu − λu‖;
    * ``norm_share``: vector, j, λ_j, value = (u_jᵀρ)² / ‖ρ‖²;
    * ``curvature_share``: vector, j, λ_j, value = λ_j (u_jᵀρ)² / ρᵀMρ (NaN if ρᵀMρ ≤ 0).

    Vectors: the receiver's own ρ_R and every donor's ρ_D (names ``ρ_R (task)``, ``ρ_D (task)``).
    """
    from qgeom.curvature.operator import CurvatureOperator  # lazy: torch only when a table is computed
    from qgeom.quant import QuantSpec  # lazy: torch only when a table is computed

    from qgeom.experiment.artifacts import RunArtifacts  # lazy: torch only when a table is computed

    run = RunArtifacts(run_dir)
    seed, bits = run.defaults(seed, bits)
    names = sorted(run.names)
    r = receiver or names[0]
    V = {d: run.rho(seed, bits, d, scope) for d in names}
    point = run.finetuned(seed, r) if objective == "fp" else run.qat(seed, bits, r)
    model = run.model(point)
    keys = [k for k in model.state_dict() if k in V[r]]  # the model's order: flat vectors (Lanczos, SLQ) follow it
    op = CurvatureOperator(model, point, run.probe(r, seed, probe_size), metric=metric,
                           objective=objective, scope=keys, spec=QuantSpec(bits) if objective == "ste" else None)
    labels = {d: f"ρ_R ({d})" if d == r else f"ρ_D ({d})" for d in names}
    tab = operator_spectrum_table(op, {labels[d]: V[d] for d in names}, top_k=top_k, n_iter=n_iter,
                                  n_probes=n_probes, n_grid=n_grid, seed=seed)
    return tab.assign(seed=seed, bits=bits, scope=scope, receiver=r)


def operator_spectrum_table(op, vectors: dict, *, top_k: int = 6, n_iter: int = 30, n_probes: int = 1,
                            n_grid: int = 300, seed: int = 0) -> pd.DataFrame:
    """:func:`spectrum_table`'s rows for any curvature operator and any named vectors (your own
    model: ``qgeom.CurvatureOperator(model, θ, batches, ...)``; names ``ρ_R (…)`` are drawn in
    black by :func:`qgeom.figures.diagnostics.spectrum`, names ``ρ_D (task)`` in the task's colour,
    any other name in the palette). Columns: part, vector, index, eigenvalue, value, metric,
    objective, and placeholders seed, bits, scope, receiver for the figure's titles."""
    from qgeom.curvature.geometry import eigenbasis_projection  # lazy: torch only when a table is computed
    from qgeom.params import norm  # lazy: torch only when a table is computed
    from qgeom.spectra.density import spectral_density  # lazy: torch only when a table is computed
    from qgeom.spectra.eigsh import eigsh  # lazy: torch only when a table is computed

    dens = spectral_density(op, n_probes=n_probes, n_iter=n_iter, seed=seed, n_grid=n_grid)
    eig = eigsh(op, k=top_k, which="LA", max_iter=n_iter, tol=1e-6, seed=seed)
    proj = eigenbasis_projection(op, vectors, eig)
    base = dict(seed=seed, bits=0, scope=op.info.get("scope", ""), metric=op.metric, objective=op.objective,
                receiver="")
    rows = [base | dict(part="density", vector="", index=-1, eigenvalue=x, value=y)
            for x, y in zip(dens.grid, dens.density)]
    rows += [base | dict(part="eigenpair", vector="", index=j, eigenvalue=lam, value=res)
             for j, (lam, res) in enumerate(zip(eig.eigenvalues, eig.residuals))]
    c, lam, forms = proj.terms["coefficients"], proj.terms["eigenvalues"], proj.terms["forms"]
    for i, name in enumerate(proj.terms["names"]):
        sq = norm(vectors[name]) ** 2 if isinstance(vectors[name], dict) else float(vectors[name].norm()) ** 2
        for j in range(len(lam)):
            rows.append(base | dict(part="norm_share", vector=name, index=j, eigenvalue=lam[j],
                                    value=c[i, j] ** 2 / sq))
            rows.append(base | dict(part="curvature_share", vector=name, index=j, eigenvalue=lam[j],
                                    value=lam[j] * c[i, j] ** 2 / forms[i] if forms[i] > 0 else np.nan))
    return pd.DataFrame(rows)


def landscape_table(run_dir: str | Path, *, receiver: str | None = None, donor: str | None = None,
                    seed: int | None = None, bits: int | None = None, scope: str = "backbone",
                    a: Sequence[float] = (-0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25),
                    b: Sequence[float] = (-0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25),
                    split: str = "val") -> pd.DataFrame:
    """Post-PTQ Top-1 (%) of θ_R + aρ_D + bρ_R on the receiver's ``split`` over the (a, b) grid.

    Defaults: the first task as receiver; as donor, the best single donor chosen on validation
    (receivers.csv), else the first other task. (0, 0) is FT+PTQ, (1, 0) the zero-shot patch,
    (0, 1) the receiver's QAT backbone with its FT head.
    """
    from qgeom.params import lincomb, patch  # lazy: torch only when a table is computed
    from qgeom.quant import QuantSpec  # lazy: torch only when a table is computed
    from qgeom.train import accuracy  # lazy: torch only when a table is computed

    from qgeom.experiment.artifacts import RunArtifacts  # lazy: torch only when a table is computed

    run = RunArtifacts(run_dir)
    seed, bits = run.defaults(seed, bits)
    names = sorted(run.names)
    r = receiver or names[0]
    if donor is None:
        donor = next(d for d in names if d != r)
        rec_csv = run.dir / "receivers.csv"
        if rec_csv.exists():
            rt = pd.read_csv(rec_csv)
            rt = rt[(rt.receiver == r) & (rt.bits == bits) & (rt.scope == scope) & (rt.seed == seed)]
            donor = str(rt.best_donor.iloc[0]) if len(rt) else donor
    theta = run.finetuned(seed, r)
    rd, rr = run.rho(seed, bits, donor, scope), run.rho(seed, bits, r, scope)
    model, data, spec = run.model(theta), getattr(run.task(r), split), QuantSpec(bits)
    rows = []
    for av in a:
        for bv in b:
            th = patch(theta, lincomb([rd, rr], [float(av), float(bv)]))
            rows.append(dict(seed=seed, bits=bits, scope=scope, split=split, receiver=r, donor=donor, a=float(av),
                             b=float(bv), ptq_top1=100 * accuracy(model, th, data, spec, run.cfg.eval_batch)))
    return pd.DataFrame(rows)


def invariance_table(run_dir: str | Path, *, receiver: str | None = None, donor: str | None = None,
                     seed: int | None = None, bits: int | None = None, scope: str = "backbone",
                     kinds: Sequence[str] = ("qk_scalar", "qk_mixing", "vo_diagonal"),
                     strengths: Sequence[float] = (0.0, 2.0, 4.0, 6.0), metric: str = "ggn",
                     probe_size: int = 64, symmetry_seed: int = 0, touched_only: bool = True) -> pd.DataFrame:
    """Euclidean vs metric cosine of (gρ_D, gρ_R) at gθ_R, and post-PTQ Top-1 of gθ_R and of
    g(θ_R + ρ_D), for a random element g of each symmetry kind as its strength grows
    (:func:`qgeom.symmetry.random_symmetry`: the log condition number of GL blocks, the
    log-spread of scalings). The metric cosine uses M(gθ_R) (fp objective, probe set of
    ``probe_size`` validation images): invariant for every function-level symmetry; the
    Euclidean cosine only for orthogonal g; PTQ only where Q_b commutes with g. Default kinds:
    a per-head q/k rescaling (commutes with per-row Q_b), a q/k GL mixing and a per-channel
    v/o rescaling (neither commutes), strengths up to 6 (κ(g) = e⁶ ≈ 400).

    touched_only: the cosines are taken over the tensors g acts on (its ``touched`` ∩ the
    scope), where the Euclidean drift is not diluted by the untouched rest of ρ. g is block
    diagonal over tensors, so the metric's block on those coordinates transforms by the same
    congruence and the metric cosine stays invariant there too.

    Long table: kind, strength, condition_number, quantity (``euclidean_cosine``,
    ``metric_cosine``, ``ptq_top1_receiver``, ``ptq_top1_patched``, Top-1 in % on val), value.
    """
    from qgeom.curvature.operator import CurvatureOperator  # lazy: torch only when a table is computed
    from qgeom.curvature.geometry import metric_cosine  # lazy: torch only when a table is computed
    from qgeom.params import cosine, patch  # lazy: torch only when a table is computed
    from qgeom.quant import QuantSpec  # lazy: torch only when a table is computed
    from qgeom.symmetry import random_symmetry  # lazy: torch only when a table is computed
    from qgeom.train import accuracy  # lazy: torch only when a table is computed

    from qgeom.experiment.artifacts import RunArtifacts  # lazy: torch only when a table is computed

    run = RunArtifacts(run_dir)
    seed, bits = run.defaults(seed, bits)
    names = sorted(run.names)
    r = receiver or names[0]
    donor = donor or next(d for d in names if d != r)
    theta = run.finetuned(seed, r)
    rd, rr = run.rho(seed, bits, donor, scope), run.rho(seed, bits, r, scope)
    model, probe, spec, val = run.model(theta), run.probe(r, seed, probe_size), QuantSpec(bits), run.task(r).val
    patched = patch(theta, rd, 1.0)
    rows = []
    for kind in kinds:
        for s in strengths:
            g = random_symmetry(model, kind, strength=float(s), seed=symmetry_seed)
            keys = [k for k in g.touched if k in rd] if touched_only else list(rd)
            gt = g(theta)
            gd, gr = g({k: rd[k] for k in keys}), g({k: rr[k] for k in keys})
            op = CurvatureOperator(model, gt, probe, metric=metric, scope=keys)
            vals = {"euclidean_cosine": cosine(gd, gr), "metric_cosine": float(metric_cosine(op, gd, gr).value),
                    "ptq_top1_receiver": 100 * accuracy(model, gt, val, spec, run.cfg.eval_batch),
                    "ptq_top1_patched": 100 * accuracy(model, g(patched), val, spec, run.cfg.eval_batch)}
            for q, v in vals.items():
                rows.append(dict(seed=seed, bits=bits, scope=scope, receiver=r, donor=donor, metric=metric, kind=kind,
                                 strength=float(s), condition_number=g.condition_number(), n_tensors=len(keys),
                                 quantity=q, value=v))
    return pd.DataFrame(rows)
