"""qgeom.params: scopes, float64 arithmetic, the method's vectors, validation, safetensors IO.

Reference values are computed independently (from the model's module tree, or densely in
float64 with numpy-style flatten), never with the function under test.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from qgeom import __version__
from qgeom import params as P
from qgeom import io as qio
from qgeom.models import create_model

# --------------------------------------------------------------------------------------------
# shared cases
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return create_model("micro", 5, embed_dim=16, depth=2, num_heads=2, seed=0)


@pytest.fixture(scope="module")
def theta(model) -> P.Params:
    return P.from_model(model)


def perturbed(theta: P.Params, seed: int, eps: float = 1e-2) -> P.Params:
    """θ + ε·N(0, 1), seeded: a stand-in for a fine-tuned or QAT model."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + eps * torch.randn(v.shape, generator=g) for k, v in theta.items()}


def dense64(a: P.Params, keys=None) -> torch.Tensor:
    keys = list(a) if keys is None else keys
    return torch.cat([a[k].reshape(-1).double() for k in keys])


# --------------------------------------------------------------------------------------------
# scopes
# --------------------------------------------------------------------------------------------


def test_quantized_scope_is_every_linear_weight_but_the_head(model, theta):
    expected = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "head"}
    assert len(expected) == 2 * 4  # qkv, proj, fc1, fc2 in each of 2 blocks
    assert set(P.scope_keys(theta, "quantized")) == expected
    assert set(P.select(theta, "quantized")) == expected


def test_backbone_scope_is_every_floating_tensor_but_the_head(theta):
    keys = set(P.scope_keys(theta, "backbone"))
    assert keys == {k for k in theta if not k.startswith("head.")}
    assert "head.weight" not in keys and "head.bias" not in keys
    assert "pos_embed" in keys and "patch_embed.proj.weight" in keys and "norm.weight" in keys


def test_all_scope_and_none_select_every_floating_tensor_only():
    d = {"a.weight": torch.ones(2, 2), "head.weight": torch.ones(2, 2), "count": torch.tensor([3]),
         "mask": torch.tensor([True])}
    assert P.scope_keys(d, "all") == ["a.weight", "head.weight"]
    assert P.scope_keys(d, None) == ["a.weight", "head.weight"]
    # integer and boolean tensors belong to no scope, not even a callable that accepts everything
    assert P.scope_keys(d, lambda n, t: True) == ["a.weight", "head.weight"]


def test_callable_scope_receives_name_and_tensor(theta):
    seen = []

    def scope(name, t):
        seen.append((name, tuple(t.shape)))
        return t.dim() == 1

    keys = P.scope_keys(theta, scope)
    assert keys == [k for k, v in theta.items() if v.dim() == 1]
    assert seen == [(k, tuple(v.shape)) for k, v in theta.items()]


def test_select_shares_tensors_without_copying(theta):
    sub = P.select(theta, "backbone")
    assert all(sub[k] is theta[k] for k in sub)


@pytest.mark.parametrize("bad", ["quantised", "Backbone", ""])
def test_unknown_scope_is_an_error_listing_the_known_ones(theta, bad):
    for call in (lambda: P.select(theta, bad), lambda: P.scope_keys(theta, bad),
                 lambda: P.in_scope("x", torch.ones(1), bad),
                 lambda: P.select({}, bad),  # also when nothing would be selected
                 lambda: P.in_scope("n", torch.tensor([1]), bad)):  # and for an integer tensor
        with pytest.raises(ValueError, match="unknown scope.*quantized, backbone, all"):
            call()


def test_from_model_copies_and_load_into_round_trips(model, theta):
    copy = P.from_model(model)
    copy["head.bias"] += 1.0
    assert not torch.equal(copy["head.bias"], model.state_dict()["head.bias"])
    other = create_model("micro", 5, embed_dim=16, depth=2, num_heads=2, seed=1)
    P.load_into(other, theta, strict=True)
    assert all(torch.equal(v, theta[k]) for k, v in other.state_dict().items())


