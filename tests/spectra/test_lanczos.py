"""Lanczos, stochastic Lanczos quadrature and Hutchinson against dense eigendecompositions.

Tolerances. Extreme eigenvalues: |θ − λ| ≤ 1e-8 ‖A‖ — Lanczos stops when every wanted Ritz
residual is ≤ 1e-10 ‖A‖, and an eigenvalue's error is at most the residual (Weyl/Kato: in
fact ~residual²/gap), so 1e-8 has two orders of margin over the float64 floor. Residual
norms ‖Au − θu‖ ≤ 1e-8 ‖A‖ for the same reason. Stochastic estimates (Hutchinson, SLQ) are
compared with the truth within 3 standard errors: with a fixed seed they are deterministic
numbers (never flaky); the 3-SE band is what a correct estimator meets for ~99.7 % of seeds,
so a failure after a change of seed or code is worth a look, not a coin flip.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg as sla
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from _cases_curvature import autograd_hessian, dense_hessian, mlp, random_vector, tiny_case
from qgeom.curvature.operator import CurvatureOperator
from qgeom.spectra.density import hutchinson_trace, spectral_density
from qgeom.spectra.eigsh import default_tol, eigsh
from qgeom.spectra.lanczos import FlatOperator, as_flat_operator, lanczos
from qgeom.params import flatten, unflatten

EIG_TOL = 1e-8


def hessian_operator(dtype=torch.float64) -> CurvatureOperator:
    case = tiny_case(dtype)
    return CurvatureOperator(case.model, case.params, case.batches, metric="hessian")


def sym_matrix(eigenvalues: np.ndarray, seed: int = 0) -> torch.Tensor:
    """Q diag(λ) Qᵀ with a seeded random orthogonal Q (float64)."""
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((len(eigenvalues),) * 2))
    return torch.from_numpy(Q @ np.diag(eigenvalues) @ Q.T)


# --------------------------------------------------------------------------------------------
# extreme eigenpairs of the tiny ViT's Hessian
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hessian_spectrum():
    return np.linalg.eigvalsh(dense_hessian("all").numpy())


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
def test_extreme_eigenvalues_match_eigh(which, hessian_spectrum):
    """LA and SA on the CurvatureOperator itself; LM on the dense H (same algorithm, cheaper)."""
    ev = hessian_spectrum
    op = hessian_operator() if which != "LM" else dense_hessian("all")
    res = eigsh(op, k=5, which=which, seed=0)
    ref = {"LA": ev[::-1][:5], "SA": ev[:5], "LM": ev[np.argsort(-np.abs(ev))][:5]}[which]
    scale = np.abs(ev).max()
    assert res.converged and not res.breakdown
    assert np.abs(res.eigenvalues - ref).max() <= EIG_TOL * scale
    assert res.residuals.max() <= EIG_TOL * scale
    if which == "LM":
        return
    # Ritz vectors come back as Params over the scope, unit norm, and satisfy H u = θ u
    u = res.eigenvectors[0]
    assert set(u) == set(op.keys)
    Hu = op.matvec(u)
    assert np.linalg.norm(op.flatten(Hu).numpy() - res.eigenvalues[0] * op.flatten(u).numpy()) <= EIG_TOL * scale
    assert abs(float(op.flatten(u).norm()) - 1) < 1e-12
    assert res.info["metric"] == "hessian" and res.info["which"] == which


def test_scipy_eigsh_on_to_scipy_agrees(hessian_spectrum):
    """scipy's ARPACK on the LinearOperator adaptor finds the same top eigenvalues."""
    op = hessian_operator()
    v0 = np.random.default_rng(0).standard_normal(op.n_params)
    top = np.sort(sla.eigsh(op.to_scipy(), k=2, which="LA", tol=1e-12, v0=v0, return_eigenvectors=False))[::-1]
    ours = eigsh(dense_hessian("all"), k=2, which="LA").eigenvalues
    scale = np.abs(hessian_spectrum).max()
    assert np.abs(top - ours).max() <= EIG_TOL * scale
    assert np.abs(top - hessian_spectrum[::-1][:2]).max() <= EIG_TOL * scale


def test_float32_operator():
    """A float32 operator (basis still float64): top eigenvalue within 1e-5 relative — the
    products carry float32 roundoff ~1e-7 amplified by O(10²) accumulation."""
    ev = np.linalg.eigvalsh(dense_hessian("all").numpy())
    res = eigsh(hessian_operator(torch.float32), k=1, which="LA", tol=1e-6)
    assert abs(res.eigenvalues[0] - ev[-1]) <= 1e-5 * abs(ev[-1])


