"""qgeom.models: presets, manual (forward-differentiable) attention, safe checkpoint loading."""

from __future__ import annotations

import pathlib

import pytest
import timm
import torch
from torch import nn
from torch.func import functional_call, jvp

from qgeom import params as P
from qgeom import io as qio
from qgeom.io import CheckpointError
from qgeom.models import (
    PRESETS,
    count_parameters,
    create_model,
    disable_fused_attention,
    load_checkpoint,
    preset_config,
    supports_forward_ad,
    without_fused_attention,
)

SMALL = dict(embed_dim=16, depth=1, num_heads=2)  # a 6.8 k-parameter micro variant


def attention_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "fused_attn")]


# --------------------------------------------------------------------------------------------
# presets
# --------------------------------------------------------------------------------------------


def test_micro_preset_builds_with_its_documented_size():
    model = create_model("micro", 10)
    n = count_parameters(model)
    assert 0.44e6 <= n <= 0.50e6  # documented ≈ 0.47 M (468 778 with 10 classes)
    assert model.patch_embed.img_size == (32, 32) and model.patch_embed.patch_size == (8, 8)
    assert len(model.blocks) == 4 and model.embed_dim == 96 and model.blocks[0].attn.num_heads == 4
    assert model.head.out_features == 10 and not model.training
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_tiny_preset_is_vit_tiny():
    model = create_model("tiny", 1000)
    assert 5.6e6 <= count_parameters(model) <= 5.8e6  # documented 5.7 M
    assert model.embed_dim == 192 and len(model.blocks) == 12 and supports_forward_ad(model)


@pytest.mark.parametrize("preset,name", [("small", "vit_small_patch16_224"), ("base", "vit_base_patch16_224"),
                                         ("large", "vit_large_patch16_224"), ("micro", "vit_tiny_patch16_224")])
def test_larger_presets_name_real_timm_models(preset, name):
    cfg = preset_config(preset)
    assert cfg["timm_name"] == name and timm.is_model(name)


def test_preset_config_is_a_copy():
    cfg = preset_config("micro")
    cfg["depth"] = 99
    assert PRESETS["micro"]["depth"] == 4


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model preset 'huge'; known presets: micro, tiny, small, base, large"):
        create_model("huge")


def test_overrides_and_seed():
    a = create_model("micro", 3, seed=5, **SMALL)
    b = create_model("micro", 3, seed=5, **SMALL)
    c = create_model("micro", 3, seed=6, **SMALL)
    assert a.embed_dim == 16 and len(a.blocks) == 1
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["blocks.0.attn.qkv.weight"], sc["blocks.0.attn.qkv.weight"])


# --------------------------------------------------------------------------------------------
# forward-mode differentiation
# --------------------------------------------------------------------------------------------


def test_fused_attention_is_off_everywhere():
    model = create_model("micro", 4)
    attn = attention_modules(model)
    assert len(attn) == 4 and all(m.fused_attn is False for m in attn)
    assert supports_forward_ad(model)
    # the check sees a single fused module, and disable_fused_attention switches it back
    attn[2].fused_attn = True
    assert not supports_forward_ad(model)
    assert disable_fused_attention(model) is model and supports_forward_ad(model)


def test_without_fused_attention_copies_the_modules_and_shares_the_tensors():
    """The caller's model keeps its fused attention; the copy computes attention explicitly with
    the very same parameter and buffer tensors (no weights copied) and the same function."""
    model = create_model("micro", 4, **SMALL).double().eval()
    assert without_fused_attention(model) is model  # nothing to change: the model itself
    for m in attention_modules(model):
        m.fused_attn = True
    copy = without_fused_attention(model)
    assert copy is not model and supports_forward_ad(copy) and not supports_forward_ad(model)
    assert all(a is b for a, b in zip(copy.parameters(), model.parameters()))
    assert all(a is b for a, b in zip(copy.buffers(), model.buffers()))
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(copy(x), model(x), rtol=0, atol=1e-12)  # same function (SDPA vs explicit: roundoff)


def test_jvp_through_the_model_matches_central_differences():
    # float64 throughout. Central differences have truncation error ∝ h² (with ‖v‖ ≈ 83 it is
    # 5e−6 at h = 1e−5, 5e−8 at h = 1e−6: measured) and rounding error ~1e−16·|f|/h ≈ 1e−9;
    # h = 1e−6 keeps both ≪ the 1e−6 tolerance, while a wrong tangent would be off by O(1).
    model = create_model("micro", 3, seed=0, **SMALL).double()
    theta = P.from_model(model)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 32, 32, generator=g, dtype=torch.float64)
    v = {k: torch.randn(t.shape, generator=g, dtype=torch.float64) for k, t in theta.items()}

    def f(params):
        return functional_call(model, params, (x,))

    out, tangent = jvp(f, (theta,), (v,))
    h = 1e-6
    with torch.no_grad():
        fd = (f(P.add(theta, P.scale(v, h))) - f(P.sub(theta, P.scale(v, h)))) / (2 * h)
    torch.testing.assert_close(out, f(theta))
    torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-6)
    assert tangent.abs().max() > 1e-3  # a non-trivial direction


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained() -> P.Params:
    """Weights that differ from any fresh initialisation."""
    return P.from_model(create_model("micro", 3, seed=123, **SMALL))