def test_load_into_rejects_unknown_and_missing_keys(model, theta):
    with pytest.raises(P.IncompatibleParamsError, match="keys not in the model: bogus"):
        P.load_into(model, {"bogus": torch.ones(1)})
    part = {k: v for k, v in theta.items() if k != "norm.bias"}
    with pytest.raises(P.IncompatibleParamsError, match="missing from params: norm.bias"):
        P.load_into(model, part, strict=True)
    with pytest.raises(P.IncompatibleParamsError, match="head.weight"):
        P.load_into(model, {"head.weight": torch.ones(3, 16)})


# --------------------------------------------------------------------------------------------
# arithmetic
# --------------------------------------------------------------------------------------------


def test_add_sub_scale_lincomb_match_dense_arithmetic(theta):
    a, b = perturbed(theta, 1, 1.0), perturbed(theta, 2, 1.0)
    assert list(P.add(a, b)) == list(a)
    # elementwise float32 operations: the results are bitwise those of the same tensor ops
    assert all(torch.equal(P.add(a, b)[k], a[k] + b[k]) for k in a)
    assert all(torch.equal(P.sub(a, b)[k], a[k] - b[k]) for k in a)
    assert all(torch.equal(P.scale(a, -0.5)[k], -0.5 * a[k]) for k in a)
    lc = P.lincomb([a, b, theta], [2.0, -1.0, 0.5])
    ref = 2.0 * dense64(a) - dense64(b) + 0.5 * dense64(theta)
    # three float32 roundings per entry: relative 1e-6 of the entries' magnitude
    torch.testing.assert_close(dense64(lc), ref, rtol=1e-6, atol=1e-6)
    z = P.zeros_like(a)
    assert P.norm(z) == 0.0 and all(z[k].dtype == a[k].dtype for k in a)
    assert P.numel(a) == sum(v.numel() for v in theta.values())


def test_lincomb_needs_matching_coefficients(theta):
    with pytest.raises(ValueError, match="as many coefficients"):
        P.lincomb([theta, theta], [1.0])
    with pytest.raises(ValueError, match="at least one"):
        P.lincomb([], [])
    with pytest.raises(P.IncompatibleParamsError, match="keys only in second: extra"):
        P.lincomb([theta, {**theta, "extra": torch.ones(1)}], [1.0, 1.0])


def test_inner_norm_cosine_layer_norms_match_float64_reference(theta):
    a, b = perturbed(theta, 3, 1.0), perturbed(theta, 4, 1.0)
    va, vb = dense64(a), dense64(b)
    # float64 on both sides: only summation order differs, ~1e-12 relative
    assert P.inner(a, b) == pytest.approx(float(va @ vb), rel=1e-10)
    assert P.norm(a) == pytest.approx(float(va.norm()), rel=1e-12)
    assert P.cosine(a, b) == pytest.approx(float(va @ vb / (va.norm() * vb.norm())), rel=1e-10)
    assert P.cosine(a, a) == pytest.approx(1.0, abs=1e-12)
    assert P.cosine(a, P.scale(a, -3.0)) == pytest.approx(-1.0, abs=1e-12)
    ln = P.layer_norms(a)
    assert list(ln) == list(a)
    assert all(ln[k] == pytest.approx(float(a[k].double().norm()), rel=1e-12) for k in a)
    assert isinstance(P.inner(a, b), float)


def test_cosine_of_a_zero_vector_is_nan(theta):
    assert torch.isnan(torch.tensor(P.cosine(P.zeros_like(theta), theta)))