def test_default_tolerance_follows_the_dtype():
    """Without ``tol`` a float32 operator stops at 1e-5 (it cannot reach 1e-10: its products
    carry ~1e-7 relative error) and reports the residuals it reached; float64 keeps 1e-10."""
    assert (default_tol(torch.float64), default_tol(torch.float32), default_tol(torch.bfloat16)) == (1e-10, 1e-5, 1e-2)
    ev = np.linalg.eigvalsh(dense_hessian("all").numpy())
    res = eigsh(hessian_operator(torch.float32), k=2, which="LA")
    assert res.converged and res.info["tol"] == 1e-5 and res.n_iter < 100
    assert max(res.info["relative_residuals"]) <= 1e-4 and "max residual" in res.message
    assert np.abs(res.eigenvalues - ev[::-1][:2]).max() <= 1e-5 * abs(ev).max()
    # a tolerance below float32's reach is reported as not converged, never as converged
    strict = eigsh(hessian_operator(torch.float32), k=2, which="LA", tol=1e-12)
    assert not strict.converged and "not converged" in strict.message


@pytest.fixture
def allocations(monkeypatch):
    """Shapes of every torch.empty call (how the Lanczos bases are allocated)."""
    shapes, orig = [], torch.empty

    def spy(*size, **kw):
        shapes.append(tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else size)
        return orig(*size, **kw)

    monkeypatch.setattr(torch, "empty", spy)
    return shapes


@pytest.mark.parametrize("which", ["LA", "SA"])
def test_thick_restart_matches_full_reorthogonalization(which, hessian_spectrum, allocations):
    """Thick restart with a 12-vector basis (several restarts for k = 5) finds the same top-k as
    full reorthogonalization to 1e-8·‖H‖ (both stop at residuals ≤ 1e-10‖H‖; an eigenvalue's
    error is below its residual), and never stores more than 12 basis vectors: O(k·n)."""
    op, scale = hessian_operator(), np.abs(hessian_spectrum).max()
    full = eigsh(op, k=5, which=which, method="full")
    allocations.clear()
    tr = eigsh(op, k=5, which=which, method="thick-restart", max_basis=12)
    assert tr.converged and tr.info["method"] == "thick-restart" and tr.n_iter > 12  # it did restart
    assert np.abs(tr.eigenvalues - full.eigenvalues).max() <= EIG_TOL * scale
    assert tr.residuals.max() <= EIG_TOL * scale
    n = op.n_params
    assert tr.info["basis_vectors"] == 12 and tr.info["basis_bytes"] == 12 * n * 8
    assert max(s[0] for s in allocations if len(s) == 2 and n in s) == 12  # the only basis stored
    # auto: the full basis (100 × n) does not fit a 15-vector budget → thick restart in 15
    auto = eigsh(op, k=5, which=which, memory_budget=15 * n * 8)
    assert auto.info["method"] == "thick-restart" and auto.info["basis_vectors"] == 15
    assert np.abs(auto.eigenvalues - full.eigenvalues).max() <= EIG_TOL * scale
    with pytest.raises(ValueError, match="basis vectors"):
        eigsh(op, k=5, memory_budget=3 * n * 8)


def test_float32_basis(hessian_spectrum):
    """A float32 basis halves the memory; orthogonality holds to ~1e-7, so the eigenvalues of
    a float64 operator come out within 1e-5·‖H‖ (at tol 1e-5)."""
    scale = np.abs(hessian_spectrum).max()
    res = eigsh(hessian_operator(), k=3, which="LA", method="thick-restart", basis_dtype=torch.float32, tol=1e-5)
    assert res.info["basis_bytes"] == 20 * hessian_operator().n_params * 4
    assert np.abs(res.eigenvalues - hessian_spectrum[::-1][:3]).max() <= 1e-5 * scale


def test_slq_stores_no_basis(allocations):
    """SLQ runs the three-term recurrence: no (m, n) basis is ever allocated."""
    op = hessian_operator()
    allocations.clear()
    spectral_density(op, n_probes=2, n_iter=30, seed=0)
    assert not [s for s in allocations if len(s) == 2 and op.n_params in s]
    with pytest.raises(ValueError, match="keeps no basis"):
        lanczos(op, 5, reorthogonalize=False)


