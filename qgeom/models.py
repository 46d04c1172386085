"""timm Vision Transformer presets, built so that ``torch.func`` can differentiate them.

A preset is data, not code (timm's habit): a timm model name plus keyword overrides.

==========  ===========================  ============================================
preset      timm model                   size
==========  ===========================  ============================================
micro       ``vit_tiny_patch16_224``     32×32 input, patch 8 (16 tokens + cls),
            with overrides               width 96, depth 4, 4 heads (head_dim 24):
                                         ≈ 0.47 M parameters
tiny        ``vit_tiny_patch16_224``     width 192, depth 12, 3 heads: 5.7 M
small       ``vit_small_patch16_224``    width 384, depth 12, 6 heads: 22 M
base        ``vit_base_patch16_224``     width 768, depth 12, 12 heads: 86 M
large       ``vit_large_patch16_224``    width 1024, depth 24, 16 heads: 304 M
timm:NAME   any timm ViT by name         e.g. ``timm:vit_base_patch16_224.orig_in21k``
==========  ===========================  ============================================

Pretrained weights (θ_0) come from :func:`load_pretrained`: ``timm:NAME`` (timm's own loading,
which needs network or timm's local cache; offline it fails at once, saying how to pass a
file instead) or a local file in timm's key names (safetensors, or a torch file read with
``weights_only=True``), checked key by key and shape by shape against the architecture.

Every model is built with timm's *fused* attention switched off (``fused_attn = False`` on
every attention module): ``scaled_dot_product_attention`` has neither a forward-mode derivative
nor a double backward, so Hessian-vector products (``torch.func.jvp`` over ``grad``) fail on it
(../shared/FINDINGS.md). The manual attention computes the same function.

The micro preset uses patch 8 rather than FINDINGS' patch 4: 17 tokens instead of 65 make a
training step 4.5× faster on 2 CPU cores (0.055 s vs 0.25 s at batch 128), which is what lets
the whole demo (pretraining included) fit in 10 minutes.
"""

from __future__ import annotations

import copy
import os
import pickle
import socket
from pathlib import Path
from urllib.parse import urlparse
from typing import Any

import timm
import torch
from torch import nn

from qgeom.params import NonFiniteParamsError, Params, load_into
from qgeom.io import CheckpointError, load_params

PRESETS: dict[str, dict[str, Any]] = {
    "micro": {
        "timm_name": "vit_tiny_patch16_224",
        "img_size": 32,
        "patch_size": 8,
        "embed_dim": 96,
        "depth": 4,
        "num_heads": 4,
        "mlp_ratio": 4.0,
    },
    "tiny": {"timm_name": "vit_tiny_patch16_224"},
    "small": {"timm_name": "vit_small_patch16_224"},
    "base": {"timm_name": "vit_base_patch16_224"},
    "large": {"timm_name": "vit_large_patch16_224"},
}


def disable_fused_attention(model: nn.Module) -> nn.Module:
    """Set ``fused_attn = False`` on every timm attention module (in place; returned).

    This changes the caller's model; :func:`without_fused_attention` leaves it alone."""
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    return model


def without_fused_attention(model: nn.Module) -> nn.Module:
    """``model`` itself if no attention module uses fused SDPA, else a copy whose attention is
    computed explicitly (``fused_attn = False``): new module objects sharing ``model``'s parameter
    and buffer tensors (no weights are copied), so ``model`` is left exactly as it was."""
    if supports_forward_ad(model):
        return model
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return disable_fused_attention(copy.deepcopy(model, memo=shared))


def supports_forward_ad(model: nn.Module) -> bool:
    """False if any attention module still uses fused SDPA (no forward-mode AD)."""
    return not any(getattr(m, "fused_attn", False) for m in model.modules())


def preset_config(preset: str) -> dict[str, Any]:
    """The timm name and overrides of ``preset`` (a copy); ``timm:NAME`` is timm's NAME as it is."""
    if preset.startswith("timm:"):
        name = preset[len("timm:"):]
        if not timm.is_model(name.split(".")[0]):
            raise ValueError(f"{preset}: timm has no model {name.split('.')[0]!r} (timm.list_models() lists them)")
        return {"timm_name": name}
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; known presets: {', '.join(PRESETS)}, or timm:NAME")
    return dict(PRESETS[preset])