def test_reductions_accumulate_in_float64():
    # Products 2^26, 1, −2^26 in three tensors: exactly 1 in float64. In float32 every order of
    # summation gives 0 (the spacing of float32 at 2^26 is 8), which this test checks first so
    # that it would catch a float32 accumulator.
    a = {"x": torch.tensor([2.0**13]), "y": torch.tensor([1.0]), "z": torch.tensor([2.0**13])}
    b = {"x": torch.tensor([2.0**13]), "y": torch.tensor([1.0]), "z": torch.tensor([-(2.0**13)])}
    f32 = torch.zeros((), dtype=torch.float32)
    for k in a:
        f32 += (a[k] * b[k]).sum()
    assert float(f32) == 0.0 and float(torch.cat([a[k] * b[k] for k in a]).sum()) == 0.0
    assert P.inner(a, b) == 1.0
    # same within one tensor
    assert P.inner({"v": torch.tensor([2.0**13, 1.0, 2.0**13])}, {"v": torch.tensor([2.0**13, 1.0, -(2.0**13)])}) == 1.0
    # norms whose squares overflow float32 (max ≈ 3.4e38): 3-4-5 triangle at 1e20
    big = {"v": torch.tensor([3e20, 4e20])}
    assert torch.isinf(big["v"].norm())  # what a float32 reduction gives
    assert P.norm(big) == pytest.approx(5e20, rel=1e-7)  # 1e-7: float32 storage of 3e20, 4e20
    assert P.layer_norms(big)["v"] == pytest.approx(5e20, rel=1e-7)


def test_incompatible_arithmetic_names_the_keys(theta):
    b = {k: v for k, v in theta.items() if k != "cls_token"}
    for f in (P.add, P.sub, P.inner):
        with pytest.raises(P.IncompatibleParamsError, match="keys only in first: cls_token"):
            f(theta, b)


# --------------------------------------------------------------------------------------------
# task vector, quantization vector, patch
# --------------------------------------------------------------------------------------------


def test_task_vector_is_the_backbone_difference_in_float64(theta):
    ft = perturbed(theta, 5)
    tau = P.task_vector(ft, theta)
    assert set(tau) == set(P.scope_keys(theta, "backbone"))
    assert all(tau[k].dtype == torch.float64 and torch.equal(tau[k], ft[k].double() - theta[k].double()) for k in tau)
    assert set(P.task_vector(ft, theta, "quantized")) == set(P.scope_keys(theta, "quantized"))
    tau32 = P.task_vector(ft, theta, dtype=None)  # the inputs' dtype
    assert all(tau32[k].dtype == torch.float32 and torch.equal(tau32[k], ft[k] - theta[k]) for k in tau32)


def test_task_vector_rejects_mismatched_models(theta):
    other = {**theta, "pos_embed": torch.zeros(1, 3, 16)}
    with pytest.raises(P.IncompatibleParamsError, match="pos_embed"):
        P.task_vector(other, theta)


def test_quantization_vector_excludes_the_head_unless_scope_all(theta):
    ft, q = perturbed(theta, 6), perturbed(theta, 7)
    rho = P.quantization_vector(q, ft)
    assert not any(k.startswith("head.") for k in rho)
    assert all(torch.equal(rho[k], q[k].double() - ft[k].double()) for k in rho)
    rho32 = P.quantization_vector(q, ft, dtype=None)
    assert all(torch.equal(rho32[k], q[k] - ft[k]) for k in rho32)
    assert {"head.weight", "head.bias"} <= set(P.quantization_vector(q, ft, "all"))
    # the head may have another shape (another task's classes) without an error
    q_other_head = {**q, "head.weight": torch.zeros(7, 16), "head.bias": torch.zeros(7)}
    assert set(P.quantization_vector(q_other_head, ft)) == set(rho)


def test_patch_keeps_the_receivers_head_and_never_mutates_inputs(theta):
    receiver = perturbed(theta, 8)
    rho = P.quantization_vector(perturbed(theta, 9), perturbed(theta, 10))
    before_r = {k: v.clone() for k, v in receiver.items()}
    before_v = {k: v.clone() for k, v in rho.items()}
    out = P.patch(receiver, rho, 0.7)
    assert list(out) == list(receiver)
    assert torch.equal(out["head.weight"], receiver["head.weight"]) and torch.equal(out["head.bias"], receiver["head.bias"])
    assert all(torch.equal(receiver[k], before_r[k]) for k in receiver)
    assert all(torch.equal(rho[k], before_v[k]) for k in rho)
    for k in rho:  # formed in float64, rounded once to the receiver's float32
        assert out[k].dtype == torch.float32
        assert torch.equal(out[k], (receiver[k].double() + 0.7 * rho[k].double()).float())
    # the output shares no storage with the inputs: writing to it leaves them alone
    for v in out.values():
        v.add_(1.0)
    assert all(torch.equal(receiver[k], before_r[k]) for k in receiver)


