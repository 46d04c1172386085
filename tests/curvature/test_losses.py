"""Curvature for any module and any loss (issue 26, item 1), against references that share no
code path with the operator: an analytic least-squares GGN, and dense matrices built by plain
``torch.autograd.grad`` loops (_cases_curvature.autograd_hessian / autograd_jacobian).

Tolerances. Everything is float64 on matrices of P ≤ 57 (MLP) or 1 083 (tiny ViT) coordinates:
both sides sum O(10²–10³) terms of size O(1) with unit roundoff 1.1e-16, so they agree to
~1e-14; 1e-10 relative leaves four orders of margin and still catches a wrong factor (2, 1/D,
1/N: O(1)). The analytic linear-model case has no nonlinearity at all: 1e-12.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from _cases_curvature import TINY, autograd_hessian, autograd_jacobian, mlp, rel_err, tiny_case
from qgeom.curvature.losses import LossError
from qgeom.curvature.operator import CurvatureOperator
from qgeom.models import create_model
from qgeom.params import flatten, unflatten

TOL = 1e-10


def dense_of(op: CurvatureOperator) -> torch.Tensor:
    return op.flat_matmat(torch.eye(op.n_params, dtype=torch.float64))


def regression_data(d_in: int = 5, d_out: int = 3, sizes=(7, 5), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, d_in, generator=g, dtype=torch.float64), torch.randn(n, d_out, generator=g,
                                                                                  dtype=torch.float64))
            for n in sizes]


def flat_outputs(model: nn.Module):
    """(θ flat, outputs(θ, x)) over the model's own parameters, in named_parameters order."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    return flatten(params), lambda t, x: functional_call(model, unflatten(t, params), (x,))