# --------------------------------------------------------------------------------------------
# analytic matrices: breakdown, determinism, operator shapes
# --------------------------------------------------------------------------------------------


def test_breakdown_at_an_invariant_subspace():
    """A has 3 distinct eigenvalues: from any start vector K_3 is invariant; Lanczos stops there
    and reports it, and the Ritz values are exact."""
    lam = np.repeat([-2.0, 1.0, 5.0], [10, 20, 10])
    A = sym_matrix(lam, seed=1)
    res = eigsh(A, k=2, which="LA")
    assert res.breakdown and res.n_iter == 3 and "invariant subspace" in res.message
    assert np.allclose(res.eigenvalues, [5.0, 1.0], atol=1e-12)
    assert res.residuals.max() < 1e-12
    res = eigsh(A, k=5, which="SA")  # more pairs than the subspace holds: fewer, and said so
    assert len(res.eigenvalues) == 3 and "only 3" in res.message


def test_full_space_is_exact():
    A = sym_matrix(np.linspace(-1, 1, 12), seed=2)
    res = eigsh(A, k=12, which="SA")
    assert np.allclose(res.eigenvalues, np.linspace(-1, 1, 12), atol=1e-12)


def test_seeded_and_reproducible():
    A = sym_matrix(np.random.default_rng(3).standard_normal(60), seed=3)
    a = lanczos(A, 20, seed=5)
    b = lanczos(A, 20, seed=5)
    c = lanczos(A, 20, seed=6)
    assert np.array_equal(a.alpha, b.alpha) and np.array_equal(a.beta, b.beta)
    assert not np.array_equal(a.alpha, c.alpha)
    # full reorthogonalization keeps the basis orthonormal to float64 roundoff
    Q = a.basis
    assert float((Q @ Q.T - torch.eye(20, dtype=Q.dtype)).abs().max()) < 1e-13


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(8, 80), which=st.sampled_from(["LA", "SA", "LM"]))
def test_extremes_for_all_symmetric_matrices(seed, n, which):
    ev = np.random.default_rng(seed).standard_normal(n)
    A = sym_matrix(ev, seed)
    res = eigsh(A, k=3, which=which, seed=seed)
    ref = {"LA": np.sort(ev)[::-1], "SA": np.sort(ev), "LM": ev[np.argsort(-np.abs(ev))]}[which][:3]
    # eigenvalues within 1e-8 ‖A‖; for LM, ties in |λ| may swap signs, so compare magnitudes
    got = np.abs(res.eigenvalues) if which == "LM" else res.eigenvalues
    want = np.abs(ref) if which == "LM" else ref
    assert np.abs(got - want).max() <= EIG_TOL * np.abs(ev).max()


def test_operator_shapes():
    op = hessian_operator()
    v = random_vector(op.theta, 1)
    flat = as_flat_operator(op)
    by_params = as_flat_operator(op.matvec, like=op.theta)  # a Params matvec plus its layout
    x = op.flatten(v)
    assert torch.allclose(flat.matvec(x), by_params.matvec(x), rtol=0, atol=1e-12)
    A = sym_matrix(np.arange(5.0))
    custom = FlatOperator(5, lambda x: A @ x)
    assert np.allclose(eigsh(custom, k=1).eigenvalues, [4.0])
    with pytest.raises(TypeError, match="n=<size>"):
        as_flat_operator(lambda x: x)  # a plain callable needs its dimension
    with pytest.raises(TypeError, match="scipy LinearOperator"):
        as_flat_operator("not an operator")
    with pytest.raises(ValueError, match="square"):
        as_flat_operator(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="which"):
        eigsh(A, k=1, which="BE")