def test_patch_with_lambda_zero_is_the_identity(theta):
    receiver = perturbed(theta, 11)
    rho = P.scale(P.task_vector(perturbed(theta, 12), theta), 1e3)
    out = P.patch(receiver, rho, 0.0)
    assert all(torch.equal(out[k], receiver[k]) for k in receiver)


def test_patch_restores_the_qat_backbone_when_donor_is_receiver(theta, tmp_path):
    # θ_R + 1·(θ_QAT − θ_R) = θ_QAT bit for bit: ρ is float64 by default, where the difference
    # of two float32 values is exact when their magnitudes are within 2^29 of each other (true
    # here: independent N(0, 1) entries, including sign changes, which a float32 ρ gets wrong).
    receiver, q = perturbed(theta, 15, 1.0), perturbed(theta, 16, 1.0)
    q["head.weight"] = q["head.weight"] + 5.0  # the head is not transferred
    out = P.patch(receiver, P.quantization_vector(q, receiver), 1.0)
    for k in P.scope_keys(receiver, "backbone"):
        assert torch.equal(out[k], q[k]), k
    assert torch.equal(out["head.weight"], receiver["head.weight"])
    # also through a file: safetensors keeps float64
    qio.save_params(tmp_path / "rho.safetensors", P.quantization_vector(q, receiver))
    rho, _ = qio.load_params(tmp_path / "rho.safetensors")
    out2 = P.patch(receiver, rho)
    assert all(torch.equal(out2[k], q[k]) for k in rho)


def test_patch_restoration_in_float32_and_its_limits(theta):
    # with a float32 vector (dtype=None) ρ is rounded once: |out − θ_QAT| ≤ u·(|θ_R| + 2|θ_QAT|),
    # u = 2^−24, and it visibly fails somewhere on these data (so the float64 default matters)
    a, b = perturbed(theta, 15, 1.0), perturbed(theta, 16, 1.0)
    out = P.patch(a, P.quantization_vector(b, a, dtype=None), 1.0)
    u = 2.0**-24
    exact = True
    for k in P.scope_keys(a, "backbone"):
        assert ((out[k] - b[k]).abs() <= u * (a[k].abs() + 2 * b[k].abs())).all(), k
        exact &= torch.equal(out[k], b[k])
    assert not exact
    # the documented limit of float64: magnitudes 2^31 apart are rounded (see task_vector)
    r, q = {"w": torch.tensor([1.0, 1.0])}, {"w": torch.tensor([(1 + 2**-23) * 2**-30, (1 + 2**-23) * 2**-31])}
    back = P.patch(r, P.quantization_vector(q, r, "all"), 1.0)["w"]
    assert back[0] == q["w"][0] and back[1] != q["w"][1]


def test_patch_errors_name_the_offending_keys(theta):
    rho = P.task_vector(perturbed(theta, 17), theta)
    with pytest.raises(P.IncompatibleParamsError, match="not in the receiver: blocks.9.extra"):
        P.patch(theta, {**rho, "blocks.9.extra": torch.ones(2)})
    with pytest.raises(P.IncompatibleParamsError, match=r"pos_embed \(1, 17, 16\) vs \(1, 5, 16\)"):
        P.patch(theta, {**rho, "pos_embed": torch.zeros(1, 5, 16)})
    bad = {**rho, "norm.weight": torch.full((16,), float("nan"))}
    with pytest.raises(P.NonFiniteParamsError, match="vector hold NaN or Inf values in: norm.weight"):
        P.patch(theta, bad)
    with pytest.raises(ValueError, match="lam must be finite"):
        P.patch(theta, rho, float("inf"))


def test_patch_scope_restricts_the_vector(theta):
    rho = P.task_vector(perturbed(theta, 18), theta)
    out = P.patch(theta, rho, 1.0, scope="quantized")
    for k in theta:
        if k in P.scope_keys(theta, "quantized"):
            assert torch.equal(out[k], theta[k] + rho[k])
        else:
            assert torch.equal(out[k], theta[k])