def test_mse_ggn_of_a_linear_model_is_the_least_squares_matrix():
    """f(x) = W x + b: J_i = [I_D ⊗ x_iᵀ, I_D] in closed form, and H = G = 2/(N D) Σ_i J_iᵀ J_i
    (the loss is quadratic in θ), whatever the split of the 12 samples into batches."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2).double()
    batches = regression_data(4, 2, sizes=(7, 5))
    X = torch.cat([x for x, _ in batches])
    J = torch.cat([torch.cat([torch.kron(torch.eye(2, dtype=torch.float64), x[None, :]),
                              torch.eye(2, dtype=torch.float64)], 1) for x in X])  # (N·D, P)
    G_ref = 2.0 / (len(X) * 2) * J.T @ J
    for metric in ("ggn", "hessian"):
        op = CurvatureOperator(model, None, batches, metric=metric, loss=nn.MSELoss())
        assert op.keys == ["weight", "bias"] and op.info["loss"] == "MSELoss()"
        assert rel_err(dense_of(op), G_ref) < 1e-12


def test_mse_ggn_fisher_and_hessian_of_an_mlp_match_autograd_loops():
    model, batches = mlp(), regression_data()
    theta, out = flat_outputs(model)
    X, Y = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    N, D = Y.shape
    J = autograd_jacobian(lambda t: out(t, X), theta)  # (N·D, P), rows sample-major
    per_sample = torch.stack([torch.autograd.grad(F.mse_loss(out(t, X[i:i + 1]), Y[i:i + 1]), t)[0]
                              for i in range(N) for t in [theta.clone().requires_grad_(True)]])
    refs = {"ggn": 2.0 / (N * D) * J.T @ J, "fisher": per_sample.T @ per_sample / N,
            "hessian": autograd_hessian(lambda t: F.mse_loss(out(t, X), Y), theta)}
    for metric, ref in refs.items():
        for loss in (nn.MSELoss(), F.mse_loss):
            assert rel_err(dense_of(CurvatureOperator(model, None, batches, metric=metric, loss=loss)), ref) < TOL
    # the Gram route (forward mode only) gives the same forms
    op = CurvatureOperator(model, None, batches, metric="ggn", loss=nn.MSELoss())
    V = torch.randn(op.n_params, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    K = op.jvp_gram([op.unflatten(V[:, j]) for j in range(3)])
    assert rel_err(torch.from_numpy(K), V.T @ refs["ggn"] @ V) < TOL


def test_mse_ggn_of_the_tiny_vit_matches_its_jacobian():
    """Through LayerNorm and attention: G = 2/(N K) JᵀJ with J from a first-order autograd loop."""
    case = tiny_case()
    theta, out = flat_outputs(_loaded(case))
    Y = torch.nn.functional.one_hot(case.y, 3).double()
    batches = [(x, Y[i:i + len(y)]) for (x, y), i in zip(case.batches, (0, 7))]
    J = autograd_jacobian(lambda t: out(t, case.x), theta)
    op = CurvatureOperator(case.model, case.params, batches, metric="ggn", loss=nn.MSELoss())
    Xs = torch.randn(op.n_params, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert rel_err(op.flat_matmat(Xs), 2.0 / (12 * 3) * J.T @ (J @ Xs)) < TOL


def _loaded(case):
    """The tiny case's module with its point loaded (so the module's own parameters are θ)."""
    model = create_model("micro", **TINY).double()
    model.load_state_dict(case.params)
    return model.eval()


def test_any_loss_gives_the_hessian_and_the_ggn_refuses_it():
    model, batches = mlp(), regression_data()
    theta, out = flat_outputs(model)
    X, Y = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])

    def log_cosh(z, y):
        return torch.log(torch.cosh(z - y)).mean()

    ref = autograd_hessian(lambda t: log_cosh(out(t, X), Y), theta)
    for method in ("double-backward", "forward-over-reverse"):
        op = CurvatureOperator(model, None, batches, metric="hessian", loss=log_cosh, method=method)
        assert rel_err(dense_of(op), ref) < TOL and op.info["loss"] == "log_cosh"
        assert op.loss() == pytest.approx(float(log_cosh(out(theta, X), Y)), rel=1e-13)
    for metric in ("ggn", "fisher"):
        with pytest.raises(LossError, match="metric='hessian'"):
            CurvatureOperator(model, None, batches, metric=metric, loss=log_cosh)
        with pytest.raises(LossError, match="label smoothing"):
            CurvatureOperator(model, None, batches, metric=metric, loss=nn.CrossEntropyLoss(label_smoothing=0.1))
    with pytest.raises(LossError, match="reduction='mean'"):
        CurvatureOperator(model, None, batches, metric="hessian", loss=nn.MSELoss(reduction="sum"))
    with pytest.raises(LossError, match="shape"):  # a broadcast MSE target would change D
        CurvatureOperator(model, None, [(X, Y[:, :1])], metric="fisher", loss=nn.MSELoss()).matvec(
            {k: torch.ones_like(v) for k, v in model.named_parameters()})


def test_cross_entropy_fisher_with_probability_targets_matches_per_sample_gradients():
    model = mlp()
    g = torch.Generator().manual_seed(3)
    X = torch.randn(9, 5, generator=g, dtype=torch.float64)
    Y = torch.softmax(torch.randn(9, 3, generator=g, dtype=torch.float64), -1)
    theta, out = flat_outputs(model)
    grads = torch.stack([torch.autograd.grad(F.cross_entropy(out(t, X[i:i + 1]), Y[i:i + 1]), t)[0]
                         for i in range(9) for t in [theta.clone().requires_grad_(True)]])
    op = CurvatureOperator(model, None, [(X[:4], Y[:4]), (X[4:], Y[4:])], metric="fisher")
    assert rel_err(dense_of(op), grads.T @ grads / 9) < TOL


def test_cross_entropy_given_as_a_loss_is_the_default_bit_for_bit():
    case = tiny_case()
    X = torch.randn(1083, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for metric in ("hessian", "ggn", "fisher"):
        default = CurvatureOperator(case.model, case.params, case.batches, metric=metric)
        for loss in (nn.CrossEntropyLoss(), F.cross_entropy):
            given = CurvatureOperator(case.model, case.params, case.batches, metric=metric, loss=loss)
            assert torch.equal(given.flat_matmat(X), default.flat_matmat(X))
        assert "loss" not in default.info  # provenance of existing callers is unchanged