def create_model(
    preset: str = "micro",
    num_classes: int = 10,
    *,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    seed: int | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a ViT from a preset, in eval mode, with manual (forward-differentiable) attention.

    checkpoint: a local file (``.safetensors``, or ``.pt``/``.pth``/``.bin`` read with
    ``torch.load(weights_only=True)``); keys are timm's. The backbone must fit exactly
    (:func:`check_fits`); a head of another shape, or none, keeps its initial values.
    pretrained: timm's own pretrained loading (needs network; never used by the default run).
    seed: seeds the random initialisation. overrides: extra timm keyword arguments
    (e.g. ``depth=1, embed_dim=8`` for a dense-Hessian test model).
    """
    cfg = preset_config(preset)
    name = cfg.pop("timm_name")
    cfg.update(overrides)
    if seed is not None:
        torch.manual_seed(seed)
    if pretrained:
        _check_hub(name)
    model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **cfg)
    disable_fused_attention(model)
    if checkpoint is not None:
        state = check_fits(load_checkpoint(checkpoint), model, str(checkpoint), preset)
        own = model.state_dict()
        load_into(model, {k: v for k, v in state.items() if own[k].shape == v.shape})
    return model.eval()


def check_fits(state: Params, model: nn.Module, source: str, arch: str = "") -> Params:
    """``state`` restricted to ``model``'s keys, after checking that its backbone fits exactly.

    Refused (:class:`~qgeom.params.CheckpointError`, naming the first offending keys): keys the
    model does not have, backbone tensors of another shape, backbone tensors the file lacks.
    Head tensors (``head.*``) may differ or be absent: a new task gets a new head.
    """
    own = model.state_dict()
    arch = f" {arch}" if arch else ""
    unknown = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} ≠ {tuple(own[k].shape)}" for k in state
              if k in own and own[k].shape != state[k].shape and not k.startswith("head.")]
    missing = [k for k in own if k not in state and not k.startswith("head.")
               and own[k].is_floating_point()]
    for what, keys in (("keys the model{0} does not have", unknown), ("shapes that do not fit{0}", shapes),
                       ("backbone tensors missing from the file for{0}", missing)):
        if keys:
            more = f" (and {len(keys) - 5} more)" if len(keys) > 5 else ""
            raise CheckpointError(f"{source}: {what.format(arch)}: {', '.join(keys[:5])}{more}")
    return {k: v for k, v in state.items() if k in own}


class PretrainedUnavailableError(FileNotFoundError):
    """timm's pretrained weights are neither cached nor downloadable here."""


def _hub_reachable() -> bool:
    """False when the Hugging Face hub is declared offline or its host does not resolve."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def _check_hub(name: str) -> None:
    """Make timm's pretrained loading fail at once offline (it retries for a minute otherwise)."""
    if not _hub_reachable():
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True  # cached weights still load


def load_pretrained(source: str, model: nn.Module, notes: list[str] | None = None) -> Params:
    """θ_0's backbone for ``model`` from ``timm:NAME`` or a local file; the head is dropped.

    ``timm:NAME``: timm's own pretrained weights (downloaded where there is network, else from
    timm's cache); offline without a cached copy this fails at once with
    :class:`PretrainedUnavailableError`, saying how to pass a file instead. A path: a checkpoint
    in timm's key names (:func:`load_checkpoint`), refused unless it fits (:func:`check_fits`).
    """
    if source.startswith("timm:"):
        name = source[len("timm:"):]
        try:
            ref = create_model(source, num_classes=0, pretrained=True)
        except Exception as e:
            if isinstance(e, ValueError) and "timm has no model" in str(e):
                raise
            raise PretrainedUnavailableError(
                f"{source}: timm could not load its pretrained weights ({type(e).__name__}: {str(e)[:200]}). "
                "Offline, pass a local file instead: on a machine with network run\n"
                f"  python -c \"import timm, safetensors.torch as st; st.save_file(timm.create_model('{name}', "
                f"pretrained=True).state_dict(), '{name}.safetensors')\"\n"
                f"then use theta0={name}.safetensors (qgeom run) or --checkpoint {name}.safetensors") from None
        state, where = {k: v for k, v in ref.state_dict().items() if not k.startswith("head.")}, source
    else:
        state, where = load_checkpoint(source, notes), source
    state = check_fits(state, model, where)
    return {k: v.detach().clone() for k, v in state.items() if not k.startswith("head.")}


#: Half-precision dtypes a checkpoint may store; qgeom computes in float32 (or float64) and upcasts them.
HALF = (torch.float16, torch.bfloat16)


def normalise_state(state: Params, notes: list[str] | None = None) -> Params:
    """A checkpoint's tensors as qgeom reads them: the ``module.`` prefix DistributedDataParallel
    puts on every key removed, float16/bfloat16 tensors upcast to float32 (exactly: every half
    value is a float32 value). ``notes`` (when given) gets one line per change, for the caller to
    state."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
        if notes is not None:
            notes.append("keys prefixed 'module.' (DistributedDataParallel) read without the prefix")
    half = sorted({str(v.dtype).replace("torch.", "") for v in state.values() if v.dtype in HALF})
    if half:
        state = {k: v.float() if v.dtype in HALF else v for k, v in state.items()}
        if notes is not None:
            notes.append(f"{' and '.join(half)} tensors upcast to float32")
    return state


def load_checkpoint(path: str | os.PathLike, notes: list[str] | None = None) -> Params:
    """Read model weights without executing code.

    ``.safetensors`` via :func:`qgeom.params.load_params`; anything else via
    ``torch.load(weights_only=True)``, which refuses pickles that would run code — that is
    reported as a :class:`~qgeom.params.CheckpointError`, as are truncated or corrupt files.
    A dict nested under ``state_dict`` or ``model`` is unwrapped; DDP prefixes and half precision
    are normalised (:func:`normalise_state`, which appends what it did to ``notes``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint: {path}")
    if path.suffix == ".safetensors":
        return normalise_state(load_params(path)[0], notes)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        import re

        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # torch colours its message
        found = re.search(r"(?:GLOBAL|global) ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(f"{path}: refused to load — unpickling it would run code beyond plain tensors{what}; "
                              f"qgeom loads only tensors (weights_only=True): convert it to safetensors") from e
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable torch checkpoint (truncated or corrupt?): {e}") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if torch.is_floating_point(v) and not torch.isfinite(v).all()]
    if bad:
        raise NonFiniteParamsError(f"{path}: NaN or Inf values in tensor {', '.join(map(str, bad[:5]))}")
    return normalise_state(dict(obj), notes)


def default_device() -> torch.device:
    """The device named by ``--device`` (which sets ``QGEOM_DEVICE``), else CUDA when present, else the CPU."""
    name = os.environ.get("QGEOM_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
