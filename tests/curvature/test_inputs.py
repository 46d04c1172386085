"""What a curvature operator accepts (issue 26, item 1): parameters as a mapping, a list or
omitted; one batch, a generator or a DataLoader; list scopes in the caller's order; ``op @ v``.

The forms are checked against each other bit for bit (the same tensors reach the same code), and
the scoped products against the dense float64 Hessian of _cases_curvature (decomposed LayerNorm,
checked by finite differences in test_operator) to 1e-10 — see test_operator for that tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from _cases_curvature import TINY, dense_hessian, random_vector, rel_err, tiny_case
from qgeom.curvature.operator import CurvatureOperator, hvp
from qgeom.curvature.probe import probe_hash
from qgeom.models import create_model
from qgeom.params import scope_keys

TOL = 1e-10


def loaded_model():
    case = tiny_case()
    model = create_model("micro", **TINY).double()
    model.load_state_dict(case.params)
    return model.eval()


def columns(keys: list[str]) -> torch.Tensor:
    """Indices of ``keys``' coordinates (in that order) among the dense Hessian's (model order)."""
    params = tiny_case().params
    all_keys = scope_keys(params, "all")
    start = dict(zip(all_keys, np.cumsum([0] + [params[k].numel() for k in all_keys])))
    return torch.cat([torch.arange(start[k], start[k] + params[k].numel()) for k in keys])


X2 = torch.randn(1083, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)


def test_params_as_a_list_or_omitted_give_the_mapping_numbers():
    case, model = tiny_case(), loaded_model()
    ref = CurvatureOperator(case.model, case.params, case.batches, metric="hessian")
    for params in (list(model.parameters()), None):
        op = CurvatureOperator(model, params, case.batches, metric="hessian")
        assert op.keys == ref.keys and torch.equal(op.flat_matmat(X2), ref.flat_matmat(X2))
        assert op.info["expansion_point"] == ref.info["expansion_point"]
    # a list of some parameters: the variables, in the list's order; everything else held fixed
    sub = [model.head.weight, model.blocks[0].attn.qkv.weight]
    op = CurvatureOperator(model, sub, case.batches, metric="hessian")
    assert op.keys == ["head.weight", "blocks.0.attn.qkv.weight"]
    idx = columns(op.keys)
    x = X2[: op.n_params, 0]
    assert rel_err(op @ x, dense_hessian("all")[idx][:, idx] @ x) < TOL
    with pytest.raises(TypeError, match="not a parameter of the model"):
        CurvatureOperator(model, [torch.zeros(3)], case.batches)
    with pytest.raises(TypeError, match="list of the model's parameters"):
        CurvatureOperator(model, model.head.weight, case.batches)


def test_one_batch_a_generator_and_a_dataloader_count_and_hash_the_same_probe_set():
    case = tiny_case()
    listed = CurvatureOperator(case.model, case.params, case.batches)
    gen = CurvatureOperator(case.model, case.params, ((x, y) for x, y in case.batches))
    loader = CurvatureOperator(case.model, case.params, DataLoader(TensorDataset(case.x, case.y), batch_size=7))
    for op in (gen, loader):
        assert op.info["n_samples"] == 12 and op.info["n_batches"] == 2
        assert op.info["probe"] == probe_hash(case.batches) == listed.info["probe"]
        assert torch.equal(op.flat_matmat(X2), listed.flat_matmat(X2))
    one = CurvatureOperator(case.model, case.params, case.batches[0])  # a bare (x, y)
    first = CurvatureOperator(case.model, case.params, case.batches[:1])
    assert one.info["n_samples"] == 7 and one.info["probe"] == first.info["probe"]
    assert torch.equal(one.flat_matmat(X2), first.flat_matmat(X2))
    with pytest.raises(TypeError, match="tuple"):
        CurvatureOperator(case.model, case.params, [case.x, case.y])  # a list of two tensors is ambiguous
    with pytest.raises(TypeError, match="probe set"):
        CurvatureOperator(case.model, case.params)
    with pytest.raises(ValueError, match="empty"):
        CurvatureOperator(case.model, case.params, iter([]))


def test_matmul_takes_params_flat_vectors_and_matrices():
    case = tiny_case()
    op = CurvatureOperator(case.model, case.params, case.batches, metric="hessian")
    H = dense_hessian("all")
    v = random_vector(op.theta, 4)
    assert op.shape == (1083, 1083)
    assert rel_err(op.flatten(op @ v), H @ op.flatten(v)) < TOL
    assert rel_err(op @ X2[:, 0], H @ X2[:, 0]) < TOL
    assert rel_err(op @ X2, H @ X2) < TOL
    assert rel_err(torch.from_numpy(op.to_scipy() @ X2.numpy()), H @ X2) < TOL
    assert rel_err(hvp(case.model, case.params, X2[:, 0], case.batches), H @ X2[:, 0]) < TOL
    with pytest.raises(ValueError, match="P = 1,083"):
        op @ X2[:10, 0]
    with pytest.raises(TypeError, match="Params"):
        op @ 3.0


def test_a_list_scope_keeps_the_callers_order():
    case = tiny_case()
    names = ["head.weight", "blocks.0.mlp.fc1.weight", "blocks.0.attn.qkv.weight"]  # not the model's order
    op = CurvatureOperator(case.model, case.params, case.batches, metric="hessian", scope=names)
    assert op.keys == names
    idx = columns(names)
    x = X2[: op.n_params, 1]
    assert rel_err(op @ x, dense_hessian("all")[idx][:, idx] @ x) < TOL
    as_set = CurvatureOperator(case.model, case.params, case.batches, metric="hessian", scope=set(names))
    assert as_set.keys == [k for k in scope_keys(case.params, "all") if k in names]  # a set has no order
    with pytest.raises(ValueError, match="not among"):
        CurvatureOperator(case.model, case.params, case.batches, scope=["head.weight", "no.such.tensor"])
    with pytest.raises(ValueError, match="repeated"):
        CurvatureOperator(case.model, case.params, case.batches, scope=["head.weight", "head.weight"])


def test_other_libraries_keywords_say_what_to_pass():
    case = tiny_case()
    with pytest.raises(TypeError, match="loss_fn= is spelled loss="):
        CurvatureOperator(case.model, case.params, case.batches, loss_fn=torch.nn.MSELoss())
    with pytest.raises(TypeError, match="it takes params, batches"):
        CurvatureOperator(case.model, case.params, case.batches, damping=1e-3)