# --------------------------------------------------------------------------------------------
# flatten / unflatten
# --------------------------------------------------------------------------------------------

shapes = st.lists(st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple), min_size=1, max_size=5)


@given(shapes=shapes, dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]), seed=st.integers(0, 2**16))
def test_flatten_unflatten_round_trip(shapes, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    a = {f"t{i}": torch.randn(s, generator=g).to(dtype) for i, s in enumerate(shapes)}
    flat = P.flatten(a)
    assert flat.shape == (sum(v.numel() for v in a.values()),) and flat.dtype == dtype
    back = P.unflatten(flat, a)
    assert list(back) == list(a)
    assert all(back[k].shape == a[k].shape and back[k].dtype == a[k].dtype and torch.equal(back[k], a[k]) for k in a)
    # a key order and dtype of one's own choosing round-trip too (float64 holds every value exactly)
    keys = list(reversed(a))
    flat64 = P.flatten(a, keys, dtype=torch.float64)
    assert flat64.dtype == torch.float64
    back64 = P.unflatten(flat64, a, keys)
    assert list(back64) == keys and all(torch.equal(back64[k], a[k]) for k in keys)


def test_flatten_of_nothing_and_wrong_lengths(theta):
    assert P.flatten({}).numel() == 0
    with pytest.raises(P.IncompatibleParamsError, match="vector has 3 entries"):
        P.unflatten(torch.zeros(3), theta)


# --------------------------------------------------------------------------------------------
# check_compatible
# --------------------------------------------------------------------------------------------


def test_check_compatible_names_missing_and_extra_keys():
    a = {"x": torch.ones(2), "y": torch.ones(2)}
    b = {"x": torch.ones(2), "z": torch.ones(2)}
    with pytest.raises(P.IncompatibleParamsError) as e:
        P.check_compatible(a, b, names=("donor", "receiver"))
    assert "keys only in donor: y" in str(e.value) and "keys only in receiver: z" in str(e.value)


def test_check_compatible_lists_the_first_five_sorted_keys():
    a = {f"k{i}": torch.ones(1) for i in range(8)}
    with pytest.raises(P.IncompatibleParamsError, match=r"keys only in first: k0, k1, k2, k3, k4 \(and 3 more\)$"):
        P.check_compatible(a, {})


def test_check_compatible_shapes_dtypes_and_finiteness():
    a = {"x": torch.ones(2, 3), "y": torch.ones(4)}
    with pytest.raises(P.IncompatibleParamsError, match=r"shape mismatch.*y \(4,\) vs \(5,\)"):
        P.check_compatible(a, {"x": torch.ones(2, 3), "y": torch.ones(5)})
    b64 = {"x": torch.ones(2, 3, dtype=torch.float64), "y": torch.ones(4)}
    with pytest.raises(P.IncompatibleParamsError, match="dtype mismatch.*x torch.float32 vs torch.float64"):
        P.check_compatible(a, b64)
    P.check_compatible(a, b64, check_dtype=False)  # allowed when dtypes are not checked
    nan = {"x": torch.ones(2, 3), "y": torch.tensor([1.0, float("nan"), 1.0, 1.0])}
    with pytest.raises(P.NonFiniteParamsError, match="receiver hold NaN or Inf values in: y"):
        P.check_compatible(a, nan, names=("donor", "receiver"))
    inf = {"x": torch.full((2, 3), -float("inf")), "y": torch.ones(4)}
    with pytest.raises(P.NonFiniteParamsError, match="first hold NaN or Inf values in: x"):
        P.check_compatible(inf, a)
    P.check_compatible(inf, a, finite=False)
    P.check_compatible(a, {k: v.clone() for k, v in a.items()})


# --------------------------------------------------------------------------------------------
# safetensors IO
# --------------------------------------------------------------------------------------------


def test_save_load_round_trip_with_metadata_and_hash(tmp_path, theta):
    mixed = {**theta, "half": torch.randn(3, 2).half(), "bf": torch.randn(4).bfloat16(),
             "steps": torch.tensor([3, 4]), "scalar": torch.tensor(2.5, dtype=torch.float64)}
    path = qio.save_params(tmp_path / "sub" / "theta.safetensors", mixed,
                         {"task": "shape", "bits": 2, "config": {"lr": 1e-3, "steps": [1, 2]}})
    assert path == tmp_path / "sub" / "theta.safetensors" and path.is_file()
    loaded, meta = qio.load_params(path)
    assert set(loaded) == set(mixed)
    for k, v in mixed.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape and torch.equal(loaded[k], v), k
    assert meta["task"] == "shape"  # strings are stored as they are
    assert json.loads(meta["bits"]) == 2 and json.loads(meta["config"]) == {"lr": 1e-3, "steps": [1, 2]}
    assert meta["content_hash"] == P.content_hash(mixed) == P.content_hash(loaded)
    assert meta["qgeom_version"] == __version__


def test_content_hash_sees_names_shapes_dtypes_and_values():
    a = {"x": torch.arange(6.0).reshape(2, 3)}
    h = P.content_hash(a)
    assert h == P.content_hash({"x": torch.arange(6.0).reshape(2, 3)})
    assert h != P.content_hash({"y": a["x"]})
    assert h != P.content_hash({"x": a["x"].reshape(3, 2)})
    assert h != P.content_hash({"x": a["x"].double()})
    b = a["x"].clone()
    b[1, 2] = torch.nextafter(b[1, 2], torch.tensor(100.0))  # one ulp
    assert h != P.content_hash({"x": b})
    # non-contiguous and 0-dim tensors hash by their values
    assert P.content_hash({"x": a["x"].t()}) == P.content_hash({"x": a["x"].t().contiguous()})
    assert P.content_hash({"s": torch.tensor(1.0)}) == P.content_hash({"s": torch.tensor(1.0)})
    assert P.content_hash({"s": torch.tensor(1.0)}) != P.content_hash({"s": torch.tensor([1.0])})


def test_save_refuses_non_finite_params(tmp_path):
    with pytest.raises(P.NonFiniteParamsError, match="w"):
        qio.save_params(tmp_path / "x.safetensors", {"w": torch.tensor([float("nan")])})
    assert list(tmp_path.iterdir()) == []


def test_missing_and_truncated_files_are_checkpoint_errors(tmp_path, theta):
    with pytest.raises(qio.CheckpointError, match="no such checkpoint"):
        qio.load_params(tmp_path / "absent.safetensors")
    path = qio.save_params(tmp_path / "t.safetensors", theta)
    data = path.read_bytes()
    for cut in (len(data) // 2, 7, 0):  # inside the tensor data, inside the header, empty
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(qio.CheckpointError, match="truncated or corrupt"):
            qio.load_params(bad)


def test_a_file_whose_hash_does_not_match_is_refused(tmp_path, theta):
    path = qio.save_params(tmp_path / "t.safetensors", theta)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of the last tensor's last value; the header stays valid
    path.write_bytes(bytes(data))
    with pytest.raises(qio.CheckpointError, match="content hash does not match"):
        qio.load_params(path)
    loaded, _ = qio.load_params(path, verify=False)  # readable: only the hash catches it
    assert P.content_hash(loaded) != P.content_hash(theta)


def test_atomic_write_leaves_no_partial_file_when_the_writer_raises(tmp_path):
    target = tmp_path / "out.safetensors"

    def writer(tmp):
        Path(tmp).write_bytes(b"half a fi")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        qio.atomic_write(target, writer)
    assert list(tmp_path.iterdir()) == []
    # an existing file is left exactly as it was
    qio.save_params(target, {"w": torch.ones(3)})
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="killed"):
        qio.atomic_write(target, writer)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]


def test_atomic_write_replaces_the_target(tmp_path):
    target = tmp_path / "a.txt"
    qio.atomic_write(target, lambda tmp: Path(tmp).write_text("one"))
    qio.atomic_write(target, lambda tmp: Path(tmp).write_text("two"))
    assert target.read_text() == "two" and os.listdir(tmp_path) == ["a.txt"]
