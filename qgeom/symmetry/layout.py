"""The ViT's layout: which tensors exist and how they connect (what the symmetries need).

:func:`layout_of` reads and validates a timm ``VisionTransformer``; configurations qgeom cannot
handle raise :class:`UnsupportedSymmetryError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class UnsupportedSymmetryError(ValueError):
    """The model's configuration has no such symmetry (or qgeom cannot handle it safely)."""


@dataclass(frozen=True)
class ViTLayout:
    """What the symmetries need to know about a timm ``VisionTransformer``.

    fold_sites: norm module → the Linear reading its output (norm1→attn.qkv, norm2→mlp.fc1,
    the final ``norm``/``fc_norm``→head). Flags mark configurations some symmetries refuse.
    """

    depth: int
    embed_dim: int
    num_heads: int
    head_dim: int
    shapes: dict[str, tuple[int, ...]]
    fold_sites: dict[str, str]
    qk_norm: bool
    attn_out_norm: bool
    mlp_norm: bool
    layerscale: bool
    has_head: bool

    def sub(self, names) -> dict[str, tuple[int, ...]]:
        return {n: self.shapes[n] for n in names}


def layout_of(model) -> ViTLayout:
    """Read and validate the layout of a timm ``VisionTransformer`` (or pass a layout through).

    Raises :class:`UnsupportedSymmetryError` for anything but pre-norm ``Block``s with timm's
    ``Attention`` (fused or not: the function is the same) and ``Mlp``, LayerNorm/RmsNorm norms,
    and no attention pooling.
    """
    if isinstance(model, ViTLayout):
        return model
    # lazy: timm only when a model is read (qgeom.symmetry imports without it)
    from timm.layers import Attention, LayerScale, Mlp, RmsNorm
    from timm.models.vision_transformer import Block, VisionTransformer
    from torch import nn

    if not isinstance(model, VisionTransformer):
        raise UnsupportedSymmetryError(f"symmetries are defined for timm VisionTransformer, got {type(model).__name__}")
    if getattr(model, "attn_pool", None) is not None:
        raise UnsupportedSymmetryError("attention pooling ('map'/'prr') is not supported: its parameters read the stream")
    norms = (nn.LayerNorm, RmsNorm)
    for name, m in model.named_modules():
        if name.rsplit(".", 1)[-1] in ("norm", "norm1", "norm2", "norm_pre", "fc_norm", "q_norm", "k_norm") and not isinstance(m, (nn.Identity, *norms)):
            raise UnsupportedSymmetryError(f"{name} is a {type(m).__name__}; only LayerNorm/RmsNorm are supported")
    for i, b in enumerate(model.blocks):
        for part, cls in ((b, Block), (b.attn, Attention), (b.mlp, Mlp)):
            if type(part) is not cls:
                raise UnsupportedSymmetryError(f"blocks.{i} uses {type(part).__name__}; only timm's Block/Attention/Mlp are supported")
        if getattr(b.attn, "gate", None) is not None or not isinstance(b.ls1, (nn.Identity, LayerScale)):
            raise UnsupportedSymmetryError(f"blocks.{i}: gated attention / unknown layer scale is not supported")
    b0 = model.blocks[0]
    has_head = isinstance(model.head, nn.Linear)
    sites = {}
    for i, b in enumerate(model.blocks):
        sites.update({f"blocks.{i}.norm1": f"blocks.{i}.attn.qkv", f"blocks.{i}.norm2": f"blocks.{i}.mlp.fc1"})
    final = "fc_norm" if not isinstance(model.fc_norm, nn.Identity) else "norm" if not isinstance(model.norm, nn.Identity) else None
    if final and has_head:
        sites[final] = "head"
    sites = {n: r for n, r in sites.items() if getattr(model.get_submodule(n), "weight", None) is not None}
    return ViTLayout(
        depth=len(model.blocks), embed_dim=model.embed_dim, num_heads=b0.attn.num_heads, head_dim=b0.attn.head_dim,
        shapes={k: tuple(v.shape) for k, v in model.state_dict().items() if torch.is_floating_point(v)},
        fold_sites=sites, qk_norm=not isinstance(b0.attn.q_norm, nn.Identity),
        attn_out_norm=not isinstance(b0.attn.norm, nn.Identity), mlp_norm=not isinstance(b0.mlp.norm, nn.Identity),
        layerscale=isinstance(b0.ls1, LayerScale), has_head=has_head,
    )