def test_scipy_operators_plain_callables_and_curvlinops_are_accepted():
    """eigsh, hutchinson_trace and spectral_density on every shape of operator a researcher has
    at hand, against eigh of the same dense matrix (tolerances as in the module docstring)."""
    ev = np.linspace(-1.0, 3.0, 40)
    A = sym_matrix(ev, seed=2)
    shapes = {"scipy": sla.aslinearoperator(A.numpy()), "sparse": scipy.sparse.csr_matrix(A.numpy()),
              "numpy": A.numpy(), "callable": lambda x: A @ x}
    for name, op in shapes.items():
        n = 40 if name == "callable" else None
        res = eigsh(op, k=2, which="LA", n=n)
        assert np.abs(res.eigenvalues - ev[::-1][:2]).max() <= EIG_TOL * 3 and res.converged, name
        tr = hutchinson_trace(op, n_probes=8, n=n)
        assert abs(tr.trace - ev.sum()) <= 3 * tr.stderr + 1e-12, name
        sd = spectral_density(op, n_probes=2, n_iter=10, n=n)
        assert np.trapezoid(sd.density, sd.grid) == pytest.approx(1.0, abs=1e-12), name
    # a qgeom operator through its own to_scipy(): the numbers of the operator itself
    op = hessian_operator()
    direct, via = eigsh(op, k=1, which="LA"), eigsh(op.to_scipy(), k=1, which="LA")
    assert via.eigenvalues[0] == pytest.approx(direct.eigenvalues[0], rel=1e-10)
    curvlinops = pytest.importorskip("curvlinops")
    model = mlp()  # no LayerNorm: curvlinops' jvp∘jacrev Hessian is right on it
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64))]
    theta = {k: v.detach() for k, v in model.named_parameters()}
    H = autograd_hessian(lambda t: torch.nn.functional.mse_loss(
        functional_call(model, unflatten(t, theta), (data[0][0],)), data[0][1]), flatten(theta))
    theirs = curvlinops.HessianLinearOperator(model, torch.nn.MSELoss(), list(model.parameters()), data)
    res = eigsh(theirs, k=2, which="LA")
    want = np.linalg.eigvalsh(H.numpy())[::-1][:2]
    assert np.abs(res.eigenvalues - want).max() <= EIG_TOL * np.abs(want).max()


# --------------------------------------------------------------------------------------------
# trace and density
# --------------------------------------------------------------------------------------------


def test_hutchinson_within_three_standard_errors():
    H = dense_hessian("all")
    op = hessian_operator()
    est = hutchinson_trace(op, n_probes=64, seed=0)
    assert abs(est.trace - float(H.trace())) <= 3 * est.stderr
    assert est.stderr > 0 and len(est.samples) == 64
    # exact for a diagonal matrix with Rademacher probes: zᵀDz = tr D for every z
    D = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
    assert hutchinson_trace(D, n_probes=4).trace == pytest.approx(55.0, abs=1e-12)
    assert hutchinson_trace(D, n_probes=4).stderr == pytest.approx(0.0, abs=1e-12)


def test_slq_density_integrates_to_one_and_has_the_right_mean():
    """The statistics on the dense H (16 probes, cheap); the CurvatureOperator path once."""
    H = dense_hessian("all")
    n = H.shape[0]
    sd = spectral_density(H, n_probes=16, n_iter=25, seed=0)
    assert np.trapezoid(sd.density, sd.grid) == pytest.approx(1.0, abs=1e-12)
    assert (sd.density >= 0).all()
    # the broadened density's mean is the quadrature mean (symmetric kernel, tails ±6σ, fine grid)
    assert sd.mean == pytest.approx(sd.quadrature_mean, abs=1e-6 * max(abs(sd.grid).max(), 1.0))
    for w in sd.weights:
        assert w.sum() == pytest.approx(1.0, abs=1e-12)  # Gauss quadrature weights: ‖v̂‖² = 1
    trace, se = sd.trace_estimate
    assert abs(trace - float(H.trace())) <= 3 * se
    assert sd.quadrature_mean == pytest.approx(trace / n)
    small = spectral_density(hessian_operator(), n_probes=2, n_iter=12, seed=0)
    assert np.trapezoid(small.density, small.grid) == pytest.approx(1.0, abs=1e-12)
    assert small.info["metric"] == "hessian" and small.info["n"] == n
    # a matrix with two eigenvalues: all mass within a few σ of them
    A = sym_matrix(np.repeat([-1.0, 2.0], [30, 10]), seed=4)
    sd2 = spectral_density(A, n_probes=3, n_iter=10, sigma=0.05, probe="gaussian")
    near = (np.abs(sd2.grid + 1) < 0.3) | (np.abs(sd2.grid - 2) < 0.3)
    assert np.trapezoid(sd2.density * near, sd2.grid) == pytest.approx(1.0, abs=1e-4)


def test_eigenvectors_flatten_like_the_operator():
    op = hessian_operator()
    res = eigsh(op, k=2, which="LA")
    U = torch.stack([flatten(u, op.keys) for u in res.eigenvectors], 1)
    assert float((U.T @ U - torch.eye(2, dtype=U.dtype)).abs().max()) < 1e-10