def assert_loaded(model: nn.Module, expected: P.Params, skip=()) -> None:
    state = model.state_dict()
    for k, v in expected.items():
        if k not in skip:
            assert torch.equal(state[k], v), k


def test_load_from_safetensors(tmp_path, trained):
    path = qio.save_params(tmp_path / "w.safetensors", trained)
    model = create_model("micro", 3, seed=0, checkpoint=path, **SMALL)
    assert_loaded(model, trained)
    assert not model.training and supports_forward_ad(model)


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_load_from_a_torch_saved_state_dict(tmp_path, trained, wrap):
    obj = trained if wrap is None else {wrap: trained, "epoch": 7}
    torch.save(obj, tmp_path / "w.pt")
    assert_loaded(create_model("micro", 3, seed=0, checkpoint=tmp_path / "w.pt", **SMALL), trained)


def test_a_head_of_another_shape_is_skipped_and_a_missing_backbone_key_is_refused(tmp_path, trained):
    torch.save(trained, tmp_path / "w.pth")
    fresh = P.from_model(create_model("micro", 5, seed=0, **SMALL))
    model = create_model("micro", 5, seed=0, checkpoint=tmp_path / "w.pth", **SMALL)  # 5 classes, file has 3
    assert_loaded(model, trained, skip=("head.weight", "head.bias"))
    state = model.state_dict()
    assert state["head.weight"].shape == (5, 16)
    for k in ("head.weight", "head.bias"):
        assert torch.equal(state[k], fresh[k])
    # a backbone tensor the file lacks would silently keep its random init: refused, named
    torch.save({k: v for k, v in trained.items() if k != "norm.bias"}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="backbone tensors missing from the file for micro: norm.bias"):
        create_model("micro", 5, seed=0, checkpoint=tmp_path / "partial.pth", **SMALL)


class _Payload:
    """A pickle that, when unpickled by a trusting loader, creates a marker file."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path, trained):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({**trained, "extra": _Payload(marker)}, path)
    with pytest.raises(qio.CheckpointError, match="refused to load"):
        load_checkpoint(path)
    with pytest.raises(qio.CheckpointError, match="refused to load"):
        create_model("micro", 3, checkpoint=path, **SMALL)
    assert not marker.exists()
    # the control: a trusting loader would have run it (so the check above can fail)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_truncated_and_non_tensor_torch_files_are_checkpoint_errors(tmp_path, trained):
    torch.save(trained, tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(qio.CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(qio.CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "empty.bin")
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    with pytest.raises(qio.CheckpointError, match="expected a dict of tensors, got Tensor"):
        load_checkpoint(tmp_path / "tensor.pt")
    torch.save({"a": torch.ones(1), "b": [1, 2]}, tmp_path / "mixed.pt")
    with pytest.raises(qio.CheckpointError, match="expected a dict of tensors"):
        load_checkpoint(tmp_path / "mixed.pt")
    with pytest.raises(qio.CheckpointError, match="no such checkpoint"):
        create_model("micro", 3, checkpoint=tmp_path / "absent.pt", **SMALL)


def test_a_corrupted_safetensors_checkpoint_is_refused(tmp_path, trained):
    path = qio.save_params(tmp_path / "w.safetensors", trained)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(qio.CheckpointError, match="content hash"):
        create_model("micro", 3, checkpoint=path, **SMALL)


def test_keys_that_do_not_fit_the_preset_are_refused(tmp_path, trained):
    torch.save({**trained, "blocks.5.attn.qkv.weight": torch.zeros(48, 16)}, tmp_path / "deeper.pt")
    with pytest.raises(qio.CheckpointError, match="keys the model micro does not have: blocks.5.attn.qkv.weight"):
        create_model("micro", 3, checkpoint=tmp_path / "deeper.pt", **SMALL)
    # a wider model's weights: every shape is off
    wide = P.from_model(create_model("micro", 3, embed_dim=32, depth=1, num_heads=2))
    qio.save_params(tmp_path / "wide.safetensors", wide)
    with pytest.raises(qio.CheckpointError, match="shapes that do not fit micro: blocks.0.attn.proj.bias \\(32,\\) ≠ \\(16,\\), "):
        create_model("micro", 3, checkpoint=tmp_path / "wide.safetensors", **SMALL)


def test_default_device_honours_qgeom_device(monkeypatch):
    from qgeom.models import default_device

    monkeypatch.setenv("QGEOM_DEVICE", "meta")
    assert default_device() == torch.device("meta")
    monkeypatch.delenv("QGEOM_DEVICE")
    assert default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
